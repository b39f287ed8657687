#!/usr/bin/env bash
# tools/matrix.sh -- `make matrix`: fastpath's whole test suite, `make selftest`
# and the bench goal table on several CPythons, each in its own venv
# (.venv-<tag>, next to the default .venv, gitignored), through the Makefile's
# own targets:  make VENV=.venv-<tag> PYTHON=<interpreter> build|test|selftest|bench
#
# Versions (MATRIX_VERSIONS, default "3.11 3.13 3.13t 3.14 3.14t"):
#   3.11      the machine's python3 (MATRIX_PYTHON_3_11 overrides the path)
#   3.13      CPython built from Debian trixie's python3.13 source package
#   3.13t     the 3.13 tarball built with --disable-gil (free-threaded)
#   3.14      CPython built from Debian sid's python3.14 source package; where the
#             archive does not serve that source, 3.14-deb instead (one line says
#             so, and the summary: "3.14: runs as 3.14-deb, because ...")
#   3.14t     the 3.14 tarball built with --disable-gil; where the source is not
#             served, "unavailable: <reason>" (no binary fallback: Debian's
#             python3.14 is a GIL build)
#   3.14-deb  Debian sid's own binary python3.14 (python3.14, -dev, -venv), run in
#             a sid chroot made with debootstrap
# A suite per minor version: MATRIX_SUITE_3_13 (trixie), MATRIX_SUITE_3_14 (sid).
# The deb-src entries go to MATRIX_APT_SOURCES
# (/etc/apt/sources.list.d/fastpath-src.sources).
#
# Unavailable versions: a version whose source the Debian archive answers for
# but does not serve (a 404 for its files, or no such source package) cannot
# exist on this machine: it runs its fallback (MATRIX_FALLBACK_<tag>; 3.14 ->
# 3.14-deb; "" for none) or is listed as "unavailable: <apt-get's reason>" in
# the summary and does not fail the run (MATRIX_UNAVAILABLE_FAILS=1: it does).
# Anything else that keeps an interpreter from running (a failed download, a
# failed build, no deb-src entry without root, a failed debootstrap or venv) fails.
#
# Cache (FASTPATH_CACHE, default ~/.cache/fastpath), outside the clone, shared by
# runs (builds and the chroot are made under flock):
#   cpython/<version>[t]/   an installed interpreter, e.g. cpython/3.13.5/bin/python3.13;
#                           reused when its bin/python3.X[t] runs and has ssl, zlib,
#                           ctypes, lzma, bz2 and sqlite3 (rebuilt otherwise)
#   src/                    the Debian source packages (apt-get source --download-only)
#   logs/build-<v>.log      configure + make + make install output
#   logs/source-python<minor>-<suite>.log   apt-get source's output
#   chroot/sid/             the sid chroot for 3.14-deb
# So a warm machine pays only for the tests.  Builds use make -j$MATRIX_JOBS (2).
#
# Steps (MATRIX_STEPS, default "build test selftest bench"; MATRIX_STEPS_<tag>
# for one version, e.g. MATRIX_STEPS_3_11="build selftest costs"); "costs" runs
# only the enforce/execute benchmark rows (make costs, tools/matrix_costs.py) and
# the summary then prints them per version, as ratios to f() measured on that version.
# Per version, logs and the bench goal table go to .matrix/<tag>/ (gitignored;
# MATRIX_OUT moves it, inside the clone for 3.14-deb's chroot to see it);
# the summary to .matrix/summary.txt.  The bench runs with MATRIX_BENCH_ARGS
# (default --quick: shorter pytest-benchmark runs; "" for the full run); it
# exits 0 whatever the goals say, so it reports and never fails the run.
# Exit status: 0 only if every step of every available version passed.
#
# CI: .ci/run calls `make matrix` after `make test` with its own version list and
# steps (see there and README "Other Pythons").
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FASTPATH_CACHE:-$HOME/.cache/fastpath}
VERSIONS=${MATRIX_VERSIONS:-"3.11 3.13 3.13t 3.14 3.14t"}
# A version whose source the Debian archive does not serve: its fallback tag
# (MATRIX_FALLBACK_<tag>, "" for none), or "unavailable" in the summary, which
# fails the run only with MATRIX_UNAVAILABLE_FAILS=1.
MATRIX_FALLBACK_3_14=${MATRIX_FALLBACK_3_14-3.14-deb}
UNAVAILABLE_FAILS=${MATRIX_UNAVAILABLE_FAILS:-0}
JOBS=${MATRIX_JOBS:-2}
BENCH_ARGS=${MATRIX_BENCH_ARGS---quick}
STEP_TIMEOUT=${MATRIX_STEP_TIMEOUT:-3600}
STEPS=${MATRIX_STEPS:-"build test selftest bench"}
OUT=${MATRIX_OUT:-$ROOT/.matrix}
CHROOT=$CACHE/chroot/sid
# The newest numpy may ship no wheel for an interpreter (numpy 2.5 has none for
# 3.13t; 2.4.6 does): take the newest wheel rather than a 15-minute source build.
export PIP_PREFER_BINARY=${PIP_PREFER_BINARY:-1}
# Per-version pip constraints (MATRIX_CONSTRAINTS_<tag>, "." and "-" as "_"),
# for the dependencies that cannot install there.  3.13t: mypy >= 1.19 needs
# librt and ast-serialize, which ship no cp313t wheel (a source build needs Rust
# and crates.io); mypy 1.18.2 is pure Python.
MATRIX_CONSTRAINTS_3_13t=${MATRIX_CONSTRAINTS_3_13t-"mypy<1.19"}

