"""Symmetric positional encoding (SPE) with a spatial transformer (STN), docs/models.md §2.3.

Base encoding: DETR sine, ``num_feats`` (128) per axis, positions ``((i + 0.5)/H)·2π`` and
``((j + 0.5)/W)·2π``, temperature 10000, interleaved sin/cos, ``[y, x]`` concatenated → 256 ch.
(With a padding ``mask``, positions are normalised by each image's *valid* extent, as DETR and
Deformable DETR do; without one, by the map size — exactly the docs/models.md §2.3 formula.)

Symmetric part (``mode="spe"``, ``direction="right_to_left"``): the right half of the encoding
(columns ``⌈W/2⌉ … W−1``) is warped by an affine ``θ`` predicted per image by the STN from the
level's feature, flipped horizontally and used as the left half (columns ``0 … ⌊W/2⌋−1``); the
right half — with the centre column when ``W`` is odd — keeps the plain encoding.  At the identity
``θ`` the encoding is exactly mirror-symmetric.  ``direction="left_to_right"`` transfers the left
half onto the right instead (ablation).  ``stn=False`` mirrors without warping (ablation).

Other ablation modes (docs/models.md §2.3, Table 8):

* ``"none"`` — zeros (no positional information);
* ``"sine"`` — the plain DETR encoding;
* ``"relative"`` — a *conditional* positional encoding (Chu et al., "Conditional Positional
  Encodings for Vision Transformers", 2021): a depth-wise 3×3 convolution (zero padding) of the
  feature map.  It is translation-equivariant — position enters only relative to the local
  neighbourhood and the borders — which is the usable notion of a relative encoding for deformable
  attention: a learned relative-position *bias* over (query, key) pairs cannot be applied because
  deformable attention never forms a query–key score matrix (its weights come from the query alone).

The module owns ONE :class:`STN`, shared by every level it is applied to (docs/models.md §2.3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tbx.models.deform_core import ms_deform_sample

PE_MODES = ("none", "sine", "relative", "spe")
DIRECTIONS = ("right_to_left", "left_to_right")


class STN(nn.Module):
    """The small spatial transformer of docs/models.md §2.3: feature ``(N, C, H, W)`` → ``θ (N, 2, 3)``.

    AdaptiveMaxPool(8) → Conv C→8 k3 (no pad) → MaxPool 2 → ReLU → Conv 8→10 k2 → ReLU → flatten
    (40) → Linear 40→32 → ReLU → Linear 32→6 (weight 0, bias = identity ``[1, 0, 0, 0, 1, 0]``).
    """

    def __init__(self, in_channels: int = 256):
        super().__init__()
        self.localization = nn.Sequential(
            nn.AdaptiveMaxPool2d(8),
            nn.Conv2d(in_channels, 8, kernel_size=3),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 10, kernel_size=2),
            nn.ReLU(inplace=True),
        )
        hidden = nn.Linear(10 * 2 * 2, 32)
        theta = nn.Linear(32, 6)
        self.fc_loc = nn.Sequential(hidden, nn.ReLU(inplace=True), theta)
        with torch.no_grad():  # start at the identity transform (docs/models.md §2.3)
            nn.init.zeros_(theta.weight)
            theta.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def forward(self, feat: Tensor) -> Tensor:
        return self.forward_levels([feat])[0]

    def forward_levels(self, feats: list[Tensor]) -> list[Tensor]:
        """``θ`` of each map: after the adaptive pooling every map is ``(N, C, 8, 8)``, so the
        rest of the network runs once over the maps stacked along the batch (the same numbers)."""
        if torch.onnx.is_in_onnx_export():  # ONNX has no adaptive pooling to 8 from e.g. 4 or 12
            pooled = [adaptive_max_pool_gather(f, 8) for f in feats]
        else:
            pooled = [self.localization[0](f) for f in feats]
        x = self.localization[1:](pooled[0] if len(pooled) == 1 else torch.cat(pooled)).flatten(1)
        return list(self.fc_loc(x).view(-1, 2, 3).split([f.shape[0] for f in feats]))


def adaptive_max_pool_gather(x: Tensor, size: int) -> Tensor:
    """``F.adaptive_max_pool2d(x, size)`` as gathers and a max (exportable for static H, W).

    Adaptive bin ``i`` of an axis of length ``L`` covers ``[⌊i·L/s⌋, ⌈(i+1)·L/s⌉)``; each bin's
    indices are padded to the longest bin with its last index (a repeat leaves the max unchanged),
    and max over a rectangle is separable into the two axes.
    """
    for axis in (-2, -1):
        length = int(x.shape[axis])
        bins = [list(range(i * length // size, -(-(i + 1) * length // size))) for i in range(size)]
        k = max(len(b) for b in bins)
        idx = torch.tensor([b + [b[-1]] * (k - len(b)) for b in bins], device=x.device)  # (s, k)
        g = x.index_select(axis, idx.flatten())
        shape = list(g.shape)
        shape[axis:] = [size, k] + ([shape[-1]] if axis == -2 else [])
        x = g.reshape(shape).amax(dim=axis if axis == -1 else -2)
    return x


_SINE_CACHE: dict[tuple, Tensor] = {}


def sine_encoding(
    n: int,
    h: int,
    w: int,
    num_feats: int = 128,
    temperature: float = 10000.0,
    mask: Tensor | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """DETR sine encoding ``(N, 2·num_feats, H, W)`` at pixel centres (docs/models.md §2.3).

    ``mask`` ``(N, H, W)`` True = padding: positions are then normalised by the valid extent.
    Without a mask the encoding depends on the size only and is cached (an expanded view of one
    ``(1, C, H, W)`` tensor is returned — do not modify it in place).  Its memory is NHWC
    (channels_last strides): ``.permute(0, 2, 3, 1)`` gives the token layout without a copy.
    """
    if mask is None:
        key = (h, w, num_feats, float(temperature), str(device), dtype, torch.is_inference_mode_enabled())
        pe = _SINE_CACHE.get(key)
        if pe is None:
            if len(_SINE_CACHE) > 64:
                _SINE_CACHE.clear()
            pe = _sine(1, h, w, num_feats, temperature, None, device, dtype)
            _SINE_CACHE[key] = pe
        return pe.expand(n, -1, -1, -1)
    return _sine(n, h, w, num_feats, temperature, mask, device, dtype)


def _sine(
    n: int,
    h: int,
    w: int,
    num_feats: int,
    temperature: float,
    mask: Tensor | None,
    device: torch.device | None,
    dtype: torch.dtype,
) -> Tensor:
    scale = 2 * math.pi
    if mask is None:
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        y_embed = (y * scale)[None, :, None].expand(n, h, w)
        x_embed = (x * scale)[None, None, :].expand(n, h, w)
    else:
        not_mask = (~mask).to(torch.float32)
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        eps = 1e-6
        y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + eps) * scale
        x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, device=y_embed.device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t
    # interleave: sin of even dims, cos of odd dims (DETR)
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).to(dtype).permute(0, 3, 1, 2)  # NHWC memory


def warp_halves(halves: list[Tensor], thetas: list[Tensor], flip: bool = False) -> list[Tensor]:
    """Warp each ``halves[l]`` ``(N, H_l, W'_l, C)`` (NHWC) by its affine ``thetas[l]`` ``(N, 2, 3)``:
    ``F.grid_sample`` semantics (bilinear, zeros outside, ``align_corners=False``: the identity
    reproduces the input), computed for all maps by one call of the deformable sampling core
    (:func:`tbx.models.deform_core.ms_deform_sample` per level, one head, one point of weight 1)
    so that the results stay NHWC; ``flip``: each result mirrored along ``W'`` (the grid's columns
    reversed)."""
    n, c = halves[0].shape[0], halves[0].shape[-1]
    shapes = [(int(hf.shape[1]), int(hf.shape[2])) for hf in halves]
    locs = []
    for theta, (h, w) in zip(thetas, shapes):
        if torch.onnx.is_in_onnx_export():  # ONNX AffineGrid needs opset 20; GridSample has 16
            grid = affine_grid_matmul(theta.float(), h, w)
        else:
            # the grid in fp32: CPU affine_grid has no bf16 kernel, and a bf16 grid would put the
            # sampling points ~1/256 of the image off (the sampling core keeps fp32 locations)
            grid = F.affine_grid(theta.float(), [n, c, h, w], align_corners=False)
        if flip:
            grid = grid.flip(2)
        locs.append(((grid + 1) * 0.5).reshape(n, h * w, 2))  # grid_sample's [-1, 1] → [0, 1]
    values = torch.cat([hf.reshape(n, -1, c) for hf in halves], 1)
    loc = torch.cat(locs, 1)
    s = loc.shape[1]
    ones = values.new_ones(n, s, 1, 1, 1)
    out = ms_deform_sample(values[:, :, None], shapes, loc.view(n, s, 1, 1, 1, 2), ones, per_level=True)
    return [o.view(n, h, w, c) for o, (h, w) in zip(out.split([h * w for h, w in shapes], 1), shapes)]


def affine_grid_matmul(theta: Tensor, h: int, w: int) -> Tensor:
    """``F.affine_grid(theta, (N, C, h, w), align_corners=False)`` as one matmul: pixel centres
    ``(2j + 1)/w − 1`` (x) and ``(2i + 1)/h − 1`` (y), homogeneous ``(x, y, 1) · θᵀ``."""
    xs = (2 * torch.arange(w, dtype=theta.dtype, device=theta.device) + 1) / w - 1
    ys = (2 * torch.arange(h, dtype=theta.dtype, device=theta.device) + 1) / h - 1
    x, y = xs[None, :].expand(h, w), ys[:, None].expand(h, w)
    base = torch.stack([x, y, torch.ones_like(x)], -1).reshape(1, h * w, 3)
    return (base @ theta.transpose(1, 2)).reshape(-1, h, w, 2)


class SymmetricPositionalEncoding(nn.Module):
    """Positional encoding for the SAS block: ``forward(feat, mask) → pos (N, 2·num_feats, H, W)``.

    Args:
        num_feats: features per axis (128 → 256 channels; the feature must have 2·num_feats ch).
        temperature: sine temperature (10000).
        mode: ``"none" | "sine" | "relative" | "spe"`` (see module docstring).
        stn: with ``mode="spe"``, warp the transferred half by the STN's ``θ`` (False: plain mirror).
        direction: ``"right_to_left"`` (the paper's, docs/models.md §2.3) or ``"left_to_right"``.
    """

    def __init__(
        self,
        num_feats: int = 128,
        temperature: float = 10000,
        mode: str = "spe",
        stn: bool = True,
        direction: str = "right_to_left",
    ):
        super().__init__()
        if mode not in PE_MODES:
            raise ValueError(f"mode must be one of {PE_MODES}, got {mode!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.num_feats, self.temperature = num_feats, float(temperature)
        self.mode, self.direction = mode, direction
        channels = 2 * num_feats
        self.stn = STN(channels) if (mode == "spe" and stn) else None
        self.cpe = (
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels) if mode == "relative" else None
        )

    def forward(self, feat: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(N, 2·num_feats, H, W)``, NHWC in memory (:meth:`nhwc` permuted)."""
        return self.nhwc([feat], [mask])[0].permute(0, 3, 1, 2)

    def nhwc(self, feats: list[Tensor], masks: list[Tensor | None] | None = None) -> list[Tensor]:
        """The encoding of each map in token layout, ``(N, H, W, 2·num_feats)`` (the STN warps of
        all maps in one sampling call)."""
        masks = masks if masks is not None else [None] * len(feats)
        if self.mode == "none":
            return [f.new_zeros(f.shape[0], f.shape[2], f.shape[3], 2 * self.num_feats) for f in feats]
        if self.cpe is not None:  # mode "relative"
            return [self.cpe(f).permute(0, 2, 3, 1) for f in feats]
        pes = [
            sine_encoding(
                f.shape[0], f.shape[2], f.shape[3], self.num_feats, self.temperature, m, f.device, f.dtype
            ).permute(0, 2, 3, 1)
            for f, m in zip(feats, masks)
        ]
        if self.mode == "sine":
            return pes
        out: list[Tensor | None] = [None] * len(pes)
        srcs, keeps, todo = [], [], []
        for lvl, pe in enumerate(pes):
            w = pe.shape[2]
            if w < 2:
                out[lvl] = pe
                continue
            half_w = w // 2
            c0 = w - half_w  # = ⌈W/2⌉, first column of the right half
            if self.direction == "right_to_left":  # keep: centre column (odd W) + right half
                srcs.append(pe[:, :, c0:])
                keeps.append(pe[:, :, half_w:])
            else:  # keep: left half + centre column
                srcs.append(pe[:, :, :half_w])
                keeps.append(pe[:, :, :c0])
            todo.append(lvl)
        if self.stn is not None and todo:
            mirrored = warp_halves(srcs, self.stn.forward_levels([feats[lvl] for lvl in todo]), flip=True)
        else:
            mirrored = [src.flip(2) for src in srcs]
        for lvl, mir, keep in zip(todo, mirrored, keeps):
            out[lvl] = torch.cat([mir, keep] if self.direction == "right_to_left" else [keep, mir], 2)
        return [o for o in out if o is not None]
