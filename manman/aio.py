"""The one place that touches asyncio: asyncpg and aiosqlite run through trio-asyncio.

`open_loop()` wraps the whole program (and each test) once; every asyncio call goes through
`call`, so a trio task never awaits an asyncio future directly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio_asyncio

T = TypeVar("T")

open_loop = trio_asyncio.open_loop


async def call(fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
    """Await the asyncio coroutine function `fn(*args, **kwargs)` from trio."""
    return await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)
