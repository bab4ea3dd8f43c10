"""``tbx explain``: where a model looks — Grad-CAM-family maps on the classification head's input,
the SymFormer feature pyramid before/after its symmetric block, and their localisation scores
against the ground-truth TB boxes (see :mod:`tbx.explain.run`).

Library API (all heatmaps are float32 ``H × W`` of the source image, values in [0, 1])::

    from tbx.explain import heatmaps, render_overlay
    maps = heatmaps(model, [gray_uint8_image, ...], method="gradcam", target="pred", input_size=512)
    rgb = render_overlay(gray_uint8_image, maps[0], gt=[[x, y, w, h]], pred=[[x, y, w, h, score]])
"""

from __future__ import annotations

from tbx.explain.render import render_overlay, save_png
from tbx.explain.run import METHODS, Explained, explain, explain_images, heatmaps
from tbx.explain.scores import energy_in_boxes, pointing_hit

__all__ = [
    "METHODS",
    "Explained",
    "energy_in_boxes",
    "explain",
    "explain_images",
    "heatmaps",
    "pointing_hit",
    "render_overlay",
    "save_png",
]
