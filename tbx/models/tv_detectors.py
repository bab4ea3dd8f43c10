"""torchvision baselines with the shared classification head (docs/models.md §3): Faster R-CNN R50-FPN,
FCOS R50-FPN and SSD512 (VGG-16).

Each model *is* the torchvision detector (``class FasterRCNNDetector(Detector, FasterRCNN)`` …):
torchvision builds the RPN / RoI heads / FCOS head / SSD head, its losses and its post-processing,
and this module only adds what the Detector contract (:mod:`tbx.models.base`) needs:

* **No second transform.**  The data pipeline already normalised and padded the batch, so
  torchvision's ``GeneralizedRCNNTransform`` (resize + normalise) is bypassed: the padded batch and
  the valid ``image_sizes`` go straight into an :class:`~torchvision.models.detection.image_list.ImageList`.
  Targets and detections therefore stay in input pixels; detections are clipped to each image's
  valid size by torchvision's post-processing.
* **Backbone weights through one code path**: ResNets via :class:`tbx.models.backbone.ResNetBackbone`
  and :func:`~tbx.models.backbone.load_backbone_weights` (``pretrained`` imagenet / none / PATH),
  VGG-16 via :func:`load_vgg16_weights` (torchvision's ``VGG16_Weights.IMAGENET1K_V1`` — the
  mean/std-normalised ImageNet weights, matching our pipeline; torchvision's own SSD uses the
  caffe-style ``IMAGENET1K_FEATURES`` that expects un-normalised 0–255 input).
* **Classification head** (docs/models.md §2.6) on the last backbone stage: C5 for the ResNets; for SSD on
  VGG's ``fc7`` (1024 ch, stride 16 — "in SSD the head sits on VGG features", docs/models.md §3).  In
  stage 2 only the trunk up to that stage runs (no FPN, no detector head).
* **Labels**: category 1 active / 2 latent.  Faster R-CNN and SSD use a softmax over
  ``num_classes = 3`` (0 = background), so torchvision's labels 1/2 are our categories.  FCOS is a
  sigmoid classifier without a background class: it gets 2 classes (as in mmdetection), targets
  are shifted to 0/1 and predictions back to 1/2 — a background logit would be trained to
  always say "no".
* BatchNorm of the ResNet trunks stays in eval mode with trainable affine parameters and nothing
  is frozen — the same policy as the project's RetinaNet (docs/models.md §2.1).  (torchvision freezes the
  stem + layer1 and uses FrozenBatchNorm2d only when *it* loads pretrained detection weights.)

Loss names: Faster R-CNN ``loss_rpn_cls``, ``loss_rpn_box``, ``loss_cls``, ``loss_box``; FCOS
``loss_cls``, ``loss_box``, ``loss_centerness``; SSD ``loss_cls``, ``loss_box``.  Their sum is
the training objective (torchvision's weights, all 1).

SSD512 (Liu et al. 2016; mmdetection's ``ssd512``): VGG-16 conv4_3 (L2-normalised, learnable
scale 20) + fc6 (dilated) / fc7 + extra layers conv8_2 … conv12_2, giving **7** maps of 64, 32, 16,
8, 4, 2, 1 at 512 px.  torchvision's ``highres`` extractor keeps SSD300's unpadded conv10/conv11
(→ 6, 4, 1), so conv10_2 / conv11_2 / conv12_2 are replaced by the original SSD512 layers
(3×3 stride 2 pad 1, 3×3 stride 2 pad 1, 4×4 pad 1).  Default boxes: ratios ``[2], [2,3] ×4,
[2], [2]``, steps 8…512, sizes 20, 51, 133, 215, 296, 378, 460 (+542 for the last "prime" box) —
mmdetection's SSD512 anchors at 512 px, scaled with the input size.  The architecture needs an
input of at least ~384 px (the 1×1 conv12_2 map needs conv11_2 ≥ 2×2).
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD, SSDFeatureExtractorVGG, SSDHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from tbx.errors import TbxError
from tbx.models import backbone as backbone_module
from tbx.models.backbone import (
    ResNetBackbone,
    WeightsReport,
    fetch_weights,
    load_backbone_weights,
    load_state_checked,
)
from tbx.models.base import Detector, Prediction
from tbx.models.cls_head import ClsHead
from tbx.models.config import ModelConfig

# ---------------------------------------------------------------------------------------------
# shared helpers


def _sizes(images: Tensor, image_sizes) -> list[tuple[int, int]]:
    if image_sizes is None:
        return [(int(images.shape[-2]), int(images.shape[-1]))] * images.shape[0]
    sizes = [
        (int(h), int(w))
        for h, w in (image_sizes.tolist() if isinstance(image_sizes, Tensor) else image_sizes)
    ]
    if len(sizes) != images.shape[0]:
        raise ValueError(f"{len(sizes)} image sizes for a batch of {images.shape[0]} images")
    return sizes


def _tv_targets(targets: list[dict], device: torch.device, label_offset: int = 0) -> list[dict[str, Tensor]]:
    """Contract targets → torchvision's ``{"boxes", "labels"}`` (checks the boxes like torchvision)."""
    out = []
    for i, t in enumerate(targets):
        boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        labels = torch.as_tensor(t["labels"], dtype=torch.int64, device=device).reshape(-1)
        if (boxes[:, 2:] <= boxes[:, :2]).any():
            raise ValueError(
                f"target {i} has a box with non-positive width or height: "
                f"{boxes[(boxes[:, 2:] <= boxes[:, :2]).any(1)][0].tolist()}"
            )
        out.append({"boxes": boxes, "labels": labels + label_offset})
    return out


