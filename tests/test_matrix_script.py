"""tools/matrix.sh (``make matrix``): the functions whose standard output is captured.

``tarball=$(fetch_source ...)`` and ``prefix=$(ensure_cpython ...)`` take a function's whole
stdout as its result, so nothing but the result may go there.  The script is sourced (its
main part runs only when executed) with ``FASTPATH_CACHE`` in a temporary directory, and
``apt-get`` is a stand-in on ``PATH``: the real one downloads from deb.debian.org and writes
/etc/apt, which a test must not.  The stand-in answers the way apt-get does (its progress on
stdout, ``indextargets`` from the sources file, a 404 for a source the archive lists but does
not serve), so the script's own handling is what is tested.  The real archive is exercised by
``make matrix`` itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "matrix.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("flock") is None,
                                reason="tools/matrix.sh needs bash and flock")

# Serves python3.13 from trixie (the files apt-get source writes: .dsc, .orig.tar.xz,
# .debian.tar.xz) and lists python3.14 in sid without serving it, as deb.debian.org did on
# 2026-12-02.  Each call is logged to $STUB_LOG.
APT_GET = r"""#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
case "$1" in
    indextargets)
        [ -f "$MATRIX_APT_SOURCES" ] || exit 0
        for s in $(sed -n 's/^Suites: //p' "$MATRIX_APT_SOURCES"); do
            printf 'MetaKey: main/source/Sources\nCreated-By: Sources\nRelease: %s\n\n' "$s"
        done ;;
    update)
        echo "Hit:1 http://deb.debian.org/debian trixie InRelease" ;;
    source)
        echo "Reading package lists..."
        case "$3" in
            python3.13/trixie)
                echo "Need to get 23.2 MB of source archives."
                : > python3.13_3.13.5-2+deb13u5.dsc
                : > python3.13_3.13.5-2+deb13u5.debian.tar.xz
                : > python3.13_3.13.5.orig.tar.xz
                echo "Download complete and in download only mode" ;;
            python3.14/sid)
                pool=http://deb.debian.org/debian/pool/main/p/python3.14
                ip="[IP: 203.0.113.80 80]"
                echo "Selected version '3.14.10-1' (sid) for python3.14"
                echo "Err:1 http://deb.debian.org/debian sid/main python3.14 3.14.10-1 (dsc)"
                echo "  404  Not Found $ip"
                echo "E: Failed to fetch $pool/python3.14_3.14.10-1.dsc  404  Not Found $ip" >&2
                echo "E: Failed to fetch some archives." >&2
                exit 100 ;;
            *)
                echo "E: Unable to find a source package for ${3%/*}" >&2
                exit 100 ;;
        esac ;;
    *) echo "stub apt-get: unexpected $*" >&2; exit 1 ;;
