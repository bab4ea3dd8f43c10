"""The model registry: a plain table ``name → builder(cfg: ModelConfig) -> Detector``.

    from tbx.models.config import ModelConfig
    from tbx.models.registry import build
    model = build("symformer_retinanet", ModelConfig(backbone="resnet50", pretrained="imagenet"))

To add a model, write its builder in its own module, import it here, add one entry to
:data:`MODELS` and one to :data:`tbx.models.config.SECTIONS` (the config sections it reads).
"""

from __future__ import annotations

from collections.abc import Callable

from tbx.errors import TbxError
from tbx.models.base import Detector
from tbx.models.config import SECTIONS, ModelConfig, check_sections
from tbx.models.deformable_detr import build_deformable_detr, build_symformer_deformable_detr
from tbx.models.retinanet import build_retinanet, build_symformer_retinanet
from tbx.models.tv_detectors import build_faster_rcnn, build_fcos, build_ssd

Builder = Callable[[ModelConfig], Detector]

MODELS: dict[str, Builder] = {
    "symformer_retinanet": build_symformer_retinanet,  # the paper's model (docs/models.md §2)
    "retinanet": build_retinanet,
    # Deformable DETR and SymFormer w/ Deformable DETR (docs/models.md §3)
    "deformable_detr": build_deformable_detr,
    "symformer_deformable_detr": build_symformer_deformable_detr,
    # torchvision-based baselines with the classification head (docs/models.md §3)
    "faster_rcnn": build_faster_rcnn,
    "fcos": build_fcos,
    "ssd": build_ssd,
}
DEFAULT_MODEL = "symformer_retinanet"
assert set(MODELS) == set(SECTIONS), "every model names the config sections it reads"


def build(name: str, cfg: ModelConfig | None = None) -> Detector:
    """Build model ``name`` from ``cfg`` (defaults: :class:`ModelConfig`)."""
    if name not in MODELS:
        raise TbxError(f"unknown model {name!r}", fix=f"use one of {sorted(MODELS)} (see `tbx models list`)")
    cfg = check_sections(name, cfg or ModelConfig())
    model = MODELS[name](cfg)
    model.norm_eval = cfg.norm_eval
    model.cls_loss_weights = cfg.cls_loss_weights
    if cfg.cls_head_init != "paper":
        model.cls_head.init_weights(cfg.cls_head_init)
    return model


def describe(name: str) -> str:
    """First line of the builder's docstring."""
    doc = (MODELS[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
