"""Goal 14: the idle cost of fastpath's allocator hook on an allocation-heavy workload.

fastpath installs its allocator hook when ``fastpath._budget`` (the compiled
core) is imported, and it stays installed for the life of the process, so
the comparison needs two processes:

* ``plain``: ``FASTPATH_NO_EXTENSIONS=1`` -- fastpath on its pure-Python twin;
  the compiled core is never imported (checked: ``fastpath.IMPLEMENTATION ==
  "python"`` and ``"fastpath._budget" not in sys.modules``);
* ``hooked``: plain ``import fastpath`` -- the compiled core, hook installed
  (checked the same way) but no budget active: the idle cost.

Both import fastpath (and so numpy), run the same ``work()`` and wait for
orders on stdin, so the batches can be interleaved -- plain, hooked, plain,
hooked, ... -- and drift on this shared machine hits both alike.  Several
processes per arm average out per-process layout luck (see :func:`run`).

``bench/run.py`` imports this and calls :func:`run`; ``python bench/memhook.py``
prints the same figures.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The worker must not import bench/_support (it imports the compiled core):
# it defines the same work() itself.
WORKER = r"""
import json, sys, time
import fastpath

def work():
    return [str(i) for i in range(200)]

print(json.dumps({"implementation": fastpath.IMPLEMENTATION,
                  "compiled_core_imported": "fastpath._budget" in sys.modules}), flush=True)
perf = time.perf_counter_ns
for line in sys.stdin:
    n = int(line)
    t0 = perf()
    for _ in range(n):
        work()
    print((perf() - t0) / n, flush=True)
"""


class Worker:
    def __init__(self, name: str, env: dict[str, str], expect: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER], cwd=ROOT, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        hello = json.loads(self._readline())
        hooked = expect == "compiled"
        if hello["implementation"] != expect or hello["compiled_core_imported"] != hooked:
            self.close()
            raise RuntimeError(f"{name} worker: expected {expect} core "
                               f"(compiled core imported: {hooked}), got {hello}")
        self.hello = hello

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker died (exit {self.proc.poll()})")
        return line

    def batch(self, n: int) -> float:
        """Run work() n times; its ns per call."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return float(self._readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
            self.proc.wait()


def _env(no_extensions: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FASTPATH_NO_EXTENSIONS"}
    if no_extensions:
        env["FASTPATH_NO_EXTENSIONS"] = "1"
    return env


def run(rounds: int = 15, calls: int = 2000, processes: int = 3) -> dict[str, Any]:
    """``rounds`` rounds; in each, every worker runs one batch of ``calls`` work() calls.

    ``processes`` workers per arm: one process's memory layout can make it a
    few per cent faster or slower than another running the very same code
    (plain vs plain differs by up to ~4 % here), so each arm is the median of
    several processes.  Within a round the workers alternate plain, hooked,
    plain, ... (the order reversed every other round); the round's figure is
    median(hooked) / median(plain) and the result the median over rounds.
    """
    workers: list[Worker] = []
    try:
        for i in range(processes):
            workers.append(Worker(f"plain-{i}", _env(True), "python"))
            workers.append(Worker(f"hooked-{i}", _env(False), "compiled"))
        for worker in workers:  # warm-up
            worker.batch(calls)
        plain_ns: list[float] = []
        hooked_ns: list[float] = []
        ratios: list[float] = []
        for r in range(rounds):
            order = workers if r % 2 == 0 else workers[::-1]
            got: dict[str, list[float]] = {"plain": [], "hooked": []}
            for worker in order:
                got[worker.name.split("-")[0]].append(worker.batch(calls))
            plain_ns += got["plain"]
            hooked_ns += got["hooked"]
            ratios.append(statistics.median(got["hooked"]) / statistics.median(got["plain"]))
    finally:
        for worker in workers:
            worker.close()
    return {
        "workload": "[str(i) for i in range(200)]",
        "rounds": rounds,
        "processes_per_arm": processes,
        "calls_per_batch": calls,
        "plain_median_ns": statistics.median(plain_ns),
        "hooked_median_ns": statistics.median(hooked_ns),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "goal_ratio": 1.05,
    }


def main() -> int:
    result = run()
    print(f"work() without the compiled core: {result['plain_median_ns']:.0f} ns/call; "
          f"with its idle allocator hook: {result['hooked_median_ns']:.0f} ns/call; "
          f"ratio {result['ratio']:.3f} (rounds {result['ratio_min']:.3f}.."
          f"{result['ratio_max']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
