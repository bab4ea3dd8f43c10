"""Runtime helpers shared by training and inference: device, mixed precision, seeding, memory,
progress bars.  Imports nothing else of :mod:`tbx.engine` but :mod:`tbx.engine.distributed`."""

from __future__ import annotations

import os
import random
import resource
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch

from tbx.engine.distributed import DistContext
from tbx.errors import TbxError


def resolve_device(kind: str, ctx: DistContext | None = None) -> torch.device:
    """``auto | cuda | cpu`` → a device (under torchrun: this process's GPU)."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise TbxError(
                "--device cuda requested but CUDA is not available",
                fix="use --device cpu (or auto), or install a CUDA build of torch",
            )
        return torch.device("cuda", ctx.local_rank if ctx else torch.cuda.current_device())
    return torch.device("cpu")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (None: full precision).  auto → bf16 on CUDA when supported, else off."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise TbxError("--amp fp16 needs CUDA", fix="use --amp bf16 or off on CPU")
        return torch.float16
    if amp == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TbxError("this GPU does not support bf16", fix="use --amp fp16")
        return torch.bfloat16
    raise TbxError(f"unknown --amp '{amp}'", fix="use bf16, fp16, off or auto")


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """``torch.autocast`` at ``dtype``; a no-op context for full precision."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss / 1024


def use_progress_bar(progress: bool | None) -> bool:
    """An explicit choice wins; by default a bar on a terminal, none in CI or a pipe."""
    if progress is not None:
        return progress
    return sys.stdout.isatty() and not os.environ.get("CI")


class ProgressBar:
    """A rich progress bar (label, bar, n/total, elapsed, ETA, an info text); inert when disabled."""

    def __init__(self, label: str, total: int, completed: int = 0, enabled: bool = True):
        self._progress: Any = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self._progress.start()
        self._task = self._progress.add_task("run", total=total, completed=completed, info="")

    def update(self, completed: int | None = None, info: str | None = None) -> None:
        if self._progress is None:
            return
        kw: dict[str, Any] = {}
        if completed is not None:
            kw["completed"] = completed
        if info is not None:
            kw["info"] = info
        self._progress.update(self._task, **kw)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
