"""Localisation scores of a heatmap against an image's ground-truth TB boxes.

- :func:`energy_in_boxes` — the heatmap's mass inside the union of the boxes over its total mass
  (mednet's "proportional energy");
- :func:`pointing_hit` — the pointing game: 1 when the heatmap's maximum lies in a box, else 0.

A box ``[x, y, w, h]`` (COCO, in the heatmap's pixel frame) covers rows ``floor(y) … ceil(y+h)-1``
and columns ``floor(x) … ceil(x+w)-1`` (clipped to the map): every pixel the box touches.  The
maximum of a map with ties is its first maximum in row-major order (``numpy.argmax``).  A map
without positive mass (all zeros) has energy 0 and no hit: it points nowhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

BoxXYWH = Sequence[float]


def box_mask(shape: tuple[int, int], boxes: Iterable[BoxXYWH]) -> np.ndarray:
    """``(H, W)`` bool: the union of the pixels covered by ``boxes`` (see the module docstring)."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for x, y, bw, bh in (tuple(b)[:4] for b in boxes):
        r0, r1 = max(0, math.floor(y)), min(h, math.ceil(y + bh))
        c0, c1 = max(0, math.floor(x)), min(w, math.ceil(x + bw))
        if r1 > r0 and c1 > c0:
            mask[r0:r1, c0:c1] = True
    return mask


def energy_in_boxes(heatmap: np.ndarray, boxes: Iterable[BoxXYWH]) -> float:
    """Mass of ``heatmap`` (non-negative, ``(H, W)``) inside the union of ``boxes`` over its total."""
    hm = np.asarray(heatmap, dtype=np.float64)
    total = float(hm.sum())
    if total <= 0:
        return 0.0
    return float(hm[box_mask(hm.shape, boxes)].sum() / total)


def pointing_hit(heatmap: np.ndarray, boxes: Iterable[BoxXYWH]) -> int:
    """1 when the (first) maximum of ``heatmap`` lies inside one of ``boxes``, else 0."""
    hm = np.asarray(heatmap)
    if hm.size == 0 or not float(hm.max()) > 0:
        return 0
    r, c = np.unravel_index(int(np.argmax(hm)), hm.shape)
    return int(box_mask(hm.shape, boxes)[r, c])


def summarise(images: Sequence[dict]) -> dict[str, float | int | None]:
    """Means over the images that have ground-truth boxes (``energy_in_boxes`` not None):
    ``mean_energy_in_boxes``, ``pointing_game`` (the hit rate) and ``n_scored``."""
    scored = [im for im in images if im.get("energy_in_boxes") is not None]
    if not scored:
        return {"mean_energy_in_boxes": None, "pointing_game": None, "n_scored": 0}
    return {
        "mean_energy_in_boxes": float(np.mean([im["energy_in_boxes"] for im in scored])),
        "pointing_game": float(np.mean([im["pointing_hit"] for im in scored])),
        "n_scored": len(scored),
    }
