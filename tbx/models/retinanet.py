"""RetinaNet and SymFormer-RetinaNet (docs/models.md §2.1–2.4), one class with a ``sas`` switch.

Data flow: ResNet → C2..C5 → FPN P3..P7 → [SAS block, shared over levels] → RetinaNet head;
classification head (docs/models.md §2.6) on C5 — of the same ResNet (the paper), or, with
``cls_backbone=True`` (from-scratch CPU presets), of a second ResNet that stage II forks from the
stage-I one and trains with the head, so that stage II leaves the detector exactly as stage I
made it; that ResNet may then also see a smaller copy of the input (``cls_scale``), since an
image-level label needs less resolution than lesion boxes.  Conventions follow the authors'
mmdetection 2.16 code:

* Anchors (docs/models.md §2.4): per level of stride ``s``, sizes ``4·2^(k/3)·s`` (k = 0, 1, 2) × ratios
  h/w 0.5, 1, 2 → 9 per location, centred at ``(j·s, i·s)`` (mmdetection v2, centre offset 0) and
  **not rounded**.  torchvision's ``AnchorGenerator`` rounds the base anchors to integers, so we
  generate them here (cached per feature size/device/dtype); the difference is < 0.5 px.
* Box coder: torchvision's ``BoxCoder`` with weights (1, 1, 1, 1) = mmdetection's
  ``DeltaXYWHBBoxCoder`` with means 0 and stds 1 (same centre/size convention, same
  ``log(1000/16)`` clamp on dw/dh at decoding).
* Assigner: mmdetection's ``MaxIoUAssigner`` (pos ≥ 0.5, neg < 0.4, ignore in between; then every
  GT takes *all* anchors that reach its own best IoU — assigned to that GT, later GTs winning ties
  — provided that IoU is > 0).  torchvision's ``Matcher`` differs subtly (its low-quality matches
  go to the anchor's own arg-max GT), hence our own 10 lines.
* Losses: sigmoid focal loss γ 2, α 0.25 (``torchvision.ops.sigmoid_focal_loss``) over positive
  and negative anchors + L1 on deltas of positives, both summed and divided by the number of
  positive anchors in the batch (≥ 1).  Optionally (``box_loss="giou"``, not the paper's) the
  box term is the GIoU loss of the decoded boxes (mmdetection's ``reg_decoded_bbox=True`` with
  ``GIoULoss``), which scores overlap directly instead of four independent coordinates.
* Inference: per level, the (anchor, class) pairs with score ≥ 0.05, top 1000; decode; clip to the
  valid image size; class-wise NMS IoU 0.5 (``batched_nms``); ≤ 100 per image.  Optionally
  class-agnostic NMS (mmdetection's ``nms=dict(class_agnostic=True)``): one lesion then keeps
  one box even when the detector hesitates between active and latent, which the
  category-agnostic rows of docs/protocol.md §4.3 would otherwise count as a false positive.
* Init: head convs N(0, 0.01), zero bias; classification bias ``−log((1 − 0.01)/0.01)`` (prior
  0.01, docs/models.md §2.4).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from tbx.errors import TbxError
from tbx.models.backbone import FPN, RESNETS, ResNetBackbone, WeightsReport, load_backbone_weights
from tbx.models.base import Detector, Prediction
from tbx.models.cls_head import ClsHead
from tbx.models.config import HeadInit, ModelConfig, RetinaNetConfig, SymFormerConfig
from tbx.models.p2t import P2T, P2T_VARIANTS, load_p2t_weights
from tbx.models.resize import resize_as_matmul
from tbx.models.sas import SASBlock

STRIDES = (8, 16, 32, 64, 128)  # P3..P7 (docs/models.md §2.1)


def make_backbone(name: str, pretrained: str) -> tuple[ResNetBackbone | P2T, WeightsReport | None]:
    """A ResNet (``resnet18 … resnet101``) or P2T (``p2t_small``, docs/models.md §3.1) trunk with
    its weights loaded; both return 4 maps at strides 4–32 and list their ``out_channels``."""
    if name in P2T_VARIANTS:
        p2t = P2T(name)
        return p2t, load_p2t_weights(p2t, pretrained)
    if name not in RESNETS:
        known = sorted(RESNETS) + sorted(P2T_VARIANTS)
        raise TbxError(f"unknown backbone {name!r}", fix=f"use one of {known}")
    resnet = ResNetBackbone(name)
    return resnet, load_backbone_weights(resnet, pretrained)


class AnchorGenerator(nn.Module):
    """mmdetection-v2 anchors (docs/models.md §2.4): 9 per location, unrounded, centre offset 0."""

    def __init__(
        self,
        strides=STRIDES,
        octave_base_scale: float = 4.0,
        scales_per_octave: int = 3,
        ratios=(0.5, 1.0, 2.0),
    ):
        super().__init__()
        self.strides = tuple(strides)
        scales = torch.tensor(
            [octave_base_scale * 2 ** (k / scales_per_octave) for k in range(scales_per_octave)],
            dtype=torch.float64,
        )
        h_ratios = torch.tensor(ratios, dtype=torch.float64).sqrt()
        w_ratios = 1.0 / h_ratios
        base = []
        for s in self.strides:
            ws = (s * w_ratios[:, None] * scales[None, :]).reshape(-1)
            hs = (s * h_ratios[:, None] * scales[None, :]).reshape(-1)
            base.append(torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], -1))
        self.base_anchors = [b.float() for b in base]  # per level (9, 4), ratio-major
        self.num_anchors = len(ratios) * scales_per_octave
        self._cache: dict[tuple, list[Tensor]] = {}

    def forward(
        self, sizes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype = torch.float32
    ) -> list[Tensor]:
        """Per level ``(H_l·W_l·9, 4)`` xyxy anchors in (row, column, anchor) order."""
        key = (tuple(sizes), str(device), dtype, torch.is_inference_mode_enabled())
        if key not in self._cache:
            if len(self._cache) > 32:
                self._cache.clear()
            out = []
            for (h, w), s, base in zip(sizes, self.strides, self.base_anchors):
                ys = torch.arange(h, dtype=torch.float32, device=device) * s
                xs = torch.arange(w, dtype=torch.float32, device=device) * s
                yy, xx = torch.meshgrid(ys, xs, indexing="ij")
                shifts = torch.stack([xx, yy, xx, yy], -1).reshape(-1, 1, 4)
                out.append((shifts + base.to(device)[None]).reshape(-1, 4).to(dtype))
            self._cache[key] = out
        return self._cache[key]


def max_iou_assign(gt_boxes: Tensor, anchors: Tensor, pos_iou: float = 0.5, neg_iou: float = 0.4) -> Tensor:
    """mmdetection ``MaxIoUAssigner`` (docs/models.md §2.4) → ``(A,)`` int64: −1 ignore, 0 background,
    ``k + 1`` = assigned to GT ``k``."""
    assigned = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    if gt_boxes.numel() == 0:
        assigned.zero_()
        return assigned
    iou = box_iou(gt_boxes, anchors)  # (G, A)
    max_iou, argmax = iou.max(0)
    assigned[max_iou < neg_iou] = 0
    pos = max_iou >= pos_iou
    assigned[pos] = argmax[pos] + 1
    # every GT keeps its best anchor(s) — allow low-quality matches; later GTs win (mmdet's loop)
    gt_max = iou.max(1).values
    best = (iou == gt_max[:, None]) & (gt_max[:, None] > 0)
    gt_ids = torch.arange(1, gt_boxes.shape[0] + 1, device=anchors.device)[:, None]
    last = (best.long() * gt_ids).max(0).values
    return torch.where(last > 0, last, assigned)


class RetinaHead(nn.Module):
    """Two towers of 4 × (3×3 conv 256 + ReLU), no norm; cls → A·C logits, reg → A·4 deltas."""

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 256,
        num_anchors: int = 9,
        stacked_convs: int = 4,
        prior_prob: float = 0.01,
        init: HeadInit = "paper",
    ):
        super().__init__()
        if init not in ("paper", "kaiming"):
            raise ValueError(f"head init must be 'paper' or 'kaiming', got {init!r}")

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(stacked_convs):
                layers += [nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.cls_convs, self.reg_convs = tower(), tower()
        self.retina_cls = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        self.num_classes, self.num_anchors = num_classes, num_anchors
        towers = set(self.cls_convs.modules()) | set(self.reg_convs.modules())
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if init == "kaiming" and m in towers:
                    # He normal: at width 64 N(0, 0.01) shrinks the rms ≈ 6× per conv + ReLU
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                else:
                    nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        assert self.retina_cls.bias is not None
        nn.init.constant_(
            self.retina_cls.bias, -math.log((1 - prior_prob) / prior_prob)
        )  # docs/models.md §2.4

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: logits ``(N, H·W·A, C)`` and deltas ``(N, H·W·A, 4)``."""
        cls_out, reg_out = [], []
        for f in feats:
            n, _, h, w = f.shape
            c = self.retina_cls(self.cls_convs(f))
            r = self.retina_reg(self.reg_convs(f))
            cls_out.append(c.permute(0, 2, 3, 1).reshape(n, h * w * self.num_anchors, self.num_classes))
            reg_out.append(r.permute(0, 2, 3, 1).reshape(n, h * w * self.num_anchors, 4))
        return cls_out, reg_out


