"""Deformable DETR R50 and SymFormer w/ Deformable DETR (docs/models.md §3), with the shared cls head
(docs/models.md §2.6).

Architecture (Zhu et al. 2021, "Deformable DETR", the plain single-stage variant: no iterative box
refinement, not two-stage — this is the variant whose parameter count matches docs/models.md §2.5):

* ResNet trunk (:class:`tbx.models.backbone.ResNetBackbone`) → C3, C4, C5 (strides 8, 16, 32).
* Input projection to 4 levels, ``d_model`` 256: ``Conv 1×1 + GroupNorm(32)`` on C3..C5 and
  ``Conv 3×3 stride 2 + GroupNorm(32)`` on C5 (stride 64).  Xavier init, zero bias.
* Positional encoding: DETR sine (normalised by each image's valid extent) — or, for SymFormer,
  the SPE with its STN (docs/models.md §2.3; one STN shared by all levels) — plus a learned level embedding.
* Encoder: 6 post-norm layers of multi-scale deformable self-attention (8 heads, 4 levels, 4
  points) + FFN 1024, dropout 0.1 (:class:`tbx.models.sym_attention.SymEncoderLayer`);
  ``mirror=False`` for Deformable DETR, ``mirror=True`` (SymAttention) for SymFormer.
* Decoder: 6 post-norm layers: self-attention (``nn.MultiheadAttention``) → deformable
  cross-attention (always ``mirror=False``) → FFN.  300 learned queries (``Embedding(300, 512)`` =
  positional query ‖ content query); one reference point per query = ``sigmoid(Linear(query_pos))``.
* Heads shared by all decoder layers (no refinement): ``Linear(256, 2)`` classes (sigmoid; class
  index 0 = active, 1 = latent), 3-layer MLP → ``(Δcx, Δcy, w, h)`` added to the reference in
  logit space.  Boxes are normalised by each image's *valid* size (as in official DETR).
* Loss: focal (α 0.25, γ 2) weight 2, L1 weight 5, GIoU weight 2, all normalised by the number of
  target boxes of the batch (averaged over processes), with the same losses on every decoder layer
  (aux losses), after Hungarian matching with the same costs (:mod:`tbx.models.matcher`).
* Inference: sigmoid scores, top-100 over queries × classes, boxes scaled to input pixels and
  clipped to the valid image.
* Image classification head (docs/models.md §2.6) on C5.

Parameter accounting (docs/models.md §2.5).  The paper's "52.67 M (counting only trainable params: stem,
layer1 and BN frozen)" **includes the classification head**, established by counting:

===========================================================  ============
ResNet-50 layer2..layer4 convolutions (stem, layer1, BN out)   23,232,512
input projections (3 × (1×1 conv + GN) + 3×3 s2 conv + GN)      6,557,440
encoder, 6 × 756,864                                           4,541,184
decoder, 6 × 1,020,544                                          6,123,264
query embedding 300 × 512, reference-point Linear, level emb      155,138
class Linear 256→2 + box MLP 256→256→256→4                        133,126
**detector** (the official code prints 39,847,265 for COCO's    39,824,392
91 classes: + 22,873 for the wider class Linear)
image classification head (docs/models.md §2.6)                          12,849,667
**total trainable**                                            52,674,059  → 52.67 M
===========================================================  ============

SymFormer-Deformable adds only the SPE's STN (20,280; SymAttention has the same parameters as
deformable attention): 52,694,339 → 52.69 M.  Without the cls head the detector alone would be
39.82 M, far from 52.67 M, so the paper's count includes the head.  ``tests/test_models_ddetr.py``
asserts both totals (±0.5 %) under this accounting.  The MACs agree as well: ``tbx.models.info``
(mmcv-style counting, 512×512, cls head included) gives 54.07 / 54.08 G — docs/models.md §2.5's 54.07 / 54.08
GFLOPs (backbone 21.52, input projections 1.25, encoder 24.67, decoder 3.38, heads 0.24, cls
head 3.02; plus 0.56 G of functional sampling/attention products that mmcv does not count).

Frozen parts (stage 1, :meth:`DeformableDETR._trainable_in_stage1`): the stem (``conv1``/``bn1``),
``layer1`` and every backbone BatchNorm (affine parameters frozen too, running statistics in eval —
the official code uses FrozenBatchNorm2d).  docs/models.md §3 training recipe
(``configs/deformable_detr_r50.yaml``):
AdamW 2e-4, backbone lr ×0.1, gradient clipping 0.1, 50 epochs, step at 40; the official code also
lowers the lr of the sampling-offset and reference-point Linears (:attr:`DeformableDETR.low_lr_keys`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, sigmoid_focal_loss

from tbx.models.backbone import ResNetBackbone, load_backbone_weights
from tbx.models.base import Detector, Prediction
from tbx.models.cls_head import ClsHead
from tbx.models.config import DetrConfig, ModelConfig, SymFormerConfig
from tbx.models.matcher import HungarianMatcher, paired_generalized_box_iou
from tbx.models.sas import ATTENTIONS, POS_ENCODINGS
from tbx.models.spe import SymmetricPositionalEncoding
from tbx.models.sym_attention import SymAttention, SymEncoderLayer


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``logit(x)`` with ``x`` clamped to ``[eps, 1 − eps]`` (official Deformable DETR)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def padding_mask(images: Tensor, image_sizes: Sequence[tuple[int, int]]) -> Tensor:
    """``(N, H, W)`` bool, True on padding (bottom/right of each image, Detector contract)."""
    n, _, h, w = images.shape
    mask = torch.ones(n, h, w, dtype=torch.bool, device=images.device)
    for i, (hi, wi) in enumerate(image_sizes):
        mask[i, :hi, :wi] = False
    return mask


def normalise_image_sizes(images: Tensor, image_sizes) -> list[tuple[int, int]]:
    """``image_sizes`` as a list of ``(h, w)`` ints (``None`` → the full padded size)."""
    if image_sizes is None:
        return [(int(images.shape[-2]), int(images.shape[-1]))] * images.shape[0]
    if isinstance(image_sizes, Tensor):
        image_sizes = image_sizes.tolist()
    sizes = [(int(h), int(w)) for h, w in image_sizes]
    if len(sizes) != images.shape[0]:
        raise ValueError(f"{len(sizes)} image sizes for a batch of {images.shape[0]} images")
    return sizes


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between (DETR's box head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class _Group(nn.Module):
    """A view grouping existing modules/parameters for per-component counting (not registered
    in the model; it shares the model's parameters)."""

    def __init__(self, *modules: nn.Module, **params: nn.Parameter):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        for name, p in params.items():
            self.register_parameter(name, p)


class DeformableDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention → deformable cross-attention → FFN (official order)."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        n_heads: int = 8,
        n_levels: int = 4,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        # decoder cross-attention is never mirrored (docs/models.md §3: only the encoder uses SymAttention)
        self.cross_attn = SymAttention(d_model, n_heads, n_levels, n_points, mirror=False)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: list[tuple[int, int]],
        memory_padding_mask: Tensor | None,
    ) -> Tensor:
        """``tgt``/``query_pos`` ``(N, Q, C)``, ``reference_points`` ``(N, Q, L, 2)``, ``memory``
        ``(N, S, C)``, ``memory_padding_mask`` ``(N, S)`` True = padding."""
        q = k = tgt + query_pos
        tgt = self.norm2(tgt + self.dropout2(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attn = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, memory_padding_mask)
        tgt = self.norm1(tgt + self.dropout1(attn))
        ffn = self.linear2(self.dropout3(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


class DeformableTransformer(nn.Module):
    """Encoder + decoder of Deformable DETR over ``n_levels`` flattened feature maps."""

    def __init__(
        self,
        d_model: int = 256,
        n_heads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        n_levels: int = 4,
        n_points: int = 4,
        sym_encoder: bool = False,
    ):
        super().__init__()
        self.d_model, self.n_levels = d_model, n_levels
        enc = SymEncoderLayer(d_model, d_ffn, dropout, n_heads, n_levels, n_points, mirror=sym_encoder)
        dec = DeformableDecoderLayer(d_model, d_ffn, dropout, n_heads, n_levels, n_points)
        self.encoder = nn.ModuleList(copy.deepcopy(enc) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(copy.deepcopy(dec) for _ in range(dec_layers))
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.reference_points = nn.Linear(d_model, 2)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # official: Xavier on every matrix, then MSDeformAttn's own init — here SymAttention keeps
        # its own init (docs/models.md §2.2), so its parameters are skipped.
        attn_params = {id(p) for m in self.modules() if isinstance(m, SymAttention) for p in m.parameters()}
        for p in self.parameters():
            if p.dim() > 1 and id(p) not in attn_params:
                nn.init.xavier_uniform_(p)
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    @staticmethod
    def valid_ratios(mask: Tensor) -> Tensor:
        """``(N, H, W)`` padding mask → ``(N, 2)`` valid fraction ``(w, h)``."""
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1).float()
        valid_w = (~mask[:, 0, :]).sum(1).float()
        return torch.stack([valid_w / w, valid_h / h], -1)

    @staticmethod
    def encoder_reference_points(spatial_shapes: list[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
        """Pixel centres of every level normalised by the valid extent, then projected to every
        level: ``(N, S, L, 2)`` (official ``get_reference_points``)."""
        refs = []
        device = valid_ratios.device
        for lvl, (h, w) in enumerate(spatial_shapes):
            ys = torch.arange(h, dtype=torch.float32, device=device) + 0.5
            xs = torch.arange(w, dtype=torch.float32, device=device) + 0.5
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            ry = yy.reshape(1, -1) / (valid_ratios[:, None, lvl, 1] * h)
            rx = xx.reshape(1, -1) / (valid_ratios[:, None, lvl, 0] * w)
            refs.append(torch.stack([rx, ry], -1))
        ref = torch.cat(refs, 1)  # (N, S, 2)
        return ref[:, :, None] * valid_ratios[:, None]

    def forward(
        self, srcs: list[Tensor], masks: list[Tensor], pos_embeds: list[Tensor], query_embed: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Run encoder and decoder.

        Args:
            srcs: ``L`` maps ``(N, C, H_l, W_l)``; masks: ``L`` ``(N, H_l, W_l)`` True = padding;
            pos_embeds: ``L`` ``(N, C, H_l, W_l)``; query_embed: ``(Q, 2C)``.

        Returns:
            ``hs`` ``(D, N, Q, C)`` — every decoder layer's output; ``reference`` ``(N, Q, 2)``
            normalised reference points (shared by every layer: no box refinement).
        """
        spatial_shapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        mask_flat = torch.cat([m.flatten(1) for m in masks], 1)
        pos_flat = torch.cat(
            [
                p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                for lvl, p in enumerate(pos_embeds)
            ],
            1,
        )
        valid_ratios = torch.stack([self.valid_ratios(m) for m in masks], 1)  # (N, L, 2)
        # encoder
        memory = src_flat
        ref_enc = self.encoder_reference_points(spatial_shapes, valid_ratios)
        for layer in self.encoder:
            memory = layer(memory, pos_flat, ref_enc, spatial_shapes, mask_flat)
        # decoder
        n = memory.shape[0]
        query_pos, tgt = query_embed.split(self.d_model, dim=1)
        query_pos = query_pos.unsqueeze(0).expand(n, -1, -1)
        tgt = tgt.unsqueeze(0).expand(n, -1, -1)
        reference = self.reference_points(query_pos).sigmoid()  # (N, Q, 2)
        ref_dec = reference[:, :, None] * valid_ratios[:, None]
        hs = []
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, ref_dec, memory, spatial_shapes, mask_flat)
            hs.append(tgt)
        return torch.stack(hs), reference


class DeformableDETR(Detector):
    """Deformable DETR (``sym=False``) or SymFormer w/ Deformable DETR (``sym=True``), docs/models.md §3.

    Args:
        backbone: a :class:`ResNetBackbone` (weights already loaded).
        num_classes: detection classes (2: active, latent — category ``c`` ↔ class index ``c − 1``).
        num_queries, d_model, n_heads, n_points, enc_layers, dec_layers, d_ffn, dropout: docs/models.md §3
            (300, 256, 8, 4, 6, 6, 1024, 0.1).
        sym: SymAttention (mirror=True) in every encoder layer and SPE+STN instead of the sine PE.
        loss weights: focal 2.0, L1 5.0, GIoU 2.0 (also the matching costs); ``focal_alpha`` 0.25.
        detections_per_img: top-k kept at inference (100).
    """

    #: Parameters the official recipe (and mmdetection's config) trains at the backbone's reduced
    #: lr (× 0.1, docs/models.md §3) besides ``backbone.*``: names containing these keys.
    low_lr_keys: tuple[str, ...] = ("sampling_offsets", "reference_points")

    def __init__(
        self,
        backbone: ResNetBackbone,
        num_classes: int = 2,
        num_queries: int = 300,
        d_model: int = 256,
        n_heads: int = 8,
        n_points: int = 4,
        enc_layers: int = 6,
        dec_layers: int = 6,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        n_levels: int = 4,
        sym: bool = False,
        pos_encoding: str | None = None,
        attention: str | None = None,
        cls_weight: float = 2.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        aux_loss: bool = True,
        detections_per_img: int = 100,
        cls_channels: int = 512,
    ):
        super().__init__()
        self.backbone = backbone
        self.num_classes, self.num_queries = num_classes, num_queries
        # SymFormer (docs/models.md §3): SPE with STN + SymAttention encoder; the ablation switches of
        # docs/models.md §2.3 (tbx.models.sas.POS_ENCODINGS / ATTENTIONS) may override either.
        pos_encoding = pos_encoding or ("spe" if sym else "sine")
        attention = attention or ("symmetric" if sym else "deformable")
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding must be one of {sorted(POS_ENCODINGS)}, got {pos_encoding!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {sorted(ATTENTIONS)}, got {attention!r}")
        self.sym, self.pos_encoding_name = sym, pos_encoding
        if n_levels == 1:  # official single-scale variant: C5 only
            in_chs = backbone.out_channels[-1:]
        elif n_levels >= 3:  # C3..C5 + (n_levels − 3) stride-2 levels
            in_chs = backbone.out_channels[1:]
        else:
            raise ValueError(f"num_feature_levels must be 1 or ≥ 3, got {n_levels}")
        self.n_backbone_levels = len(in_chs)
        projs = [nn.Sequential(nn.Conv2d(c, d_model, 1), nn.GroupNorm(32, d_model)) for c in in_chs]
        for i in range(n_levels - len(in_chs)):  # first extra level on C5, then on the previous one
            projs.append(
                nn.Sequential(
                    nn.Conv2d(in_chs[-1] if i == 0 else d_model, d_model, 3, stride=2, padding=1),
                    nn.GroupNorm(32, d_model),
                )
            )
        self.input_proj = nn.ModuleList(projs)
        for proj in projs:
            conv = proj[0]
            assert isinstance(conv, nn.Conv2d) and conv.bias is not None
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.zeros_(conv.bias)
        # docs/models.md §2.3 SPE (one STN shared by all levels) or the plain normalised sine encoding
        self.pos_encoding = SymmetricPositionalEncoding(d_model // 2, **POS_ENCODINGS[pos_encoding])
        self.transformer = DeformableTransformer(
            d_model,
            n_heads,
            enc_layers,
            dec_layers,
            d_ffn,
            dropout,
            n_levels,
            n_points,
            sym_encoder=ATTENTIONS[attention],
        )
        self.query_embed = nn.Embedding(num_queries, 2 * d_model)
        self.class_embed = nn.Linear(d_model, num_classes)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        with torch.no_grad():
            nn.init.constant_(self.class_embed.bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01
            box_out = self.bbox_embed.layers[-1]
            assert isinstance(box_out, nn.Linear)
            nn.init.zeros_(box_out.weight)
            nn.init.zeros_(box_out.bias)
            box_out.bias[2:] = -2.0
        self.cls_head = ClsHead(backbone.out_channels[-1], cls_channels)
        self.matcher = HungarianMatcher(cls_weight, bbox_weight, giou_weight, focal_alpha, focal_gamma)
        self.weights = {"cls": cls_weight, "bbox": bbox_weight, "giou": giou_weight}
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.aux_loss = aux_loss
        self.detections_per_img = detections_per_img
        # stage-1 freezing (docs/models.md §2.5): stem, layer1 and every backbone BatchNorm parameter
        self._frozen_names = {
            f"backbone.{mn}.{pn}" if mn else f"backbone.{pn}"
            for mn, m in self.backbone.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for pn, _ in m.named_parameters(recurse=False)
        }
        self.set_stage(1)

    def _trainable_in_stage1(self, name: str) -> bool:
        if name in self._frozen_names:
            return False
        return not name.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer1."))

    # -- paper components (for `tbx models info`) --------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        comps: dict[str, nn.Module] = {
            "backbone": self.backbone,
            "input_proj": self.input_proj,
            "encoder": self.transformer.encoder,
            "decoder": self.transformer.decoder,
            # query embedding, reference-point Linear, level embeddings, class/box heads
            "queries+heads": _Group(
                self.query_embed,
                self.transformer.reference_points,
                self.class_embed,
                self.bbox_embed,
                level_embed=self.transformer.level_embed,
            ),
        }
        if any(True for _ in self.pos_encoding.parameters()):
            comps["spe"] = self.pos_encoding
        comps["cls_head"] = self.cls_head
        return comps

    # -- features ----------------------------------------------------------------------------

    def _c5(self, images: Tensor) -> Tensor:
        return self.backbone(images)[-1]

    def _detect(self, feats: list[Tensor], mask: Tensor) -> tuple[Tensor, Tensor]:
        """C3..C5 + image padding mask → logits ``(D, N, Q, K)`` and boxes ``(D, N, Q, 4)``
        (normalised cxcywh w.r.t. each image's valid size)."""
        nb = self.n_backbone_levels
        srcs = [proj(f) for proj, f in zip(self.input_proj[:nb], feats[-nb:])]
        for i, proj in enumerate(self.input_proj[nb:]):
            srcs.append(proj(feats[-1] if i == 0 else srcs[-1]))
        masks = [F.interpolate(mask[None].float(), size=s.shape[-2:]).to(torch.bool)[0] for s in srcs]
        # The plain sine encoding is normalised by the valid extent (official Deformable DETR);
        # SPE variants mirror about the padded map's midline, like SymAttention (docs/models.md §2.2) and
        # the SAS block, so they get no mask.
        mirrored = self.pos_encoding.mode in ("spe", "relative")
        pos = [self.pos_encoding(s, None if mirrored else m) for s, m in zip(srcs, masks)]
        hs, reference = self.transformer(srcs, masks, pos, self.query_embed.weight)
        logits = self.class_embed(hs)
        tmp = self.bbox_embed(hs)
        ref = inverse_sigmoid(reference)
        boxes = torch.cat([tmp[..., :2] + ref, tmp[..., 2:]], -1).sigmoid()
        return logits, boxes

    # -- training ----------------------------------------------------------------------------

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None, image_sizes=None
    ) -> dict[str, Tensor] | list[Prediction]:
        """Training losses (Detector contract).  Stage 1: ``loss_cls``, ``loss_bbox``,
        ``loss_giou`` of the last decoder layer and ``loss_{cls,bbox,giou}_{d}`` of decoder layers
        ``d = 0..D−2`` (already weighted: the total is their sum).  Stage 2: ``loss_img_cls`` only
        (backbone without gradient + classification head).  Without ``targets``: :meth:`predict`."""
        if targets is None:
            return self.predict(images, image_sizes)
        sizes = normalise_image_sizes(images, image_sizes)
        if self.stage == 2:
            with self.backbone_grad():
                c5 = self._c5(images)
            return self.image_cls_loss(c5, targets)
        feats = self.backbone(images)[1:]
        logits, boxes = self._detect(feats, padding_mask(images, sizes))
        tgts = self._prepare_targets(targets, sizes, images.device)
        losses = {}
        last = logits.shape[0] - 1
        layers = range(last + 1) if self.aux_loss else [last]
        num_boxes = self._num_boxes(tgts, images.device)
        for d in layers:
            suffix = "" if d == last else f"_{d}"
            for k, v in self.set_losses(logits[d], boxes[d], tgts, num_boxes).items():
                losses[k + suffix] = v
        return losses

    @staticmethod
    def _prepare_targets(
        targets: list[dict[str, Tensor]], sizes: list[tuple[int, int]], device: torch.device
    ) -> list[dict[str, Tensor]]:
        """xyxy input pixels + categories 1/2 → normalised cxcywh + class indices 0/1."""
        out = []
        for t, (h, w) in zip(targets, sizes):
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
            labels = torch.as_tensor(t["labels"], dtype=torch.int64, device=device).reshape(-1) - 1
            out.append({"boxes": box_convert(boxes / scale, "xyxy", "cxcywh"), "labels": labels})
        return out

    @staticmethod
    def _num_boxes(tgts: list[dict[str, Tensor]], device: torch.device) -> float:
        num = torch.tensor([float(sum(len(t["labels"]) for t in tgts))], device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num)
            num = num / torch.distributed.get_world_size()
        return max(float(num.item()), 1.0)

    def set_losses(
        self, logits: Tensor, boxes: Tensor, tgts: list[dict[str, Tensor]], num_boxes: float
    ) -> dict[str, Tensor]:
        """Weighted focal / L1 / GIoU losses of one decoder layer after Hungarian matching
        (computed in float32, also under autocast)."""
        logits, boxes = logits.float(), boxes.float()
        indices = self.matcher(logits, boxes, tgts)
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        batch_idx = batch_idx.to(logits.device)
        src_idx = torch.cat([src for src, _ in indices]).to(logits.device)
        onehot = torch.zeros_like(logits)
        tgt_labels = torch.cat([t["labels"][j.to(logits.device)] for t, (_, j) in zip(tgts, indices)])
        onehot[batch_idx, src_idx, tgt_labels] = 1.0
        loss_cls = (
            sigmoid_focal_loss(
                logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
            )
            / num_boxes
        )
        src_boxes = boxes[batch_idx, src_idx]
        tgt_boxes = torch.cat([t["boxes"][j.to(logits.device)] for t, (_, j) in zip(tgts, indices)])
        loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
        giou = paired_generalized_box_iou(
            box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
        )
        loss_giou = (1 - giou).sum() / num_boxes
        return {
            "loss_cls": self.weights["cls"] * loss_cls,
            "loss_bbox": self.weights["bbox"] * loss_bbox,
            "loss_giou": self.weights["giou"] * loss_giou,
        }

    # -- inference ---------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes=None) -> list[Prediction]:
        """Class probabilities (softmax of the cls head) and the top-100 boxes per image, xyxy in
        input pixels clipped to the valid size, labels 1 active / 2 latent (Detector contract)."""
        was_training = self.training
        self.eval()
        try:
            sizes = normalise_image_sizes(images, image_sizes)
            cs = self.backbone(images)
            probs = self.cls_head(cs[-1]).softmax(-1)
            logits, boxes = self._detect(cs[1:], padding_mask(images, sizes))
            return self.postprocess(logits[-1], boxes[-1], probs, sizes)
        finally:
            self.train(was_training)

    def postprocess(
        self, logits: Tensor, boxes: Tensor, probs: Tensor, sizes: list[tuple[int, int]]
    ) -> list[Prediction]:
        """Official PostProcess: top-k of ``sigmoid`` over all ``Q × K`` (query, class) pairs."""
        n, q, k = logits.shape
        scores_all = logits.sigmoid().reshape(n, q * k)
        topk = min(self.detections_per_img, q * k)
        scores, idx = scores_all.topk(topk, dim=1)
        query_idx = torch.div(idx, k, rounding_mode="floor")
        labels = idx % k + 1  # class index → category 1 active / 2 latent
        xyxy = box_convert(boxes.float(), "cxcywh", "xyxy")
        out = []
        for i, (h, w) in enumerate(sizes):
            b = xyxy[i, query_idx[i]] * torch.tensor([w, h, w, h], dtype=xyxy.dtype, device=xyxy.device)
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
            out.append(
                Prediction(probs=probs[i].float(), boxes=b, scores=scores[i].float(), labels=labels[i])
            )
        return out


# ---------------------------------------------------------------------------------------------
# builders (names imported by tbx.models.registry)


def _build(cfg: ModelConfig, sym: bool) -> DeformableDETR:
    dc = cfg.detr or DetrConfig()
    # the ablation switches (docs/models.md §2.3) apply to the SymFormer variant only
    sc = (cfg.symformer or SymFormerConfig()) if sym else None
    backbone = ResNetBackbone(cfg.backbone)
    report = load_backbone_weights(backbone, cfg.pretrained)
    model = DeformableDETR(
        backbone,
        num_classes=cfg.num_classes,
        num_queries=dc.num_queries,
        enc_layers=dc.num_encoder_layers,
        dec_layers=dc.num_decoder_layers,
        n_levels=dc.num_feature_levels,
        sym=sym,
        pos_encoding=sc.pos_encoding if sc else None,
        attention=sc.attention if sc else None,
        cls_channels=cfg.cls_channels,
    )
    model.pretrained_report = report
    return model


def build_deformable_detr(cfg: ModelConfig) -> DeformableDETR:
    """Deformable DETR R50 (single-stage, no box refinement) + classification head (docs/models.md §3)."""
    return _build(cfg, sym=False)


def build_symformer_deformable_detr(cfg: ModelConfig) -> DeformableDETR:
    """SymFormer w/ Deformable DETR: SymAttention encoder + SPE with STN + cls head (docs/models.md §3)."""
    return _build(cfg, sym=True)
