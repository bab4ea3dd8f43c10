"""The multi-scale deformable sampling core shared by SymAttention and Deformable DETR.

Pure PyTorch, vectorised over batch, heads, queries, levels and points, with two kernels behind
one function (tests check that they agree in value and gradient):

* CUDA — ``grid_sample`` per feature level (≤ 5 levels; fast on GPUs);
* CPU — a weighted *bag sum*: the 4 bilinear taps × points × levels of a (query, head) are rows of
  one table of all value vectors, summed with weights (attention × bilinear × inside) by
  ``F.embedding_bag``; its backward (:class:`_BagSum`) gathers rows by ``index_select`` and
  scatters the value gradient with a second bag sum over the sorted indices.  CPU ``grid_sample``
  reads channels with a stride of H·W and its backward alone costs more than this whole path
  (``benchmarks/bench_models.py``: forward + backward vs a per-point loop).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def ms_deform_sample(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]] | Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
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

    Bilinear sampling has the semantics of ``grid_sample(..., align_corners=False,
    padding_mode="zeros")`` at ``2·loc − 1`` (docs/models.md §2.2), whichever kernel runs.
    """
    shapes = [
        (int(h), int(w))
        for h, w in (spatial_shapes.tolist() if isinstance(spatial_shapes, Tensor) else spatial_shapes)
    ]
    if value.is_cuda or torch.onnx.is_in_onnx_export():  # ONNX GridSample (opset ≥ 16)
        return _grid_sample_core(value, shapes, sampling_locations, attention_weights)
    return _bag_sum_core(value, shapes, sampling_locations, attention_weights)


def _grid_sample_core(
    value: Tensor, shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    n, _, m, d = value.shape
    _, q, _, _, n_points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    out = None
    for lvl, (h, w) in enumerate(shapes):
        # (N, H·W, M, D) → (N·M, D, H, W) with channels-last strides (channels of a pixel contiguous)
        v = (
            value_list[lvl]
            .reshape(n, h, w, m, d)
            .permute(0, 3, 1, 2, 4)
            .reshape(n * m, h, w, d)
            .permute(0, 3, 1, 2)
        )
        # (N, Q, M, P, 2) → (N·M, Q, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(n * m, q, n_points, 2)
        sampled = F.grid_sample(
            v, g.to(v.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (N·M, D, Q, P)
        wl = attention_weights[:, :, :, lvl].transpose(1, 2).reshape(n * m, 1, q, n_points)
        o = (sampled * wl.to(sampled.dtype)).sum(-1)  # (N·M, D, Q): no stack of all levels
        out = o if out is None else out + o
    assert out is not None  # at least one level
    return out.view(n, m * d, q).transpose(1, 2).contiguous()


def _bag_sum_core(
    value: Tensor, shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    n, s, m, d = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    dev, dt = sampling_locations.device, sampling_locations.dtype
    table = value.permute(0, 2, 1, 3).reshape(n * m * s, d)  # row (b, h, i) = b·M·S + h·S + i
    hw = torch.tensor(shapes, dtype=dt, device=dev)
    hl, wl = hw[:, 0].view(n_levels, 1), hw[:, 1].view(n_levels, 1)  # broadcast over P
    start = torch.tensor([0] + [h * w for h, w in shapes][:-1], device=dev).cumsum(0)
    # pixel coordinates (centres at integers), (N, Q, M, L, P); the floor carries no gradient
    x = sampling_locations[..., 0] * wl - 0.5
    y = sampling_locations[..., 1] * hl - 0.5
    x0, y0 = x.detach().floor(), y.detach().floor()
    fx, fy = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)
    cx = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=dt, device=dev)  # the 4 taps
    cy = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=dt, device=dev)
    xs, ys = x0.unsqueeze(-1) + cx, y0.unsqueeze(-1) + cy  # (N, Q, M, L, P, 4)
    bilinear = (1 - fx + cx * (2 * fx - 1)) * (1 - fy + cy * (2 * fy - 1))
    w3, h3 = wl.view(n_levels, 1, 1), hl.view(n_levels, 1, 1)
    inside = (xs >= 0) & (xs < w3) & (ys >= 0) & (ys < h3)  # outside → zeros (padding_mode zeros)
    base = (torch.arange(n, device=dev).view(n, 1, 1) * m + torch.arange(m, device=dev).view(1, 1, m)) * s
    rows = (
        base.view(n, 1, m, 1, 1, 1)
        + start.view(1, 1, 1, n_levels, 1, 1)
        + (ys.clamp(min=0).minimum(h3 - 1) * w3 + xs.clamp(min=0).minimum(w3 - 1)).long()
    )
    weights = (attention_weights.unsqueeze(-1) * bilinear).masked_fill(~inside, 0)
    k = n_levels * n_points * 4
    out = _BagSum.apply(table, rows.reshape(n * q * m, k), weights.reshape(n * q * m, k).to(table.dtype))
    return out.view(n, q, m * d)


class _BagSum(torch.autograd.Function):
    """``out[b] = Σ_k w[b, k] · table[idx[b, k]]`` (``embedding_bag``, mode sum) with a backward
    that avoids ``embedding_bag``'s slow generic one on CPU."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(table, idx, w)
        return F.embedding_bag(idx, table, per_sample_weights=w, mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor):
        table, idx, w = ctx.saved_tensors
        bags, k = idx.shape
        grad_table = grad_w = None
        if ctx.needs_input_grad[0]:  # table row r gets Σ w · grad[bag] over its entries: a bag sum
            flat = idx.reshape(-1)  # over the entries sorted by row
            order = torch.argsort(flat.int() if table.shape[0] < 2**31 else flat)
            counts = torch.bincount(flat, minlength=table.shape[0])
            grad_table = F.embedding_bag(
                torch.div(order, k, rounding_mode="floor"),
                grad,
                offsets=counts.cumsum(0) - counts,
                per_sample_weights=w.reshape(-1)[order],
                mode="sum",
            )
        if ctx.needs_input_grad[2]:  # ⟨grad[bag], table[idx]⟩, gathered in chunks of ~4 M values
            grad_w = torch.empty_like(w)
            step = max(1, (1 << 22) // max(1, bags * table.shape[1]))
            for j in range(0, k, step):
                sel = idx[:, j : j + step]
                gathered = table.index_select(0, sel.reshape(-1)).view(bags, sel.shape[1], -1)
                grad_w[:, j : j + step] = torch.bmm(gathered, grad.unsqueeze(-1)).squeeze(-1)
        return grad_table, None, grad_w