class RetinaNet(Detector):
    """RetinaNet-FPN with the docs/models.md §2.6 classification head; ``sas=True`` → SymFormer-RetinaNet.

    Args:
        backbone: ``resnet18 | resnet34 | resnet50 | resnet101 | p2t_small`` (:func:`make_backbone`).
        pretrained: ``"imagenet" | "none" | PATH`` (see :func:`load_backbone_weights`,
            :func:`tbx.models.p2t.load_p2t_weights`); what was loaded: ``pretrained_report``.
        num_classes: box classes (2: active, latent).
        sas: insert the SAS block (SPE + SymAttention encoder layer) after the FPN.
        pos_encoding / attention: SAS ablation switches (docs/models.md §2.3), ignored without ``sas``.
        width: FPN / head / SAS channels (docs/models.md §2.1: 256; narrower only for CPU presets; must be a
            multiple of 16 — 8 heads, and the sine encoding needs an even number per axis).
        cls_channels: classification-head width (docs/models.md §2.6: 512).
        anchor_scale: anchor octave base scale (docs/models.md §2.4: 4, i.e. 32–50 px at stride 8); CPU
            presets that shrink the input (and so the lesions) scale the anchors with it.
        class_agnostic_nms: NMS across the box classes (the paper: class-wise, False).
        box_loss / box_loss_weight: ``"l1"`` (the paper) or ``"giou"``, and the term's weight.
        cls_backbone: give the classification head its own ResNet (see the module docstring;
            the paper: False).  It is copied from ``backbone`` when stage II starts
            (:meth:`start_stage`), is not trained in stage I and is listed in stage II's
            ``trainable`` as ``cls_backbone``.
        cls_scale: with ``cls_backbone``, the classification ResNet sees the input resized by this
            factor (bilinear, antialiased; 1 = the detector's input).
        head_init: the box head's conv towers, ``"paper"`` (N(0, 0.01)) or ``"kaiming"``.
    """

    supports_loss_weights = True  # joint detection + image classification (StageConfig weights)

    def __init__(
        self,
        backbone: str = "resnet50",
        pretrained: str = "imagenet",
        num_classes: int = 2,
        sas: bool = True,
        pos_encoding: str = "spe",
        attention: str = "symmetric",
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        topk_per_level: int = 1000,
        max_dets: int = 100,
        width: int = 256,
        cls_channels: int = 512,
        anchor_scale: float = 4.0,
        class_agnostic_nms: bool = False,
        cls_backbone: bool = False,
        box_loss: str = "l1",
        box_loss_weight: float = 1.0,
        cls_scale: float = 1.0,
        head_init: HeadInit = "paper",
    ):
        super().__init__()
        if width % 16:
            raise ValueError(f"width must be a multiple of 16, got {width}")
        if box_loss not in ("l1", "giou"):
            raise ValueError(f"box_loss must be 'l1' or 'giou', got {box_loss!r}")
        self.box_loss, self.box_loss_weight = box_loss, box_loss_weight
        if cls_scale != 1.0 and not cls_backbone:
            raise ValueError(
                "a classification input scale other than 1 needs cls_backbone=True "
                "(the shared backbone runs at the detector's resolution)"
            )
        if not 0.0 < cls_scale <= 1.0:
            raise ValueError(f"cls_scale must be in (0, 1], got {cls_scale}")
        self.cls_scale = cls_scale
        self.backbone, self.pretrained_report = make_backbone(backbone, pretrained)
        self.fpn = FPN(self.backbone.out_channels[1:], width)
        self.sas = SASBlock(width, pos_encoding, attention, d_ffn=4 * width) if sas else None
        self.head = RetinaHead(num_classes, in_channels=width, init=head_init)
        self.cls_backbone = make_backbone(backbone, "none")[0] if cls_backbone else None
        self.cls_head = ClsHead(self.backbone.out_channels[-1], cls_channels, 3)
        self.anchor_generator = AnchorGenerator(octave_base_scale=anchor_scale)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))  # docs/models.md §2.4: means 0, stds 1
        self.num_classes = num_classes
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.topk_per_level, self.max_dets = topk_per_level, max_dets
        self.class_agnostic_nms = class_agnostic_nms
        if sas:  # paper accounting (docs/models.md §2.5): parameters the authors' model holds but never uses
            self.dead_params = 130_412

    # -- paper components (for `tbx models info`) --------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        comps: dict[str, nn.Module] = {"backbone": self.backbone, "fpn": self.fpn}
        if self.sas is not None:
            comps["sym_attention"] = self.sas.encoder
            comps["spe"] = self.sas.spe
        comps["head"] = self.head
        if self.cls_backbone is not None:
            comps["cls_backbone"] = self.cls_backbone
        comps["cls_head"] = self.cls_head
        return comps

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _sizes(images: Tensor, image_sizes) -> list[tuple[int, int]]:
        if image_sizes is None:
            return [(int(images.shape[-2]), int(images.shape[-1]))] * images.shape[0]
        return [
            (int(h), int(w))
            for h, w in (image_sizes.tolist() if isinstance(image_sizes, Tensor) else image_sizes)
        ]

    @staticmethod
    def _level_masks(
        images: Tensor, sizes: list[tuple[int, int]] | Tensor, feats: list[Tensor]
    ) -> list[Tensor] | None:
        """Padding masks per level (True = padding), or None when nothing is padded (``sizes`` a
        list).  Level cell ``j`` is valid iff ``j < ⌈h·f/H⌉``, i.e. ``j·H < h·f`` — integer
        arithmetic on tensors, so an ``(N, 2)`` tensor of sizes traces into an exported graph."""
        H, W = images.shape[-2:]
        if not isinstance(sizes, Tensor):
            if all(h >= H and w >= W for h, w in sizes):
                return None
            sizes = torch.tensor(sizes, dtype=torch.int64, device=images.device)
        sizes = sizes.to(device=images.device, dtype=torch.int64)
        masks = []
        for f in feats:
            fh, fw = f.shape[-2:]
            rows = torch.arange(fh, device=f.device)[None, :] * H >= sizes[:, :1] * fh  # (N, fh)
            cols = torch.arange(fw, device=f.device)[None, :] * W >= sizes[:, 1:] * fw  # (N, fw)
            masks.append(rows[:, :, None] | cols[:, None, :])
        return masks

    def _features(
        self, images: Tensor, sizes: list[tuple[int, int]] | Tensor, cls: bool = True
    ) -> tuple[Tensor | None, list[Tensor]]:
        """``(classification-head input, detection features)``; ``cls=False`` skips a separate
        classification backbone (the first item is then None for such a model)."""
        c2, c3, c4, c5 = self.backbone(images)
        feats = self.fpn([c3, c4, c5])
        if self.sas is not None:
            feats = self.sas(feats, self._level_masks(images, sizes, feats))
        head_in: Tensor | None = c5
        if self.cls_backbone is not None:
            head_in = self._cls_c5(images) if cls else None
        return head_in, feats

    def _cls_c5(self, images: Tensor) -> Tensor:
        """C5 of the separate classification ResNet, on the input resized by ``cls_scale``."""
        assert self.cls_backbone is not None
        if self.cls_scale != 1.0 and torch.onnx.is_in_onnx_export():  # no ONNX antialiased resize
            images = resize_as_matmul(images, self.cls_scale)  # the same linear map, two MatMuls
        elif self.cls_scale != 1.0:
            images = F.interpolate(
                images, scale_factor=self.cls_scale, mode="bilinear", align_corners=False, antialias=True
            )
        return self.cls_backbone(images)[-1]

    def start_stage(self, stage: int) -> None:
        """Stage II forks the classification backbone from the stage-I backbone."""
        if stage == 2 and self.cls_backbone is not None:
            self.cls_backbone.load_state_dict(self.backbone.state_dict())

    def _trainable_in_stage1(self, name: str) -> bool:
        return not (name == "cls_backbone" or name.startswith("cls_backbone."))

    def macs_forward(self, images: Tensor) -> tuple:
        """Every layer of :meth:`predict` except post-processing (for MAC counting; runs on the
        meta device)."""
        c5, feats = self._features(images, self._sizes(images, None))
        return self.cls_head(c5), self.head(feats)

    # -- training -----------------------------------------------------------------------------
    def forward(self, images: Tensor, targets: list[dict] | None = None, image_sizes=None):
        """Training: dict of losses (stage 1 ``loss_cls``/``loss_box``; stage 2 ``loss_img_cls``).
        Without ``targets``: :meth:`predict`."""
        if targets is None:
            return self.predict(images, image_sizes)
        w_det, w_cls = self.loss_weights
        if not w_det:  # the paper's stage 2: backbone (frozen unless trainable) + classification head
            if self.cls_backbone is not None:
                c5 = self._cls_c5(images)
            else:
                with self.backbone_grad():
                    c5 = self.backbone(images)[-1]
            return {k: w_cls * v for k, v in self.image_cls_loss(c5, targets).items()}
        sizes = self._sizes(images, image_sizes)
        head_in, feats = self._features(images, sizes, cls=bool(w_cls))
        cls_out, reg_out = self.head(feats)
        anchors = torch.cat(self.anchor_generator([f.shape[-2:] for f in feats], images.device), 0)
        losses = self.detection_loss(torch.cat(cls_out, 1), torch.cat(reg_out, 1), anchors, targets)
        if w_det != 1.0:
            losses = {k: w_det * v for k, v in losses.items()}
        if w_cls:  # joint detection + image classification (StageConfig loss weights)
            assert head_in is not None
            losses["loss_img_cls"] = w_cls * self.image_cls_loss(head_in, targets)["loss_img_cls"]
        return losses

    def detection_loss(
        self, logits: Tensor, deltas: Tensor, anchors: Tensor, targets: list[dict]
    ) -> dict[str, Tensor]:
        """Focal + L1 (or GIoU) over the batch, normalised by the number of positive anchors
        (docs/models.md §2.4)."""
        cls_t: list[Tensor] = []
        box_t: list[Tensor] = []
        assigned_all: list[Tensor] = []
        with torch.no_grad():
            for t in targets:
                gt = t["boxes"].to(anchors)
                lab = t["labels"].to(anchors.device).long()
                if lab.numel() and (lab.min() < 1 or lab.max() > self.num_classes):
                    raise ValueError(
                        f"box labels must be in 1..{self.num_classes}, got {lab.tolist()} "
                        "(uncertain-type boxes must be removed before training)"
                    )
                assigned = max_iou_assign(gt, anchors)
                onehot = torch.zeros((anchors.shape[0], self.num_classes), device=anchors.device)
                pos = assigned > 0
                onehot[pos, lab[assigned[pos] - 1] - 1] = 1.0
                enc = torch.zeros_like(anchors)  # L1: encoded deltas; GIoU: the GT box itself
                if pos.any():
                    enc[pos] = (
                        gt[assigned[pos] - 1]
                        if self.box_loss == "giou"
                        else self.box_coder.encode_single(gt[assigned[pos] - 1], anchors[pos])
                    )
                cls_t.append(onehot)
                box_t.append(enc)
                assigned_all.append(assigned)
        assigned = torch.stack(assigned_all)
        cls_target, box_target = torch.stack(cls_t), torch.stack(box_t)
        valid, pos = assigned >= 0, assigned > 0
        num_pos = max(float(pos.sum()), 1.0)
        # losses in fp32 (also under autocast)
        loss_cls = (
            sigmoid_focal_loss(
                logits[valid].float(), cls_target[valid], alpha=0.25, gamma=2.0, reduction="sum"
            )
            / num_pos
        )
        if self.box_loss == "giou":
            pos_anchors = anchors.expand(len(targets), -1, -1)[pos]
            boxes = self.box_coder.decode_single(deltas[pos].float(), pos_anchors)
            loss_box = generalized_box_iou_loss(boxes, box_target[pos], reduction="sum") / num_pos
        else:
            loss_box = (deltas[pos].float() - box_target[pos]).abs().sum() / num_pos
        if self.box_loss_weight != 1.0:
            loss_box = self.box_loss_weight * loss_box
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    # -- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes=None) -> list[Prediction]:
        """Per image: softmax class probabilities and ≤ 100 boxes (xyxy, input pixels, clipped)."""
        sizes = self._sizes(images, image_sizes)
        probs, cls_out, reg_out = self.network(images, sizes)
        return self.decode(probs, cls_out, reg_out, (int(images.shape[-2]), int(images.shape[-1])), sizes)

    def network(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]] | Tensor,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Everything before post-processing — what ``tbx export`` puts in an ONNX graph:
        ``(probs (N, 3), per-level logits (N, H_l·W_l·A, C), per-level deltas (N, H_l·W_l·A, 4))``.
        ``image_sizes``: valid ``(h, w)`` per image, a list or an ``(N, 2)`` int64 tensor."""
        c5, feats = self._features(images, image_sizes)
        probs = self.cls_head(c5).float().softmax(-1)
        cls_out, reg_out = self.head(feats)
        return probs, cls_out, reg_out

    @staticmethod
    def feature_sizes(h: int, w: int) -> list[tuple[int, int]]:
        """P3..P7 sizes for an ``h`` × ``w`` input: every stride-2 layer (ResNet stem, pool,
        stages, P6, P7: 3×3 kernels, padding 1) maps ``x`` to ``⌈x/2⌉``."""
        out = []
        for level in range(7):
            h, w = -(-h // 2), -(-w // 2)
            if level >= 2:
                out.append((h, w))
        return out

    def decode(
        self,
        probs: Tensor,
        logits: list[Tensor],
        deltas: list[Tensor],
        input_hw: tuple[int, int],
        sizes: list[tuple[int, int]],
    ) -> list[Prediction]:
        """:meth:`network` outputs (torch or onnxruntime, as tensors) → one :class:`Prediction` per
        image (:meth:`postprocess`); ``input_hw`` is the padded input size."""
        anchors = self.anchor_generator(self.feature_sizes(*input_hw), probs.device)
        preds = []
        for i, (h, w) in enumerate(sizes):
            boxes, scores, labels = self.postprocess(
                [c[i] for c in logits], [r[i] for r in deltas], anchors, (h, w)
            )
            preds.append(Prediction(probs=probs[i], boxes=boxes, scores=scores, labels=labels))
        return preds

    def postprocess(
        self, logits: list[Tensor], deltas: list[Tensor], anchors: list[Tensor], size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One image: top-k per level above the score threshold, decode, clip, NMS (class-wise
        unless ``class_agnostic_nms``)."""
        all_boxes, all_scores, all_labels = [], [], []
        for lg, dl, an in zip(logits, deltas, anchors):
            scores = lg.float().sigmoid().flatten()
            keep = torch.nonzero(scores >= self.score_thresh).squeeze(1)
            scores = scores[keep]
            if scores.numel() > self.topk_per_level:
                scores, idx = scores.topk(self.topk_per_level)
                keep = keep[idx]
            a_idx = torch.div(keep, self.num_classes, rounding_mode="floor")
            all_boxes.append(self.box_coder.decode_single(dl[a_idx].float(), an[a_idx].float()))
            all_scores.append(scores)
            all_labels.append(keep % self.num_classes)
        boxes, scores, labels = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
        h, w = size
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        groups = torch.zeros_like(labels) if self.class_agnostic_nms else labels
        keep = batched_nms(boxes, scores, groups, self.nms_thresh)[: self.max_dets]
        return boxes[keep], scores[keep], labels[keep] + 1