@contextmanager
def _eval_mode(model: nn.Module):
    """torchvision heads branch on ``self.training``: predict always runs them in eval mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _predictions(
    probs: Tensor, detections: list[dict[str, Tensor]], label_offset: int = 0
) -> list[Prediction]:
    return [
        Prediction(
            probs=p.float(),
            boxes=d["boxes"].float(),
            scores=d["scores"].float(),
            labels=d["labels"] + label_offset,
        )
        for p, d in zip(probs, detections)
    ]


def resnet_fpn_backbone(
    depth: str, pretrained: str, returned_layers: list[int], extra_blocks: nn.Module
) -> tuple[BackboneWithFPN, WeightsReport | None]:
    """torchvision ``BackboneWithFPN`` (256 ch) over the project's ResNet trunk with its weights.

    ``returned_layers`` ⊆ {1, 2, 3, 4} (C2..C5).  Parameter names: ``body.conv1.weight``,
    ``body.layer4…``, ``fpn.…`` (so a tbx checkpoint's ``backbone.body.*`` loads as a backbone).
    """
    trunk = ResNetBackbone(depth)
    report = load_backbone_weights(trunk, pretrained)
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
    in_channels = [trunk.out_channels[k - 1] for k in returned_layers]
    out = BackboneWithFPN(trunk, return_layers, in_channels, 256, extra_blocks=extra_blocks)
    out.c5_channels = trunk.out_channels[-1]
    return out, report


class _FPNDetectorMixin:
    """Trunk → (C5, FPN features) for the ResNet-FPN models."""

    backbone: BackboneWithFPN
    cls_head: ClsHead

    def _c5(self, images: Tensor) -> Tensor:
        feats = self.backbone.body(images)
        return feats[next(reversed(feats))]

    def _trunk_and_fpn(self, images: Tensor) -> tuple[Tensor, OrderedDict]:
        feats = self.backbone.body(images)
        c5 = feats[next(reversed(feats))]
        return c5, self.backbone.fpn(feats)

    def forward(self, images: Tensor, targets: list[dict] | None = None, image_sizes=None):
        """Stage 1: the detector's losses (:meth:`_detection_losses`); stage 2: ``loss_img_cls``;
        without ``targets``: :meth:`predict`."""
        if targets is None:
            return self.predict(images, image_sizes)
        if self.stage == 2:
            with self.backbone_grad():  # frozen in stage 2 unless listed trainable (docs/models.md §2.7)
                c5 = self._c5(images)
            return self.image_cls_loss(c5, targets)
        return self._detection_losses(images, targets, image_sizes)


# ---------------------------------------------------------------------------------------------
# Faster R-CNN R50-FPN


# torchvision's GeneralizedRCNNTransform is bypassed (tbx normalises and resizes itself); its
# parameters are set to the identity so that nothing would change even if it ran.
def _identity_norm() -> dict:
    return {"image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}


def _identity_transform(input_size: int) -> dict:
    return {"min_size": input_size, "max_size": input_size, **_identity_norm()}


class FasterRCNNDetector(_FPNDetectorMixin, Detector, FasterRCNN):
    """torchvision Faster R-CNN (FPN, RPN, RoI heads, defaults of ``fasterrcnn_resnet50_fpn``)
    + the docs/models.md §2.6 classification head on C5."""

    def __init__(
        self,
        backbone: BackboneWithFPN,
        num_classes: int = 3,
        input_size: int = 512,
        cls_channels: int = 512,
        **kwargs,
    ):
        # transform parameters are irrelevant (the transform is bypassed) but set to identity
        super().__init__(
            backbone,
            num_classes=num_classes,
            **_identity_transform(input_size),
            **kwargs,
        )
        self.cls_head = ClsHead(backbone.c5_channels, cls_channels)
        self.set_stage(1)

    def components(self) -> dict[str, nn.Module]:
        return {
            "backbone": self.backbone.body,
            "fpn": self.backbone.fpn,
            "rpn": self.rpn,
            "roi_heads": self.roi_heads,
            "cls_head": self.cls_head,
        }

    def _detection_losses(self, images: Tensor, targets: list[dict], image_sizes) -> dict[str, Tensor]:
        """``loss_rpn_cls``, ``loss_rpn_box``, ``loss_cls``, ``loss_box``."""
        il = ImageList(images, _sizes(images, image_sizes))
        tv_targets = _tv_targets(targets, images.device)
        _, feats = self._trunk_and_fpn(images)
        proposals, rpn_losses = self.rpn(il, feats, tv_targets)
        _, det_losses = self.roi_heads(feats, proposals, il.image_sizes, tv_targets)
        return {
            "loss_rpn_cls": rpn_losses["loss_objectness"],
            "loss_rpn_box": rpn_losses["loss_rpn_box_reg"],
            "loss_cls": det_losses["loss_classifier"],
            "loss_box": det_losses["loss_box_reg"],
        }

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes=None) -> list[Prediction]:
        """Softmax class probabilities and ≤ 100 boxes per image (score ≥ 0.05, NMS 0.5)."""
        with _eval_mode(self):
            il = ImageList(images, _sizes(images, image_sizes))
            c5, feats = self._trunk_and_fpn(images)
            probs = self.cls_head(c5).float().softmax(-1)
            proposals, _ = self.rpn(il, feats)
            detections, _ = self.roi_heads(feats, proposals, il.image_sizes)
        return _predictions(probs, detections)


# ---------------------------------------------------------------------------------------------
# FCOS R50-FPN


class FCOSDetector(_FPNDetectorMixin, Detector, FCOS):
    """torchvision FCOS (P3–P7, P6/P7 from P5, centre sampling 1.5, GIoU + centre-ness, defaults
    of ``fcos_resnet50_fpn``) + the docs/models.md §2.6 classification head on C5.  2 sigmoid classes."""

    def __init__(
        self,
        backbone: BackboneWithFPN,
        num_classes: int = 2,
        input_size: int = 512,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        cls_channels: int = 512,
        **kwargs,
    ):
        # score 0.05 / NMS 0.5 / 100 boxes: mmdetection's FCOS test settings, as for every other
        # model here (torchvision's 0.2 threshold would cut the low-score tail that AP counts)
        super().__init__(
            backbone,
            num_classes=num_classes,
            **_identity_transform(input_size),
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            **kwargs,
        )
        self.cls_head = ClsHead(backbone.c5_channels, cls_channels)
        self.set_stage(1)

    def components(self) -> dict[str, nn.Module]:
        return {
            "backbone": self.backbone.body,
            "fpn": self.backbone.fpn,
            "head": self.head,
            "cls_head": self.cls_head,
        }

    def _head(self, images: Tensor, feats: OrderedDict, sizes: list[tuple[int, int]]):
        il = ImageList(images, sizes)
        feat_list = list(feats.values())
        head_outputs = self.head(feat_list)
        anchors = self.anchor_generator(il, feat_list)
        num_anchors_per_level = [f.size(2) * f.size(3) for f in feat_list]
        return il, head_outputs, anchors, num_anchors_per_level

    def _detection_losses(self, images: Tensor, targets: list[dict], image_sizes) -> dict[str, Tensor]:
        """``loss_cls`` (focal), ``loss_box`` (GIoU), ``loss_centerness``."""
        _, feats = self._trunk_and_fpn(images)
        _, head_outputs, anchors, num_per_level = self._head(images, feats, _sizes(images, image_sizes))
        # FCOS has no background class: categories 1/2 → class indices 0/1
        losses = self.compute_loss(
            _tv_targets(targets, images.device, label_offset=-1), head_outputs, anchors, num_per_level
        )
        return {
            "loss_cls": losses["classification"],
            "loss_box": losses["bbox_regression"],
            "loss_centerness": losses["bbox_ctrness"],
        }

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes=None) -> list[Prediction]:
        """Softmax class probabilities and ≤ 100 boxes per image (score ≥ 0.05, NMS 0.5)."""
        with _eval_mode(self):
            c5, feats = self._trunk_and_fpn(images)
            probs = self.cls_head(c5).float().softmax(-1)
            il, head_outputs, anchors, num_per_level = self._head(images, feats, _sizes(images, image_sizes))
            split_outputs = {k: list(v.split(num_per_level, dim=1)) for k, v in head_outputs.items()}
            split_anchors = [list(a.split(num_per_level)) for a in anchors]
            detections = self.postprocess_detections(split_outputs, split_anchors, il.image_sizes)
        return _predictions(probs, detections, label_offset=1)


# ---------------------------------------------------------------------------------------------
# SSD512 (VGG-16)

# mmdetection ssd512: anchor sizes at 512 px (basesize_ratio_range 0.1–0.9 + the 0.04 first level)
SSD512_SIZES = (20, 51, 133, 215, 296, 378, 460, 542)
SSD512_RATIOS = ([2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2])


def _xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class SSD512FeatureExtractor(SSDFeatureExtractorVGG):
    """torchvision's VGG-16 SSD extractor with the original SSD512 extra layers: 7 maps
    (conv4_3 L2-normed, fc7, conv8_2 … conv12_2) = 64, 32, 16, 8, 4, 2, 1 at 512 px."""

    out_channels = [512, 1024, 512, 256, 256, 256, 256]

    def __init__(self, vgg_features: nn.Sequential):
        super().__init__(vgg_features, highres=True)
        for i in (3, 4):  # conv10_2, conv11_2: 3×3 stride 2 pad 1 (torchvision: 3×3 no pad)
            self.extra[i] = nn.Sequential(
                nn.Conv2d(256, 128, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(128, 256, 3, stride=2, padding=1),
                nn.ReLU(inplace=True),
            )
        self.extra[5] = nn.Sequential(
            nn.Conv2d(256, 128, 1),
            nn.ReLU(inplace=True),  # conv12_2
            nn.Conv2d(128, 256, 4, padding=1),
            nn.ReLU(inplace=True),
        )
        for i in (3, 4, 5):
            _xavier(self.extra[i])

    def fc7(self, x: Tensor) -> Tensor:
        """VGG up to fc7 (the classification head's input, 1024 ch, stride 16)."""
        return self.extra[0](self.features(x))


def vgg16_imagenet_file() -> Path:
    weights = torchvision.models.VGG16_Weights.IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def vgg16_features() -> nn.Sequential:
    """torchvision's VGG-16 convolutional part (``vgg16().features``, configuration "D", no BN)
    with torchvision's VGG init (Kaiming-normal fan-out, zero bias) — without building the
    unused 120 M-parameter classifier."""
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=False)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return features


def load_vgg16_weights(features: nn.Sequential, pretrained: str | Path) -> WeightsReport | None:
    """Load ``pretrained`` (``"imagenet"`` → ``VGG16_Weights.IMAGENET1K_V1``, ``"none"``, or a
    path to a torchvision VGG-16 ``state_dict`` / a checkpoint wrapping one) into ``features``
    (:func:`vgg16_features`; the ``features.*`` entries of the state_dict).

    Same cache, offline error, checks and report as :func:`tbx.models.backbone.load_backbone_weights`
    (None for ``"none"``)."""
    spec = str(pretrained)
    if spec.lower() == "none":
        return None
    if spec.lower() == "imagenet":
        where = vgg16_imagenet_file()
        fetch_weights("vgg16", torchvision.models.VGG16_Weights.IMAGENET1K_V1.url, where)
    else:
        where = Path(spec).expanduser()
        if not where.is_file():
            raise TbxError(
                "backbone weights file not found",
                where=where,
                fix="pretrained must be 'imagenet', 'none' or an existing file",
            )
    state = backbone_module._safe_load(where)
    if isinstance(state, dict):
        for key in ("model", "state_dict", "model_state"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    sub = (
        {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        if isinstance(state, dict)
        else {}
    )
    fix = "use the state_dict of a torchvision vgg16 (keys features.*)"
    return load_state_checked(features, sub, where, "vgg16", fix)


class SSDDetector(Detector, SSD):
    """torchvision SSD (hard-negative mining 3:1, smooth-L1, defaults of ``ssd300_vgg16``) with the
    SSD512 extractor and anchors + the docs/models.md §2.6 classification head on VGG fc7."""

    def __init__(
        self,
        backbone: SSD512FeatureExtractor,
        num_classes: int = 3,
        input_size: int = 512,
        score_thresh: float = 0.02,
        nms_thresh: float = 0.45,
        detections_per_img: int = 100,
        cls_channels: int = 512,
        **kwargs,
    ):
        scales = [s / 512 for s in SSD512_SIZES]  # relative to the input side
        # steps=None: centres at ((j + 0.5)/W_k, (i + 0.5)/H_k) — identical to SSD512's steps 8…512
        # at 512 px (every map divides the input), and still aligned at other input sizes
        anchor_generator = DefaultBoxGenerator([list(r) for r in SSD512_RATIOS], scales=scales)
        head = SSDHead(backbone.out_channels, anchor_generator.num_anchors_per_location(), num_classes)
        # score 0.02, NMS 0.45: mmdetection's SSD test settings; ≤ 100 boxes (docs/models.md §2.4,
        # COCO maxDets)
        super().__init__(
            backbone,
            anchor_generator,
            (input_size, input_size),
            num_classes,
            **_identity_norm(),
            head=head,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            **kwargs,
        )
        self.cls_head = ClsHead(1024, cls_channels)
        self.set_stage(1)

    def components(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "head": self.head, "cls_head": self.cls_head}

    def _features(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """One VGG pass: fc7 (for the cls head) and the 7 SSD maps."""
        bb = self.backbone
        x = bb.features(images)
        maps = [bb.scale_weight.view(1, -1, 1, 1) * nn.functional.normalize(x)]
        fc7 = None
        for i, block in enumerate(bb.extra):
            x = block(x)
            if i == 0:
                fc7 = x
            maps.append(x)
        return fc7, maps

    def forward(self, images: Tensor, targets: list[dict] | None = None, image_sizes=None):
        """Stage 1: ``loss_cls`` (softmax CE with 3:1 hard negatives), ``loss_box`` (smooth L1);
        stage 2: ``loss_img_cls``; without ``targets``: :meth:`predict`."""
        if targets is None:
            return self.predict(images, image_sizes)
        if self.stage == 2:
            with self.backbone_grad():
                fc7 = self.backbone.fc7(images)
            return self.image_cls_loss(fc7, targets)
        il = ImageList(images, _sizes(images, image_sizes))
        tv_targets = _tv_targets(targets, images.device)
        _, maps = self._features(images)
        head_outputs = self.head(maps)
        anchors = self.anchor_generator(il, maps)
        matched_idxs = []
        for anchors_i, t in zip(anchors, tv_targets):
            if t["boxes"].numel() == 0:
                matched_idxs.append(
                    torch.full((anchors_i.size(0),), -1, dtype=torch.int64, device=anchors_i.device)
                )
            else:
                matched_idxs.append(self.proposal_matcher(torchvision.ops.box_iou(t["boxes"], anchors_i)))
        losses = self.compute_loss(tv_targets, head_outputs, anchors, matched_idxs)
        return {"loss_cls": losses["classification"], "loss_box": losses["bbox_regression"]}

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes=None) -> list[Prediction]:
        """Softmax class probabilities and ≤ 100 boxes per image (score ≥ 0.02, NMS 0.45)."""
        with _eval_mode(self):
            il = ImageList(images, _sizes(images, image_sizes))
            fc7, maps = self._features(images)
            probs = self.cls_head(fc7).float().softmax(-1)
            head_outputs = self.head(maps)
            anchors = self.anchor_generator(il, maps)
            detections = self.postprocess_detections(head_outputs, anchors, il.image_sizes)
        return _predictions(probs, detections)


# ---------------------------------------------------------------------------------------------
# builders (names imported by tbx.models.registry)


def _check_resnet(cfg: ModelConfig) -> None:
    if not str(cfg.backbone).startswith("resnet"):
        raise TbxError(
            f"this model needs a ResNet backbone, got {cfg.backbone!r}",
            fix="set backbone to resnet18 | resnet34 | resnet50 | resnet101",
        )


def build_faster_rcnn(cfg: ModelConfig) -> FasterRCNNDetector:
    """Faster R-CNN R50-FPN (torchvision) + classification head (docs/models.md §3)."""
    _check_resnet(cfg)
    bb, report = resnet_fpn_backbone(cfg.backbone, cfg.pretrained, [1, 2, 3, 4], LastLevelMaxPool())
    model = FasterRCNNDetector(
        bb, num_classes=cfg.num_classes + 1, input_size=cfg.input_size, cls_channels=cfg.cls_channels
    )
    model.pretrained_report = report
    return model


def build_fcos(cfg: ModelConfig) -> FCOSDetector:
    """FCOS R50-FPN (torchvision) + classification head (docs/models.md §3)."""
    _check_resnet(cfg)
    bb, report = resnet_fpn_backbone(cfg.backbone, cfg.pretrained, [2, 3, 4], LastLevelP6P7(256, 256))
    model = FCOSDetector(
        bb, num_classes=cfg.num_classes, input_size=cfg.input_size, cls_channels=cfg.cls_channels
    )
    model.pretrained_report = report
    return model


def build_ssd(cfg: ModelConfig) -> SSDDetector:
    """SSD512 VGG-16 (torchvision SSD, original SSD512 extras) + classification head (docs/models.md §3).

    SSD's backbone is always VGG-16: ``backbone: vgg16``; a ResNet name (the ModelConfig default)
    is ignored with a warning."""
    if cfg.backbone != "vgg16":
        if not str(cfg.backbone).startswith("resnet"):
            raise TbxError(f"SSD uses a VGG-16 backbone, got {cfg.backbone!r}", fix="set backbone: vgg16")
        warnings.warn(f"SSD always uses VGG-16; backbone {cfg.backbone!r} ignored", stacklevel=2)
    if cfg.input_size < 384:
        raise TbxError(
            f"SSD512 needs an input of at least 384 px, got input_size {cfg.input_size}",
            fix="use input_size 512 (docs/models.md §2.7)",
        )
    features = vgg16_features()
    report = load_vgg16_weights(features, cfg.pretrained)
    model = SSDDetector(
        SSD512FeatureExtractor(features),
        num_classes=cfg.num_classes + 1,
        input_size=cfg.input_size,
        cls_channels=cfg.cls_channels,
    )
    model.pretrained_report = report
    return model
