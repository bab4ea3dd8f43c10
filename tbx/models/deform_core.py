"""The multi-scale deformable sampling core shared by SymAttention and Deformable DETR.

Pure PyTorch, vectorised over batch, heads, queries, levels and points, with two kernels behind
one function (tests check that they agree in value and gradient):

* CUDA — ``grid_sample`` per feature level (≤ 5 levels; fast on GPUs);
* CPU — a weighted *bag sum*: the 4 bilinear taps × points × levels of a (query, head) are rows of
  one table of all value vectors (each map padded by two zero pixels, so a sample's taps are rows
  ``r, r + 1, r + W', r + W' + 1``, and a sample outside the map, clamped into the border, reads
  only zeros), summed with weights (attention × bilinear) by ``F.embedding_bag``; its backward
  (:class:`_BilinearBagSum`) scatters the value gradient as 4 bag sums over the sorted top-left
  rows and gets the weight gradients from a sampled sparse matmul.
  CPU ``grid_sample`` reads channels with a stride of H·W and its backward alone costs more than
  this whole path (``benchmarks/bench_models.py``: forward + backward vs a per-point loop).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def ms_deform_sample(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]] | Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    per_level: bool = False,
) -> Tensor:
    """Weighted bilinear sampling of multi-level value maps at fractional locations.

    Args:
        value: ``(N, S, M, D)`` — values of all levels flattened row-major and concatenated,
            ``S = Σ_l H_l·W_l``; ``M`` heads of ``D`` channels.
        spatial_shapes: ``L`` pairs ``(H_l, W_l)``.
        sampling_locations: ``(N, Q, M, L, P, 2)`` — ``(x, y)`` in ``[0, 1]`` normalised image
            coordinates (pixel centres at ``(j + 0.5) / W``); outside → zeros.
        attention_weights: ``(N, Q, M, L, P)`` — weights of each sample.
        per_level: the queries are the ``S`` positions of the maps themselves (``Q = S``, ``L`` of
            the location/weight tensors 1) and each samples only its own map, at locations
            normalised by that map's size — one call for the SAS block's independent levels.

    Returns:
        ``(N, Q, M·D)`` — per query, per head ``Σ_{l,p} w · bilinear(value_l, loc)``, heads concatenated.

    Bilinear sampling has the semantics of ``grid_sample(..., align_corners=False,
    padding_mode="zeros")`` at ``2·loc − 1`` (docs/models.md §2.2), whichever kernel runs.
    """
    shapes = [
        (int(h), int(w))
        for h, w in (spatial_shapes.tolist() if isinstance(spatial_shapes, Tensor) else spatial_shapes)
    ]
    if per_level and (sampling_locations.shape[3] != 1 or sampling_locations.shape[1] != value.shape[1]):
        raise ValueError("per_level sampling needs one location level and one query per value position")
    if value.is_cuda or torch.onnx.is_in_onnx_export():  # ONNX GridSample (opset ≥ 16)
        if not per_level:
            return _grid_sample_core(value, shapes, sampling_locations, attention_weights)
        outs, start = [], 0
        for h, w in shapes:
            part = slice(start, start + h * w)
            outs.append(
                _grid_sample_core(
                    value[:, part], [(h, w)], sampling_locations[:, part], attention_weights[:, part]
                )
            )
            start += h * w
        return torch.cat(outs, 1)
    return _bag_sum_core(value, shapes, sampling_locations, attention_weights, per_level)


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
    value: Tensor,
    shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    per_level: bool = False,
) -> Tensor:
    n, _, m, d = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    dev, dt = sampling_locations.device, sampling_locations.dtype
    # one table of all value vectors, each (batch, head, level) map padded by a zero pixel all round:
    # the 4 taps of a sample are then rows r, r + 1, r + W', r + W' + 1 of the same padded map
    levels, row = [], 0
    for h, w in shapes:
        levels.append((row, n * m * (h + 4) * (w + 4), w + 4))
        row += n * m * (h + 4) * (w + 4)
    # zeros, then each map's interior copied in (one pass over the values; pad + cat took two);
    # a border of 2: the taps of a sample clamped to x0 ∈ [−2, W] all lie in it (no inside masks)
    table = value.new_zeros(row, d)
    values = value.split([h * w for h, w in shapes], dim=1)
    for (h, w), (s, size, _), v in zip(shapes, levels, values, strict=True):
        interior = table[s : s + size].view(n, m, h + 4, w + 4, d)[:, :, 2 : h + 2, 2 : w + 2]
        interior.copy_(v.reshape(n, h, w, m, d).permute(0, 3, 1, 2, 4))  # (N, M, H, W, D)
    # per (level, point) constants over the G = L·P samples of a bag (rows: bags = (batch, query, head))
    bags, groups = n * q * m, n_levels * n_points
    nm = torch.arange(n, device=dev).view(n, 1, 1) * m + torch.arange(m, device=dev).view(1, 1, m)
    wl: Tensor | float
    hl: Tensor | float
    if per_level:  # each bag's own level: (bags, G) constants (broadcasting (bags, 1) is slow)
        wl, hl, base = _per_level_geometry(shapes, levels, n, m, n_points, dev, dt)
    else:
        geo = torch.tensor(
            [(w, h, s, size // (n * m), w + 4) for (h, w), (s, size, _) in zip(shapes, levels, strict=True)],
            device=dev,
        ).repeat_interleave(n_points, dim=0)
        # one level (the SAS block): plain numbers, as broadcasting a (G,) vector over (bags, 4) is slow
        start: Tensor | int
        area: Tensor | int
        wl, hl, start, area, wp = (
            (geo[:, 0].to(dt), geo[:, 1].to(dt), geo[:, 2], geo[:, 3], geo[:, 4])
            if n_levels > 1
            else (float(shapes[0][1]), float(shapes[0][0]), 0, levels[0][1] // (n * m), shapes[0][1] + 4)
        )
        # row of the pixel (0, 0) of the bag's map (batch, head): start + nm·area + 2·W' + 2
        base = start + nm.expand(n, q, m).reshape(bags, 1) * area + 2 * wp + 2
    # pixel coordinates (centres at integers), (bags, G); the floor carries no gradient
    loc = sampling_locations.reshape(bags, groups, 2)
    x = loc[..., 0] * wl - 0.5
    y = loc[..., 1] * hl - 0.5
    x0, y0 = x.detach().floor(), y.detach().floor()
    # top-left tap's row in the padded table, clamped to [−2, W]: a tap outside the map (one that
    # grid_sample's padding_mode zeros reads as 0) then lies in the zero border
    px = x0.clamp(-2, None).minimum(wl) if isinstance(wl, Tensor) else x0.clamp(-2, wl)
    py = y0.clamp(-2, None).minimum(hl) if isinstance(hl, Tensor) else y0.clamp(-2, hl)
    wp_rows = wl.long() + 4 if isinstance(wl, Tensor) else int(wl) + 4  # W' of the bag's map
    r00 = py.long() * wp_rows + px.long() + base
    idx = _stack_last([r00, r00 + 1, r00 + wp_rows, r00 + wp_rows + 1]).view(bags, groups * 4)
    out = _BilinearBagSum.apply(
        table,
        idx,
        attention_weights.reshape(bags, groups).to(table.dtype),
        (x - x0).to(table.dtype),
        (y - y0).to(table.dtype),
        levels,
    )
    return out.view(n, q, m * d)


def _stack_last(tensors: list[Tensor]) -> Tensor:
    """``torch.stack(tensors, -1)`` (no autograd) by strided copies: CPU ``stack``/``cat`` along a
    new last axis of 4 copies element by element (≈ 10× slower for float tensors)."""
    out = tensors[0].new_empty(*tensors[0].shape, len(tensors))
    for i, t in enumerate(tensors):
        out[..., i] = t
    return out


_GEOMETRY_CACHE: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}


def _per_level_geometry(
    shapes: list[tuple[int, int]],
    levels: list[tuple[int, int, int]],
    n: int,
    m: int,
    n_points: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(W_l, H_l, base row)`` of each (bag, point) for per-level sampling, ``(bags, P)`` each
    (cached per shapes: they depend on nothing else)."""
    key = (tuple(shapes), n, m, n_points, str(device), dtype, torch.is_inference_mode_enabled())
    geo = _GEOMETRY_CACHE.get(key)
    if geo is None:
        if len(_GEOMETRY_CACHE) > 32:
            _GEOMETRY_CACHE.clear()
        per_query = []
        for (h, w), (start, size, wp) in zip(shapes, levels, strict=True):
            # (batch, query, head) of this level: row of its padded pixel (0, 0) in the table
            maps = torch.arange(n * m, device=device).view(n, 1, m) * (size // (n * m)) + start + 2 * wp + 2
            base = maps.expand(n, h * w, m)
            size_wh = torch.tensor([w, h], dtype=dtype, device=device).expand(n, h * w, m, 2)
            per_query.append((size_wh, base))
        size_wh = torch.cat([p[0] for p in per_query], 1).reshape(-1, 1, 2).expand(-1, n_points, 2)
        base = torch.cat([p[1] for p in per_query], 1).reshape(-1, 1).expand(-1, n_points)
        geo = (size_wh[..., 0].contiguous(), size_wh[..., 1].contiguous(), base.contiguous())
        _GEOMETRY_CACHE[key] = geo
    return geo


def _tap_rows(levels: list[tuple[int, int, int]], tap: int) -> list[tuple[slice, slice]]:
    """Per level, (top-left rows, tap rows) of tap ``tap`` (0 top-left, 1 right, 2 below, 3 both)."""
    pairs = []
    for s, size, wp in levels:
        o = (0, 1, wp, wp + 1)[tap]
        pairs.append((slice(s, s + size - o), slice(s + o, s + size)))
    return pairs


class _BilinearBagSum(torch.autograd.Function):
    """``out[b] = Σ_j a[b, j] · Σ_{y, x ∈ {0, 1}} wy · wx · table[idx[b, 4j + 2y + x]]``: bilinear
    samples at fractions ``(fx, fy)`` with tap weights ``wx = (1 − fx, fx)`` (a tap outside the map
    reads a row of the zero border), summed by one ``embedding_bag``.  The taps of sample ``j`` are rows
    ``r, r + 1, r + W', r + W' + 1`` of a padded map, and the backward uses that: the value gradient
    is 4 bag sums over the top-left rows sorted once; the gradients of ``a``, ``fx`` and ``fy`` come
    from ⟨grad[b], table[idx[b, k]]⟩, computed only at those entries by a sampled sparse matmul
    (``torch.sparse.sampled_addmm``) — never a gathered copy of all taps.  Every per-sample tensor
    is a contiguous ``(bags, G)`` (CPU broadcasting over inner dims of 2 or 4 is slow)."""

    @staticmethod
    def forward(
        ctx: Any,
        table: Tensor,
        idx: Tensor,
        a: Tensor,
        fx: Tensor,
        fy: Tensor,
        levels: list[tuple[int, int, int]],
    ) -> Tensor:
        wx0, wx1 = 1 - fx, fx
        wy0, wy1 = 1 - fy, fy
        ay0, ay1 = a * wy0, a * wy1
        w = (ay0 * wx0, ay0 * wx1, ay1 * wx0, ay1 * wx1)  # the 4 taps' weights
        ctx.save_for_backward(table, idx, a, wx0, wx1, wy0, wy1, *w)
        ctx.levels = levels
        weights = _stack_last(list(w)).view(idx.shape)
        return F.embedding_bag(idx, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        table, idx, a, wx0, wx1, wy0, wy1, *w = ctx.saved_tensors
        levels: list[tuple[int, int, int]] = ctx.levels
        bags, groups = a.shape
        rows, d = table.shape
        grad = grad.contiguous()
        grad_table = grad_a = grad_fx = grad_fy = None
        if ctx.needs_input_grad[0]:  # row r gets Σ w · grad[bag] over the taps reading it
            r00 = idx.view(-1, 4)[:, 0]
            order = torch.argsort(r00.int() if rows < 2**31 else r00)
            counts = torch.bincount(r00, minlength=rows)
            offsets = counts.cumsum(0) - counts
            bag = torch.div(order, groups, rounding_mode="floor")
            grad_table = torch.zeros_like(table)
            for tap in range(4):
                part = F.embedding_bag(
                    bag,
                    grad,
                    offsets=offsets,
                    per_sample_weights=w[tap].reshape(-1).index_select(0, order),
                    mode="sum",
                )
                for top_left, rows_of_tap in _tap_rows(levels, tap):
                    grad_table[rows_of_tap] += part[top_left]
        if any(ctx.needs_input_grad[2:5]):
            # dot[k] = ⟨grad[b], table[idx[b, k]]⟩ only where idx points: a sampled matmul
            k = idx.shape[1]
            crow = torch.arange(0, bags * k + 1, k, device=idx.device)
            # sampled_addmm takes float32 / float64 only (bf16, fp16: computed in float32)
            dot_dt = grad.dtype if grad.dtype in (torch.float32, torch.float64) else torch.float32
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                pattern = torch.sparse_csr_tensor(
                    crow,
                    idx.reshape(-1),
                    grad.new_zeros(idx.numel(), dtype=dot_dt),
                    size=(bags, rows),
                    check_invariants=False,
                )
                dots = torch.sparse.sampled_addmm(pattern, grad.to(dot_dt), table.to(dot_dt).t(), beta=0.0)
            dots = dots.values().to(grad.dtype)
            d00, d01, d10, d11 = dots.view(bags, groups, 4).unbind(-1)
            row0, row1 = d00 * wx0 + d01 * wx1, d10 * wx0 + d11 * wx1  # along x, per tap row
            col0, col1 = d00 * wy0 + d10 * wy1, d01 * wy0 + d11 * wy1  # along y, per tap column
            grad_a = row0 * wy0 + row1 * wy1
            # (a tap in the zero border has a zero dot: no inside masks needed here either)
            grad_fx = a * (col1 - col0)
            grad_fy = a * (row1 - row0)
        return grad_table, None, grad_a, grad_fx, grad_fy, None
