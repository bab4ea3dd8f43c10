"""Image decoding for curation: PNG/JPEG/DICOM → 8-bit grayscale array, resize, PNG encode, hashes.

- :func:`read_gray8` sniffs the content (DICOM Part 10 magic, else Pillow), never trusts the
  extension, and always returns an H×W ``uint8`` array.  16-bit PNGs are mapped linearly from their
  min..max; colour images are converted to luminance (Pillow's ITU-R 601 ``L`` conversion).
- :func:`resize_gray8` stretches to the target size per axis (the release's images are 512×512
  regardless of the original aspect, and its boxes are scaled per axis, docs/dataset.md §1.3) with Pillow's
  antialiased bilinear filter.
- :func:`encode_png` is deterministic (no timestamps, no text chunks, fixed compression), so a
  rebuild produces the same bytes.
- :func:`phash64` / :func:`dhash64`: 64-bit perceptual hashes (numpy) for near-duplicate search;
  :func:`near_duplicate_pairs` finds all pairs within a Hamming radius without an O(n²) loop.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tbx.data.dicom import is_dicom_bytes, read_dicom_gray8, to_uint8
from tbx.errors import TbxError

Image.MAX_IMAGE_PIXELS = 30000 * 30000  # CXRs are large; decompression-bomb guard stays on above


def _pil_to_gray8(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        return to_uint8(arr, float(arr.min()), float(arr.max()))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA").convert("RGB")
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.uint8).copy()


def read_gray8(path: str | Path) -> np.ndarray:
    """Decode PNG/JPEG/DICOM (or anything Pillow reads) at ``path`` to an H×W uint8 array."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TbxError(
            f"cannot read image ({e.strerror})", path, "check the file exists and is readable"
        ) from None
    return decode_gray8(data, path)


def decode_gray8(data: bytes, name: str | Path = "<image>") -> np.ndarray:
    """Decode image file bytes (PNG/JPEG/DICOM/…) to an H×W uint8 array; ``name`` is for errors."""
    if is_dicom_bytes(data[:132]) or str(name).lower().endswith((".dcm", ".dicom")):
        return read_dicom_gray8(name, data)
    path = name
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _pil_to_gray8(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise TbxError(
            f"unreadable or corrupt image ({type(e).__name__}: {e})",
            path,
            "re-export the image (PNG, JPEG or DICOM)",
        ) from None


def resize_gray8(arr: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an H×W uint8 array to ``size`` (int = square; (width, height)) per axis."""
    w, h = (size, size) if isinstance(size, int) else size
    if arr.shape == (h, w):
        return arr
    im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    return np.asarray(im.resize((w, h), Image.BILINEAR), dtype=np.uint8)


def encode_png(arr: np.ndarray, channels: int = 1) -> bytes:
    """Deterministic PNG bytes of an H×W uint8 array (``channels`` 1 = grayscale, 3 = RGB)."""
    if channels == 3:
        im = Image.fromarray(np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2)))
    elif channels == 1:
        im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    else:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


# --- perceptual hashes -------------------------------------------------------------------------


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT32 = _dct_matrix(32)
_BIT_WEIGHTS = np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)


def _bits_to_uint64(bits: np.ndarray) -> int:
    return int(np.bitwise_or.reduce(bits.reshape(-1).astype(np.uint64) * _BIT_WEIGHTS))


def _small(arr: np.ndarray, w: int, h: int) -> np.ndarray:
    im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    return np.asarray(im.resize((w, h), Image.BOX), dtype=np.float64)


def phash64(arr: np.ndarray) -> int:
    """64-bit DCT perceptual hash: 32×32 box downsample → 2-D DCT-II → 8×8 lowest frequencies →
    bit = coefficient > median (DC excluded from the median)."""
    small = _small(arr, 32, 32)
    coeffs = (_DCT32 @ small @ _DCT32.T)[:8, :8]
    med = np.median(coeffs.reshape(-1)[1:])
    return _bits_to_uint64(coeffs > med)


def dhash64(arr: np.ndarray) -> int:
    """64-bit difference hash: 32×32 box downsample → 9×8 → bit = left pixel > right pixel."""
    small = _small(np.asarray(_small(arr, 32, 32).round().astype(np.uint8)), 9, 8)
    return _bits_to_uint64(small[:, :-1] > small[:, 1:])


def hamming(a: int, b: int) -> int:
    return int(a ^ b).bit_count()


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """All index pairs ``(i, j, distance)`` with ``i < j`` and Hamming distance ≤ ``max_distance``.

    Pigeonhole bucketing: split the 64 bits into ``max_distance + 1`` bands; two hashes within the
    radius agree exactly on at least one band.  Candidates come from equal band values (a sort per
    band), their distances are computed vectorised (``np.bitwise_count`` on the XOR).
    """
    h = np.asarray(hashes, dtype=np.uint64).reshape(-1)
    n = len(h)
    if n < 2:
        return []
    bands = max(1, min(max_distance + 1, 64))
    edges = np.linspace(0, 64, bands + 1).astype(int)
    cand_i: list[np.ndarray] = []
    cand_j: list[np.ndarray] = []
    for b in range(bands):
        lo, hi = int(edges[b]), int(edges[b + 1])
        mask = np.uint64(((1 << (hi - lo)) - 1) << lo)
        key = (h & mask) >> np.uint64(lo)
        order = np.argsort(key, kind="stable")
        sk = key[order]
        starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts[(ends - starts) > 1], ends[(ends - starts) > 1]):
            members = order[s:e]
            ii, jj = np.triu_indices(len(members), k=1)
            a, c = members[ii], members[jj]
            cand_i.append(np.minimum(a, c))
            cand_j.append(np.maximum(a, c))
    if not cand_i:
        return []
    pairs = np.unique(np.stack([np.concatenate(cand_i), np.concatenate(cand_j)], axis=1), axis=0)
    dist = np.bitwise_count(h[pairs[:, 0]] ^ h[pairs[:, 1]]).astype(int)
    keep = dist <= max_distance
    return [(int(i), int(j), int(d)) for (i, j), d in zip(pairs[keep], dist[keep])]
