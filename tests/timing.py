"""One factor for every timing of the suite: AETHER_TESTS_TIMING (1 unless set).

A machine slower than the ones the suite was written on, or one busy with something else, can
make any wait or threshold too short. Every timeout, deadline and time bound in the tests is
``scaled``: AETHER_TESTS_TIMING=3 gives them all three times as long. Bounds that a test
asserts as the product's promise (a close within a second of a token's expiry, say) are
scaled too, and say so where they are.
"""

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

FACTOR = float(os.environ.get("AETHER_TESTS_TIMING", "1"))
if FACTOR <= 0:
    raise ValueError(f"AETHER_TESTS_TIMING must be a positive number, got {FACTOR}")


def scaled(seconds: float) -> float:
    return seconds * FACTOR


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a state no event announces (a bridge going down), checking every 10 ms, for
    ``timeout`` seconds (scaled)."""
    async with asyncio.timeout(scaled(timeout)):
        while not condition():
            await asyncio.sleep(0.01)


async def until_answer(read: Callable[[], Awaitable[T]], condition: Callable[[T], bool], timeout: float = 10.0) -> T:
    """Read until the answer meets ``condition``, for state that changes on a timer (scaled timeout)."""
    async with asyncio.timeout(scaled(timeout)):
        while not condition(answer := await read()):
            await asyncio.sleep(0.05)
    return answer
