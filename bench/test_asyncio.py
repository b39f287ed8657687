"""asyncio: ``await budget.enforce_async(af)`` against ``async with asyncio.timeout()``
around the same ``await af()`` (goal 16), compiled core and twin.

Each round runs one event-loop batch of ``N`` awaits; ``inner=N`` makes
``bench/run.py`` divide by it.  ``af`` returns without suspending, so every
figure is the wrapper's own cost.
"""

from __future__ import annotations

import asyncio

N = 200


async def af() -> None:
    return None


def _bench(benchmark, key: str, impl: str, batch) -> None:
    loop = asyncio.new_event_loop()
    try:
        benchmark.group = "asyncio"
        benchmark.extra_info.update(key=key, impl=impl, inner=N)
        benchmark(lambda: loop.run_until_complete(batch()))
    finally:
        loop.close()


def test_await_bare(benchmark):
    async def batch() -> None:
        for _ in range(N):
            await af()

    _bench(benchmark, "await_af", "reference", batch)


def test_await_under_asyncio_timeout(benchmark):
    async def batch() -> None:
        for _ in range(N):
            async with asyncio.timeout(1.0):
                await af()

    _bench(benchmark, "await_af", "asyncio.timeout", batch)


def test_enforce_async(benchmark, fp):
    c = fp.ExecutionConstraints(1_000)

    async def batch() -> None:
        for _ in range(N):
            await c.create_budget().enforce_async(af)

    _bench(benchmark, "await_af", fp.kind, batch)
