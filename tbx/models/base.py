"""The detector contract shared by every model (ARCHITECTURE.md "Models").

Inputs (both modes): ``images`` — float tensor ``(N, 3, H, W)``, ImageNet-normalised RGB, padded
to a multiple of 32 (padding at the bottom/right, zeros after normalisation); ``image_sizes`` —
the valid ``(h, w)`` of each image inside the padded tensor.

Training (``model.train()``): ``model(images, targets, image_sizes)`` → dict of scalar losses.
``targets[i]`` is a dict with ``"boxes"`` (``(K, 4)`` float, xyxy in input pixels), ``"labels"``
(``(K,)`` int64 box categories, 1 active / 2 latent; category 3 "uncertain" boxes are removed by
the data pipeline before training) and ``"cls_label"`` (int64 scalar: 0 healthy, 1 sick, 2 TB).
In stage 1 the losses are the detector's (``loss_cls``, ``loss_box``, …); in stage 2 only the
weighted cross-entropy of the classification head (``loss_img_cls``).  See :meth:`Detector.set_stage`.

Inference: ``model.predict(images, image_sizes)`` → one :class:`Prediction` per image, boxes in
input-image pixels (the caller maps them back to original pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tbx.models.backbone import WeightsReport
from tbx.models.cls_head import ClsHead
from tbx.models.config import CLS_LOSS_WEIGHTS


@dataclass
class Prediction:
    """One image's output: class probabilities (healthy, sick, TB) and boxes in input pixels."""

    probs: Tensor  # (3,)
    boxes: Tensor  # (K, 4) xyxy
    scores: Tensor  # (K,)
    labels: Tensor  # (K,) 1 active / 2 latent


class Detector(nn.Module):
    """Base class: a detector with the shared image-classification head (docs/models.md §2.6).

    Subclasses set ``self.backbone`` (whose BN layers stay in eval mode, docs/models.md §2.1) and
    ``self.cls_head`` (docs/models.md §2.6, on the last backbone stage), and implement ``forward`` and
    ``predict`` with the contract of this module's docstring.  In stage 2, ``forward`` should
    compute only what the classification head needs (backbone + head).
    """

    cls_head: ClsHead  # set by every subclass (docs/models.md §2.6)
    stage: int = 1
    #: what the backbone weights file gave (loaded / missing / unexpected); None: random init
    pretrained_report: WeightsReport | None = None
    #: Backbone BatchNorm in eval mode with frozen running statistics (docs/models.md §2.1, right for
    #: ImageNet-initialised backbones).  CPU presets training from scratch set it False
    #: (``model.norm_eval: false``): frozen statistics of a random network do not normalise.
    norm_eval: bool = True
    #: Class weights of :meth:`cls_loss` (``model.cls_loss_weights``; docs/models.md §2.6).
    cls_loss_weights: tuple[float, float, float] = CLS_LOSS_WEIGHTS

    stage2_trainable: tuple[str, ...] = ("cls_head",)
    #: ``(detection, image classification)`` loss weights of the current stage (docs/models.md §2.7:
    #: stage 1 ``(1, 0)``, stage 2 ``(0, 1)``).
    loss_weights: tuple[float, float] = (1.0, 0.0)
    #: Whether the training forward honours other loss weights (joint detection + classification).
    supports_loss_weights: bool = False

    def set_stage(
        self,
        stage: int,
        stage2_trainable: tuple[str, ...] | list[str] = ("cls_head",),
        loss_weights: tuple[float, float] | None = None,
    ) -> None:
        """Stage 1: train the detector (classification head frozen is *not* required, it simply
        receives no loss). Stage 2: freeze everything except ``cls_head`` (docs/models.md §2.7).

        ``stage2_trainable``: module-name prefixes that stay trainable in stage 2 (the paper: only
        ``cls_head``; a from-scratch CPU preset may add ``backbone``, whose features it never
        learned from ImageNet).  ``loss_weights``: ``(detection, image classification)``, None =
        the paper's for the stage; others need ``supports_loss_weights`` (joint training).
        """
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        paper = (1.0, 0.0) if stage == 1 else (0.0, 1.0)
        weights = paper if loss_weights is None else (float(loss_weights[0]), float(loss_weights[1]))
        if weights != paper and not self.supports_loss_weights:
            raise ValueError(
                f"{type(self).__name__} trains with the paper's loss weights only "
                f"(stage {stage}: {paper}), got {weights} — no joint losses"
            )
        self.stage = stage
        self.stage2_trainable = tuple(stage2_trainable)
        self.loss_weights = weights
        for name, p in self.named_parameters():
            if stage == 2:
                p.requires_grad_(self._in_stage2_trainable(name))
            else:
                p.requires_grad_(self._trainable_in_stage1(name))
        self.train(self.training)

    def start_stage(self, stage: int) -> None:
        """Called once when a training stage starts from its initial weights (not on resume)."""

    def _trainable_in_stage1(self, name: str) -> bool:  # overridden by models freezing a stem
        return True

    def _in_stage2_trainable(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.stage2_trainable)

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        # Frozen statistics: backbone BN always in eval (docs/models.md §2.1); in stage 2 every module
        # outside the classification head is frozen, so it runs in eval mode entirely.
        for name, m in self.named_modules():
            if not name:
                continue
            if self.stage == 2 and not self._in_stage2_trainable(name):
                m.training = False  # this module only: a trainable child (backbone.layer4) keeps its mode
            elif (
                self.norm_eval
                and isinstance(m, nn.modules.batchnorm._BatchNorm)
                and name.startswith(("backbone.", "cls_backbone."))
            ):
                m.eval()
        return self

    def backbone_grad(self):
        """Context for a classification-only backbone forward: autograd in stage 1 and, in stage 2,
        only when some backbone parameter is trainable (``backbone`` or a part of it such as
        ``backbone.layer4`` in ``stage2_trainable``; the paper: frozen, no graph built).  Frozen
        leading stages build no graph either way: autograd starts at the first trainable layer."""
        trains = self.stage == 1 or any(
            p.requires_grad for n, p in self.named_parameters() if n.startswith("backbone.")
        )
        return torch.set_grad_enabled(torch.is_grad_enabled() and trains)

    def image_cls_loss(self, feat: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        """Stage-2 loss: the classification head on ``feat`` vs the targets' ``cls_label``."""
        labels = torch.stack([torch.as_tensor(t["cls_label"]) for t in targets]).to(feat.device).long()
        return {"loss_img_cls": self.cls_loss(self.cls_head(feat), labels)}

    def cls_loss(self, logits: Tensor, cls_labels: Tensor) -> Tensor:
        weight = torch.tensor(self.cls_loss_weights, device=logits.device, dtype=logits.dtype)
        return nn.functional.cross_entropy(logits, cls_labels, weight=weight)
