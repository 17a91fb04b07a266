import asyncio

from ordersync.service.pull import TokenBucket


def test_a_clock_moving_exactly_by_each_sleep_never_spins() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    async def take(n: int) -> None:
        bucket = TokenBucket(3.0, 1, clock=lambda: now[0], sleep=sleep)
        for _ in range(n):
            await bucket.acquire()

    asyncio.run(take(301))
    # one token up front, then one sleep of 1/3 s per token: rounding adds no extra waits
    assert len(slept) == 300
    assert abs(now[0] - 100.0) < 1e-6
