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
        """``masks[l]``: ``(N, H_l, W_l)`` bool, True = padding (or None: nothing padded)."""
        outs = []
        for lvl, feat in enumerate(feats):
            n, c, h, w = feat.shape
            mask = masks[lvl] if masks is not None else None
            pos = self.spe(feat).flatten(2).transpose(1, 2)
            src = feat.flatten(2).transpose(1, 2)
            ref = reference_points_for([(h, w)], feat.device, src.dtype)
            out = self.encoder(src, pos, ref, [(h, w)], None if mask is None else mask.flatten(1))
            # (N, H·W, C) is the channels_last layout of (N, C, H, W): a view, no copy — and the
            # heads' convolutions then read the format the FPN gives them (NCHW here cost a
            # layout conversion per conv, more than the attention itself)
            outs.append(out.reshape(n, h, w, c).permute(0, 3, 1, 2))
        return outs
