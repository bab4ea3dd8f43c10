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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tbx.models.deform_core import ms_deform_sample


class InferenceLinear(nn.Linear):
    """``nn.Linear`` (same parameters, state-dict keys and MAC hooks) whose CPU float32 forward
    under ``torch.inference_mode`` runs oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``):
    ~1.3× the GMAC/s of the default ``addmm`` at the SAS block's shapes on one thread, the same
    numbers up to float reassociation.  Autograd, ONNX export, CUDA and other dtypes take
    ``F.linear``."""

    def forward(self, x: Tensor) -> Tensor:
        if (
            _ONEDNN_LINEAR is not None
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and torch.is_inference_mode_enabled()
            and not torch.onnx.is_in_onnx_export()
        ):
            return _ONEDNN_LINEAR(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


_ONEDNN_LINEAR = (
    getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
)


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
        self.reset_parameters()

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
    ) -> Tensor:
        """Attend from each query to ``n_levels × n_points`` (mirrored) samples per head.

        Args:
            query: ``(N, Q, C)`` — queries, positional encoding already added.
            reference_points: ``(N, Q, L, 2)`` normalised ``(x, y)`` in ``[0, 1]`` per level
                (``(N, Q, 2)`` is accepted and broadcast to every level).
            value: ``(N, S, C)`` — all levels flattened row-major and concatenated.
            spatial_shapes: ``L`` pairs ``(H_l, W_l)`` (list or ``LongTensor (L, 2)``).
            value_padding_mask: ``(N, S)`` bool, True = padding (its values are zeroed).

        Returns:
            ``(N, Q, C)`` — after the output projection (no dropout, residual or norm).
        """
        n, q, c = query.shape
        s = value.shape[1]
        m, lv, k = self.n_heads, self.n_levels, self.n_points
        shape_list = _shape_list(spatial_shapes)  # host ints (also fine on the meta device)
        if len(shape_list) != lv:
            raise ValueError(f"expected {lv} levels, got spatial_shapes of {len(shape_list)}")
        if sum(h * w for h, w in shape_list) != s:
            raise ValueError(
                f"value has {s} tokens but spatial_shapes sum to {sum(h * w for h, w in shape_list)}"
            )
        v = self.value_proj(value)
        if value_padding_mask is not None:
            v = v.masked_fill(value_padding_mask[..., None], 0.0)
        v = v.view(n, s, m, c // m)
        offsets = self.sampling_offsets(query).view(n, q, m, lv, k, 2)
        weights = F.softmax(self.attention_weights(query).view(n, q, m, lv * k), -1).view(n, q, m, lv, k)
        if reference_points.dim() == 3:
            reference_points = reference_points[:, :, None, :].expand(n, q, lv, 2)
        # offsets are in pixels of each level: normalise by (W_l, H_l)
        normalizer = torch.tensor(
            [[w, h] for h, w in shape_list], dtype=offsets.dtype, device=offsets.device
        )  # (L, 2) = (W, H)
        loc = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        if self.mirror:
            # docs/models.md §2.2: mirror about the vertical midline, y unchanged
            loc = torch.cat([1.0 - loc[..., :1], loc[..., 1:]], -1)
        out = ms_deform_sample(v, shape_list, loc, weights)
        return self.output_proj(out)


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

    def forward(
        self,
        src: Tensor,
        pos: Tensor | None,
        reference_points: Tensor,
        spatial_shapes: Sequence[tuple[int, int]] | Tensor,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """``src``/``pos`` ``(N, S, C)``; ``reference_points`` ``(N, S, L, 2)`` or ``(S, 2)``."""
        if reference_points.dim() == 2:
            reference_points = reference_points[None, :, None, :].expand(
                src.shape[0], -1, self.self_attn.n_levels, 2
            )
        query = src if pos is None else src + pos
        attn = self.self_attn(query, reference_points, src, spatial_shapes, padding_mask)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))
