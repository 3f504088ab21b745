"""An async iterator the client feeds: items in order, then an end (or an error) that every
later iteration sees too."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class _End:
    """The end of a feed; with an error, iterations raise it instead of stopping."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Feed(Generic[T]):
    def __init__(self) -> None:
        self._queue: asyncio.Queue[T | _End] = asyncio.Queue()
        self._ended = False

    def put(self, item: T) -> None:
        if not self._ended:
            self._queue.put_nowait(item)

    def end(self, error: BaseException | None = None) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(_End(error))

    @property
    def ended(self) -> bool:
        return self._ended

    def __aiter__(self) -> Feed[T]:
        return self

    async def __anext__(self) -> T:
        item = await self._queue.get()
        if isinstance(item, _End):
            # Left for the next iteration, which ends the same way.
            self._queue.put_nowait(item)
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item
