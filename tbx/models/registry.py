"""The model registry: a plain dict ``name → builder(cfg: ModelConfig) -> Detector``.

    from tbx.models.registry import ModelConfig, build
    model = build("symformer_retinanet", ModelConfig(backbone="resnet50", pretrained="imagenet"))

To add a model, write its builder in its own module and add one entry to :data:`MODELS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tbx.config import bounded
from tbx.errors import TbxError
from tbx.models.base import Detector


@dataclass
class ModelConfig:
    """What a builder needs (fields a model does not use are ignored by its builder).

    Attributes:
        backbone: ``resnet18 | resnet34 | resnet50 | resnet101`` (``vgg16`` for SSD).
        pretrained: ``"imagenet"`` (torchvision weights, cached in ``$TORCH_HOME``), ``"none"``
            (from scratch) or a path to a backbone ``state_dict`` / tbx checkpoint.
        num_classes: box classes (2: active TB, latent TB).
        input_size: the network input side in pixels (SPEC §2.1: 512).
        pos_encoding: SymFormer positional-encoding ablation (SPEC §2.3).
        attention: ``symmetric`` (SymAttention) or ``deformable`` (no mirroring), SPEC §2.3.
        num_queries / num_encoder_layers / num_decoder_layers / num_feature_levels: Deformable DETR
            (SPEC §3: 300, 6, 6, 4).
        width: RetinaNet family — FPN / head / SAS channels (SPEC §2.1: 256). Narrower widths are
            for the CPU ``tiny`` preset only; the paper's models keep 256.
        cls_channels: classification-head width (SPEC §2.6: 512).
        anchor_scale: RetinaNet anchor octave base scale (SPEC §2.4: 4); smaller for presets that
            shrink the input and hence the lesions.
        nms_class_agnostic: RetinaNet family — NMS across active/latent boxes (paper: class-wise).
        box_loss: RetinaNet family — ``"l1"`` on the encoded deltas (the paper, SPEC §2.4) or
            ``"giou"`` on the decoded boxes (mmdetection's ``reg_decoded_bbox`` + ``GIoULoss``).
        box_loss_weight: weight of the box loss (paper: 1 with L1).
        cls_backbone: RetinaNet family — the classification head on its own ResNet, forked from the
            detector's when stage II starts (paper: False, one shared backbone).  For from-scratch
            presets whose stage II must train backbone features without moving the detector.
        cls_head_init: classification-head initialisation, ``"paper"`` (torch's default, as the
            paper's code) or ``"kaiming"`` (He normal; see :mod:`tbx.models.cls_head`).
        head_init: RetinaNet family — the box head's conv towers, ``"paper"`` (N(0, 0.01), SPEC §2.4)
            or ``"kaiming"`` (He normal; the output convs keep N(0, 0.01) and the prior bias).
        cls_input_size: with ``cls_backbone``, the classification ResNet sees the input downscaled
            to this side when ``input_size`` is larger (0: never).  A cheaper stage II for CPU
            presets whose detector needs more pixels than the image label does.
        norm_eval: keep backbone BatchNorm in eval mode (SPEC §2.1); False only for from-scratch
            CPU presets (see :attr:`tbx.models.base.Detector.norm_eval`).
    """

    backbone: str = "resnet50"
    pretrained: str = "imagenet"
    num_classes: int = bounded(2, ge=1)
    input_size: int = bounded(512, ge=32)
    pos_encoding: Literal["none", "sine", "relative", "spe_no_stn", "spe", "spe_left_to_right"] = "spe"
    attention: Literal["symmetric", "deformable"] = "symmetric"
    num_queries: int = bounded(300, ge=1)
    num_encoder_layers: int = bounded(6, ge=0)
    num_decoder_layers: int = bounded(6, ge=1)
    num_feature_levels: int = bounded(4, ge=1)
    width: int = bounded(256, ge=1)
    cls_channels: int = bounded(512, ge=1)
    anchor_scale: float = bounded(4.0, gt=0)
    nms_class_agnostic: bool = False
    box_loss: Literal["l1", "giou"] = "l1"
    box_loss_weight: float = bounded(1.0, ge=0)
    cls_backbone: bool = False
    cls_input_size: int = bounded(0, ge=0)
    cls_head_init: Literal["paper", "kaiming"] = "paper"
    head_init: Literal["paper", "kaiming"] = "paper"
    norm_eval: bool = True


Builder = Callable[[ModelConfig], Detector]


# Models whose module failed to import: name → the ImportError (shown by `tbx models list`;
# `build` re-raises it).  A broken optional module must not take the whole registry down.
UNAVAILABLE: dict[str, ImportError] = {}

# module → {registry name: builder function name}; add a model by adding an entry here.
_OPTIONAL = {
    # Deformable DETR and SymFormer w/ Deformable DETR (SPEC §3)
    "tbx.models.deformable_detr": {"deformable_detr": "build_deformable_detr",
                                   "symformer_deformable_detr": "build_symformer_deformable_detr"},
    # torchvision-based baselines with the classification head (SPEC §3)
    "tbx.models.tv_detectors": {"faster_rcnn": "build_faster_rcnn", "fcos": "build_fcos",
                                "ssd": "build_ssd"},
}


def _registry() -> dict[str, Builder]:
    import importlib

    from tbx.models.retinanet import build_retinanet, build_symformer_retinanet

    models: dict[str, Builder] = {
        "symformer_retinanet": build_symformer_retinanet,
        "retinanet": build_retinanet,
    }
    for module_name, entries in _OPTIONAL.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            if getattr(e, "name", None) == module_name:  # module not written (yet)
                continue
            for name in entries:
                UNAVAILABLE[name] = e
            continue
        for name, fn in entries.items():
            if hasattr(module, fn):
                models[name] = getattr(module, fn)
    return models


MODELS: dict[str, Builder] = _registry()
DEFAULT_MODEL = "symformer_retinanet"


def build(name: str, cfg: ModelConfig | None = None) -> Detector:
    """Build model ``name`` from ``cfg`` (defaults: :class:`ModelConfig`)."""
    if name in UNAVAILABLE:
        raise UNAVAILABLE[name]
    if name not in MODELS:
        raise TbxError(f"unknown model {name!r}", fix=f"use one of {sorted(MODELS)} (see `tbx models list`)")
    cfg = cfg or ModelConfig()
    model = MODELS[name](cfg)
    model.norm_eval = cfg.norm_eval
    if cfg.cls_head_init != "paper":
        model.cls_head.init_weights(cfg.cls_head_init)
    return model


def describe(name: str) -> str:
    """First line of the builder's docstring."""
    doc = (MODELS[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
