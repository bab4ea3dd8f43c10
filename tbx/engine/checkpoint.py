"""Checkpoints: atomic save, exact resume, safe load.

A checkpoint is a plain dict saved with ``torch.save`` through :func:`tbx.io.atomic_path` (a crash
never leaves a half-written file).  It holds everything needed to continue bit-exactly on the same
hardware: model, optimiser, LR scheduler and AMP scaler states (and the weight average if one is
kept), the position (stage, epoch, batch within the epoch, iteration), all RNG states (python,
numpy, torch CPU, CUDA) and the sampler state (seed, epoch, batch — the data order is a pure
function of these, see :class:`tbx.data.dataset.EpochBatchSampler`), plus the resolved config as a
plain dict.

Everything stored is a tensor or a builtin, so loading uses ``torch.load(weights_only=True)``: a
checkpoint file cannot execute code.  A corrupt file, a file that is not a tbx checkpoint, or a
checkpoint of another model is a :class:`TbxError`.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tbx.errors import TbxError
from tbx.io import atomic_path

FORMAT = "tbx-checkpoint"
VERSION = 1


def rng_state() -> dict[str, Any]:
    np_state: Any = np.random.get_state()
    state = {
        "python": list(_py_state_to_list(random.getstate())),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_state_to_list(st: tuple) -> list:
    version, internal, gauss = st
    return [int(version), [int(v) for v in internal], gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npst["key"].numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    model_name: str,
    config: dict[str, Any],
    stage: int,
    epoch: int,
    batch: int,
    iteration: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    sampler: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
    ema: nn.Module | None = None,
) -> Path:
    """Atomically write a checkpoint.  ``epoch``/``batch``: the position of the *next* batch to
    train (``batch == 0``: the epoch starts afresh); ``iteration``: iterations done in the stage;
    ``ema``: the weight average (``torch.optim.swa_utils.AveragedModel``), kept for resume."""
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model_name": model_name,
        "stage": stage,
        "epoch": epoch,
        "batch": batch,
        "iteration": iteration,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_state(),
        "sampler": sampler,
        "config": config,
        "extra": extra or {},
    }
    if ema is not None:
        state["ema"] = ema.state_dict()
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", expect_model: str | None = None
) -> dict[str, Any]:
    """Safely load a checkpoint (``weights_only=True``), checking it is a tbx checkpoint (of
    ``expect_model`` when given)."""
    path = Path(path)
    if not path.is_file():
        raise TbxError("checkpoint not found", path, "give a run directory or a .pt checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 — torch raises many types for a damaged file
        # torch's text for a refused pickle advises weights_only=False, which runs the file's code:
        # never repeat it
        reason = (
            "it holds Python objects that a safe load refuses"
            if "weights_only" in str(e)
            else f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'unreadable'}"
        )
        raise TbxError(
            f"cannot read checkpoint ({reason})",
            path,
            "the file is corrupt or not a tbx checkpoint; use another checkpoint "
            "(e.g. the previous epoch's) or retrain",
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise TbxError("not a tbx checkpoint", path, "give a checkpoint written by 'tbx train'")
    if expect_model is not None and state.get("model_name") != expect_model:
        raise TbxError(
            f"checkpoint is of model '{state.get('model_name')}', not '{expect_model}'",
            path,
            f"train '{expect_model}' or use a checkpoint of that model",
        )
    return state


def load_model_weights(
    model: nn.Module, state_dict: dict[str, torch.Tensor], where: str | Path, strict: bool = True
) -> None:
    """``load_state_dict`` with a clear error naming the first mismatching keys/shapes."""
    own = unwrap(model).state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if shapes or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} of another shape (e.g. {k}: {tuple(state_dict[k].shape)} vs "
                f"{tuple(own[k].shape)})"
            )
        raise TbxError(
            "checkpoint weights do not fit this model: " + "; ".join(parts),
            where,
            "use a checkpoint of the same model and config (backbone, classes)",
        )
    unwrap(model).load_state_dict(state_dict, strict=strict)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def find_checkpoint(run_or_ckpt: str | Path) -> Path:
    """A checkpoint file, or the final checkpoint of a run directory (stage 2 if present, else
    stage 1; the latest ``last.pt`` when the run did not finish)."""
    p = Path(run_or_ckpt)
    if p.is_file():
        return p
    if p.is_dir():
        for cand in (
            "stage2/final.pt",
            "stage1/final.pt",
            "stage2/last.pt",
            "stage1/last.pt",
            "final.pt",
            "last.pt",
        ):
            if (p / cand).is_file():
                return p / cand
        raise TbxError(
            "no checkpoint in this run directory",
            p,
            "train first ('tbx train … --out RUN') or give a .pt file",
        )
    raise TbxError("run directory or checkpoint not found", p, "check the path")
