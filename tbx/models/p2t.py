"""P2T-Small (Pyramid Pooling Transformer, Wu et al., TPAMI 2023): the backbone of the paper's best
SymFormer row (docs/models.md §3.1; its budget: §2.5), with the official ImageNet checkpoint's keys.

Architecture (the facts of the official code, written anew here):

* Four stages, dims 64 / 128 / 320 / 512, depths 2 / 2 / 9 / 3, heads 1 / 2 / 5 / 8 (64 channels
  per head), MLP ratios 8 / 8 / 4 / 4, qkv bias, stochastic depth rising linearly from 0 to 0.1
  over the 16 blocks.
* Patch embedding: conv 7×7 stride 4 pad 3 (stage 1), conv 3×3 stride 2 pad 1 (stages 2–4), with
  bias, then LayerNorm over tokens (eps 1e-5).
* Pooling attention: q = Linear on every token; k, v from a short sequence: for each of the
  stage's 4 pooling ratios r, adaptive average pooling to ``(round(H/r), round(W/r))`` (at least
  1×1), plus a depthwise 3×3 conv of that map (``pool + dwconv(pool)``; the stage's 4 depthwise
  convs are **shared by all blocks of the stage**: they live on the backbone as ``d_convsN``); the
  pooled maps are flattened, concatenated, LayerNorm'ed (eps 1e-5) and projected by kv = Linear
  (C → 2C).  Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`
  (fused kernels on GPU; scale 1/√64 as the official code), then proj = Linear (C → C).
* Blocks are pre-norm (LayerNorm eps 1e-6) with an inverted-residual MLP: 1×1 conv C → rC,
  Hardswish, depthwise 3×3, Hardswish, 1×1 conv rC → C, no norm.  No final norm.
* Init as the official code: Linear truncated normal (std 0.02), zero bias; LayerNorm 1 / 0;
  convs torch's default.

:class:`P2T` returns the 4 stage maps (NCHW; strides 4, 8, 16, 32; 64 / 128 / 320 / 512 ch).
Parameter names are the official ones (``patch_embed1.proj.weight``, ``d_convs1.0.weight``,
``block1.0.attn.q.0.weight`` …; ``q`` and ``kv`` are one-Linear ``nn.Sequential`` s, hence the
``.0.``), so an official checkpoint loads without renaming; its ImageNet classifier (``head.*``)
is reported as unexpected and dropped.

Weights (:func:`load_p2t_weights`): ``"none"``; a path to the official checkpoint (bare, or wrapped
as ``{"model": state_dict}``) or to a tbx checkpoint (its ``backbone.*`` entries); ``"imagenet"``
= the official file cached at ``$TORCH_HOME/hub/checkpoints/p2t_small.pth`` (it is distributed via
the P2T repository's Google-Drive link, which has no stable download URL, so tbx does not fetch
it).  Every backbone tensor must be present with the right shape, else a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from tbx.errors import TbxError
from tbx.models.backbone import WeightsReport, load_state_checked, read_backbone_state

P2T_CHECKPOINT_NAME = "p2t_small.pth"
P2T_SOURCE = "the official ImageNet P2T-Small checkpoint (github.com/yuhuan-wu/P2T, p2t_small.pth)"


@dataclass(frozen=True)
class P2TSpec:
    """Stage hyper-parameters of a P2T variant."""

    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    heads: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int]
    pool_ratios: tuple[tuple[int, ...], ...]
    drop_path: float


P2T_SMALL = P2TSpec(
    dims=(64, 128, 320, 512),
    depths=(2, 2, 9, 3),
    heads=(1, 2, 5, 8),
    mlp_ratios=(8, 8, 4, 4),
    pool_ratios=((12, 16, 20, 24), (6, 8, 10, 12), (3, 4, 5, 6), (1, 2, 3, 4)),
    drop_path=0.1,
)
P2T_VARIANTS = {"p2t_small": P2T_SMALL}


def _to_tokens(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` → ``(B, H·W, C)`` (a view when ``x`` is channels_last)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def _to_map(x: Tensor, h: int, w: int) -> Tensor:
    """``(B, H·W, C)`` → ``(B, C, H, W)`` (a channels_last-strided view, no copy)."""
    return x.reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Strided conv (with bias) + LayerNorm over tokens (eps 1e-5)."""

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(_to_tokens(x)), int(h), int(w)


