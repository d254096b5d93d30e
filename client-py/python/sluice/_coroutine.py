"""Coroutines over the asyncio futures of the Rust layer.

``AsyncClient`` methods return coroutines, as ``async def`` methods would, so that
``asyncio.create_task`` and ``TaskGroup.create_task`` take them and the call starts when it is
awaited (or its task runs), inside the running event loop.
"""

from typing import Any, Awaitable, Callable


async def await_later(start: Callable[[], Awaitable[Any]]) -> Any:
    return await start()
