"""Coroutines over the asyncio futures of the Rust layer.

``AsyncClient`` methods return coroutines, as ``async def`` methods would, so that
``asyncio.create_task`` and ``TaskGroup.create_task`` take them and the call starts when it is
awaited (or its task runs), inside the running event loop.
"""

import asyncio
import contextlib
from typing import Any, Callable


async def await_later(start: Callable[[], "asyncio.Future[Any]"]) -> Any:
    future = start()
    try:
        return await future
    finally:
        # Closed or collected while suspended (not cancelled through a task): drop the Rust
        # future all the same. A closed event loop has nothing left to cancel.
        if not future.done():
            with contextlib.suppress(RuntimeError):
                future.cancel()