esac
"""


class Shell:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cache = tmp / "cache"
        self.sources = tmp / "fastpath-src.sources"
        self.log = tmp / "apt-get.log"
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        (bin_dir / "apt-get").write_text(APT_GET)
        (bin_dir / "apt-get").chmod(0o755)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FASTPATH_CACHE": str(self.cache),
            "MATRIX_APT_SOURCES": str(self.sources),
            "STUB_LOG": str(self.log),
        }

    def run(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", f'source "$1" && {code}', "bash", str(SCRIPT)],
                              env=self.env, cwd=self.tmp, capture_output=True, text=True,
                              timeout=60, check=False)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def sh(tmp_path: Path) -> Shell:
    return Shell(tmp_path)


def tarball(sh: Shell) -> str:
    return f"{sh.cache}/src/python3.13_3.13.5.orig.tar.xz\n"


def test_fetch_source_cold_cache_prints_only_the_tarball(sh: Shell) -> None:
    sh.sources.write_text("Types: deb-src\nSuites: trixie\n")     # deb-src present
    r = sh.run("fetch_source 3.13 trixie")
    assert r.returncode == 0, r.stderr
    assert r.stdout == tarball(sh)
    assert "apt-get source --download-only python3.13/trixie" in r.stderr   # said, on stderr
    assert "source --download-only python3.13/trixie" in sh.calls()


@pytest.mark.skipif(os.geteuid() != 0, reason="ensure_deb_src adds a deb-src entry only as root")
def test_fetch_source_adding_deb_src_prints_only_the_tarball(sh: Shell) -> None:
    r = sh.run("fetch_source 3.13 trixie")                          # no deb-src yet
    assert r.returncode == 0, r.stderr
    assert r.stdout == tarball(sh)
    assert "Suites: trixie" in sh.sources.read_text()
    assert "update -qq" in sh.calls()


def test_fetch_source_warm_cache_asks_nothing(sh: Shell) -> None:
    (sh.cache / "src").mkdir(parents=True)
    (sh.cache / "src" / "python3.13_3.13.5.orig.tar.xz").touch()
    r = sh.run("fetch_source 3.13 trixie")
    assert r.returncode == 0, r.stderr
    assert r.stdout == tarball(sh)
    assert sh.calls() == []


def test_ensure_cpython_prints_only_the_prefix_of_a_cached_build(sh: Shell) -> None:
    # find_cached takes a build whose interpreter runs with ssl, zlib, ...: the machine's
    # python3 stands in for a cached 3.13 only if it is one, so build a tree around the
    # interpreter running this test, under its own version.
    import sys
    import sysconfig
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        pytest.skip("a free-threaded interpreter is cached under a t suffix")
    prefix = sh.cache / "cpython" / f"{minor}.{sys.version_info[2]}"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / f"python{minor}").symlink_to(sys.executable)
    r = sh.run(f"ensure_cpython {minor} ''")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{prefix}\n"


def test_a_source_the_archive_does_not_serve_is_status_3_with_its_reason(sh: Shell) -> None:
    sh.sources.write_text("Types: deb-src\nSuites: sid\n")
    r = sh.run("fetch_source 3.14 sid")
    assert r.returncode == 3, r.stderr
    assert r.stdout == ""
    log = sh.cache / "logs" / "source-python3.14-sid.log"
    assert "404  Not Found" in log.read_text()                     # apt-get's own words, kept
    r = sh.run("source_unavailable_reason 3.14 sid")
    assert r.stdout == ("the Debian archive does not serve the python3.14 source from sid"
                        " (apt-get source: python3.14_3.14.10-1.dsc: 404 Not Found)\n")


def test_ensure_cpython_passes_on_status_3_and_prints_nothing(sh: Shell) -> None:
    sh.sources.write_text("Types: deb-src\nSuites: sid\n")
    r = sh.run("ensure_cpython 3.14 t")
    assert (r.returncode, r.stdout) == (3, "")
    assert not (sh.cache / "cpython").exists() or not any((sh.cache / "cpython").iterdir())


def test_a_failure_that_is_not_the_archives_answer_is_status_1(sh: Shell) -> None:
    # The stand-in knows no python3.12 source: "Unable to find" is the archive's answer
    # (status 3); a deb-src that cannot be added (not root) or a network error is not.
    sh.sources.write_text("Types: deb-src\nSuites: sid\n")
    r = sh.run("fetch_source 3.12 sid")
    assert r.returncode == 3
    (sh.tmp / "bin" / "apt-get").write_text(
        APT_GET.replace('python3.13/trixie)', 'python3.13/trixie-unused)').replace(
            'echo "E: Unable to find a source package for ${3%/*}" >&2',
            'echo "E: Failed to fetch http://deb.debian.org/x.dsc  Temporary failure resolving'
            ' \'deb.debian.org\'" >&2'))
    sh.sources.write_text("Types: deb-src\nSuites: trixie\n")
    r = sh.run("fetch_source 3.13 trixie")
    assert (r.returncode, r.stdout) == (1, "")


def run_matrix(sh: Shell, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT)], cwd=sh.tmp, capture_output=True, text=True,
                          timeout=120, check=False,
                          env={**sh.env, "MATRIX_OUT": str(sh.tmp / "out"), **env})


REASON = ("the Debian archive does not serve the python3.14 source from sid"
          " (apt-get source: python3.14_3.14.10-1.dsc: 404 Not Found)")


def test_a_version_that_cannot_be_had_is_listed_unavailable_and_does_not_fail(sh: Shell) -> None:
    sh.sources.write_text("Types: deb-src\nSuites: sid\n")
    r = run_matrix(sh, MATRIX_VERSIONS="3.14 3.14t", MATRIX_FALLBACK_3_14="", MATRIX_STEPS="build")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = (sh.tmp / "out" / "summary.txt").read_text()
    assert f"\n3.14: unavailable: {REASON}\n" in summary
    assert (f"\n3.14t: unavailable: {REASON}; no binary fallback known (no sid chroot to look"
            " for python3.14-nogil in)\n" in summary)
    assert summary.rstrip().endswith(
        "matrix: every version here passed (unavailable on this machine: 3.14 3.14t)")
    assert not (sh.tmp / "out" / "3.14" / "build.log").exists()          # no step ran

    r = run_matrix(sh, MATRIX_VERSIONS="3.14t", MATRIX_STEPS="build", MATRIX_UNAVAILABLE_FAILS="1")
    assert r.returncode == 1
    assert "matrix: FAILED" in (sh.tmp / "out" / "summary.txt").read_text()


def test_a_free_threaded_version_names_what_sid_ships(sh: Shell) -> None:
    lists = sh.cache / "chroot" / "sid" / "var" / "lib" / "apt" / "lists"
    lists.mkdir(parents=True)
    packages = lists / "deb.debian.org_debian_dists_sid_main_binary-amd64_Packages"
    packages.write_text("Package: python3.14\nVersion: 3.14.10-1\n\nPackage: python3.14-dev\n")
    r = sh.run("nogil_binary 3.14")
    assert r.stdout == ("no binary fallback: sid's Packages (the 3.14-deb chroot's) has no"
                        " python3.14-nogil\n")
    packages.write_text(packages.read_text() + "\nPackage: python3.14-nogil\n")
    assert sh.run("nogil_binary 3.14").stdout == "sid has python3.14-nogil, which no tag runs yet\n"


def test_a_present_deb_src_is_found_however_long_the_list(sh: Shell) -> None:
    # grep -q stops reading at the first match; apt-get, still writing the rest of a long
    # list, then dies of SIGPIPE, which pipefail must not read as "no such entry"
    many = " ".join(f"suite{i}" for i in range(3000))
    sh.sources.write_text(f"Types: deb-src\nSuites: trixie {many}\n")
    r = sh.run("ensure_deb_src trixie")
    assert r.returncode == 0, r.stderr
    assert "update -qq" not in sh.calls()
    assert sh.sources.read_text().startswith("Types: deb-src\nSuites: trixie suite0 ")


def test_the_failure_digest_names_each_failed_step_and_its_failing_tests(sh: Shell) -> None:
    # A CI log is read from its tail: what failed comes last, with pytest's own lines.
    out = sh.tmp / "out"
    (out / "3.13").mkdir(parents=True)
    (out / "3.13" / "test.log").write_text(
        "....F.\nFAILED tests/test_x.py::test_y - assert 1 == 2\n1 failed, 5 passed in 1.00s\n")
    (out / "3.13t").mkdir()
    (out / "3.13t" / "test.log").write_text("1616 passed\n")
    r = sh.run(f'OUT={out}; RESULT[3.13,test]=1; DETAIL[3.13,test]="1 failed, 5 passed (9s)"; '
               'RESULT[3.13t,test]=0; RESULT[3.14,interpreter]=fallback; '
               'RESULT[3.14t,interpreter]=unavailable; RESULT[3.12,interpreter]=1; '
               'DETAIL[3.12,interpreter]="build failed"; failure_digest')
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "what failed:\n"
        "-- 3.12 interpreter: build failed\n"
        "-- 3.13 test (exit 1): 1 failed, 5 passed (9s)\n"
        "   ! FAILED tests/test_x.py::test_y - assert 1 == 2\n"
        "   | ....F.\n"
        "   | FAILED tests/test_x.py::test_y - assert 1 == 2\n"
        "   | 1 failed, 5 passed in 1.00s\n")
