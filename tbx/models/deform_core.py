"""The multi-scale deformable sampling core shared by SymAttention and Deformable DETR.

Pure PyTorch (``grid_sample``), vectorised over batch, heads, queries and points; the only Python
loop is over feature levels (≤ 4).  A fused CUDA kernel may later be added behind this function.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def ms_deform_sample(value: Tensor, spatial_shapes: Sequence[tuple[int, int]] | Tensor,
                     sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Weighted bilinear sampling of multi-level value maps at fractional locations.

    Args:
        value: ``(N, S, M, D)`` — values of all levels flattened row-major and concatenated,
            ``S = Σ_l H_l·W_l``; ``M`` heads of ``D`` channels.
        spatial_shapes: ``L`` pairs ``(H_l, W_l)``.
        sampling_locations: ``(N, Q, M, L, P, 2)`` — ``(x, y)`` in ``[0, 1]`` normalised image
            coordinates (pixel centres at ``(j + 0.5) / W``); outside → zeros.
        attention_weights: ``(N, Q, M, L, P)`` — weights of each sample.

    Returns:
        ``(N, Q, M·D)`` — per query, per head ``Σ_{l,p} w · bilinear(value_l, loc)``, heads concatenated.

    Bilinear sampling uses ``grid_sample(..., align_corners=False, padding_mode="zeros")`` at
    ``2·loc − 1`` (SPEC §2.2).
    """
    n, _, m, d = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in (spatial_shapes.tolist() if isinstance(spatial_shapes, Tensor)
                                            else spatial_shapes)]
    value_list = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # (N, H·W, M, D) → (N·M, D, H, W)
        v = value_list[lvl].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # (N, Q, M, P, 2) → (N·M, Q, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(n * m, q, n_points, 2)
        sampled.append(F.grid_sample(v, g.to(v.dtype), mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # (N·M, D, Q, P)
    # (N·M, D, Q, L·P) weighted by (N·M, 1, Q, L·P)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    w = attention_weights.transpose(1, 2).reshape(n * m, 1, q, n_levels * n_points)
    out = (stacked * w.to(stacked.dtype)).sum(-1)  # (N·M, D, Q)
    return out.view(n, m * d, q).transpose(1, 2).contiguous()
