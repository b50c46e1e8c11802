"""One event loop on a daemon thread for the whole process, where synchronous code runs its grpc.aio work:
grpc.aio keeps process-wide state bound to the loop it first ran on, so the sync `Client` and the servers
tests start from synchronous code (`launch.ServerThread`) all share this one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's background loop, started on first use."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="seqserve-loop", daemon=True).start()
    return _loop


def run_on_loop(coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
    """Run a coroutine on the background loop from synchronous code and return its result."""
    loop = background_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coroutine.close()
        raise RuntimeError(
            "a synchronous seqserve call inside the client's own event loop would wait on itself: "
            "in async code use seqserve.AsyncClient"
        )
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout_s)
