"""Pascal-VOC XML boxes (the release's ``annotations/xml/<stem>.xml``, at original resolution)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tbx.data.records import CATEGORIES, CATEGORY_BY_NAME, Box
from tbx.errors import TbxError
from tbx.io import atomic_write_bytes


@dataclass
class VocObject:
    name: str
    difficult: bool
    xmin: float
    ymin: float
    xmax: float
    ymax: float


@dataclass
class VocAnnotation:
    filename: str
    width: int
    height: int
    objects: list[VocObject] = field(default_factory=list)


def _text(node: ET.Element, tag: str, path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise TbxError(f"VOC XML lacks <{tag}>", path, "fix or regenerate the XML file")
    return child.text.strip()


def read_voc(path: str | Path) -> VocAnnotation:
    """Parse one VOC XML file; malformed files raise :class:`TbxError` naming the file."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise TbxError(f"unreadable VOC XML ({e})", path, "fix or regenerate the XML file") from None
    size = root.find("size")
    if size is None:
        raise TbxError("VOC XML lacks <size>", path, "add <size><width>…</width><height>…</height></size>")
    try:
        width, height = int(float(_text(size, "width", path))), int(float(_text(size, "height", path)))
        objects = []
        for obj in root.findall("object"):
            bb = obj.find("bndbox")
            if bb is None:
                raise TbxError("VOC <object> lacks <bndbox>", path, "fix the XML file")
            diff = obj.find("difficult")
            objects.append(
                VocObject(
                    name=_text(obj, "name", path),
                    difficult=diff is not None and (diff.text or "0").strip() not in ("0", ""),
                    xmin=float(_text(bb, "xmin", path)),
                    ymin=float(_text(bb, "ymin", path)),
                    xmax=float(_text(bb, "xmax", path)),
                    ymax=float(_text(bb, "ymax", path)),
                )
            )
    except ValueError as e:
        raise TbxError(f"non-numeric value in VOC XML ({e})", path, "fix the XML file") from None
    fn = root.find("filename")
    return VocAnnotation(
        filename=(fn.text or "").strip() if fn is not None else path.stem,
        width=width,
        height=height,
        objects=objects,
    )


def write_voc(path: str | Path, filename: str, width: int, height: int, boxes: list[Box]) -> None:
    """Write boxes (xywh in the ``width`` × ``height`` frame) as VOC XML (atomic)."""
    names = {c["id"]: c["name"] for c in CATEGORIES}
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    ET.SubElement(root, "segmented").text = "0"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    for b in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = names[b.category]
        ET.SubElement(obj, "pose").text = "unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), b.xyxy):
            ET.SubElement(bb, tag).text = str(int(round(v)))
    ET.indent(root, "\t")
    atomic_write_bytes(path, ET.tostring(root, encoding="utf-8") + b"\n")


def category_of(name: str, path: str | Path) -> int:
    if name not in CATEGORY_BY_NAME:
        raise TbxError(f"unknown box label '{name}'", path, f"use one of {', '.join(CATEGORY_BY_NAME)}")
    return CATEGORY_BY_NAME[name]


def convert_voc_box(
    xmin: float,
    ymin: float,
    xmax: float,
    ymax: float,
    width: int,
    height: int,
    size: int | tuple[int, int] = 512,
) -> tuple[float, float, float, float] | None:
    """A VOC box at the original ``width``×``height`` → COCO ``(x, y, w, h)`` in the resized frame.

    docs/dataset.md §1.3: scale x by size/width and y by size/height, subtract 1 (0-based), drop boxes
    narrower (or lower) than 1 px after scaling.  Bit-exact with the release: the corners are
    computed in float64, stored as float32, and w/h are float32 differences (this reproduces all
    902 boxes of ``TBX11K_train.json`` exactly; see :func:`official_area` for the area).
    """
    sw, sh = (size, size) if isinstance(size, int) else size
    corners = np.array(
        [xmin * sw / width - 1, ymin * sh / height - 1, xmax * sw / width - 1, ymax * sh / height - 1],
        dtype=np.float32,
    )
    w = corners[2] - corners[0]
    h = corners[3] - corners[1]
    if w < 1 or h < 1:
        return None
    return float(corners[0]), float(corners[1]), float(w), float(h)