def _cls_scale(cfg: ModelConfig, rc: RetinaNetConfig) -> float:
    """``cls_input_size / input_size`` when the input is larger than ``cls_input_size``, else 1."""
    if not rc.cls_input_size or rc.cls_input_size >= cfg.input_size:
        return 1.0
    if not rc.cls_backbone:
        raise TbxError(
            f"model.retinanet.cls_input_size {rc.cls_input_size} is below input_size "
            f"{cfg.input_size} but the classification head shares the detector's backbone",
            fix="set model.retinanet.cls_backbone=true, or drop model.retinanet.cls_input_size",
        )
    if rc.cls_input_size < 32:
        raise TbxError(f"model.retinanet.cls_input_size must be ≥ 32, got {rc.cls_input_size}")
    return rc.cls_input_size / cfg.input_size


def _retinanet_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """RetinaNet arguments shared by both builders."""
    rc = cfg.retinanet or RetinaNetConfig()
    return dict(
        backbone=cfg.backbone,
        pretrained=cfg.pretrained,
        num_classes=cfg.num_classes,
        width=rc.width,
        cls_channels=cfg.cls_channels,
        anchor_scale=rc.anchor_scale,
        class_agnostic_nms=rc.nms_class_agnostic,
        cls_backbone=rc.cls_backbone,
        box_loss=rc.box_loss,
        box_loss_weight=rc.box_loss_weight,
        cls_scale=_cls_scale(cfg, rc),
        head_init=rc.head_init,
    )


def build_retinanet(cfg: ModelConfig) -> RetinaNet:
    """RetinaNet-FPN (the paper's base model) + classification head."""
    return RetinaNet(sas=False, **_retinanet_kwargs(cfg))


def build_symformer_retinanet(cfg: ModelConfig) -> RetinaNet:
    """SymFormer w/ RetinaNet (the paper's default model, docs/models.md §2)."""
    sc = cfg.symformer or SymFormerConfig()
    return RetinaNet(sas=True, pos_encoding=sc.pos_encoding, attention=sc.attention, **_retinanet_kwargs(cfg))
