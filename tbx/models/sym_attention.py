"""SymAttention: multi-scale deformable attention that samples around the mirrored position.

docs/models.md §2.2.  Each query ``q`` at reference point ``r = (x, y)`` (normalised, ``[0, 1]``) predicts per
head ``m``, level ``l`` and point ``k`` an offset ``Δ`` (in pixels of level ``l``) and a weight
(softmax over the ``L·K`` samples of the head).  The sampling location is::

    loc = r + Δ / (W_l, H_l)          (deformable attention, Zhu et al. 2021)
    loc.x ← 1 − loc.x                 (SymAttention: mirror about the vertical midline; mirror=True)

so that with zero offsets the query at pixel ``(i, j)`` reads the bilaterally symmetric pixel
``(i, W−1−j)``.  With ``mirror=False`` this is plain deformable attention (ablation, docs/models.md §2.3).

Mirroring is about the midline of the (possibly padded) feature map, as docs/models.md §2.2 states; images
are padded bottom/right only, so for a padded image the mirror of a valid pixel may fall in the
padding (whose values are zeroed by ``value_padding_mask``).  Training batches of TBX11K images are
square 512 × 512, so in practice nothing is padded.

Initialisation follows the *intent* of the official code (docs/models.md §2.2): offset-layer weight zero and
bias pointing head ``h`` along angle ``2πh/M`` (normalised so ``max(|cos|, |sin|) = 1``) with point
``k`` scaled by ``k + 1``; attention-weight layer weight and bias zero (uniform weights); value and
output projections Xavier-uniform with zero bias.  (The official code overwrote the first two with
Xavier by accident.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tbx.models.deform_core import ms_deform_sample
from tbx.models.inference import PackedWeight, onednn_fast_path


class InferenceLinear(nn.Linear):
    """``nn.Linear`` (same parameters, state-dict keys and MAC hooks) whose CPU float32 forward
    with autograd off runs oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``,
    :func:`tbx.models.inference.onednn_fast_path`): ~1.2× the GMAC/s of the default ``addmm`` at
    the SAS block's shapes on one thread, the same numbers up to float reassociation.  Autograd,
    ONNX export, CUDA and other dtypes take ``F.linear``."""

    relu = False  # a fused ReLU (set by SymEncoderLayer.fuse_for_inference)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.packed = PackedWeight()  # oneDNN's layout of the weight, for the fast path

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """``x·Wᵀ + b``, then ``+ residual`` (given) or the ReLU (``relu``): either in the same
        oneDNN call — a residual sum is a full pass over the output otherwise."""
        if residual is not None and self.relu:
            raise ValueError("InferenceLinear fuses a residual sum or a ReLU, not both")
        if onednn_fast_path(x):
            rows = x.numel() // x.shape[-1]
            weight = self.packed.get(self.weight, lambda w: torch.ops.mkldnn._reorder_linear_weight(w, rows))
            if residual is not None:
                return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, self.bias, "add")
            act = "relu" if self.relu else "none"
            return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, act, [], "")
        y = F.linear(x, self.weight, self.bias)
        if residual is not None:
            return y + residual
        return F.relu(y) if self.relu else y


def _shape_list(spatial_shapes: Sequence[tuple[int, int]] | Tensor) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


class SymAttention(nn.Module):
    """Multi-scale deformable attention; ``mirror=True`` makes it SymAttention (docs/models.md §2.2).

    Args:
        d_model: channels ``C`` (256).
        n_heads: heads ``M`` (8); ``C`` must be divisible by ``M``.
        n_levels: feature levels ``L`` the value holds (1 in the SAS block, 4 in Deformable DETR).
        n_points: sampling points ``K`` per head and level (4).
        mirror: mirror the sampling locations (``x ↦ 1 − x``) — SymAttention; False → vanilla.

    The caller applies dropout + residual + norm.
    """

    def __init__(
        self, d_model: int = 256, n_heads: int = 8, n_levels: int = 1, n_points: int = 4, mirror: bool = True
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_heads, self.n_levels, self.n_points = d_model, n_heads, n_levels, n_points
        self.mirror = mirror
        self.sampling_offsets = InferenceLinear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = InferenceLinear(d_model, n_heads * n_levels * n_points)
        self.value_proj = InferenceLinear(d_model, d_model)
        self.output_proj = InferenceLinear(d_model, d_model)
        # inference only (tbx.models.inference.prepare_for_inference): both query projections in one
        self.query_proj: InferenceLinear | None = None
        self.reset_parameters()

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        """Run ``sampling_offsets`` and ``attention_weights`` (both read the query) as one matrix
        product, ``query_proj`` — a copy of their weights, for a model that will not train again
        (``tbx.models.inference.prepare_for_inference`` calls this)."""
        so, aw = self.sampling_offsets, self.attention_weights
        fused = InferenceLinear(self.d_model, so.out_features + aw.out_features, device=so.weight.device)
        fused.weight.copy_(torch.cat([so.weight, aw.weight]))
        fused.bias.copy_(torch.cat([so.bias, aw.bias]))
        self.query_proj = fused.requires_grad_(False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # docs/models.md §2.2: zero offset weight, directional offset bias, zero attention-weight layer.
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Sequence[tuple[int, int]] | Tensor,
        value_padding_mask: Tensor | None = None,
        per_level: bool = False,
        residual: Tensor | None = None,
    ) -> Tensor:
        """Attend from each query to ``n_levels × n_points`` (mirrored) samples per head.

        Args:
            query: ``(N, Q, C)`` — queries, positional encoding already added.
            reference_points: ``(N, Q, L, 2)`` normalised ``(x, y)`` in ``[0, 1]`` per level
                (``(N, Q, 2)`` is accepted and broadcast to every level).
            value: ``(N, S, C)`` — all levels flattened row-major and concatenated.
            spatial_shapes: ``L`` pairs ``(H_l, W_l)`` (list or ``LongTensor (L, 2)``).
            value_padding_mask: ``(N, S)`` bool, True = padding (its values are zeroed).
            per_level: the SAS block's batching (``n_levels`` must be 1): ``query`` and ``value``
                both hold the tokens of the ``spatial_shapes`` maps concatenated (``Q = S``), and
                each query attends to its own map only — the same numbers as one call per map,
                with every projection run once over all maps.
            residual: ``(N, Q, C)`` added to the output projection's result in the same call
                (the caller's residual sum when no dropout comes between them).

        Returns:
            ``(N, Q, C)`` — after the output projection (+ ``residual``; no dropout or norm).
        """
        n, q, c = query.shape
        s = value.shape[1]
        m, lv, k = self.n_heads, self.n_levels, self.n_points
        shape_list = _shape_list(spatial_shapes)  # host ints (also fine on the meta device)
        if per_level:
            if lv != 1 or q != s:
                raise ValueError(f"per_level needs n_levels 1 and one query per value, got {lv}, {q}, {s}")
        elif len(shape_list) != lv:
            raise ValueError(f"expected {lv} levels, got spatial_shapes of {len(shape_list)}")
        if sum(h * w for h, w in shape_list) != s:
            raise ValueError(
                f"value has {s} tokens but spatial_shapes sum to {sum(h * w for h, w in shape_list)}"
            )
        v = self.value_proj(value)
        if value_padding_mask is not None:
            v = v.masked_fill(value_padding_mask[..., None], 0.0)
        v = v.view(n, s, m, c // m)
        n_off = m * lv * k * 2
        if self.query_proj is not None and not torch.is_grad_enabled():
            both = self.query_proj(query)
            offsets, logits = both[..., :n_off], both[..., n_off:]
        else:
            offsets, logits = self.sampling_offsets(query), self.attention_weights(query)
        offsets = offsets.reshape(n, q, m, lv, k, 2)
        weights = softmax_last(logits.reshape(n, q, m, lv * k)).view(n, q, m, lv, k)
        if reference_points.dim() == 3:
            reference_points = reference_points[:, :, None, :].expand(n, q, lv, 2)
        # offsets are in pixels of each level (of each query's own map with per_level): ÷ (W, H);
        # docs/models.md §2.2 mirrors about the vertical midline, y unchanged: x ↦ 1 − x, folded
        # into the reference point and the sign of the x scale
        sizes = torch.tensor([[w, h] for h, w in shape_list], dtype=offsets.dtype, device=offsets.device)
        sign = torch.tensor([-1.0 if self.mirror else 1.0, 1.0], dtype=offsets.dtype, device=offsets.device)
        if per_level:
            counts = torch.tensor([h * w for h, w in shape_list], device=offsets.device)
            scale = (sign / sizes).repeat_interleave(counts, 0, output_size=q)[None, :, None, None, None, :]
        else:
            scale = (sign / sizes)[None, None, None, :, None, :]
        if self.mirror:
            reference_points = torch.stack([1.0 - reference_points[..., 0], reference_points[..., 1]], -1)
        loc = reference_points[:, :, None, :, None, :] + offsets * scale
        out = ms_deform_sample(v, shape_list, loc, weights, per_level=per_level)
        return self.output_proj(out, residual)


def softmax_last(x: Tensor) -> Tensor:
    """``F.softmax(x, -1)`` for a short last axis (the 4–16 samples of a head): computed along the
    first axis of the transposed ``(G, rows)`` view, which CPU kernels vectorise over the long
    axis (≈ 10× faster at the SAS block's shapes); the same numbers."""
    g = x.shape[-1]
    return F.softmax(x.reshape(-1, g).t(), 0).t().reshape(x.shape)


def reference_points_for(
    spatial_shapes: Sequence[tuple[int, int]],
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Pixel-centre reference points of every position of every level, ``(S, 2)`` as ``(x, y)``:
    ``((j + 0.5) / W_l, (i + 0.5) / H_l)`` (docs/models.md §2.2), levels concatenated row-major."""
    refs = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], -1))
    return torch.cat(refs, 0)


class SymEncoderLayer(nn.Module):
    """One post-norm encoder layer with (Sym)Attention, docs/models.md §2.2::

        y   = LN(x + Drop(Attn(query = x + pe, value = x)))
        out = LN(y + Drop(FFN(y)))          FFN: Linear 256→1024, ReLU, Drop, Linear 1024→256

    Args mirror those of :class:`SymAttention`; ``d_ffn`` 1024, ``dropout`` 0.1.
    """

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        n_heads: int = 8,
        n_levels: int = 1,
        n_points: int = 4,
        mirror: bool = True,
    ):
        super().__init__()
        self.self_attn = SymAttention(d_model, n_heads, n_levels, n_points, mirror=mirror)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = InferenceLinear(d_model, d_ffn)
        self.activation = nn.ReLU(inplace=True)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = InferenceLinear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def fuse_for_inference(self) -> None:
        """The FFN's ReLU inside ``linear1``'s oneDNN call (inference only: the dropout between
        them is the identity in eval mode; ``tbx.models.inference.prepare_for_inference``)."""
        if self.training:
            raise ValueError("fuse_for_inference needs a model in eval mode")
        self.linear1.relu = True
        self.activation = nn.Identity()  # type: ignore[assignment]

    def forward(
        self,
        src: Tensor,
        pos: Tensor | None,
        reference_points: Tensor,
        spatial_shapes: Sequence[tuple[int, int]] | Tensor,
        padding_mask: Tensor | None = None,
        per_level: bool = False,
    ) -> Tensor:
        """``src``/``pos`` ``(N, S, C)``; ``reference_points`` ``(N, S, L, 2)`` or ``(S, 2)``;
        ``per_level``: see :meth:`SymAttention.forward`."""
        if reference_points.dim() == 2:
            reference_points = reference_points[None, :, None, :].expand(
                src.shape[0], -1, self.self_attn.n_levels, 2
            )
        query = src if pos is None else src + pos
        if not self.training:  # dropout is the identity: each residual sum runs inside its projection
            src = self.norm1(
                self.self_attn(query, reference_points, src, spatial_shapes, padding_mask, per_level, src)
            )
            return self.norm2(self.linear2(self.activation(self.linear1(src)), src))
        attn = self.self_attn(query, reference_points, src, spatial_shapes, padding_mask, per_level)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))
