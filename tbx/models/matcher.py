"""Hungarian matching and box utilities for set-prediction detectors (Deformable DETR, docs/models.md §3).

The matcher follows the official Deformable DETR ``HungarianMatcher`` (focal-loss variant): the
cost between prediction ``i`` and ground truth ``j`` is::

    C[i, j] = w_class · (pos_cost − neg_cost)[i, label_j]
            + w_bbox  · ‖box_i − box_j‖₁          (normalised cx, cy, w, h)
            − w_giou  · GIoU(xyxy(box_i), xyxy(box_j))

    pos_cost = α (1 − p)^γ (−log p),  neg_cost = (1 − α) p^γ (−log(1 − p)),  p = sigmoid(logit)

with ``w_class = 2``, ``w_bbox = 5``, ``w_giou = 2``, ``α = 0.25``, ``γ = 2`` (docs/models.md §3: "Hungarian
matching with the same costs" as the loss).  The optimal one-to-one assignment of each image is
solved with :func:`scipy.optimize.linear_sum_assignment`.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou


def paired_generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Element-wise GIoU of two ``(K, 4)`` xyxy box sets → ``(K,)``.

    Equals ``diag(torchvision.ops.generalized_box_iou(boxes1, boxes2))`` without building the
    ``K × K`` matrix (the DETR loss only needs matched pairs).  ``eps`` guards zero-area unions.
    """
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area1 + area2 - inter
    iou = inter / (union + eps)
    lt_c = torch.min(boxes1[:, :2], boxes2[:, :2])
    rb_c = torch.max(boxes1[:, 2:], boxes2[:, 2:])
    wh_c = (rb_c - lt_c).clamp(min=0)
    area_c = wh_c[:, 0] * wh_c[:, 1]
    return iou - (area_c - union) / (area_c + eps)


def linear_assignment(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of a ``(Q, K)`` cost matrix (any of ``Q``, ``K`` may be 0).

    Returns ``(rows, cols)`` int64 tensors of length ``min(Q, K)``, sorted by row, such that
    ``cost[rows, cols].sum()`` is minimal over all injective assignments.
    """
    if cost.numel() == 0:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty
    c = cost.detach().to(torch.float64).cpu().numpy()
    if not np.isfinite(c).all():
        # NaN/inf would make scipy raise "cost matrix is infeasible"; clamp so training with a
        # diverged batch fails loudly in the loss (NaN) instead of inside the matcher.
        c = np.nan_to_num(c, nan=1e12, posinf=1e12, neginf=-1e12)
    rows, cols = linear_sum_assignment(c)
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def focal_class_cost(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal-style classification cost ``(Q, K)`` of the official Deformable DETR matcher.

    ``logits`` ``(Q, C)`` (pre-sigmoid), ``labels`` ``(K,)`` class indices in ``[0, C)``.
    """
    prob = logits.sigmoid()
    neg = (1 - alpha) * prob.pow(gamma) * (-(1 - prob + 1e-8).log())
    pos = alpha * (1 - prob).pow(gamma) * (-(prob + 1e-8).log())
    return pos[:, labels] - neg[:, labels]


class HungarianMatcher(nn.Module):
    """One-to-one matching of predictions to ground truth per image (see the module docstring).

    Args:
        cost_class, cost_bbox, cost_giou: weights of the three costs (docs/models.md §3: 2, 5, 2).
        alpha, gamma: focal parameters of the class cost (0.25, 2).
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor) -> Tensor:
        """Cost ``(Q, K)`` of one image: ``logits`` ``(Q, C)``, ``boxes`` ``(Q, 4)`` normalised
        cxcywh, ``tgt_labels`` ``(K,)`` class indices, ``tgt_boxes`` ``(K, 4)`` normalised cxcywh."""
        logits, boxes = logits.float(), boxes.float()
        tgt_boxes = tgt_boxes.float()
        c_class = focal_class_cost(logits, tgt_labels, self.alpha, self.gamma)
        c_bbox = torch.cdist(boxes, tgt_boxes, p=1)
        c_giou = -generalized_box_iou(
            box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
        )
        return self.cost_bbox * c_bbox + self.cost_class * c_class + self.cost_giou * c_giou

    @torch.no_grad()
    def forward(
        self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match a batch.

        Args:
            pred_logits: ``(N, Q, C)``.
            pred_boxes: ``(N, Q, 4)`` normalised cxcywh.
            targets: per image ``{"labels": (K,) class indices, "boxes": (K, 4) normalised cxcywh}``.

        Returns:
            Per image ``(pred_idx, tgt_idx)`` int64 CPU tensors of length ``min(Q, K)``.
        """
        out = []
        for i, t in enumerate(targets):
            if t["boxes"].numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                out.append((empty, empty))
                continue
            cost = self.cost_matrix(pred_logits[i], pred_boxes[i], t["labels"], t["boxes"])
            out.append(linear_assignment(cost))
        return out
