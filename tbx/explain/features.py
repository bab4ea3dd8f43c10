"""The paper's feature visualisation (its Fig. 6): the feature pyramid after the symmetric block,
beside the same maps before it, so a reader sees what SymAttention changes.

- SymFormer w/ RetinaNet: the FPN levels P3–P7 entering the SAS block (docs/models.md §2.1 step 3)
  and the levels it returns;
- SymFormer w/ Deformable DETR: the projected levels entering the SymAttention encoder
  (docs/models.md §3) and the encoder's output memory, split back into levels.

Each level is pooled over channels into one map: the L2 norm of the feature vector minus the
level's mean feature vector (over the valid, unpadded positions of the image).  The plain channel
mean (mmdetection's ``draw_featmap``) is flat after the encoder's LayerNorm — it normalises every
position's vector to zero mean and unit variance — so what varies spatially is how a position's
feature differs from the typical one; a lesion stands out as a bright spot.  Each pooled level is
min–max scaled to [0, 1] over the valid positions, upsampled (bilinear) to the padded input frame
and the levels are averaged: one fused map per image, before and after.

Other models have no symmetric block: :func:`pyramid_hooks` raises one clear :class:`TbxError`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tbx.errors import TbxError
from tbx.models.base import Prediction
from tbx.models.sas import SASBlock


def _unflatten(flat: Tensor, shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """``(N, S, C)`` tokens of the concatenated levels → per level ``(N, C, H_l, W_l)``."""
    out, start = [], 0
    for h, w in shapes:
        out.append(flat[:, start : start + h * w].transpose(1, 2).reshape(flat.shape[0], -1, h, w))
        start += h * w
    return out


def pyramid_names(model: nn.Module) -> tuple[str, str]:
    """Captions of the two maps: ``(before, after)``."""
    if isinstance(getattr(model, "sas", None), SASBlock):
        return "FPN, before the SAS block", "after the SAS block"
    return "encoder input", "after the SymAttention encoder"


@contextlib.contextmanager
def pyramid_hooks(model: nn.Module, model_name: str | None = None) -> Iterator[dict[str, list[Tensor]]]:
    """Hooks that fill ``{"before": [levels], "after": [levels]}`` during ``model.predict``."""
    store: dict[str, list[Tensor]] = {}
    handles = []
    sas = getattr(model, "sas", None)
    encoder = getattr(getattr(model, "transformer", None), "encoder", None)
    if isinstance(sas, SASBlock):

        def on_sas(_m: nn.Module, args: tuple, out: list[Tensor]) -> None:
            store["before"] = [f.detach() for f in args[0]]
            store["after"] = [f.detach() for f in out]

        handles.append(sas.register_forward_hook(on_sas))
    elif getattr(model, "sym", False) and isinstance(encoder, nn.ModuleList) and len(encoder):
        shapes: list[tuple[int, int]] = []

        def on_enc_in(_m: nn.Module, args: tuple) -> None:
            shapes[:] = [(int(h), int(w)) for h, w in args[3]]
            store["before"] = _unflatten(args[0].detach(), shapes)

        def on_enc_out(_m: nn.Module, _args: tuple, out: Tensor) -> None:
            store["after"] = _unflatten(out.detach(), shapes)

        handles.append(encoder[0].register_forward_pre_hook(on_enc_in))
        handles.append(encoder[-1].register_forward_hook(on_enc_out))
    else:
        name = model_name or type(model).__name__
        raise TbxError(
            f"--method features shows the feature pyramid before/after the symmetric block, "
            f"which only SymFormer models have (this model: {name})",
            fix="use symformer_retinanet / symformer_deformable_detr, or a Grad-CAM method "
            "(--method gradcam) for this model",
        )
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def pool_level(feat: Tensor, valid: Sequence[tuple[int, int]]) -> Tensor:
    """``(N, C, h, w)`` → ``(N, h, w)`` in [0, 1]: ‖f − mean f‖₂ over channels, min–max scaled over
    each image's ``valid`` ``(rows, cols)`` (0 in the padding)."""
    n, _, h, w = feat.shape
    out = torch.zeros((n, h, w), dtype=torch.float32, device=feat.device)
    for k, (vh, vw) in enumerate(valid):
        f = feat[k, :, :vh, :vw].float()
        m = (f - f.mean(dim=(1, 2), keepdim=True)).norm(dim=0)
        lo, hi = m.min(), m.max()
        out[k, :vh, :vw] = (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)
    return out


def fuse_levels(
    levels: Sequence[Tensor], input_hw: tuple[int, int], image_sizes: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Per level :func:`pool_level`, upsampled to the padded input frame, averaged → ``(N, H, W)``."""
    H, W = input_hw
    acc = torch.zeros((levels[0].shape[0], H, W), dtype=torch.float32, device=levels[0].device)
    for feat in levels:
        fh, fw = feat.shape[-2:]
        valid = [(min(fh, math.ceil(h * fh / H)), min(fw, math.ceil(w * fw / W))) for h, w in image_sizes]
        pooled = pool_level(feat, valid)[:, None]
        acc += F.interpolate(pooled, size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    return (acc / len(levels)).cpu().numpy()


@torch.no_grad()
def feature_maps(
    model: nn.Module, images: Tensor, image_sizes: Sequence[tuple[int, int]], model_name: str | None = None
) -> tuple[np.ndarray, np.ndarray, list[Prediction]]:
    """One batch: ``(before (N, H, W), after (N, H, W), predictions)`` in the padded input frame."""
    with pyramid_hooks(model, model_name) as store:
        preds = cast(Any, model).predict(images, list(image_sizes))
    if "after" not in store:
        raise RuntimeError(f"{type(model).__name__}.predict did not run its symmetric block")
    hw = (int(images.shape[-2]), int(images.shape[-1]))
    return fuse_levels(store["before"], hw, image_sizes), fuse_levels(store["after"], hw, image_sizes), preds
