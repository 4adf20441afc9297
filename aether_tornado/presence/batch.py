"""Calls made in one event-loop iteration, served together by one call with all their items.

A burst of handshakes (a deploy's reconnects) arrives in a few iterations; each would make
its own Redis calls. Batched, a burst costs a few calls instead of one or more per handshake.
"""

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class IterationBatch(Generic[Item, Result]):
    def __init__(self, run: Callable[[list[Item]], Awaitable[list[Result]]]) -> None:
        """``run`` takes the items of one iteration and returns their results in the same order."""
        self._run = run
        self._items: list[Item] = []
        self._results: asyncio.Future[list[Result]] | None = None
        self._running: set[asyncio.Task[list[Result]]] = set()

    async def __call__(self, item: Item) -> Result:
        """The result for ``item``, or what ``run`` raised for the whole batch."""
        if self._results is None:
            loop = asyncio.get_running_loop()
            self._results = loop.create_future()
            loop.call_soon(self._start)
        index = len(self._items)
        self._items.append(item)
        return (await asyncio.shield(self._results))[index]

    def _start(self) -> None:
        items, results, self._items, self._results = self._items, self._results, [], None
        assert results is not None
        task = asyncio.ensure_future(self._run(items))
        self._running.add(task)
        task.add_done_callback(functools.partial(self._done, results))

    def _done(self, results: asyncio.Future[list[Result]], task: asyncio.Task[list[Result]]) -> None:
        self._running.discard(task)
        if task.cancelled():
            results.cancel()
        elif (error := task.exception()) is not None:
            results.set_exception(error)
        else:
            results.set_result(task.result())
