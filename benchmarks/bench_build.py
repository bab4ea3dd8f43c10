"""Throughput of `tbx dataset build` on a raw export (PNG and DICOM), 1 and 2 workers, against a
reference measured in the same run: plain Pillow open → grayscale → resize to 512 → PNG save, one
process, no hashing, no boxes, no layout.

    .venv/bin/python benchmarks/bench_build.py [--n 32] [--side 2048] [--workers 1 2]

Prints images/s for each configuration and the ratio to the reference (higher = faster). The build
does more work per image than the reference (content hashing, pixel hashing, perceptual hash,
atomic writes, JSON views), so a ratio near 1 at one worker means the pipeline adds little overhead.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_export(root: Path, n: int, side: int, dicom: bool) -> None:
    """n chest-like images (smooth anatomy + noise) of about side×side, with a manifest."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        h, w = side, int(side * rng.uniform(0.85, 1.0))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        lungs = np.exp(-(((xx - w * 0.3) / (w * 0.15)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2)) + np.exp(
            -(((xx - w * 0.7) / (w * 0.15)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2)
        )
        img = 0.8 - 0.5 * lungs + rng.normal(0, 0.03, (h, w)).astype(np.float32)
        if dicom:
            from pydicom.dataset import FileDataset, FileMetaDataset
            from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

            vals = np.clip(img * 4095, 0, 4095).astype(np.uint16)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            name = f"img/{i:05d}.dcm"
            ds = FileDataset(str(root / name), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
            ds.Rows, ds.Columns = vals.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.WindowCenter, ds.WindowWidth = 2048, 4096
            ds.RescaleSlope, ds.RescaleIntercept = 1, 0
            ds.PixelData = vals.tobytes()
            ds.save_as(root / name, enforce_file_format=True)
        else:
            name = f"img/{i:05d}.png"
            Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).save(root / name)
        rows.append(
            [name, f"P{i:05d}", ("healthy", "sick")[i % 2], "none", "bench", ("train", "val", "test")[i % 3]]
        )
    with open(root / "manifest.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["file", "patient_id", "label", "tb_type", "source", "split"])
        wr.writerows(rows)


def reference(src: Path, out: Path) -> float:
    """Plain Pillow (PNG) / pydicom + numpy min-max (DICOM) → resize → save; seconds."""
    import pydicom

    out.mkdir(parents=True)
    files = sorted((src / "img").iterdir())
    t = time.perf_counter()
    for i, f in enumerate(files):
        if f.suffix == ".dcm":
            a = pydicom.dcmread(f).pixel_array.astype(np.float32)
            im = Image.fromarray(((a - a.min()) / max(1.0, float(a.max() - a.min())) * 255).astype(np.uint8))
        else:
            im = Image.open(f).convert("L")
        im.resize((512, 512), Image.BILINEAR).save(out / f"{i:05d}.png")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    from tbx.data.build import BuildConfig, build_dataset
    from tbx.provenance import versions

    versions()  # provenance imports torch/torchvision once per process: keep it out of the timings

    tmp = Path(tempfile.mkdtemp(prefix="bench_build_"))
    try:
        print(f"{args.n} images of ~{args.side}² px per format; output 512×512")
        print(f"{'format':7s} {'pipeline':22s} {'img/s':>8s} {'vs ref':>7s}")
        for fmt in ("png", "dicom"):
            src = tmp / f"src_{fmt}"
            make_export(src, args.n, args.side, fmt == "dicom")
            ref_s = reference(src, tmp / f"ref_{fmt}")
            ref_rate = args.n / ref_s
            print(f"{fmt:7s} {'reference (PIL)':22s} {ref_rate:8.2f} {1.0:7.2f}")
            for w in args.workers:
                out = tmp / f"out_{fmt}_{w}"
                t = time.perf_counter()
                rep = build_dataset(src, out, BuildConfig(workers=w))
                dt = time.perf_counter() - t
                assert rep.n_images == args.n and rep.decoded == args.n
                rate = args.n / dt
                print(f"{fmt:7s} {f'tbx build, {w} worker(s)':22s} {rate:8.2f} {rate / ref_rate:7.2f}")
            # resume path: everything verified and reused
            t = time.perf_counter()
            rep = build_dataset(src, tmp / f"out_{fmt}_1", BuildConfig(overwrite=True))
            dt = time.perf_counter() - t
            print(f"{fmt:7s} {'tbx rebuild (reuse)':22s} {args.n / dt:8.2f} {args.n / dt / ref_rate:7.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
