"""Worker processes that never outlive their parent.

``kill -9`` of a command leaves its ``ProcessPoolExecutor`` workers orphaned (nothing runs in the
parent to stop them); :func:`init_worker` — the initializer of every pool tbx starts — makes each
worker exit as soon as its parent is gone, and leaves Ctrl-C to the parent (which stops the pool
and removes its temporary files).  DataLoader workers have the same watchdog built into torch.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

POLL_S = 0.5


def _watch(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)  # parent gone (killed): stop now, whatever the task
        time.sleep(POLL_S)


def init_worker(then: Callable[..., Any] | None = None, *args: Any) -> None:
    """Pool initializer: ignore SIGINT (the parent handles it), exit when the parent dies, then
    run ``then(*args)`` (the pool's own initializer, if any)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch, args=(os.getppid(),), daemon=True, name="tbx-parent-watch").start()
    if then is not None:
        then(*args)


def stop_pool(pool: Any) -> None:
    """Stop a ``ProcessPoolExecutor`` at once (on Ctrl-C or an error): cancel what has not started
    and terminate the workers, instead of waiting for every queued task as its ``__exit__`` does."""
    procs = list(getattr(pool, "_processes", {}).values())  # the executor has no public handle
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