BUILD_DEPS="build-essential pkg-config libssl-dev zlib1g-dev libbz2-dev libreadline-dev
libsqlite3-dev libffi-dev liblzma-dev uuid-dev libgdbm-dev libgdbm-compat-dev tk-dev
libncurses-dev libexpat1-dev dpkg-dev xz-utils"

say() { printf '\n== %s\n' "$*"; }
warn() { printf 'matrix: %s\n' "$*" >&2; }

suite_for() {            # 3.13 -> trixie
    local var="MATRIX_SUITE_${1//./_}"
    case "$1" in
        3.13) echo "${!var:-trixie}" ;;
        3.14) echo "${!var:-sid}" ;;
        *) echo "${!var:-}" ;;
    esac
}

# ------------------------------------------------------------------ build deps

ensure_build_deps() {
    local missing=() p
    for p in $BUILD_DEPS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        warn "missing build dependencies (install them as root): ${missing[*]}"
        return 1
    fi
    say "installing build dependencies: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# deb-src entries for the suites the sources come from, in their own file.
ensure_deb_src() {
    local suite=$1 f=${MATRIX_APT_SOURCES:-/etc/apt/sources.list.d/fastpath-src.sources}
    # --no-release-info prints the sources.list suite as "Release:" (a "Suite:"
    # line there is the Release file's, e.g. "unstable" for sid, and is absent
    # with that option: matching it never succeeded and added sid once per run)
    # (read whole, then matched: grep -q on a pipe stops reading at the first match,
    # and apt-get's SIGPIPE on a long list would fail the pipeline under pipefail)
    local targets
    targets=$(apt-get indextargets --no-release-info 'Created-By: Sources' 2>/dev/null)
    if grep -qx "Release: $suite" <<< "$targets"; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        warn "no deb-src entry for $suite: add one (see $f in tools/matrix.sh)"
        return 1
    fi
    say "adding deb-src for $suite in $f"
    local suites="$suite"
    [ -f "$f" ] && suites="$(sed -n 's/^Suites: //p' "$f" | tr ' ' '\n' | grep -vx "$suite" | tr '\n' ' ')$suite"
    cat > "$f" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $suites
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt-get update -qq
}

# ------------------------------------------------------------- interpreters

# usage: interpreter_ok PYTHON FREE_THREADED(0|1)
interpreter_ok() {
    [ -x "$1" ] || return 1
    "$1" -c "
import sys, sysconfig, ssl, zlib, ctypes, lzma, bz2, sqlite3
sys.exit(0 if bool(sysconfig.get_config_var('Py_GIL_DISABLED')) == bool($2) else 1)
" >/dev/null 2>&1
}

# The newest cached build of MINOR (T=t for free-threaded) that runs; prints
# its prefix.
find_cached() {
    local minor=$1 t=$2 d best="" ft=0
    [ -n "$t" ] && ft=1
    while read -r d; do
        [ -d "$d" ] || continue
        [[ "$(basename "$d")" =~ ^${minor//./\\.}\.[0-9]+[a-z0-9]*$t$ ]] || continue
        if [ -z "$t" ] && [[ "$d" == *t ]]; then continue; fi
        if interpreter_ok "$d/bin/python$minor$t" $ft; then
            best=$d
        else
            warn "cached $(basename "$d") does not run: it will be rebuilt"
        fi
    done < <(printf '%s\n' "$CACHE"/cpython/"$minor".* | sort -V)
    [ -n "$best" ] && printf '%s\n' "$best"
}

# The newest cached upstream tarball of MINOR, or nothing.
cached_tarball() {
    ls "$CACHE"/src/python"$1"_"$1".*.orig.tar.xz 2>/dev/null | sort -V | tail -1
}

# Download (once) the Debian source package of MINOR from SUITE; prints the
# path of the upstream tarball and nothing else (the caller captures stdout:
# progress and apt-get's output go to stderr).  Status 3: the archive answered
# but does not serve that source (a 404, or no such source package), kept in
# $CACHE/logs/source-python<MINOR>-<SUITE>.log for source_unavailable_reason.
fetch_source() {
    local minor=$1 suite=$2 tarball log
    log=$CACHE/logs/source-python$minor-$suite.log
    {
        mkdir -p "$CACHE/src" "$CACHE/logs"
        tarball=$(cached_tarball "$minor")
        if [ -z "$tarball" ]; then
            ensure_deb_src "$suite" || return 1
            say "apt-get source --download-only python$minor/$suite (output in $log)"
            if ! (cd "$CACHE/src" && apt-get source --download-only "python$minor/$suite") \
                    > "$log" 2>&1; then
                # the caller says what it does instead, in one line
                grep -qE ' 404 +Not Found|Unable to find a source package' "$log" && return 3
                warn "apt-get source python$minor/$suite failed; the end of $log:"
                tail -n 15 "$log"
                return 1
            fi
            grep -E '^Fetched ' "$log"
            tarball=$(cached_tarball "$minor")
        fi
    } >&2
    [ -n "$tarball" ] && [ -f "$tarball" ] || return 1
    printf '%s\n' "$tarball"
}

# One line: why fetch_source gave status 3 for MINOR from SUITE.
source_unavailable_reason() {
    local minor=$1 suite=$2 log what
    log=$CACHE/logs/source-python$minor-$suite.log
    what=$(grep -m1 -E '^E: ' "$log" 2>/dev/null \
           | sed -E 's#^E: Failed to fetch [^ ]*/([^/ ]+) +#\1: #; s/^E: //; s/ +\[IP: [^]]*\]//; s/  +/ /g')
    printf 'the Debian archive does not serve the python%s source from %s (apt-get source: %s)\n' \
        "$minor" "$suite" "${what:-see $log}"
}

# Ensure MINOR[t] is built and cached; prints its prefix and nothing else (as
# fetch_source: everything else goes to stderr).  Status 3 as fetch_source's.
ensure_cpython() {
    local minor=$1 t=$2 prefix tarball version suite ft=0 conf start secs log rc
    {
        [ -n "$t" ] && ft=1
        prefix=$(find_cached "$minor" "$t")
        if [ -z "$prefix" ]; then
            suite=$(suite_for "$minor")
            [ -n "$suite" ] || { warn "no Debian suite known for $minor (set MATRIX_SUITE_${minor//./_})"; return 1; }
            tarball=$(fetch_source "$minor" "$suite") || return $?
            ensure_build_deps || return 1
            version=$(basename "$tarball" | sed -E 's/^python[0-9.]+_([0-9.]+[a-z0-9]*)\.orig\.tar\.xz$/\1/')
            prefix=$CACHE/cpython/$version$t
            log=$CACHE/logs/build-$version$t.log
            conf="--prefix=$prefix --without-ensurepip"
            [ $ft = 1 ] && conf="$conf --disable-gil"
            mkdir -p "$CACHE/build" "$CACHE/logs"
            (
                flock 9
                if interpreter_ok "$prefix/bin/python$minor$t" $ft; then exit 0; fi   # built meanwhile
                say "building CPython $version$t from $(basename "$tarball") (./configure $conf; make -j$JOBS) -> $log"
                rm -rf "$prefix" "$CACHE/build/$version$t"
                mkdir -p "$CACHE/build/$version$t"
                start=$(date +%s)
                {
                    tar -xJf "$tarball" -C "$CACHE/build/$version$t" --strip-components=1 &&
                    cd "$CACHE/build/$version$t" &&
                    ./configure $conf && make -j"$JOBS" && make install
                } > "$log" 2>&1
                rc=$?
                secs=$(( $(date +%s) - start ))
                if [ $rc != 0 ] || ! interpreter_ok "$prefix/bin/python$minor$t" $ft; then
                    warn "building $version$t failed (rc=$rc, ${secs}s); the end of $log:"
                    tail -n 30 "$log"
                    rm -rf "$prefix"
                    exit 1
                fi
                printf 'version=%s\nconfigure=%s\nseconds=%s\ndate=%s\n' "$version$t" "$conf" "$secs" \
                    "$(date -u +%FT%TZ)" > "$prefix/.fastpath-build"
                rm -rf "$CACHE/build/$version$t"
                echo "built $version$t in ${secs}s"
            ) 9> "$CACHE/.lock-$version$t" || return 1
        fi
    } >&2
    printf '%s\n' "$prefix"
}

# The sid chroot with Debian's python3.14 (for 3.14-deb).
chroot_ok() { [ -x "$CHROOT/usr/bin/python3.14" ] && [ -x "$CHROOT/usr/bin/make" ]; }

ensure_chroot() {
    chroot_ok && return 0
    [ "$(id -u)" = 0 ] || { warn "3.14-deb needs root (debootstrap, chroot)"; return 1; }
    command -v debootstrap >/dev/null || apt-get install -y --no-install-recommends debootstrap \
        || { apt-get update -qq && apt-get install -y --no-install-recommends debootstrap; } \
        || return 1
    mkdir -p "$(dirname "$CHROOT")" "$CACHE/logs"
    (
        flock 9                  # another run may be making it (the cache is shared)
        chroot_ok && exit 0
        say "debootstrap sid into $CHROOT"
        start=$(date +%s)
        rm -rf "$CHROOT"
        debootstrap --variant=minbase \
            --include=python3.14,python3.14-dev,python3.14-venv,gcc,make,libc6-dev,ca-certificates \
            sid "$CHROOT" http://deb.debian.org/debian > "$CACHE/logs/debootstrap-sid.log" 2>&1 || {
            warn "debootstrap failed: see $CACHE/logs/debootstrap-sid.log"; exit 1; }
        echo "sid chroot made in $(( $(date +%s) - start ))s"
    ) 9> "$CACHE/.lock-chroot-sid"
}

# Run a shell command inside the chroot, with the clone at the same path (the
# mounts live in a private mount namespace and vanish with it).
in_chroot() {
    cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
    [ -f /etc/pip.conf ] && cp /etc/pip.conf "$CHROOT/etc/pip.conf"
    # the host's CA bundle (it may hold a local proxy's CA the chroot's lacks)
    cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$CHROOT/etc/fastpath-host-ca.crt"
    mkdir -p "$CHROOT$ROOT"
    unshare --mount --propagation private bash -c '
        set -e
        R=$1; shift; W=$1; shift
        mount --bind /proc "$R/proc"; mount --bind /dev "$R/dev"; mount --bind "$W" "$R$W"
        exec chroot "$R" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin \
            LANG=C.UTF-8 ${PIP_DEFAULT_TIMEOUT:+PIP_DEFAULT_TIMEOUT=$PIP_DEFAULT_TIMEOUT} \
            PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/etc/fastpath-host-ca.crt \
            SSL_CERT_FILE=/etc/fastpath-host-ca.crt bash -c "cd \"$W\" && $*"
    ' bash "$CHROOT" "$ROOT" "$@"
}

# A venv for PYTHON at VENV.  The built interpreters have no ensurepip run at
# install; venv's ensurepip uses the tarball's bundled pip, and where that is
# missing pip bootstraps from its own wheel (downloaded with the machine's pip).
ensure_venv() {
    local py=$1 venv=$2 whl
    local want
    want=$("$py" -c 'import os, sys; print(os.path.realpath(sys.executable))')
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1 \
        && [ "$("$venv/bin/python" -c 'import os, sys; print(os.path.realpath(sys._base_executable))' \
                2>/dev/null)" = "$want" ]; then
        return 0            # the venv is this interpreter's: keep it (and its stamps)
    fi
    rm -rf "$venv"
    rm -f "$ROOT"/.stamp-"${venv#"$ROOT"/.venv-}"-*
    if "$py" -m venv "$venv" >/dev/null 2>&1 && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        "$venv/bin/python" -m pip install --quiet --upgrade pip || true
        return 0
    fi
    rm -rf "$venv"
    mkdir -p "$CACHE/wheels"
    whl=$(ls "$CACHE"/wheels/pip-*.whl 2>/dev/null | sort -V | tail -1)
    if [ -z "$whl" ]; then
        python3 -m pip download --quiet --no-deps -d "$CACHE/wheels" pip || return 1
        whl=$(ls "$CACHE"/wheels/pip-*.whl | sort -V | tail -1)
    fi
    "$py" -m venv --without-pip "$venv" && "$venv/bin/python" "$whl/pip" install --quiet "$whl"
}

# -------------------------------------------------------------------- steps

declare -A RESULT DETAIL PYINFO FALLBACK NOTE RAN SETUP STEPS_OF
FAILED=0

# usage: run_step TAG STEP COMMAND...; output to .matrix/TAG/STEP.log
run_step() {
    local tag=$1 step=$2 log rc real start
    shift 2
    log=$OUT/$tag/$step.log
    start=$(date +%s)
    printf -- '-- %s %s: %s\n' "$tag" "$step" "$*"
    timeout --kill-after=60 "$STEP_TIMEOUT" "$@" > "$log" 2>&1
    rc=$?
    # make turns the command's status into its own 2: take the real one back
    real=$(grep -oE '^make(\[[0-9]+\])?: \*\*\* \[[^]]*\] (Error [0-9]+|Aborted)' "$log" | tail -1 \
           | sed -E 's/.*Error ([0-9]+)$/\1/; s/.*Aborted$/134/')
    [ -n "$real" ] && [ "$rc" = 2 ] && rc=$real
    [ "$rc" = 124 ] && echo "matrix: timed out after ${STEP_TIMEOUT}s" >> "$log"
    tail -n 4 "$log" | sed 's/^/   | /'
    RESULT[$tag,$step]=$rc
    DETAIL[$tag,$step]="$(summarise "$step" "$log" "$tag") ($(( $(date +%s) - start ))s)"
    [ "$rc" = 0 ] || FAILED=1
    return "$rc"
}

summarise() {             # one line about a step's log
    local step=$1 log=$2 tag=$3 line
    case "$step" in
        test)
            line=$(grep -E '^(=+ )?[0-9]+ (passed|failed)|^(=+ )?[0-9]+ errors? |no tests ran' "$log" \
                   | tail -1 | sed -E 's/^=+ //; s/ =+$//')
            [ -n "$line" ] || line="no pytest summary: $(grep -m1 -E '^E   |^ImportError|^ERROR' "$log" | cut -c1-150)"
            grep -q 'Fatal Python error' "$log" && line="$line; $(grep -m1 'Fatal Python error' "$log")"
            echo "$line" ;;
        selftest)
            line="$(grep -cE '^  PASS ' "$log") PASS, $(grep -cE '^  FAIL ' "$log") FAIL; $(grep -E '^  (OK|FAILED)' "$log" | tail -1 | sed 's/^ *//')"
            grep -q 'Fatal Python error' "$log" && line="$line; $(grep -m1 'Fatal Python error' "$log")"
            echo "${line:-see log}" ;;
        bench)
            if [ -f "$ROOT/bench/results/goals.md" ] && [ "$ROOT/bench/results/goals.md" -nt "$OUT/$tag/.bench-start" ]; then
                cp "$ROOT/bench/results/goals.md" "$OUT/$tag/goals.md"
                cp "$ROOT/bench/results/summary.json" "$OUT/$tag/summary.json" 2>/dev/null
                echo "goals: $(grep -c '✓' "$OUT/$tag/goals.md") ✓ / $(grep -c '✗' "$OUT/$tag/goals.md") ✗ rows"
            else
                echo "no goal table"
            fi ;;
        costs)
            if [ -f "$OUT/$tag/costs.json" ] && [ "$OUT/$tag/costs.json" -nt "$OUT/$tag/.costs-start" ]; then
                python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))
