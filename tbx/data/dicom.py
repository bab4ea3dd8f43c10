"""DICOM pixels → 8-bit grayscale, without letting any header value out.

The pipeline follows the DICOM display chain (PS3.3 C.11 / PS3.4 N.2): stored values →
**modality LUT** (Rescale Slope/Intercept or a Modality LUT Sequence) → **VOI LUT** (window
centre/width, or a VOI LUT Sequence) → 8 bits → **MONOCHROME1 inversion** (MONOCHROME1 means "low
values are white"; chest films are usually stored that way by CR systems).

The 8-bit mapping is linear from the VOI output range onto 0..255:
- with a window (or a VOI LUT Sequence), the VOI output range is the one pydicom's
  ``apply_voi_lut`` maps into (:func:`voi_output_range`), so the window [c − w/2, c + w/2] spans
  0..255 exactly;
- without any VOI information, the image's own min..max (after the modality LUT) spans 0..255.

Only :func:`read_dicom_gray8` is public; it returns the pixels and nothing else (no header values),
which is how the build guarantees that no PHI leaves the source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tbx.errors import TbxError

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
except ImportError:  # pragma: no cover - pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut  # type: ignore

    get_decoder = None  # type: ignore

DICOM_MAGIC_OFFSET = 128


def is_dicom_bytes(head: bytes) -> bool:
    """True when ``head`` (≥ 132 bytes of a file) carries the DICOM Part 10 preamble magic."""
    return len(head) >= 132 and head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def _transfer_syntax_supported(ds, path: Path) -> None:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or get_decoder is None:
        return
    name = getattr(ts, "name", str(ts))
    try:
        decoder = get_decoder(ts)
    except (NotImplementedError, ValueError):
        raise TbxError(
            f"unsupported DICOM transfer syntax {ts} ({name})",
            path,
            "decompress the file first (e.g. `dcmdjpeg`/`gdcmconv --raw`) or install a "
            "pydicom decoder plugin (pylibjpeg, python-gdcm)",
        ) from None
    if not decoder.is_available:
        raise TbxError(
            f"no decoder installed for DICOM transfer syntax {ts} ({name})",
            path,
            "decompress the file first (e.g. `dcmdjpeg`/`gdcmconv --raw`) or install a "
            "pydicom decoder plugin (pylibjpeg, python-gdcm)",
        )


def voi_output_range(ds) -> tuple[float, float] | None:
    """The value range pydicom's VOI step maps into, or None when the file has no VOI info.

    Mirrors ``pydicom.pixels.apply_windowing`` (PS3.3 C.11.2.1.2): the range of the stored bit
    depth (signed or unsigned), passed through the rescale when present; for a VOI LUT Sequence the
    LUT's own output depth (PS3.3 C.11.2.1.1).
    """
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq:
        bits = int(voi_seq[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None and not ds.get("ModalityLUTSequence"):
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return (min(lo, hi), max(lo, hi))


def to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] onto 0..255 (clipped, rounded half to even)."""
    if not hi > lo:
        return np.zeros(np.shape(values), dtype=np.uint8)
    scaled = np.subtract(values, lo, dtype=np.float64)  # one temporary, updated in place
    scaled *= 255.0 / (hi - lo)
    np.clip(scaled, 0, 255, out=scaled)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint8)


def dataset_to_gray8(ds, path: str | Path = "<dicom>") -> np.ndarray:
    """Pixels of an already-read pydicom Dataset as an H×W uint8 array (see module docstring)."""
    path = Path(path)
    if "PixelData" not in ds:
        raise TbxError("DICOM file has no pixel data", path, "export the image object, not a report/SR")
    _transfer_syntax_supported(ds, path)
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError, AttributeError, TypeError) as e:
        raise TbxError(
            f"cannot decode the DICOM pixel data ({type(e).__name__}: {e})",
            path,
            "check the file, or decompress it first (dcmdjpeg/gdcmconv --raw)",
        ) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]  # a CXR export with several frames: the first one is the image
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        # colour (RGB / YBR already converted to RGB by pydicom) → luminance, ITU-R 601
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise TbxError(
                f"unsupported DICOM photometric interpretation {photometric}",
                path,
                "export the CXR as MONOCHROME1/2 or RGB",
            )
        rgb = arr.astype(np.float64)
        lum = rgb @ np.array([0.299, 0.587, 0.114])
        bits = int(ds.get("BitsStored", 8))
        return to_uint8(lum, 0.0, float(2**bits - 1))
    if arr.ndim != 2:
        raise TbxError(f"unexpected DICOM pixel array shape {arr.shape}", path, "export a 2-D image")
    values = apply_modality_lut(arr, ds)
    rng = voi_output_range(ds)
    if rng is not None:
        values = apply_voi_lut(values, ds, index=0)
        lo, hi = rng
    else:
        values = values.astype(np.float64)
        lo, hi = float(values.min()), float(values.max())
    out = to_uint8(values, lo, hi)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def read_dicom_gray8(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """Decode a DICOM file (or its ``data`` bytes, ``path`` then only names it in errors) to an
    H×W uint8 array (modality LUT, VOI LUT, MONOCHROME1 inversion)."""
    import io

    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = pydicom.dcmread(io.BytesIO(data) if data is not None else path, force=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise TbxError(
            f"unreadable DICOM file ({type(e).__name__})",
            path,
            "check that the file is a complete DICOM Part 10 file",
        ) from None
    head = data[:132] if data is not None else _head(path)
    if "PixelData" not in ds and head[128:132] != b"DICM" and not any(el.tag.group == 0x0008 for el in ds):
        raise TbxError(
            "not a DICOM file (no DICM preamble, no DICOM elements)",
            path,
            "give a DICOM Part 10 file, or rename a PNG/JPEG to its real extension",
        )
    return dataset_to_gray8(ds, path)


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(132)
    except OSError:
        return b""
