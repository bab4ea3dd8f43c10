"""DICOM / image decoding: modality LUT, VOI windowing, MONOCHROME1, bit depths, bad files.

Expected values are hand-computed from the DICOM formulas (PS3.3 C.11.2.1.2.1), not from tbx.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tbx.data.dicom import read_dicom_gray8
from tbx.data.imageio import (
    decode_gray8,
    dhash64,
    encode_png,
    near_duplicate_pairs,
    phash64,
    read_gray8,
    resize_gray8,
)
from tbx.errors import TbxError

PHI = {
    "PatientName": "ZQPHI^JOHANNA",
    "PatientID": "ZQPHIID4711",
    "InstitutionName": "ZQPHI CLINIC",
    "AccessionNumber": "ZQACC99",
    "ReferringPhysicianName": "ZQPHYS^ANNA",
    "PatientBirthDate": "19450203",
}


def write_dicom(
    path: Path,
    arr: np.ndarray,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    signed: bool = False,
    phi: dict | None = None,
    transfer_syntax=None,
    pixel_bytes: bytes | None = None,
) -> Path:
    """Write a minimal Part-10 DICOM with ``arr`` (uint16/int16) as pixel data."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ts = transfer_syntax or ExplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    for k, v in (phi or {}).items():
        setattr(ds, k, v)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if pixel_bytes is not None:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([pixel_bytes])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = arr.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def hand_window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) onto 0..255, written out independently."""
    x = x.astype(np.float64)
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    y = np.where(x <= lo, 0.0, np.where(x > hi, 255.0, y))
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)


def test_monochrome1_is_inverted_min_max_without_window(tmp_path):
    arr = np.array([[0, 1000], [2047, 4095]], dtype=np.uint16)
    p1 = write_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1")
    p2 = write_dicom(tmp_path / "m2.dcm", arr, photometric="MONOCHROME2")
    # no VOI: the image's min..max → 0..255; MONOCHROME1 then 255 − v
    expect2 = np.array([[0, round(1000 / 4095 * 255)], [round(2047 / 4095 * 255), 255]], dtype=np.uint8)
    np.testing.assert_array_equal(read_dicom_gray8(p2), expect2)
    np.testing.assert_array_equal(read_dicom_gray8(p1), 255 - expect2)
    assert read_dicom_gray8(p1)[0, 0] == 255  # lowest stored value is white in MONOCHROME1


def test_window_12bit_matches_hand_computation(tmp_path):
    x = np.array([[0, 700, 750, 751], [1000, 1200, 1249, 1250], [1251, 2000, 3000, 4095]], dtype=np.uint16)
    c, w = 1000.0, 500.0
    p = write_dicom(tmp_path / "w.dcm", x, bits_stored=12, window=(c, w))
    got = read_dicom_gray8(p)
    np.testing.assert_array_equal(got, hand_window(x, c, w))
    assert got[0, 0] == 0 and got[2, 3] == 255 and 0 < got[1, 0] < 255


def test_window_after_rescale_16bit(tmp_path):
    # modality LUT first: HU-like values = 2·x − 1024, then the window on those values
    x = np.array([[0, 20000], [30000, 65535]], dtype=np.uint16)
    c, w = 40000.0, 30000.0
    p = write_dicom(tmp_path / "r.dcm", x, bits_stored=16, window=(c, w), slope=2.0, intercept=-1024.0)
    got = read_dicom_gray8(p)
    np.testing.assert_array_equal(got, hand_window(2.0 * x.astype(np.float64) - 1024.0, c, w))


def test_monochrome1_with_window(tmp_path):
    x = np.array([[100, 900, 1500, 3000]], dtype=np.uint16)
    p = write_dicom(tmp_path / "mw.dcm", x, bits_stored=12, photometric="MONOCHROME1", window=(1200, 1000))
    np.testing.assert_array_equal(read_dicom_gray8(p), 255 - hand_window(x, 1200, 1000))


def test_signed_pixels(tmp_path):
    x = np.array([[-2048, 0], [1023, 2047]], dtype=np.int16)
    p = write_dicom(tmp_path / "s.dcm", x, bits_stored=12, signed=True)
    expect = np.rint((x.astype(float) + 2048) / 4095 * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_dicom_gray8(p), expect)


def test_unsupported_transfer_syntax_names_file(tmp_path):
    from pydicom.uid import JPEGLSLossless

    p = write_dicom(
        tmp_path / "jls.dcm",
        np.zeros((4, 4), np.uint16),
        transfer_syntax=JPEGLSLossless,
        pixel_bytes=b"\xff\xd8\xff\xf7" + b"\0" * 60,
    )
    with pytest.raises(TbxError) as e:
        read_dicom_gray8(p)
    assert "jls.dcm" in str(e.value) and "transfer syntax" in str(e.value)


def test_dicom_detected_by_content_not_extension(tmp_path):
    x = np.array([[0, 4095]], dtype=np.uint16)
    p = write_dicom(tmp_path / "image.bin", x)
    np.testing.assert_array_equal(read_gray8(p), [[0, 255]])


def test_png_jpeg_16bit_and_rgb(tmp_path):
    g = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(g).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_gray8(tmp_path / "g.png"), g)
    rgb = np.stack([g, g, g], axis=2)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_array_equal(read_gray8(tmp_path / "c.png"), g)
    v16 = np.array([[1000, 3000], [5000, 65000]], dtype=np.uint16)
    Image.fromarray(v16).save(tmp_path / "d.png")
    expect = np.rint((v16.astype(float) - 1000) / 64000 * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_gray8(tmp_path / "d.png"), expect)
    Image.fromarray(g).save(tmp_path / "j.jpg", quality=95)
    assert np.abs(read_gray8(tmp_path / "j.jpg").astype(int) - g).max() <= 8


def test_corrupt_image_names_file(tmp_path):
    p = tmp_path / "broken.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(TbxError) as e:
        read_gray8(p)
    assert "broken.png" in str(e.value)


def test_png_encoding_is_deterministic_and_resize_per_axis():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (30, 50), dtype=np.uint8)
    assert encode_png(a) == encode_png(a.copy())
    r = resize_gray8(a, (20, 10))
    assert r.shape == (10, 20) and r.dtype == np.uint8
    back = np.asarray(Image.open(io.BytesIO(encode_png(a, channels=3))))
    assert back.shape == (30, 50, 3) and (back[..., 0] == a).all() and (back[..., 2] == a).all()
    np.testing.assert_array_equal(decode_gray8(encode_png(a)), a)


def test_perceptual_hashes_are_robust_and_discriminative(shared_data):
    files = sorted((shared_data / "cxr-samples").glob("*.png"))[:12]
    arrs = [np.asarray(Image.open(f).convert("L")) for f in files]
    for fn in (phash64, dhash64):
        for a in arrs[:4]:
            b = resize_gray8(a, (300, 280)).astype(int) + 10  # resized, brighter, re-compressed
            buf = io.BytesIO()
            Image.fromarray(np.clip(b, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=70)
            assert bin(fn(a) ^ fn(np.asarray(Image.open(buf)))).count("1") <= 3
        hs = [fn(a) for a in arrs]
        dists = [bin(hs[i] ^ hs[j]).count("1") for i in range(len(hs)) for j in range(i + 1, len(hs))]
        assert min(dists) > 4  # distinct real CXRs stay apart


@pytest.mark.parametrize("radius", [0, 3, 6])
def test_near_duplicate_pairs_equals_brute_force(radius):
    rng = np.random.default_rng(radius)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    flips = [np.uint64(1) << np.uint64(int(b)) for b in rng.integers(0, 64, 80)]
    near = np.array([base[i % 40] ^ flips[i] ^ flips[(i * 7) % 80] for i in range(60)], dtype=np.uint64)
    h = np.concatenate([base, near, base[:3]])
    brute = {
        (i, j, bin(int(h[i]) ^ int(h[j])).count("1"))
        for i in range(len(h))
        for j in range(i + 1, len(h))
        if bin(int(h[i]) ^ int(h[j])).count("1") <= radius
    }
    assert set(near_duplicate_pairs(h, radius)) == brute
    assert brute  # the exact copies at least


def test_voi_lut_sequence(tmp_path):
    from pydicom import dcmread
    from pydicom.dataset import Dataset

    x = np.array([[0, 100, 2000], [3000, 4000, 4095]], dtype=np.uint16)
    p = write_dicom(tmp_path / "lut.dcm", x, bits_stored=12)
    ds = dcmread(p)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 10]  # 4096 entries, first input 0, 10-bit output
    lut = (np.arange(4096) // 4).astype(np.uint16)  # a hand-made LUT: x → x // 4 (0..1023)
    item.add_new(0x00283006, "OW", lut.tobytes())  # LUT Data
    ds.VOILUTSequence = [item]
    ds.save_as(p)
    expect = np.rint((x // 4) / 1023 * 255).astype(np.uint8)  # 10-bit LUT output → 8 bits
    np.testing.assert_array_equal(read_dicom_gray8(p), expect)
