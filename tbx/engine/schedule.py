"""The two training stages (docs/models.md §2.7): typed training config, presets, optimiser and LR schedule.

Stage I trains the detector on the TB images with boxes (``TBX11K_trainval_only_tb.json``);
stage II loads the stage-I weights, freezes everything except the classification head and trains
it on every train+val CXR (``all_trainval.json``).  Both stages default to the paper schedule:
SGD lr 0.001, momentum 0.9, wd 1e-4, linear warm-up over 500 iterations from ratio 0.001, batch 8,
×0.1 steps at epochs 16/22 (stage I, 24 epochs) and 8/11 (stage II, 12 epochs).  DETR-family
presets use AdamW 2e-4, backbone lr ×0.1, grad-clip 0.1, 50 epochs with a drop at 40 (docs/models.md §3).

Presets are YAML files in ``tbx/configs/`` (the repo's ``configs/`` points there); a preset name
or any YAML path is loaded with :func:`load_train_config` plus ``--set key=value`` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tbx.config import PROBABILITY, bounded, check_fields, deep_merge, load_config, read_yaml
from tbx.errors import TbxError
from tbx.models.config import ModelConfig, check_sections

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# `tbx train symformer` → the default model (docs/models.md §2).
MODEL_ALIASES = {
    "symformer": "symformer_retinanet",
    "symformer_detr": "symformer_deformable_detr",
    "detr": "deformable_detr",
    "symformer_p2t": "symformer_retinanet",
}
# Aliases that also pick a preset other than the model's default (`tbx train symformer_p2t`).
ALIAS_PRESETS = {"symformer_p2t": "symformer_retinanet_p2t"}
# The paper preset of each model (docs/models.md §2.7, §3).
DEFAULT_PRESETS = {
    "symformer_retinanet": "symformer_retinanet_r50",
    "retinanet": "retinanet_r50",
    "faster_rcnn": "faster_rcnn_r50",
    "fcos": "fcos_r50",
    "ssd": "ssd_vgg16",
    "deformable_detr": "deformable_detr_r50",
    "symformer_deformable_detr": "symformer_deformable_detr_r50",
}


@dataclass
class DataConfig:
    root: str = ""
    # docs/models.md §2.7: stage I on TB images with boxes, stage II on all train+val CXRs (extras included).
    stage1_ann: str = "annotations/json/TBX11K_trainval_only_tb.json"
    stage2_ann: str = "annotations/json/all_trainval.json"
    flip_prob: float = bounded(0.5, **PROBABILITY)
    workers: int = bounded(4, ge=0)  # DataLoader worker processes per training process
    prefetch_factor: int = bounded(4, ge=1)


@dataclass
class StageConfig:
    epochs: int = bounded(24, ge=0)
    batch_size: int = bounded(8, ge=1)  # total over all processes (each takes batch_size / world_size)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = bounded(0.001, gt=0)
    momentum: float = bounded(0.9, **PROBABILITY)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = bounded(1e-4, ge=0)
    warmup_iters: int = bounded(500, ge=0)
    warmup_ratio: float = bounded(0.001, gt=0, le=1)
    lr_steps: list[int] = field(default_factory=lambda: [16, 22])  # epochs where lr ×= lr_gamma
    lr_gamma: float = bounded(0.1, gt=0)
    grad_clip: float | None = None  # max L2 norm of all gradients
    backbone_lr_mult: float = bounded(1.0, ge=0)
    # Exponential moving average of the weights (and BN statistics), updated after every step:
    # ema ← decay·ema + (1 − decay)·weights; 0 = off (the paper).  With it, the stage's final/best
    # checkpoints, its validation and the next stage use the average; last.pt keeps both for resume.
    ema_decay: float = bounded(0.0, ge=0, lt=1)
    init_from: str | None = None  # weights to start from (stage 2: the stage-1 final by default)
    # stage 2: module prefixes that train (docs/models.md §2.7: the classification head only); from-scratch
    # CPU presets may add "backbone" (it never saw ImageNet, so its frozen features are weak)
    trainable: list[str] = field(default_factory=lambda: ["cls_head"])
    # Loss weights of the stage; None = the paper (stage I: detection 1, image classification 0;
    # stage II: detection 0, classification 1).  Both > 0 trains jointly: the detector losses on
    # every image of the stage's annotation file (images without boxes are negatives) plus the
    # docs/models.md §2.6 cross-entropy — e.g. a stage II that trains the backbone keeps its detector in tune
    # (list the detector modules in `trainable` then).  RetinaNet models only.
    detection_weight: float | None = None
    image_cls_weight: float | None = None

    def loss_weights(self, stage: int) -> tuple[float, float]:
        """``(detection, image classification)`` weights of this stage, defaults resolved."""
        det = self.detection_weight if self.detection_weight is not None else float(stage == 1)
        cls = self.image_cls_weight if self.image_cls_weight is not None else float(stage == 2)
        return float(det), float(cls)


def _stage2_default() -> StageConfig:
    return StageConfig(epochs=12, lr_steps=[8, 11])  # docs/models.md §2.7


@dataclass
class TrainConfig:
    model_name: str = "symformer_retinanet"
    # backbone, pretrained, input_size (the data pipeline resizes to fit it, docs/models.md §2.7),
    # family sections
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=_stage2_default)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on CUDA, off on CPU
    channels_last: bool = True  # NHWC activations (faster convs on cuDNN and CPU oneDNN)
    seed: int = 0
    ckpt_every_iters: int = bounded(0, ge=0)  # also checkpoint every N iterations (0: once per epoch + end)
    log_every: int = bounded(20, ge=1)
    val_ann: str | None = None  # validate every val_every epochs on this annotation file
    val_every: int = bounded(1, ge=1)
    val_batch_size: int = bounded(8, ge=1)

    def stage(self, s: int) -> StageConfig:
        return self.stage1 if s == 1 else self.stage2


def canonical_model_name(name: str) -> str:
    return MODEL_ALIASES.get(name, name)


def preset_path(name_or_path: str | Path) -> Path:
    """A YAML file path, or the preset of that name in ``tbx/configs/``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    stem = p.name.removesuffix(".yaml")
    cand = CONFIG_DIR / f"{stem}.yaml"
    if cand.is_file() and p.parent == Path("."):
        return cand
    if p.is_file():
        return p
    raise TbxError(
        f"no config file or preset named '{name_or_path}'",
        fix="use one of: " + ", ".join(list_presets()) + " (or a path to a YAML file)",
    )


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_train_config(
    model: str | None = None, config: str | Path | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """Resolve the training config: preset/YAML ← ``--set`` overrides; the MODEL argument (aliases
    allowed) picks the paper preset when no config is given and always names the model."""
    name = canonical_model_name(model) if model else None
    if config is None:
        config = ALIAS_PRESETS.get(model or "") or DEFAULT_PRESETS.get(name or "symformer_retinanet")
        if config is None:
            raise TbxError(
                f"unknown model '{model}'",
                fix="use one of: " + ", ".join(sorted(set(DEFAULT_PRESETS) | set(MODEL_ALIASES))),
            )
    data = resolve_preset(config)
    cfg = load_config(TrainConfig, None, overrides, base=data)
    if name:
        cfg.model_name = name
    cfg.model_name = canonical_model_name(cfg.model_name)
    validate(cfg)
    cfg.model = check_sections(cfg.model_name, cfg.model)  # a section the model ignores: an error
    return cfg


def resolve_preset(config: str | Path, _depth: int = 0) -> dict[str, Any]:
    """A preset/YAML as a mapping; ``base: OTHER`` inherits from another preset (recursively)."""
    if _depth > 8:
        raise TbxError("preset 'base:' chain too deep (a cycle?)", config)
    data = read_yaml(preset_path(config))
    base = data.pop("base", None)
    return deep_merge(resolve_preset(base, _depth + 1), data) if base else data


def validate(cfg: TrainConfig) -> None:
    """Checks across fields (the value ranges of single fields are their ``bounded`` metadata,
    checked by :func:`tbx.config.check_fields`)."""
    check_fields(cfg)
    for s in (1, 2):
        sc = cfg.stage(s)
        if sorted(sc.lr_steps) != list(sc.lr_steps):
            raise TbxError(f"stage{s}.lr_steps must be increasing, got {sc.lr_steps}")


# --------------------------------------------------------------------------------------------
# Optimiser and LR schedule


def param_groups(model: nn.Module, sc: StageConfig) -> list[dict[str, Any]]:
    """Trainable parameters, split into backbone (lr × ``backbone_lr_mult``; also a RetinaNet's
    ``cls_backbone``) and the rest.

    A model may name further reduced-lr parameters in ``low_lr_keys`` (Deformable DETR: the
    sampling-offset and reference-point Linears, as the official recipe does).
    """
    low_keys = tuple(getattr(model, "low_lr_keys", ()))
    backbone: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        low = name.startswith(("backbone.", "cls_backbone.")) or any(k in name for k in low_keys)
        (backbone if low else other).append(p)
    groups = []
    if other:
        groups.append({"params": other, "lr_mult": 1.0, "lr": sc.lr})
    if backbone:
        groups.append({"params": backbone, "lr_mult": sc.backbone_lr_mult, "lr": sc.lr * sc.backbone_lr_mult})
    if not groups:
        raise TbxError("the model has no trainable parameters in this stage")
    return groups


def build_optimizer(model: nn.Module, sc: StageConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over :func:`param_groups`, with fused kernels (one pass over all parameters;
    several times faster than the for-each version on CPU, see benchmarks/RESULTS.md)."""
    groups = param_groups(model, sc)
    if sc.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=sc.lr, momentum=sc.momentum, weight_decay=sc.weight_decay, fused=True
        )
    return torch.optim.AdamW(
        groups, lr=sc.lr, betas=(sc.betas[0], sc.betas[1]), weight_decay=sc.weight_decay, fused=True
    )


def lr_factor(iteration: int, iters_per_epoch: int, sc: StageConfig) -> float:
    """Multiplier of the base lr at a (0-based, within-stage) iteration: linear warm-up from
    ``warmup_ratio`` over ``warmup_iters`` (mmdet's formula), then ×``lr_gamma`` at each step epoch."""
    epoch = iteration // max(1, iters_per_epoch)
    f = sc.lr_gamma ** sum(1 for s in sc.lr_steps if epoch >= s)
    if sc.warmup_iters > 0 and iteration < sc.warmup_iters:
        k = (1 - iteration / sc.warmup_iters) * (1 - sc.warmup_ratio)
        f *= 1 - k
    return f


def build_scheduler(
    optimizer: torch.optim.Optimizer, iters_per_epoch: int, sc: StageConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration scheduler (step it after every optimiser step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, iters_per_epoch, sc))