print("; ".join("#%s %.2fx f()" % (r["n"], r["compiled_x_f"]) for r in s["rows"] if "compiled_x_f" in r)
      + " (f() %.1f ns)" % s["f_ns"])' "$OUT/$tag/costs.json"
            else
                echo "no costs table"
            fi ;;
        build)
            line=$(vpy "$tag" 'import sysconfig, os, numpy
so = "fastpath/_budget" + sysconfig.get_config_var("EXT_SUFFIX")
print(so if os.path.exists(so) else "no " + so, "| numpy", numpy.__version__)' 2>/dev/null)
            echo "${line:-$(grep -m1 -E 'error:|ERROR' "$log" | cut -c1-160)}" ;;
        *)  true ;;
    esac
}

vpy() {                   # run Python code with a version's venv (in the chroot for 3.14-deb)
    if [ "$1" = 3.14-deb ]; then
        bash "$ROOT/tools/matrix.sh" --in-chroot ".venv-$1/bin/python -c $(printf '%q' "$2")"
    else
        (cd "$ROOT" && ".venv-$1/bin/python" -c "$2")
    fi
}

# Whether Debian sid ships a free-threaded binary of MINOR (python<MINOR>-nogil),
# read from the sid chroot's package lists (as of its debootstrap): one phrase.
nogil_binary() {
    local minor=$1 lists
    lists=$(ls "$CHROOT"/var/lib/apt/lists/*_dists_sid_main_binary-*_Packages 2>/dev/null)
    if [ -z "$lists" ]; then
        echo "no binary fallback known (no sid chroot to look for python$minor-nogil in)"
    elif grep -qx "Package: python$minor-nogil" $lists; then
        echo "sid has python$minor-nogil, which no tag runs yet"
    else
        echo "no binary fallback: sid's Packages (the 3.14-deb chroot's) has no python$minor-nogil"
    fi
}

# Record TAG as unavailable with REASON, or run its fallback (MATRIX_FALLBACK_<tag>).
unavailable() {
    local tag=$1 reason=$2 fvar="MATRIX_FALLBACK_${1//./_}" fallback
    fallback=${!fvar:-}
    if [ -n "$fallback" ]; then
        say "$tag: $reason: falling back to $fallback"
        FALLBACK[$tag]=$fallback
        NOTE[$tag]="$reason"
        RESULT[$tag,interpreter]=fallback
        [ -n "${RAN[$fallback]:-}" ] || run_version "$fallback"
        return
    fi
    if [[ "$tag" == *t ]]; then
        reason="$reason; $(nogil_binary "${tag%t}")"
    fi
    echo "matrix: $tag unavailable: $reason" >&2
    RESULT[$tag,interpreter]=unavailable
    DETAIL[$tag,interpreter]="$reason"
    [ "$UNAVAILABLE_FAILS" = 1 ] && FAILED=1
}

run_version() {
    local tag=$1 minor t="" py venv prefix step rc start=$SECONDS
    local -a mk
    RAN[$tag]=1
    mkdir -p "$OUT/$tag"
    say "$tag"
    venv=$ROOT/.venv-$tag
    if [ "$tag" = 3.14-deb ]; then
        if ! ensure_chroot; then
            RESULT[$tag,interpreter]=1; FAILED=1
            DETAIL[$tag,interpreter]="no sid chroot"
            return
        fi
        py=/usr/bin/python3.14
        PYINFO[$tag]="$(in_chroot "$py -VV" 2>&1 | head -1) (Debian sid's binary, in the chroot $CHROOT)"
        if ! in_chroot "[ -x .venv-$tag/bin/python ] || { rm -f .stamp-$tag-*; $py -m venv .venv-$tag; }" \
                > "$OUT/$tag/venv.log" 2>&1; then
            RESULT[$tag,interpreter]=1; FAILED=1
            DETAIL[$tag,interpreter]="venv failed: see $OUT/$tag/venv.log"
            return
        fi
        mk=(bash "$ROOT/tools/matrix.sh" --in-chroot make "VENV=.venv-$tag" "PYTHON=$py")
    else
        if [ "$tag" = 3.11 ]; then
            py=${MATRIX_PYTHON_3_11:-$(command -v python3)}
            py=$("$py" -c 'import sys; print(sys.executable)')
        else
            minor=${tag%t}
            [ "$minor" != "$tag" ] && t=t
            prefix=$(ensure_cpython "$minor" "$t")
            rc=$?
            if [ $rc = 3 ]; then        # the archive does not serve this source
                unavailable "$tag" "$(source_unavailable_reason "$minor" "$(suite_for "$minor")")"
                return
            elif [ $rc != 0 ]; then
                RESULT[$tag,interpreter]=1; FAILED=1
                DETAIL[$tag,interpreter]="no interpreter: its build failed (see above and $CACHE/logs/)"
                return
            fi
            py=$prefix/bin/python$minor$t
        fi
        PYINFO[$tag]="$("$py" -VV 2>&1 | head -1) ($py)"
        if ! ensure_venv "$py" "$venv" > "$OUT/$tag/venv.log" 2>&1; then
            RESULT[$tag,interpreter]=1; FAILED=1
            DETAIL[$tag,interpreter]="venv failed: see $OUT/$tag/venv.log"
            return
        fi
        mk=(make -C "$ROOT" "VENV=.venv-$tag" "PYTHON=$py")
    fi
    RESULT[$tag,interpreter]=0
    SETUP[$tag]=$(( SECONDS - start ))
    echo "   ${PYINFO[$tag]} (interpreter and venv ready in ${SETUP[$tag]}s)"
    local cvar="MATRIX_CONSTRAINTS_${tag//[.-]/_}"
    if [ -n "${!cvar:-}" ]; then
        printf '%s\n' ${!cvar} > "$OUT/$tag/constraints.txt"
        echo "   pip constraints ($cvar): ${!cvar}"
        export PIP_CONSTRAINT=$OUT/$tag/constraints.txt
    else
        unset PIP_CONSTRAINT
    fi
    local svar="MATRIX_STEPS_${tag//[.-]/_}"
    STEPS_OF[$tag]=${!svar-$STEPS}
    [ "${STEPS_OF[$tag]}" = "$STEPS" ] || echo "   steps ($svar): ${STEPS_OF[$tag]}"
    for step in ${STEPS_OF[$tag]}; do
        case "$step" in
            build) run_step "$tag" build "${mk[@]}" build || break ;;  # nothing else can run
            test) run_step "$tag" test "${mk[@]}" test ;;
            selftest) run_step "$tag" selftest "${mk[@]}" selftest ;;
            costs)
                touch "$OUT/$tag/.costs-start"
                run_step "$tag" costs "${mk[@]}" costs "COSTS_OUT=$OUT/$tag/costs.json" ;;
            bench)
                touch "$OUT/$tag/.bench-start"
                run_step "$tag" bench "${mk[@]}" bench "BENCH_ARGS='$BENCH_ARGS'" ;;
            *) warn "unknown step $step" ;;
        esac
    done
}

# ------------------------------------------------------------------ summary

# The steps of one tag that ran, in the summary.
summary_steps() {
    local tag=$1 step rc
    for step in ${STEPS_OF[$tag]-$STEPS}; do
        rc=${RESULT[$tag,$step]:-}
        if [ -z "$rc" ]; then
            printf '   %-9s  skip  (an earlier step failed)\n' "$step"
        else
            printf '   %-9s  %-4s  exit %-3s %s\n' "$step" "$([ "$rc" = 0 ] && echo ok || echo FAIL)" \
                "$rc" "${DETAIL[$tag,$step]}"
        fi
    done
}

summary() {
    local tag shown="" t fb
    local -a costs=() missing=()
    echo
    echo "fastpath matrix summary ($(date -u +%FT%TZ), $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null))"
    for tag in $VERSIONS; do
        [[ " $shown " == *" $tag "* ]] && continue
        shown="$shown $tag"
        echo
        t=$tag
        case "${RESULT[$tag,interpreter]:-1}" in
            fallback)
                fb=${FALLBACK[$tag]}
                echo "$tag: runs as $fb, because ${NOTE[$tag]}"
                [[ " $shown " == *" $fb "* ]] && continue
                shown="$shown $fb"
                t=$fb
                echo "$fb: ${PYINFO[$fb]:-no interpreter}" ;;
            unavailable)
                echo "$tag: unavailable: ${DETAIL[$tag,interpreter]}"
                missing+=("$tag")
                continue ;;
            *)  echo "$tag: ${PYINFO[$tag]:-no interpreter}" ;;
        esac
        if [ "${RESULT[$t,interpreter]:-1}" != 0 ]; then
            echo "   interpreter  FAIL  ${DETAIL[$t,interpreter]:-see the output above}"
            continue
        fi
        echo "   setup      ${SETUP[$t]}s (interpreter, chroot or build, and venv)"
        summary_steps "$t"
        [ "${RESULT[$t,costs]:-}" = 0 ] && costs+=("$OUT/$t/costs.json")
    done
    if [ ${#costs[@]} -gt 0 ]; then
        echo
        echo "per-call costs, ratios to f() on each version (make costs):"
        python3 "$ROOT/tools/matrix_costs.py" --table "${costs[@]}"
    fi
    echo
    if [ $FAILED = 0 ]; then
        echo "matrix: every version here passed${missing[*]:+ (unavailable on this machine: ${missing[*]})}"
    else
        failure_digest
        echo "matrix: FAILED (logs in $OUT/<version>/)${missing[*]:+; unavailable: ${missing[*]}}"
    fi
}

# What failed, last in the output (a CI log is often read from its tail): per
# failed step its pytest FAILED/ERROR lines and the end of its log; per failed
# interpreter set-up what it said.
failure_digest() {
    local key tag step rc log
    echo "what failed:"
    for key in "${!RESULT[@]}"; do
        rc=${RESULT[$key]}
        [ "$rc" = 0 ] || [ "$rc" = fallback ] || [ "$rc" = unavailable ] || printf '%s\n' "$key"
    done | sort | while IFS=, read -r tag step; do
        rc=${RESULT[$tag,$step]}
        if [ "$step" = interpreter ]; then
            echo "-- $tag interpreter: ${DETAIL[$tag,interpreter]:-see the output above}"
            continue
        fi
        log=$OUT/$tag/$step.log
        echo "-- $tag $step (exit $rc): ${DETAIL[$tag,$step]:-}"
        [ -f "$log" ] || continue
        grep -E '^(FAILED|ERROR) |Fatal Python error' "$log" | head -n 20 | cut -c1-300 | sed 's/^/   ! /'
        tail -n 12 "$log" | cut -c1-300 | sed 's/^/   | /'
    done
}

# ------------------------------------------------------------------- main

# Sourced (tests/test_matrix_script.py): the functions only.
if (return 0 2>/dev/null); then
    return 0
fi
if [ "${1:-}" = --in-chroot ]; then      # used by run_step for 3.14-deb
    shift
    in_chroot "$*"
    exit $?
fi
mkdir -p "$OUT"
cd "$ROOT" || exit 2
echo "fastpath matrix: $VERSIONS, steps: $STEPS (cache $CACHE, bench args '${BENCH_ARGS}')"
for tag in $VERSIONS; do
    [ -n "${RAN[$tag]:-}" ] || run_version "$tag"
done
summary | tee "$OUT/summary.txt"
exit $FAILED
