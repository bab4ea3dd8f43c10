"""The SAS block of SymFormer (docs/models.md §2.1 step 3): SPE + one SymAttention encoder layer.

Applied to **each** FPN level separately with **one shared set of weights**::

    pe  = SPE(P_l)                        (the SPE module owns one STN, shared by all levels)
    F_l = SymEncoderLayer(P_l, pe)        (8 heads, 4 points, 1 level, FFN 1024, dropout 0.1)

and ``F_l`` replaces ``P_l``.  Ablations (docs/models.md §2.3, Table 8) choose the positional encoding and
whether the attention mirrors (SymAttention) or not (vanilla deformable attention).

The positional encoding is computed over the whole (padded) map, consistent with mirroring about
the padded map's midline (docs/models.md §2.2); padded positions are excluded from the attention *values*
through ``value_padding_mask``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tbx.models.spe import SymmetricPositionalEncoding
from tbx.models.sym_attention import SymEncoderLayer, reference_points_for

# ModelConfig.pos_encoding → SymmetricPositionalEncoding arguments (docs/models.md §2.3 ablations)
POS_ENCODINGS: dict[str, dict[str, Any]] = {
    "none": dict(mode="none"),
    "sine": dict(mode="sine"),
    "relative": dict(mode="relative"),
    "spe_no_stn": dict(mode="spe", stn=False),
    "spe": dict(mode="spe", stn=True),
    "spe_left_to_right": dict(mode="spe", stn=True, direction="left_to_right"),
}
ATTENTIONS = {"symmetric": True, "deformable": False}  # → mirror


class SASBlock(nn.Module):
    """``forward([P_l (N, C, H_l, W_l)], masks) → [F_l]`` with shared weights across levels.

    Args:
        d_model: channels (256).
        pos_encoding: a key of :data:`POS_ENCODINGS` (default ``"spe"``).
        attention: ``"symmetric"`` (SymAttention) or ``"deformable"`` (no mirroring).
    """

    def __init__(
        self,
        d_model: int = 256,
        pos_encoding: str = "spe",
        attention: str = "symmetric",
        n_heads: int = 8,
        n_points: int = 4,
        d_ffn: int = 1024,
        dropout: float = 0.1,
    ):
        super().__init__()
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding must be one of {sorted(POS_ENCODINGS)}, got {pos_encoding!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {sorted(ATTENTIONS)}, got {attention!r}")
        self.spe = SymmetricPositionalEncoding(d_model // 2, **POS_ENCODINGS[pos_encoding])
        self.encoder = SymEncoderLayer(
            d_model, d_ffn, dropout, n_heads, 1, n_points, mirror=ATTENTIONS[attention]
        )

    def forward(self, feats: list[Tensor], masks: list[Tensor | None] | None = None) -> list[Tensor]:
        """``masks[l]``: ``(N, H_l, W_l)`` bool, True = padding (or None: nothing padded).

        The levels are independent (each query attends to its own level) but share every weight,
        so their tokens are concatenated and each projection, the FFN and the norms run once over
        all of them (:meth:`SymAttention.forward` with ``per_level``); only the sampling and the
        positional encoding (the STN reads each level's feature) are per level."""
        n, c = feats[0].shape[:2]
        shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        # (N, C, H, W) → tokens (N, H·W, C): a view of a channels_last map, one copy into the concatenation
        src = torch.cat([f.permute(0, 2, 3, 1).reshape(n, h * w, c) for f, (h, w) in zip(feats, shapes)], 1)
        pos = torch.cat([p.reshape(n, h * w, c) for p, (h, w) in zip(self.spe.nhwc(feats), shapes)], 1)
        mask = None
        if masks is not None and any(m is not None for m in masks):
            mask = torch.cat(
                [
                    torch.zeros(n, h * w, dtype=torch.bool, device=f.device) if m is None else m.flatten(1)
                    for m, f, (h, w) in zip(masks, feats, shapes)
                ],
                1,
            )
        ref = reference_points_for(shapes, src.device, src.dtype)
        out = self.encoder(src, pos, ref, shapes, mask, per_level=True)
        outs, start = [], 0
        for h, w in shapes:
            # (N, H·W, C) is the channels_last layout of (N, C, H, W): a view (for one image), and
            # the heads' convolutions then read the format the FPN gives them (NCHW here cost a
            # layout conversion per conv, more than the attention itself)
            o = out[:, start : start + h * w].reshape(n, h, w, c).permute(0, 3, 1, 2)
            outs.append(o if n == 1 else o.contiguous(memory_format=torch.channels_last))
            start += h * w
        return outs
