"""What a model builder needs: common keys plus one section per model family.

    model:                      # every model (the classification head included)
      backbone: resnet50
      pretrained: imagenet
      retinanet: {width: 64}    # RetinaNet family only (retinanet, symformer_retinanet)
      symformer: {pos_encoding: spe}   # SymFormer models only
      detr: {num_queries: 300}  # Deformable DETR family only

A section the chosen model does not read is an error (:func:`check_sections`), so a config cannot
carry a knob that silently does nothing.  This module imports no model code: loading a config
stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from tbx.config import bounded
from tbx.errors import TbxError

HeadInit = Literal["paper", "kaiming"]
PosEncoding = Literal["none", "sine", "relative", "spe_no_stn", "spe", "spe_left_to_right"]
Attention = Literal["symmetric", "deformable"]
# docs/models.md §2.6: cross-entropy class weights for healthy, sick, TB.
CLS_LOSS_WEIGHTS = (1.0, 1.0, 4.0)


@dataclass
class RetinaNetConfig:
    """``model.retinanet``: the RetinaNet family (docs/models.md §2.1, §2.4).

    Attributes:
        width: FPN / head / SAS channels (docs/models.md §2.1: 256).  Narrower widths are for the CPU
            ``tiny`` preset only; the paper's models keep 256.
        anchor_scale: anchor octave base scale (docs/models.md §2.4: 4); smaller for presets that shrink the
            input and hence the lesions.
        nms_class_agnostic: NMS across active/latent boxes (paper: class-wise).
        box_loss: ``"l1"`` on the encoded deltas (the paper, docs/models.md §2.4) or ``"giou"`` on the decoded
            boxes (mmdetection's ``reg_decoded_bbox`` + ``GIoULoss``).
        box_loss_weight: weight of the box loss (paper: 1 with L1).
        cls_backbone: the classification head on its own ResNet, forked from the detector's when
            stage II starts (paper: False, one shared backbone).  For from-scratch presets whose
            stage II must train backbone features without moving the detector.
        cls_input_size: with ``cls_backbone``, the classification ResNet sees the input downscaled
            to this side when ``input_size`` is larger (0: never).
        head_init: the box head's conv towers, ``"paper"`` (N(0, 0.01), docs/models.md §2.4) or ``"kaiming"``
            (He normal; the output convs keep N(0, 0.01) and the prior bias).
    """

    width: int = bounded(256, ge=1)
    anchor_scale: float = bounded(4.0, gt=0)
    nms_class_agnostic: bool = False
    box_loss: Literal["l1", "giou"] = "l1"
    box_loss_weight: float = bounded(1.0, ge=0)
    cls_backbone: bool = False
    cls_input_size: int = bounded(0, ge=0)
    head_init: HeadInit = "paper"


@dataclass
class SymFormerConfig:
    """``model.symformer``: the SymFormer ablation switches (docs/models.md §2.3)."""

    pos_encoding: PosEncoding = "spe"
    attention: Attention = "symmetric"


@dataclass
class DetrConfig:
    """``model.detr``: Deformable DETR (docs/models.md §3: 300 queries, 6 + 6 layers, 4 feature levels)."""

    num_queries: int = bounded(300, ge=1)
    num_encoder_layers: int = bounded(6, ge=0)
    num_decoder_layers: int = bounded(6, ge=1)
    num_feature_levels: int = bounded(4, ge=1)


@dataclass
class ModelConfig:
    """The ``model:`` section.

    Attributes:
        backbone: ``resnet18 | resnet34 | resnet50 | resnet101`` (``vgg16`` for SSD); the RetinaNet
            family also ``p2t_small`` (:mod:`tbx.models.p2t`, docs/models.md §3.1).
        pretrained: ``"imagenet"`` (torchvision weights, cached in ``$TORCH_HOME``), ``"none"``
            (from scratch) or a path to a backbone ``state_dict`` / tbx checkpoint.
        num_classes: box classes (2: active TB, latent TB).
        input_size: the network input side in pixels (docs/models.md §2.1: 512).
        cls_channels: classification-head width (docs/models.md §2.6: 512).
        cls_head_init: classification-head initialisation, ``"paper"`` (torch's default, as the
            paper's code) or ``"kaiming"`` (He normal; see :mod:`tbx.models.cls_head`).
        cls_loss_weights: the classification cross-entropy's class weights (healthy, sick, TB);
            docs/models.md §2.6: ``(1, 1, 4)``, set for TBX11K's TB share of train+val (≈ 9.5 %).
            A training set with a much larger TB share (the demo's synthetic one: ≈ 37 %) shifts
            the arg-max towards TB with these weights; see differences.md §D.13.
        norm_eval: keep backbone BatchNorm in eval mode (docs/models.md §2.1); False only for from-scratch
            CPU presets (see :attr:`tbx.models.base.Detector.norm_eval`).
        retinanet / symformer / detr: the family sections (None: not given → their defaults for a
            model that reads them; an error for one that does not).
    """

    backbone: str = "resnet50"
    pretrained: str = "imagenet"
    num_classes: int = bounded(2, ge=1)
    input_size: int = bounded(512, ge=32)
    cls_channels: int = bounded(512, ge=1)
    cls_head_init: HeadInit = "paper"
    cls_loss_weights: tuple[float, float, float] = bounded(CLS_LOSS_WEIGHTS, gt=0)
    norm_eval: bool = True
    retinanet: RetinaNetConfig | None = None
    symformer: SymFormerConfig | None = None
    detr: DetrConfig | None = None


# The family sections each model reads (a model missing here reads none).
SECTIONS: dict[str, tuple[str, ...]] = {
    "retinanet": ("retinanet",),
    "symformer_retinanet": ("retinanet", "symformer"),
    "deformable_detr": ("detr",),
    "symformer_deformable_detr": ("detr", "symformer"),
    "faster_rcnn": (),
    "fcos": (),
    "ssd": (),
}
_DEFAULTS = {"retinanet": RetinaNetConfig, "symformer": SymFormerConfig, "detr": DetrConfig}


def check_sections(model_name: str, cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with every section ``model_name`` reads filled in (defaults where not given).

    Raises :class:`TbxError` for a section the model does not read.  Names outside
    :data:`SECTIONS` (test doubles, models still unknown) are returned unchanged."""
    if model_name not in SECTIONS:
        return cfg
    used = SECTIONS[model_name]
    for name in _DEFAULTS:
        if getattr(cfg, name) is not None and name not in used:
            reads = ", ".join(f"model.{u}" for u in used) or "no family section"
            raise TbxError(
                f"model.{name} is not read by {model_name}",
                fix=f"drop model.{name} ({model_name} reads the common model keys and {reads})",
            )
    filled = {name: getattr(cfg, name) or _DEFAULTS[name]() for name in used}
    return replace(cfg, **filled)
