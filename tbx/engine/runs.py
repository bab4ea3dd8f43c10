"""Runs are records: the rules for starting, resuming and replacing a run directory.

* A new run goes into an absent or empty folder.  An existing run needs ``resume`` (continue it)
  or ``force`` (replace it — only a folder that carries tbx's ``run`` marker); a folder of other
  files is never used.
* ``resume`` takes ``RUN/config.yaml`` as the truth: a config that differs from it (another
  model, other ``--set`` values) is refused.  Only where the run executes may change
  (:data:`RESUME_MAY_DIFFER`).  ``config.yaml`` is written once, when the run starts.
* Everything is checked before a folder is created or an image decoded (:func:`preflight`): the
  config ranges, the stage-II ``trainable`` prefixes against the model's modules, and that every
  image of each stage's annotation file exists.
* Resuming removes the temporary files a killed process left (e.g. a half-saved checkpoint).
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tbx.config import check_fields, dump_yaml, load_config, to_dict
from tbx.data.dataset import preflight_images
from tbx.engine.schedule import StageConfig, TrainConfig
from tbx.errors import TbxError
from tbx.io import atomic_write_text, check_replaceable, clean_stale_tmp, mark_output, output_kind

RUN_KIND = "run"
CONFIG_NAME = "config.yaml"

# Keys that may differ between a run's record and the config of a resume: where and how fast it
# runs, not what it computes.
RESUME_MAY_DIFFER = frozenset({"data.root", "data.workers", "data.prefetch_factor", "device", "log_every"})


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def is_run(out: Path) -> bool:
    """``out`` holds a run (its marker, or a ``config.yaml`` of a run made before markers)."""
    return output_kind(out) == RUN_KIND or (out / CONFIG_NAME).is_file()


def recorded_config(out: str | Path) -> TrainConfig:
    """The run's ``config.yaml`` (the truth for ``--resume``)."""
    path = Path(out) / CONFIG_NAME
    if not path.is_file():
        raise TbxError(
            "nothing to resume: no run in this folder (no config.yaml)",
            out,
            "train without --resume, or point --out at an interrupted run",
        )
    return load_config(TrainConfig, path)


def check_same_as_record(out: Path, cfg: TrainConfig) -> None:
    """Refuse a resume whose config differs from the run's record (first differing key named)."""
    have, want = _flat(to_dict(recorded_config(out))), _flat(to_dict(cfg))
    for key in sorted(set(have) | set(want)):
        if key in RESUME_MAY_DIFFER or have.get(key) == want.get(key):
            continue
        if key == "model_name":
            raise TbxError(
                f"the run is of model '{have.get(key)}', not '{want.get(key)}'",
                out,
                f"resume with the run's model ({have.get(key)}) or train a new run elsewhere",
            )
        raise TbxError(
            f"--resume continues the run as recorded, but '{key}' differs (run: "
            f"{have.get(key)!r}, given: {want.get(key)!r})",
            out / CONFIG_NAME,
            "drop that --set / --config, or start a new run (another --out, or --force)",
        )


def check_trainable(cfg: TrainConfig, builder: Callable[[TrainConfig], nn.Module]) -> None:
    """Every stage-II ``trainable`` prefix names a module of the model (built on the meta device:
    no memory, no weights loaded); ``stage1.trainable`` is not a setting (stage I trains the
    whole detector), so any value other than the default is refused."""
    if cfg.stage1.trainable != StageConfig().trainable:
        raise TbxError(
            "stage1.trainable is not used (stage I trains the whole detector)",
            fix="drop --set stage1.trainable=… (stage2.trainable picks the stage-II modules)",
        )
    if cfg.stage2.epochs == 0:
        return
    probe = copy.deepcopy(cfg)
    probe.model.pretrained = "none"
    with torch.device("meta"):
        model = builder(probe)
    names = [n for n, _ in model.named_parameters()]
    for p in cfg.stage2.trainable:
        if not any(n == p or n.startswith(p + ".") for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise TbxError(
                f"stage2.trainable: '{p}' is not a module of {cfg.model_name}",
                fix="use module prefixes of the model, e.g. " + ", ".join(tops[:8]),
            )


def preflight(cfg: TrainConfig, stages: list[int], builder: Callable[[TrainConfig], nn.Module]) -> None:
    """Everything that can be checked before work: config ranges, trainable prefixes, images."""
    check_fields(cfg)
    check_trainable(cfg, builder)
    anns = [cfg.data.stage1_ann if s == 1 else cfg.data.stage2_ann for s in stages if cfg.stage(s).epochs > 0]
    if cfg.val_ann:
        anns.append(cfg.val_ann)
    for ann in dict.fromkeys(anns):
        preflight_images(cfg.data.root, ann, strict_labels=False)


def start_run(
    out: str | Path,
    cfg: TrainConfig,
    stages: list[int],
    *,
    resume: bool,
    force: bool,
    builder: Callable[[TrainConfig], nn.Module],
) -> None:
    """Apply the rules of the module docstring; on success ``out`` exists, carries the run marker
    and (for a new run) holds ``config.yaml``.  Nothing is created or changed when a check fails."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TbxError("--out names a file, not a run folder", out, "choose a folder for the run")
    if resume and force:
        raise TbxError(
            "--resume and --force exclude each other", out, "--resume continues the run, --force replaces it"
        )
    existing = out.is_dir() and any(out.iterdir())
    if resume:
        if not existing or not is_run(out):
            raise TbxError(
                "nothing to resume: no run in this folder",
                out,
                "train without --resume, or point --out at an interrupted run",
            )
        check_same_as_record(out, cfg)
        preflight(cfg, stages, builder)
        clean_stale_tmp(out)
        if output_kind(out) is None:
            mark_output(out, RUN_KIND)
        return
    if existing:
        if not is_run(out):
            check_replaceable(out, RUN_KIND)  # not tbx's: refused with the ownership message
        if not force:
            raise TbxError(
                "a run already exists in this folder",
                out,
                "pass --resume to continue it or --force to replace it (or choose another --out)",
            )
        if output_kind(out) is None:
            raise TbxError(
                "the folder holds a run made before tbx marked its outputs; --force "
                "replaces only marked runs",
                out,
                "delete it yourself or choose another --out",
            )
        check_replaceable(out, RUN_KIND)
    preflight(cfg, stages, builder)
    if existing:
        shutil.rmtree(out)
    mark_output(out, RUN_KIND)
    atomic_write_text(out / CONFIG_NAME, dump_yaml(cfg))