class InvertedResidualMLP(nn.Module):
    """1×1 conv C → rC, Hardswish, depthwise 3×3, Hardswish, 1×1 conv rC → C (no norm)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.Hardswish()
        self.conv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        y = self.fc2(self.act(self.conv(self.act(self.fc1(_to_map(x, h, w))))))
        return _to_tokens(y)


class PoolingAttention(nn.Module):
    """Multi-head attention of every token on the pyramid-pooled sequence (see module docstring)."""

    def __init__(self, dim: int, heads: int, pool_ratios: tuple[int, ...]):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads, self.pool_ratios = heads, tuple(pool_ratios)
        self.q = nn.Sequential(nn.Linear(dim, dim))  # Sequential: the official key `attn.q.0.*`
        self.kv = nn.Sequential(nn.Linear(dim, 2 * dim))
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def pooled(self, x: Tensor, h: int, w: int, d_convs: nn.ModuleList) -> Tensor:
        """The pooled sequence ``(B, M, C)``, M = Σ_r round(H/r)·round(W/r)."""
        fmap = _to_map(x, h, w)
        pools = []
        for r, conv in zip(self.pool_ratios, d_convs, strict=True):
            p = F.adaptive_avg_pool2d(fmap, (max(1, round(h / r)), max(1, round(w / r))))
            pools.append(_to_tokens(p + conv(p)))
        return self.norm(torch.cat(pools, 1))

    def forward(self, x: Tensor, h: int, w: int, d_convs: nn.ModuleList) -> Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, d).transpose(1, 2)
        kv = self.kv(self.pooled(x, h, w, d_convs))
        k, v = kv.reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d), scale d^-1/2
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class P2TBlock(nn.Module):
    """Pre-norm block: x + DropPath(attn(LN(x))); x + DropPath(IRB(LN(x))), LayerNorm eps 1e-6."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, pool_ratios: tuple[int, ...], drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PoolingAttention(dim, heads, pool_ratios)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = InvertedResidualMLP(dim, dim * mlp_ratio)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: Tensor, h: int, w: int, d_convs: nn.ModuleList) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w, d_convs))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class P2T(nn.Module):
    """P2T trunk → ``[C2, C3, C4, C5]`` (strides 4, 8, 16, 32), official parameter names."""

    #: what :func:`p2t_small` loaded (None: random init)
    pretrained_report: WeightsReport | None = None

    def __init__(self, variant: str = "p2t_small"):
        super().__init__()
        if variant not in P2T_VARIANTS:
            raise TbxError(f"unknown backbone {variant!r}", fix=f"use one of {sorted(P2T_VARIANTS)}")
        spec = P2T_VARIANTS[variant]
        self.depth = variant  # the architecture's name, as ResNetBackbone.depth
        self.out_channels = list(spec.dims)
        n_blocks = sum(
            spec.depths
        )  # drop-path rates: linspace(0, drop_path, n_blocks), in Python (meta-safe)
        rates = [spec.drop_path * k / max(1, n_blocks - 1) for k in range(n_blocks)]
        in_ch, start = 3, 0
        for i, (dim, depth, heads, ratio, pools) in enumerate(
            zip(spec.dims, spec.depths, spec.heads, spec.mlp_ratios, spec.pool_ratios, strict=True), 1
        ):
            kernel, stride = (7, 4) if i == 1 else (3, 2)
            self.add_module(f"patch_embed{i}", PatchEmbed(in_ch, dim, kernel, stride))
            self.add_module(
                f"d_convs{i}", nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1, groups=dim) for _ in pools)
            )
            self.add_module(
                f"block{i}",
                nn.ModuleList(P2TBlock(dim, heads, ratio, pools, rates[start + j]) for j in range(depth)),
            )
            in_ch, start = dim, start + depth
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)  # timm's trunc_normal_: cut at ±2 (absolute)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def stages(self) -> list[tuple[PatchEmbed, nn.ModuleList, nn.ModuleList]]:
        return [
            (getattr(self, f"patch_embed{i}"), getattr(self, f"d_convs{i}"), getattr(self, f"block{i}"))
            for i in range(1, len(self.out_channels) + 1)
        ]

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for embed, d_convs, blocks in self.stages():
            tokens, h, w = embed(x)
            for blk in blocks:
                tokens = blk(tokens, h, w, d_convs)
            x = _to_map(tokens, h, w)
            outs.append(x)
        return outs


# ---------------------------------------------------------------------------------------------
# weights


def p2t_weights_file() -> Path:
    """Where ``pretrained: imagenet`` looks for the official checkpoint:
    ``$TORCH_HOME/hub/checkpoints/p2t_small.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / P2T_CHECKPOINT_NAME


def load_p2t_weights(backbone: P2T, pretrained: str | Path) -> WeightsReport | None:
    """Load ``pretrained`` (``"none"``, ``"imagenet"`` or a file) into ``backbone``; returns the
    loaded / missing / unexpected report (None for ``"none"``)."""
    spec = str(pretrained)
    if spec.lower() == "none":
        return None
    fix = f"pass {P2T_SOURCE}, its {{'model': state_dict}} wrapping, or a tbx checkpoint of a P2T model"
    if spec.lower() == "imagenet":
        where = p2t_weights_file()
        if not where.is_file():
            raise TbxError(
                f"ImageNet weights for {backbone.depth} are not cached (tbx cannot download them)",
                where=where,
                fix=f"place {P2T_SOURCE} at {where}, or set model.pretrained to its path (or none)",
            )
    else:
        where = Path(spec).expanduser()
    state = read_backbone_state(where, probe="patch_embed1.proj.weight", fix=fix)
    return load_state_checked(backbone, state, where, arch=backbone.depth, fix=f"use {P2T_SOURCE}")


def p2t_small(pretrained: str | Path | None = None) -> P2T:
    """P2T-Small whose forward returns the 4 stage maps (NCHW, strides 4, 8, 16, 32);
    ``pretrained``: None (random init) or a checkpoint path (official keys, bare or ``{"model": …}``)."""
    model = P2T("p2t_small")
    if pretrained is not None:
        model.pretrained_report = load_p2t_weights(model, pretrained)
    return model
