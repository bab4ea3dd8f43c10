"""Overlay images: the X-ray, the heatmap (jet, opacity rising with the value), ground-truth boxes
(thick white, black rim) and predicted boxes (thin cyan, with their score), under a caption strip.

:func:`render_overlay` returns an RGB array (one panel, or two side by side — the ``features``
method's *before* | *after*); :func:`save_png` writes it atomically.  Panels are drawn at a fixed
size (longer side ``side`` pixels, boxes scaled with them); heatmaps stay full-size on disk.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tbx.io import atomic_write_bytes

GT_COLOUR = (255, 255, 255)
PRED_COLOUR = (0, 230, 255)
MAX_ALPHA = 0.65
LEGEND = "white: ground truth · cyan: predicted (score)"
_LUT: np.ndarray | None = None


def _lut() -> np.ndarray:
    global _LUT
    if _LUT is None:
        from matplotlib import colormaps

        _LUT = (colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    return _LUT


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def blend(gray: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """``H × W`` uint8 image + ``H × W`` heatmap in [0, 1] → ``H × W × 3`` uint8."""
    hm = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    colour = _lut()[(hm * 255).round().astype(np.uint8)].astype(np.float32)
    base = np.repeat(np.asarray(gray, dtype=np.float32)[..., None], 3, axis=2)
    a = (MAX_ALPHA * hm)[..., None]
    return ((1 - a) * base + a * colour).round().clip(0, 255).astype(np.uint8)


def _panel(
    gray: np.ndarray,
    heatmap: np.ndarray,
    gt: Sequence[Sequence[float]],
    pred: Sequence[Sequence[float]],
    caption: str,
    side: int,
) -> Image.Image:
    h, w = gray.shape
    s = side / max(h, w)
    im = Image.fromarray(blend(gray, heatmap))
    if s != 1.0:
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
    d = ImageDraw.Draw(im)
    lw = max(2, round(max(im.size) / 200))
    font = _font(max(10, round(max(im.size) / 45)))
    for b in gt:
        x, y, bw, bh = (float(v) * s for v in b[:4])
        d.rectangle([x - 1, y - 1, x + bw + 1, y + bh + 1], outline=(0, 0, 0), width=lw + 2)
        d.rectangle([x, y, x + bw, y + bh], outline=GT_COLOUR, width=lw)
    for b in pred:
        x, y, bw, bh = (float(v) * s for v in b[:4])
        d.rectangle([x, y, x + bw, y + bh], outline=PRED_COLOUR, width=max(1, lw // 2))
        if len(b) > 4:
            d.text(
                (x + 2, y + 1),
                f"{float(b[4]):.2f}",
                fill=PRED_COLOUR,
                font=font,
                stroke_width=1,
                stroke_fill=(0, 0, 0),
            )
    if caption:
        d.text((4, 3), caption, fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return im


def _wrap(line: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Break ``line`` at its `` · `` separators so that each piece fits ``width`` pixels."""
    out: list[str] = []
    for part in line.split(" · "):
        if out and font.getlength(out[-1] + " · " + part) <= width:
            out[-1] += " · " + part
        else:
            out.append(part)
    return out


def render_overlay(
    gray: np.ndarray,
    heatmap: np.ndarray,
    *,
    gt: Sequence[Sequence[float]] = (),
    pred: Sequence[Sequence[float]] = (),
    lines: Sequence[str] = (),
    before: np.ndarray | None = None,
    captions: tuple[str, str] = ("", ""),
    side: int = 640,
) -> np.ndarray:
    """One overlay image (RGB uint8).

    ``gray``: the source image ``H × W`` uint8; ``heatmap``: ``H × W`` in [0, 1]; ``gt``: boxes
    ``[x, y, w, h]`` and ``pred``: ``[x, y, w, h, score]`` in the source frame; ``lines``: caption
    text above the image(s); ``before``: a second heatmap drawn in a left panel (``captions``:
    ``(left, right)`` panel titles); each panel is drawn with its longer side ``side`` pixels."""
    panels = [_panel(gray, heatmap, gt, pred, captions[1] if before is not None else captions[0], side)]
    if before is not None:
        panels.insert(0, _panel(gray, before, gt, pred, captions[0], side))
    gap = 6 if len(panels) > 1 else 0
    pw, ph = panels[0].size
    font = _font(max(11, min(18, round(pw * len(panels) / 70))))
    line_h = int(font.size * 1.35) if hasattr(font, "size") else 14
    width = pw * len(panels) + gap * (len(panels) - 1)
    text = [(t, (235, 235, 235)) for line in lines for t in _wrap(line, font, width - 12)]
    text.append((LEGEND, (150, 150, 150)))
    top = 6 + line_h * len(text)
    canvas = Image.new("RGB", (width, ph + top), (24, 24, 24))
    d = ImageDraw.Draw(canvas)
    for i, (t, colour) in enumerate(text):
        d.text((6, 4 + i * line_h), t, fill=colour, font=font)
    for k, p in enumerate(panels):
        canvas.paste(p, (k * (pw + gap), top))
    return np.asarray(canvas)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array as PNG (atomic)."""
    atomic_write_bytes(path, png_bytes(rgb))
    return Path(path)
