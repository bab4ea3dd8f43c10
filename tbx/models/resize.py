"""The antialiased bilinear downscale of the classification branch as two matrix products.

``F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False, antialias=True)`` is a
separable linear map: ``out = A_h · x · A_wᵀ`` per image and channel.  torch has no ONNX export for
the antialiased resize, so the exported graph (``tbx export``) runs these two MatMuls instead, with
the matrices computed here in numpy — constants of the graph.  The weights follow the rule torch
(and PIL) use for antialiased downscaling: output pixel ``i`` is centred at ``(i + 0.5) / s`` in
input pixels; with ``support = max(1, 1/s)`` it takes the input pixels ``j`` in
``[int(centre − support + 0.5), int(centre + support + 0.5))``, weighed by the triangle filter
``max(0, 1 − |(j − centre + 0.5) / support|)`` and normalised to sum 1 (for ``s ≥ 1`` the support
is 1 and the filter plain bilinear).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


@lru_cache(maxsize=16)
def resize_matrix(n: int, scale: float) -> np.ndarray:
    """``(floor(n · scale), n)`` float32: one axis of the antialiased bilinear resize by ``scale``.

    Computed in float32 in torch's order of operations: the centre of a far output pixel then
    carries torch's rounding (an ulp at 141 is 1.5e-5), so the weights agree to float precision."""
    f = np.float32
    m = math.floor(n * scale)
    inv = f(1.0 / scale)
    support = inv if inv >= 1.0 else f(1.0)  # the filter widens when downscaling (antialias)
    filt_scale = f(1.0) / inv if inv >= 1.0 else f(1.0)
    out = np.zeros((m, n), dtype=np.float32)
    for i in range(m):
        centre = inv * f(i + 0.5)
        lo = max(int(centre - support + f(0.5)), 0)
        hi = min(int(centre + support + f(0.5)), n)
        j = np.arange(hi - lo, dtype=np.float32)
        w = np.maximum(f(0.0), f(1.0) - np.abs((j + f(lo) - centre + f(0.5)) * filt_scale))
        total = w.sum(dtype=np.float32)
        if total > 0:
            out[i, lo:hi] = w / total
    return out


def resize_as_matmul(images: Tensor, scale: float) -> Tensor:
    """``images`` (N, C, H, W) resized by ``scale`` as :func:`resize_matrix` products (ONNX MatMul)."""
    h, w = int(images.shape[-2]), int(images.shape[-1])
    ah = torch.from_numpy(resize_matrix(h, scale)).to(images)
    aw = torch.from_numpy(resize_matrix(w, scale)).to(images)
    return ah @ images @ aw.T
