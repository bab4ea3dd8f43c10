"""Class-activation maps through the ``grad-cam`` package (pytorch-grad-cam), on the input stage of
the image-classification head (docs/models.md §2.6) — the same place for every tbx model.

Every Detector computes its image-class logits as ``self.cls_head(features)`` inside ``predict``
(C5 of the ResNet for the RetinaNet / Faster R-CNN / FCOS / Deformable DETR families, ``fc7`` for
SSD).  :func:`tapped_head` swaps ``cls_head`` for a wrapper that routes the head's input through an
``nn.Identity`` (the Grad-CAM *target layer*) and runs the head with autograd on, on a detached
copy of that input: the backward pass of a gradient method then runs through the head only,
never through the (frozen, BN-folded) backbone or the detector.  The network the CAM library sees
(:class:`_ClassifierView`) maps a batch of normalised input images to those logits by calling the
model's own ``predict`` — so the boxes of the same forward pass come along for the overlays.

The maps come back in the network's (padded) input frame, min–max scaled to [0, 1] by the library;
:mod:`tbx.explain.maps` maps them to each source image.  Methods that need the gradient with respect
to the *input image* (FullGrad, guided backprop) or hundreds of extra forward passes per image
(Score-CAM, Ablation-CAM: one per channel of C5, 2048 at ResNet-50) are not offered.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from tbx.errors import TbxError
from tbx.models.base import Prediction

#: ``--method`` name → the pytorch-grad-cam class.
CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "gradcamelementwise": "GradCAMElementWise",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
}
#: Methods whose map does not depend on the target class (the first principal component of C5).
CLASS_AGNOSTIC = frozenset({"eigencam"})
#: ``--target`` → class index of the head (docs/protocol.md §4.1: healthy, sick, TB); ``pred``: the
#: predicted class of each image.
TARGETS: dict[str, int | None] = {"tb": 2, "sick": 1, "healthy": 0, "pred": None}
CLASS_NAMES = ("healthy", "sick", "tb")

INSTALL_HINT = "install the optional extra: pip install 'tbx[explain]' (the grad-cam package)"


def cam_class(method: str) -> Any:
    """The pytorch-grad-cam class of ``method`` (a key of :data:`CAM_METHODS`)."""
    try:
        lib = importlib.import_module("pytorch_grad_cam")
    except ImportError:
        raise TbxError(
            f"--method {method} needs the grad-cam package, which is not installed", fix=INSTALL_HINT
        ) from None
    return getattr(lib, CAM_METHODS[method])


class _TappedHead(nn.Module):
    """``head`` behind an ``nn.Identity`` tap on its input, run with autograd on a detached copy."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head
        self.tap = nn.Identity()
        self.logits: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        with torch.enable_grad():
            a = self.tap(x.detach().float().requires_grad_(True))
            self.logits = self.head(a)
        return self.logits


@contextlib.contextmanager
def tapped_head(model: nn.Module) -> Iterator[_TappedHead]:
    """Temporarily replace ``model.cls_head`` by a :class:`_TappedHead` (restored on exit)."""
    head = getattr(model, "cls_head", None)
    if not isinstance(head, nn.Module):
        raise TbxError(
            f"{type(model).__name__} has no image-classification head (cls_head)",
            fix="explain a tbx detector (see `tbx models list`)",
        )
    tapped = _TappedHead(head)
    model.cls_head = tapped
    try:
        yield tapped
    finally:
        model.cls_head = head


class _ClassifierView(nn.Module):
    """Normalised input images → the classification head's logits, via ``model.predict``."""

    def __init__(self, model: nn.Module, tapped: _TappedHead, image_sizes: Sequence[tuple[int, int]]):
        super().__init__()
        self.model = model
        self.tapped = tapped
        self.image_sizes = list(image_sizes)
        self.preds: list[Prediction] = []

    def forward(self, images: Tensor) -> Tensor:
        self.preds = cast(Any, self.model).predict(images, self.image_sizes)
        if self.tapped.logits is None:
            raise RuntimeError(f"{type(self.model).__name__}.predict did not call cls_head")
        return self.tapped.logits


def cam_maps(
    model: nn.Module, images: Tensor, image_sizes: Sequence[tuple[int, int]], method: str, target: str
) -> tuple[np.ndarray, list[Prediction], list[int]]:
    """One batch: ``(maps (N, H, W) float32 in the padded input frame, predictions, target class of
    each image)``.  ``images``: normalised ``(N, 3, H, W)`` (the Detector contract)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = cam_class(method)
    index = TARGETS[target]
    with tapped_head(model) as tapped:
        view = _ClassifierView(model, tapped, image_sizes)
        targets = None if index is None else [ClassifierOutputTarget(index) for _ in range(len(images))]
        with cls(model=view, target_layers=[tapped.tap]) as cam:
            maps = cam(input_tensor=images, targets=targets)
            logits = cam.outputs.detach().float()
    classes = logits.argmax(-1).tolist() if index is None else [index] * len(images)
    return np.asarray(maps, dtype=np.float32), view.preds, [int(c) for c in classes]
