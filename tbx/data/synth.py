"""Procedural chest X-rays: a synthetic TBX11K so that tests and ``make demo`` run without the data.

Every image is rendered from a small anatomical model in vectorised numpy (float32 grids, no
per-pixel Python loops):

* **anatomy** — body outline (neck, shoulders, torso), two lung fields that are exact mirror images
  of each other in the patient's frame, posterior and anterior ribs, clavicles, spine with
  vertebrae, mediastinum with aortic knob, a heart off-centre towards the patient's left (= the
  *right* of the image), hemidiaphragms (the patient's right one slightly higher, as in real
  chests), a gastric bubble, vascular markings densest at the hila;
* **acquisition** — the whole thorax is rotated (±5°), shifted (±5 % sideways, −7…+5 %
  vertically) and scaled (0.86–1.08), as a patient is positioned differently in every exposure:
  the two lungs are bilaterally symmetric *up to a small affine transform*, which is exactly what
  SymFormer's STN absorbs (docs/models.md §2.3); habitus (soft-tissue thickness, arms in the field or not),
  contrast, brightness, gamma and quantum noise vary per image;
* **findings** (docs/dataset.md §1.1 classes):
  - healthy: none;
  - sick but non-TB: one or two of *diffuse* bilateral reticulonodular opacities, *lower-zone*
    airspace opacities, *cardiomegaly* (cardiothoracic ratio > 0.5) and a pleural *effusion*
    (meniscus, blunted costophrenic angle) — patterns deliberately unlike TB's;
  - TB: *active* lesions (fluffy consolidations built from mottled blobs, or cavities = a dense
    ring around a lucent centre; mostly upper zones), *latent* lesions (clusters of small dense
    calcified nodules, or fibrotic streaks pointing to the hilum), both, or *uncertain* type
    (either kind, boxed as category 3).  Box sizes are calibrated on the real release
    (``TBX11K_train.json``: √(w·h) at 512 has median 124 px for active and 108 px for latent
    boxes, 5–95 % ranges 54–195 and 45–173; the synthetic medians are ≈ 115 and ≈ 101; 1.5
    boxes per TB image there, ≈ 1.9 here).  Each lesion stays inside the lung it was placed in;
    lesions are unilateral in 85 % of TB images (``SynthConfig.unilateral``), so comparing a
    region with its mirror is informative.
  Lesions add density to the lung (active 0.065–0.1, calcified nodules 0.10–0.16, streaks
  0.06–0.09 units, on a lung field of ≈ 0.1–0.2 units and a mediastinum of ≈ 0.8) with soft
  edges; after the display mapping their peak contrast is ≈ 12–18 % (active) and 15–35 % (small
  latent) of the image's 5–95 % intensity range (``tests/test_synth.py`` measures it by rendering
  each image with and without its lesions).  Each box is the tight bounding box of the pixels
  where the lesion's own layer reaches 30 % of its peak (the visible part, clipped to the lung).

Determinism: image ``i`` is rendered with ``numpy.random.default_rng([seed, 2, i])`` (anatomy with
``[seed, 1, patient]``), so results do not depend on ``workers`` or on the order of generation;
PNGs are written by Pillow with fixed parameters (no text chunks, no timestamps) and DICOM files
carry UIDs derived from ``(seed, index)``, so the same config gives byte-identical image and
annotation files.  ``provenance.json`` (time, host, command) is the only file that differs.

Output 1 — TBX11K layout (default), at ``size`` × ``size``::

    OUT/imgs/health/h0001.png …  imgs/sick/s0001.png …  imgs/tb/tb0001.png …   (8-bit grayscale)
    OUT/annotations/xml/tb0001.xml …   VOC boxes of every TB image; XML frame = image frame
    OUT/annotations/json/TBX11K_{train,val,trainval,test}[_only_tb].json, all_*.json   (COCO)
    OUT/lists/TBX11K_*.txt, all_*.txt
    OUT/provenance.json

  The split is assigned by :func:`tbx.data.split.split_records` with ``SplitConfig(seed=seed)``;
  patient ids are ``SYN-000001`` … (one image per patient).  VOC coordinates are 1-based pixel
  indices (``xmin = first column + 1``, ``xmax = last column + 1``) so that the official
  conversion (scale to 512, subtract 1, docs/dataset.md §1.3) gives exactly the JSON boxes.

Output 2 — ``raw=True``: a hospital-style export, the input of ``tbx dataset build SRC OUT``::

    SRC/exports/<year>/CXR_<6 digits>.png   (or .dcm with dicom=True)   year ∈ 2022..2024
    SRC/xml/CXR_<6 digits>.xml              one per TB image (only), boxes at ORIGINAL resolution
    SRC/manifest.csv
    SRC/provenance.json

  * Images have their original size: width 1500–3000 px, aspect height/width 0.8–1.25; rendered
    with the shorter side = ``size`` and upsampled with Pillow (bilinear), then full-resolution
    noise is added.  File numbers are a seeded permutation: names never encode the label.
  * PNG: 8-bit grayscale ("L"), bright = dense.
  * DICOM (``dicom=True``): Part-10 files, explicit VR little endian, uncompressed, Modality DX,
    SOP class Digital X-Ray Image Storage – For Presentation; ``BitsAllocated`` 16 with
    ``BitsStored`` 12, 14 or 16 (``HighBit`` = stored − 1, unsigned); about one file in three is
    ``MONOCHROME1`` (stored values inverted: low = white), the others ``MONOCHROME2``;
    ``RescaleSlope`` 1 / ``RescaleIntercept`` 0; ``WindowCenter``/``WindowWidth`` cover exactly the
    stored data range (so windowing reproduces the image).  The headers carry fake PHI that must
    never reach a built dataset: ``PatientName`` (e.g. ``DOE^JANE``), ``PatientID`` (= the manifest
    id), ``PatientBirthDate``, ``PatientSex``, ``InstitutionName``, ``AccessionNumber``,
    ``StudyDate``/``StudyTime``, ``ReferringPhysicianName``.
  * VOC XML: ``<filename>`` = the image's base name (e.g. ``CXR_000123.dcm``), ``<size>`` = the
    original width/height, boxes as 1-based integer pixel coordinates at original resolution.
    A TB image whose lesions have no box (``n_tb_no_box``) gets an XML with no ``<object>``,
    like the release's ``tb1199``.
  * ``manifest.csv`` (UTF-8, ``\\n`` line ends, header row, rows in file-number order) with columns
    ``file`` (path relative to SRC, forward slashes), ``patient_id`` (``P`` + 7 digits),
    ``label`` (``healthy|sick|tb``), ``tb_type`` (``none|active|latent|active+latent|uncertain``,
    ``unknown`` for a TB image without boxes) and ``source`` (``tbx11k``).
  * ``n_repeat_patients`` patients have two images (same anatomy, different exposure and
    findings, same label): duplicate-patient handling must keep them in one split.

The returned records are in the output's frame: layout mode — ``file_name`` relative to ``imgs/``,
split assigned; raw mode — ``file_name`` relative to SRC, original width/height, boxes in
original pixels (0-based, ``x = xmin − 1``), split ``None``.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tbx.data.layout import ANN_XML, FOLDER_OF_LABEL, IMGS, MANIFEST_COLUMNS
from tbx.data.records import ACTIVE, LATENT, UNCERTAIN, Box, Record
from tbx.data.voc import write_voc
from tbx.errors import TbxError
from tbx.io import atomic_dir, atomic_write_text
from tbx.workers import init_worker, stop_pool

SICK_PATTERNS = ("diffuse", "lower", "cardiomegaly", "effusion")
_STEM_PREFIX = {"healthy": "h", "sick": "s", "tb": "tb"}


@dataclass
class SynthConfig:
    """Options of ``tbx dataset synth``."""

    n_healthy: int = 40
    n_sick: int = 40
    n_active: int = 24
    n_latent: int = 12
    n_both: int = 6
    n_uncertain: int = 2
    size: int = 512  # layout: output side; raw: rendering resolution of the shorter side
    seed: int = 0
    raw: bool = False  # hospital-style export instead of the TBX11K layout
    dicom: bool = False  # raw export as DICOM instead of PNG
    n_tb_no_box: int = 0  # TB images whose lesions are not boxed (the release's tb1199 quirk)
    n_repeat_patients: int = 2  # raw: patients with two images (duplicate-patient handling)
    unilateral: float = 0.85  # share of TB images whose lesions are all in one lung
    raw_width: tuple[int, int] = (1500, 3000)  # raw: original width range (px)
    raw_aspect: tuple[float, float] = (0.8, 1.25)  # raw: height / width range
    workers: int = 1  # parallel processes (the output does not depend on it)


@dataclass(frozen=True)
class Case:
    """One image to generate: what it shows and where it goes (planned up front, cheap)."""

    index: int  # global index → the image's RNG
    label: str
    tb_type: str  # none | active | latent | active+latent | uncertain | unknown (no box)
    file_name: str  # layout: relative to imgs/; raw: relative to SRC
    patient_id: str
    anatomy_index: int  # → the patient's anatomy RNG (shared by a patient's images)
    width: int
    height: int
    xml_name: str | None = None  # path of the VOC XML relative to the output root
    dicom_bits: int = 0  # raw DICOM: BitsStored (12/14/16); 0 = PNG
    monochrome1: bool = False
    phi: dict = field(default_factory=dict, hash=False, compare=False)


# ----------------------------------------------------------------------------------------------
# planning


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, int(index)])


def _validate(cfg: SynthConfig) -> None:
    counts = {
        "--n-healthy": cfg.n_healthy,
        "--n-sick": cfg.n_sick,
        "--n-active": cfg.n_active,
        "--n-latent": cfg.n_latent,
        "--n-both": cfg.n_both,
        "--n-uncertain": cfg.n_uncertain,
        "n_tb_no_box": cfg.n_tb_no_box,
        "n_repeat_patients": cfg.n_repeat_patients,
    }
    for name, v in counts.items():
        if v < 0:
            raise TbxError(f"{name} must be ≥ 0 (got {v})", fix=f"pass a non-negative {name}")
    if sum(v for k, v in counts.items() if k != "n_repeat_patients") == 0:
        raise TbxError("nothing to generate: all image counts are 0", fix="pass e.g. --n-healthy 10")
    if not 64 <= cfg.size <= 4096:
        raise TbxError(f"--size must be in 64..4096 (got {cfg.size})", fix="use e.g. --size 512")
    if cfg.dicom and not cfg.raw:
        raise TbxError(
            "--dicom needs --raw (the TBX11K layout holds PNG images)", fix="add --raw, or drop --dicom"
        )
    if not 0.0 <= cfg.unilateral <= 1.0:
        raise TbxError(f"unilateral share must be in [0, 1] (got {cfg.unilateral})")
    if cfg.workers < 1:
        raise TbxError(f"--workers must be ≥ 1 (got {cfg.workers})", fix="use --workers 1")
    lo, hi = cfg.raw_width
    if not 64 <= lo <= hi:
        raise TbxError(f"raw width range {cfg.raw_width} is invalid", fix="use e.g. (1500, 3000)")


def _class_plan(cfg: SynthConfig) -> list[tuple[str, str]]:
    """``(label, tb_type)`` per image in canonical order (healthy, sick, TB); TB types shuffled."""
    tb = (
        ["active"] * cfg.n_active
        + ["latent"] * cfg.n_latent
        + ["active+latent"] * cfg.n_both
        + ["uncertain"] * cfg.n_uncertain
        + ["unknown"] * cfg.n_tb_no_box
    )
    order = _rng(cfg.seed, 0, 0).permutation(len(tb))
    tb = [tb[i] for i in order]
    return [("healthy", "none")] * cfg.n_healthy + [("sick", "none")] * cfg.n_sick + [("tb", t) for t in tb]


_FIRST = (
    "JANE",
    "JOHN",
    "MARIA",
    "JOSE",
    "WEI",
    "AISHA",
    "OLGA",
    "PETER",
    "FATIMA",
    "LUCAS",
    "NGUYEN",
    "SARAH",
    "AHMED",
    "ELENA",
    "DAVID",
    "PRIYA",
    "MIGUEL",
    "ANNA",
    "KWAME",
    "YUKI",
)
_LAST = (
    "DOE",
    "SMITH",
    "GARCIA",
    "MUELLER",
    "WANG",
    "OKAFOR",
    "IVANOVA",
    "ROSSI",
    "KHAN",
    "SILVA",
    "TANAKA",
    "JOHNSON",
    "HASSAN",
    "NOVAK",
    "PETERSEN",
    "MARTIN",
    "LOPEZ",
    "MENSAH",
    "KIM",
    "SATO",
)
_INSTITUTIONS = (
    "ST. MARY GENERAL HOSPITAL",
    "RIVERSIDE CHEST CLINIC",
    "NORTHGATE MEDICAL CENTER",
    "CITY UNIVERSITY HOSPITAL",
    "LAKESIDE TB REFERRAL UNIT",
)


def _fake_phi(rng: np.random.Generator, patient_id: str) -> dict[str, str]:
    """Realistic-looking fake PHI for a DICOM header (never real people)."""
    year = int(rng.integers(1940, 2005))
    study = (int(rng.integers(2022, 2025)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    hms = (int(rng.integers(7, 19)), int(rng.integers(0, 60)), int(rng.integers(0, 60)))
    return {
        "PatientName": f"{_LAST[rng.integers(len(_LAST))]}^{_FIRST[rng.integers(len(_FIRST))]}",
        "PatientID": patient_id,
        "PatientBirthDate": f"{year:04d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "PatientSex": "F" if rng.random() < 0.5 else "M",
        "InstitutionName": _INSTITUTIONS[rng.integers(len(_INSTITUTIONS))],
        "AccessionNumber": f"A{int(rng.integers(10**8, 10**9))}",
        "StudyDate": f"{study[0]:04d}{study[1]:02d}{study[2]:02d}",
        "StudyTime": f"{hms[0]:02d}{hms[1]:02d}{hms[2]:02d}",
        "ReferringPhysicianName": f"{_LAST[rng.integers(len(_LAST))]}^{_FIRST[rng.integers(20)]}^^DR",
    }


def plan_cases(cfg: SynthConfig) -> list[Case]:
    """Every image to generate, with its file name, patient and (raw) acquisition details."""
    _validate(cfg)
    plan = _class_plan(cfg)
    if not cfg.raw:
        cases, counters = [], {"healthy": 0, "sick": 0, "tb": 0}
        for i, (label, tb_type) in enumerate(plan):
            counters[label] += 1
            stem = f"{_STEM_PREFIX[label]}{counters[label]:04d}"
            cases.append(
                Case(
                    index=i,
                    label=label,
                    tb_type=tb_type,
                    file_name=f"{FOLDER_OF_LABEL[label]}/{stem}.png",
                    patient_id=f"SYN-{i + 1:06d}",
                    anatomy_index=i,
                    width=cfg.size,
                    height=cfg.size,
                    xml_name=f"{ANN_XML}/{stem}.xml" if label == "tb" else None,
                )
            )
        return cases

    # raw: hospital-style names in a seeded order, random patient ids, a few repeat patients
    master = _rng(cfg.seed, 0, 1)
    n = len(plan)
    numbers = master.permutation(n) + 1  # file number of image i
    years = master.integers(2022, 2025, size=n)
    pids = [f"P{int(v):07d}" for v in master.choice(10**7 - 10**6, size=n, replace=False) + 10**6]
    anatomy = list(range(n))
    by_label: dict[str, list[int]] = {}
    for i, (label, _) in enumerate(plan):
        by_label.setdefault(label, []).append(i)
    # pair the last two images of a label (cycling healthy, sick, tb) into one patient
    pools = {k: list(v) for k, v in by_label.items()}
    made = 0
    while made < cfg.n_repeat_patients:
        progressed = False
        for label in ("healthy", "sick", "tb"):
            pool = pools.get(label, [])
            if made < cfg.n_repeat_patients and len(pool) >= 2:
                first, second = pool.pop(), pool.pop()
                pids[second] = pids[first]
                anatomy[second] = anatomy[first]
                made += 1
                progressed = True
        if not progressed:
            break
    ext = "dcm" if cfg.dicom else "png"
    cases = []
    for i, (label, tb_type) in enumerate(plan):
        r = _rng(cfg.seed, 3, i)
        w = int(r.integers(cfg.raw_width[0], cfg.raw_width[1] + 1))
        h = int(round(w * r.uniform(*cfg.raw_aspect)))
        stem = f"CXR_{int(numbers[i]):06d}"
        bits = int(r.choice([12, 14, 16])) if cfg.dicom else 0
        mono1 = bool(cfg.dicom and r.random() < 1 / 3)
        phi = _fake_phi(_rng(cfg.seed, 4, anatomy[i]), pids[i]) if cfg.dicom else {}
        if cfg.dicom:  # a repeat visit: same person, another study
            phi.update(
                {
                    k: v
                    for k, v in _fake_phi(r, pids[i]).items()
                    if k in ("AccessionNumber", "StudyDate", "StudyTime")
                }
            )
        cases.append(
            Case(
                index=i,
                label=label,
                tb_type=tb_type,
                file_name=f"exports/{int(years[i])}/{stem}.{ext}",
                patient_id=pids[i],
                anatomy_index=anatomy[i],
                width=w,
                height=h,
                xml_name=f"xml/{stem}.xml" if label == "tb" else None,
                dicom_bits=bits,
                monochrome1=mono1,
                phi=phi,
            )
        )
    cases.sort(key=lambda c: c.file_name.rsplit("/", 1)[1])  # file-number order
    return cases


# ----------------------------------------------------------------------------------------------
# rendering helpers (all float32, vectorised)


def _ramp(t: np.ndarray) -> np.ndarray:
    """Soft step: 0 below −0.5, 1 above 0.5, linear between (cheap stand-in for a sigmoid)."""
    return np.clip(t + np.float32(0.5), 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Band-limited noise in [0, 1]: a ``cells``-wide random grid upsampled bicubically."""
    ch = max(2, int(round(cells * h / max(w, 1))))
    grid = rng.random((ch, max(2, cells)), dtype=np.float32)
    img = Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


@dataclass
class _Anatomy:
    """Per-patient anatomy in canonical units (thorax ≈ 1 unit tall, midline at X = 0)."""

    apex: float
    base: float
    lateral: float
    medial: float
    dome: float
    right_dome_up: float
    body: float
    heart_x: float
    heart_y: float
    heart_rx: float
    heart_ry: float
    heart_tilt: float
    rib_start: float
    rib_spacing: float
    rib_curve: float
    bubble: bool
    arms: float  # 0 = arms out of the field; else their density
    air: float  # density of the background (scatter, detector offset)
    soft: float  # soft-tissue thickness (habitus)


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    return _Anatomy(
        apex=rng.uniform(0.11, 0.17),
        base=rng.uniform(0.70, 0.81),
        lateral=rng.uniform(0.33, 0.41),
        medial=rng.uniform(0.04, 0.055),
        dome=rng.uniform(0.05, 0.09),
        right_dome_up=rng.uniform(0.005, 0.025),
        body=rng.uniform(0.40, 0.50),
        heart_x=rng.uniform(0.035, 0.06),
        heart_y=rng.uniform(0.58, 0.63),
        heart_rx=rng.uniform(0.12, 0.145),
        heart_ry=rng.uniform(0.10, 0.12),
        heart_tilt=rng.uniform(-0.45, -0.2),
        rib_start=rng.uniform(0.08, 0.11),
        rib_spacing=rng.uniform(0.058, 0.068),
        rib_curve=rng.uniform(0.8, 1.05),
        bubble=bool(rng.random() < 0.7),
        arms=float(rng.uniform(0.15, 0.35)) if rng.random() < 0.5 else 0.0,
        air=float(rng.uniform(0.0, 0.06)),
        soft=float(rng.uniform(0.85, 1.2)),
    )


@dataclass
class _Canvas:
    """The rendered image state plus the geometry needed to place findings."""

    D: np.ndarray  # density (bright = dense)
    X: np.ndarray  # canonical lateral coordinate (patient's left > 0 = image right)
    Y: np.ndarray  # canonical vertical coordinate
    lung: np.ndarray  # soft lung mask (0..1), heart excluded
    unit: float  # pixels per canonical unit
    an: _Anatomy


def _render_anatomy(an: _Anatomy, rng: np.random.Generator, h: int, w: int, heart_scale: float) -> _Canvas:
    L = float(min(h, w))
    theta = math.radians(rng.uniform(-5.0, 5.0))
    scale = rng.uniform(0.86, 1.08)
    tx, ty = rng.uniform(-0.05, 0.05), rng.uniform(-0.07, 0.05)
    unit = L * scale
    xs = ((np.arange(w, dtype=np.float32) + 0.5 - w / 2) / L)[None, :]
    ys = ((np.arange(h, dtype=np.float32) + 0.5 - h / 2) / L)[:, None]
    c, s = np.float32(math.cos(theta) / scale), np.float32(math.sin(theta) / scale)
    X = (c * xs + s * ys) - np.float32(tx)
    Y = (c * ys - s * xs) + np.float32(0.5 - ty)
    A = np.abs(X)
    e = np.float32(1 / 80)  # edge softness (canonical units)

    # body: neck → shoulders → torso, thicker in the middle
    hb = 0.085 + (an.body + 0.05 * Y - 0.085) * np.clip((Y - 0.05) / 0.07, 0.0, 1.0)
    body = _ramp((hb - A) / e)
    q = np.clip(A / hb, 0.0, 1.0)
    D = body * (0.24 + 0.34 * (1.0 - q * q)) * an.soft + an.air
    if an.arms:  # upper arms beside the torso
        arm = _ramp((A - hb - 0.025) / e) * _ramp((hb + 0.16 - A) / (2 * e)) * _ramp((Y - 0.16) / 0.04)
        D += an.arms * arm

    # lungs (mirror images in |X|), hemidiaphragm domes, the patient's right one higher
    t_l = np.sqrt(np.clip((Y - an.apex) / 0.17, 0.0, 1.0))
    t_m = np.sqrt(np.clip((Y - an.apex) / 0.10, 0.0, 1.0))
    centre = 0.15
    lat = centre + (an.lateral - centre) * t_l
    med = centre - (centre - (an.medial + 0.03 * Y)) * t_m
    mid = 0.5 * (an.medial + an.lateral)
    half = 0.5 * (an.lateral - an.medial) + 0.02
    u = (A - mid) / half
    yd = an.base - an.dome * np.clip(1.0 - u * u, 0.0, 1.0) - an.right_dome_up * _ramp(-X / e)
    lung = _ramp((A - med) / e) * _ramp((lat - A) / e) * _ramp((yd - Y) / e) * _ramp((Y - an.apex) / e)

    # heart: tilted ellipse towards the image right (patient's left)
    ct, st = math.cos(an.heart_tilt), math.sin(an.heart_tilt)
    dx, dy = X - an.heart_x * heart_scale, Y - an.heart_y
    hx = (ct * dx + st * dy) / (an.heart_rx * heart_scale)
    hy = (-st * dx + ct * dy) / (an.heart_ry * math.sqrt(heart_scale))
    heart = _ramp((1.0 - (hx * hx + hy * hy)) / 0.12) * _ramp((yd + 0.02 - Y) / e)
    lung = lung * (1.0 - heart)

    # lung air (apices brighter under the shoulder girdle); vascular markings densest at the hila
    noise = _smooth_noise(rng, h, w, 28) + 0.6 * _smooth_noise(rng, h, w, 70)
    hil = np.exp(-(((A - 0.11) / 0.09) ** 2 + ((Y - 0.47) / 0.14) ** 2))
    apex = np.clip((0.32 - Y) / 0.16, 0.0, 1.0)
    lung_d = 0.085 + 0.06 * apex + 0.03 * hil + (0.012 + 0.04 * hil) * noise
    D += lung * (lung_d - D)

    # mediastinum, aortic knob, heart density
    mediast = _ramp(((0.055 + 0.05 * Y) - A) / e) * _ramp((Y - 0.06) / 0.03)
    knob = _ramp((1.0 - ((X - 0.065) / 0.04) ** 2 - ((Y - 0.30) / 0.035) ** 2) / 0.3)
    D += 0.08 * mediast + 0.05 * knob + 0.05 * heart

    # spine with vertebral bodies
    spine = _ramp((0.038 - A) / 0.006) * (0.8 + 0.2 * np.cos(Y * np.float32(2 * math.pi / 0.052)))
    D += 0.10 * spine * _ramp((0.95 - Y) / 0.05)

    # ribs: posterior (arched, downward laterally) and fainter anterior ones, inside the chest wall
    chest = _ramp((lat + 0.035 - A) / e) * _ramp((A - 0.03) / e) * _ramp((yd + 0.04 - Y) / e)
    post = (Y - (an.rib_curve * A * A - 0.12 * A) - an.rib_start) / an.rib_spacing
    r = post - np.floor(post)
    band = _ramp((0.14 - np.abs(r - 0.5)) / 0.07)
    rib = band * (1.0 + 1.2 * band * (1.0 - band)) * (post > 0) * (post < 10)
    ant = (Y - (0.30 * A - 0.35 * A * A) - an.rib_start - 0.03) / (an.rib_spacing * 1.15)
    ra = ant - np.floor(ant)
    rib_a = _ramp((0.12 - np.abs(ra - 0.5)) / 0.08) * (ant > 0) * (ant < 6)
    D += chest * (0.05 * rib + 0.022 * rib_a)

    # clavicles
    a0 = A - 0.035
    yc = 0.165 - 0.35 * a0 + 0.5 * a0 * a0
    clav = _ramp((0.011 - np.abs(Y - yc)) / 0.006) * _ramp((0.32 - A) / e) * _ramp(a0 / e)
    D += 0.11 * clav

    # gastric bubble below the patient's left hemidiaphragm
    if an.bubble:
        gb = _ramp((1.0 - ((X - 0.19) / 0.055) ** 2 - ((Y - an.base - 0.02) / 0.03) ** 2) / 0.3)
        D -= 0.10 * gb * body
    return _Canvas(D=D, X=X, Y=Y, lung=lung, unit=unit, an=an)


# ----------------------------------------------------------------------------------------------
# findings


def _side_mask(cv: _Canvas, side: int) -> np.ndarray:
    return _ramp(side * cv.X / np.float32(1 / 80))


def _sick(cv: _Canvas, rng: np.random.Generator, patterns: list[str]) -> None:
    h, w = cv.D.shape
    an = cv.an
    zone = (cv.Y - an.apex) / (an.base - an.apex)  # 0 apex … 1 base
    if "diffuse" in patterns:  # bilateral reticulonodular / interstitial opacities
        tex = np.clip(_smooth_noise(rng, h, w, int(rng.integers(45, 80))) - 0.35, 0.0, 1.0)
        haze = _smooth_noise(rng, h, w, 6)
        amp = rng.uniform(0.08, 0.12)
        weight = 0.55 + 0.45 * np.clip(zone, 0.0, 1.0)
        cv.D += cv.lung * amp * weight * (0.9 * tex + 0.25 * haze)
    if "lower" in patterns:  # lower-zone airspace opacities (bilateral 70 %)
        sides = [-1, 1] if rng.random() < 0.7 else [int(rng.choice([-1, 1]))]
        mott = 0.55 + 0.45 * _smooth_noise(rng, h, w, 10)
        low = _ramp((zone - rng.uniform(0.5, 0.62)) / 0.22)
        amp = rng.uniform(0.15, 0.21)
        sm = sum(_side_mask(cv, s) for s in sides)
        cv.D += cv.lung * amp * low * mott * sm
    if "effusion" in patterns:  # meniscus at the base, costophrenic angle blunted
        for side in [-1, 1] if rng.random() < 0.3 else [int(rng.choice([-1, 1]))]:
            level = an.base - rng.uniform(0.08, 0.16)
            t = (np.abs(cv.X) - an.medial) / (an.lateral - an.medial)
            meniscus = _ramp((cv.Y - (level - 0.08 * np.clip(t, 0.0, 1.0) ** 2)) / 0.025)
            cv.D += rng.uniform(0.2, 0.28) * cv.lung * meniscus * _side_mask(cv, side)


def _window(cx: float, cy: float, rad: float, h: int, w: int) -> tuple[slice, slice] | None:
    x0, x1 = max(0, int(cx - rad)), min(w, int(cx + rad) + 1)
    y0, y1 = max(0, int(cy - rad)), min(h, int(cy + rad) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return slice(y0, y1), slice(x0, x1)


def _blobs(gx: np.ndarray, gy: np.ndarray, centres: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """Sum of isotropic Gaussians (few, each over a small window: cheap)."""
    out = np.zeros(np.broadcast_shapes(gx.shape, gy.shape), np.float32)
    for (bx, by), sg in zip(centres, sig):
        out += np.exp(-((gx - bx) ** 2 + (gy - by) ** 2) / np.float32(2 * sg * sg))
    return out


def _lesion_layer(
    kind: str, rng: np.random.Generator, cx: float, cy: float, unit: float, h: int, w: int
) -> tuple[tuple[slice, slice], np.ndarray, float] | None:
    """A lesion's density layer over a window: ``(window, layer normalised to peak 1, amplitude)``.

    The layer may be negative where a cavity is lucent; its box uses ``|layer|``.
    """
    px = unit / 512.0  # one 512-frame pixel in this image
    if kind == "consolidation":
        R = rng.uniform(34, 118) * px
        win = _window(cx, cy, 2.2 * R, h, w)
        if win is None:
            return None
        gy = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None]
        gx = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :]
        n = int(rng.integers(3, 8))
        cen = np.stack([cx + rng.normal(0, 0.45 * R, n), cy + rng.normal(0, 0.4 * R, n)], 1)
        lay = _blobs(gx, gy, cen, rng.uniform(0.28, 0.45, n) * R)
        lay = 1.0 - np.exp(-1.6 * lay / lay.max())
        hh, ww = lay.shape
        lay *= 0.55 + 0.9 * _smooth_noise(rng, hh, ww, max(3, int(ww / (6 * px))))
        return win, lay / lay.max(), rng.uniform(0.065, 0.1)
    if kind == "cavity":
        R = rng.uniform(24, 60) * px
        win = _window(cx, cy, 2.0 * R, h, w)
        if win is None:
            return None
        gy = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None]
        gx = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :]
        ex = rng.uniform(0.8, 1.25)
        d = np.sqrt(((gx - cx) / ex) ** 2 + ((gy - cy) * ex) ** 2) / R
        wall = rng.uniform(0.18, 0.3)
        lay = (
            np.exp(-(((d - 1.0) / wall) ** 2))
            - 0.45 * np.exp(-((d / 0.75) ** 4))
            + 0.35 * np.exp(-(((d - 1.0) / (2.2 * wall)) ** 2))
        )
        return win, lay / np.abs(lay).max(), rng.uniform(0.06, 0.09)
    if kind == "nodules":  # calcified granulomas: small, dense, sharp-ish
        n = int(rng.integers(5, 12))
        spread = rng.uniform(30, 68) * px
        rad = rng.uniform(4.0, 8.0, n) * px
        win = _window(cx, cy, spread * 2.5 + 2 * rad.max() + 3 * px, h, w)
        if win is None:
            return None
        gy = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None]
        gx = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :]
        lay = np.zeros((gy.shape[0], gx.shape[1]), np.float32)
        for k in range(n):
            bx, by = cx + rng.normal(0, spread), cy + rng.normal(0, spread)
            d = np.sqrt((gx - bx) ** 2 + (gy - by) ** 2)
            lay = np.maximum(lay, _ramp((rad[k] - d) / (1.5 * px)) * rng.uniform(0.7, 1.0))
        return win, lay / lay.max(), rng.uniform(0.10, 0.16)
    if kind == "fibrosis":  # fibrotic streaks converging towards the hilum
        length = rng.uniform(120, 240) * px
        win = _window(cx, cy, 0.75 * length + 3 * px, h, w)
        if win is None:
            return None
        gy = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None]
        gx = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :]
        lay = np.zeros((gy.shape[0], gx.shape[1]), np.float32)
        base = rng.uniform(0.9, 2.2)  # mostly steep, oblique lines
        for _ in range(int(rng.integers(2, 5))):
            ang = base + rng.normal(0, 0.3)
            ox, oy = cx + rng.normal(0, 0.15 * length), cy + rng.normal(0, 0.15 * length)
            ux, uy = math.cos(ang), math.sin(ang)
            along = (gx - ox) * ux + (gy - oy) * uy
            across = -(gx - ox) * uy + (gy - oy) * ux
            half_len = rng.uniform(0.3, 0.5) * length
            width = rng.uniform(1.2, 2.6) * px
            line = np.exp(-((across / width) ** 2)) * _ramp((half_len - np.abs(along)) / (3 * px))
            lay = np.maximum(lay, line * rng.uniform(0.7, 1.0))
        return win, lay / lay.max(), rng.uniform(0.06, 0.09)
    raise ValueError(kind)


def _place(
    low: _Canvas,
    lung: np.ndarray,
    kx: float,
    ky: float,
    rng: np.random.Generator,
    side: int,
    upper: float,
    avoid: list,
    margin: float,
) -> tuple[float, float] | None:
    """A lesion centre (full-resolution pixels) inside the lung on ``side`` (−1 image left, +1 image
    right), in the upper half of the lung with probability ``upper``, at least ``margin`` px inside
    the lung and away from the lesions in ``avoid``.  Candidates come from the low-res canvas."""
    h, w = lung.shape
    st = max(1, min(low.D.shape) // 128)
    sub = low.lung[::st, ::st]
    X, Y = low.X[::st, ::st], low.Y[::st, ::st]
    zone = (Y - low.an.apex) / (low.an.base - low.an.apex)
    ok = (sub > 0.97) & (side * X > 0.06)
    want_upper = rng.random() < upper
    zmask = ok & ((zone < 0.5) if want_upper else (zone >= 0.45) & (zone < 0.85))
    idx = np.flatnonzero(zmask if zmask.any() else ok)
    if idx.size == 0:
        return None
    ys, xs = np.unravel_index(idx, sub.shape)
    for attempt in range(60):
        overlap = 1.0 if attempt < 30 else 0.5  # then let lesions touch rather than drop one
        k = int(rng.integers(idx.size))
        cy, cx = (ys[k] + rng.random()) * st * ky, (xs[k] + rng.random()) * st * kx
        probe = [(cy, cx + margin), (cy, cx - margin), (cy + margin, cx), (cy - margin, cx)]
        if not all(0 <= py < h and 0 <= qx < w and lung[int(py), int(qx)] > 0.3 for py, qx in probe):
            continue
        if any(math.hypot(cx - ax, cy - ay) < overlap * (margin + ar) for ax, ay, ar in avoid):
            continue
        return cx, cy
    return None


def _tb(
    D: np.ndarray,
    lung: np.ndarray,
    side_x: np.ndarray,
    low: _Canvas,
    kx: float,
    ky: float,
    unit: float,
    rng: np.random.Generator,
    tb_type: str,
    unilateral: float,
    draw: bool = True,
) -> list[Box]:
    """Render the lesions of a TB image into ``D`` (full resolution); returns their tight boxes
    (0-based pixel indices: ``x`` = first column, ``w`` = last − first column)."""
    h, w = D.shape
    px = unit / 512.0
    kinds: list[tuple[str, int]] = []  # (renderer, category)
    if tb_type in ("active", "active+latent", "unknown"):
        for _ in range(int(rng.choice([1, 1, 2, 2, 3])) if tb_type != "active+latent" else 1):
            kinds.append(("cavity" if rng.random() < 0.3 else "consolidation", ACTIVE))
    if tb_type in ("latent", "active+latent"):
        for _ in range(int(rng.choice([1, 2, 2]))):
            kinds.append(("fibrosis" if rng.random() < 0.4 else "nodules", LATENT))
    if tb_type == "uncertain":
        for _ in range(int(rng.choice([1, 2]))):
            kinds.append((str(rng.choice(["consolidation", "cavity", "nodules", "fibrosis"])), UNCERTAIN))
    side = int(rng.choice([-1, 1]))
    bilateral = len(kinds) >= 2 and rng.random() >= unilateral
    boxes: list[Box] = []
    avoid: list[tuple[float, float, float]] = []
    for j, (kind, cat) in enumerate(kinds):
        s = (side if j % 2 == 0 else -side) if bilateral else side
        margin = 30 * px
        upper = 0.85 if cat == ACTIVE else 0.7
        pos = _place(low, lung, kx, ky, rng, s, upper, avoid, margin)
        if pos is None:
            continue
        made = _lesion_layer(kind, rng, pos[0], pos[1], unit, h, w)
        if made is None:
            continue
        win, lay, amp = made
        # only inside the lung it was placed in (large nodule clusters and long streaks would
        # otherwise spill into the other lung and break the planned laterality)
        lay = lay * lung[win] * _ramp(s * side_x[win] / np.float32(1 / 80))
        if draw:
            D[win] += np.float32(amp) * lay
        vis = np.abs(lay) >= 0.3
        if not vis.any():
            continue
        rows, cols = np.flatnonzero(vis.any(1)), np.flatnonzero(vis.any(0))
        r0, r1 = rows[0] + win[0].start, rows[-1] + win[0].start
        c0, c1 = cols[0] + win[1].start, cols[-1] + win[1].start
        boxes.append(Box(float(c0), float(r0), float(c1 - c0), float(r1 - r0), cat))
        avoid.append((0.5 * (c0 + c1), 0.5 * (r0 + r1), 0.5 * max(c1 - c0, r1 - r0)))
    return boxes


def _upsample(a: np.ndarray, w: int, h: int) -> np.ndarray:
    if a.shape == (h, w):
        return a
    return np.asarray(Image.fromarray(a, mode="F").resize((w, h), Image.BILINEAR), dtype=np.float32).copy()


def render(case: Case, cfg: SynthConfig, *, lesions: bool = True) -> tuple[np.ndarray, list[Box]]:
    """Render one case at its rendering resolution: ``(image float32 in [0, 1], boxes)``.

    Layout mode renders at ``size`` × ``size``; raw mode at the case's aspect with the shorter
    side = ``size`` (boxes in that frame; :func:`generate` scales them to the original size).
    The smooth anatomy and the non-TB findings are computed at half resolution and upsampled
    (bilinear); lesions, boxes and noise are rendered at full resolution.  ``lesions=False``
    renders the identical image without the TB lesions (same boxes; for checking contrast).
    """
    if cfg.raw:
        k = cfg.size / min(case.width, case.height)
        h, w = max(16, round(case.height * k)), max(16, round(case.width * k))
    else:
        h = w = cfg.size
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    an = _draw_anatomy(_rng(cfg.seed, 1, case.anatomy_index))
    rng = _rng(cfg.seed, 2, case.index)
    patterns: list[str] = []
    if case.label == "sick":
        n = 1 if rng.random() < 0.6 else 2
        patterns = [str(p) for p in rng.choice(SICK_PATTERNS, size=n, replace=False, p=[0.3, 0.3, 0.2, 0.2])]
    heart_scale = rng.uniform(1.4, 1.65) if "cardiomegaly" in patterns else 1.0
    low = _render_anatomy(an, rng, h2, w2, heart_scale)
    if patterns:
        _sick(low, rng, patterns)
    D = _upsample(low.D, w, h)
    boxes: list[Box] = []
    if case.label == "tb":
        lung = _upsample(low.lung, w, h)
        side_x = _upsample(low.X, w, h)  # thorax-frame abscissa: which lung a pixel belongs to
        boxes = _tb(
            D,
            lung,
            side_x,
            low,
            w / w2,
            h / h2,
            low.unit * min(h, w) / min(h2, w2),
            rng,
            case.tb_type,
            cfg.unilateral,
            draw=lesions,
        )
        if case.tb_type == "unknown":
            boxes = []
    # display: film-like response (no clipping of bright structures), contrast, brightness,
    # gamma, quantum noise
    contrast, bright, gamma = rng.uniform(0.88, 1.12), rng.uniform(-0.04, 0.04), rng.uniform(0.8, 1.25)
    img = _tone_lut(contrast, bright, gamma)[_lut_index(D)]
    sigma = rng.uniform(0.006, 0.015)  # uniform noise with this standard deviation
    img += (rng.random(img.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(sigma * math.sqrt(12))
    np.clip(img, 0.0, 1.0, out=img)
    return img, boxes


_LUT_LO, _LUT_HI, _LUT_N = -0.25, 2.0, 8192


def _tone_lut(contrast: float, bright: float, gamma: float) -> np.ndarray:
    """Density → display intensity: film-like ``1 − exp(−2.3 D)`` (bright structures roll off
    instead of clipping), then contrast, brightness and gamma — as a lookup table."""
    d = np.linspace(_LUT_LO, _LUT_HI, _LUT_N, dtype=np.float64)
    v = np.clip((1.0 - np.exp(-2.3 * d)) * 1.12 * contrast + bright, 0.0, 1.0) ** gamma
    return v.astype(np.float32)


def _lut_index(D: np.ndarray) -> np.ndarray:
    t = (D - np.float32(_LUT_LO)) * np.float32((_LUT_N - 1) / (_LUT_HI - _LUT_LO)) + np.float32(0.5)
    np.clip(t, 0, _LUT_N - 1, out=t)
    return t.astype(np.intp)


# ----------------------------------------------------------------------------------------------
# writing


def _png_bytes(arr: np.ndarray, compress_level: int = 1) -> bytes:
    """Deterministic PNG (no text chunks); zlib level 1: ~15 % larger than 6, several × faster."""
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _uid(seed: int, index: int, what: str) -> str:
    """A fixed DICOM UID for (seed, image, role): ``2.25.<128-bit hash>`` (PS3.5 B.2 UUID form)."""
    digest = hashlib.sha256(f"tbx-synth/{seed}/{index}/{what}".encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _dicom_bytes(values: np.ndarray, case: Case, cfg: SynthConfig) -> bytes:
    """A Part-10 DX file (see the module docstring for the exact tags)."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    dx = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage – For Presentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dx
    meta.MediaStorageSOPInstanceUID = _uid(cfg.seed, case.index, "sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "2.25.118116133413523128356946213371123981241"
    meta.ImplementationVersionName = "TBX_SYNTH_1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = dx
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(cfg.seed, case.index, "study")
    ds.SeriesInstanceUID = _uid(cfg.seed, case.index, "series")
    ds.Modality = "DX"
    ds.Manufacturer = "TBX SYNTH"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.StudyDescription = "CHEST PA"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    for key, value in case.phi.items():
        setattr(ds, key, value)
    ds.PresentationIntentType = "FOR PRESENTATION"
    bits = case.dicom_bits
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if case.monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = int(values.shape[0]), int(values.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = ["0.143", "0.143"]
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    lo, hi = int(values.min()), int(values.max())
    ds.WindowCenter = f"{(lo + hi) / 2:.1f}"
    ds.WindowWidth = f"{max(hi - lo, 1):.1f}"
    ds.PixelData = values.astype("<u2").tobytes()
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _scale_box(b: Box, kx: float, ky: float, w: int, h: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box (c0, r0, c1, r1) of the render frame → 0-based inclusive pixels of the
    original frame."""
    c0, r0 = int(math.floor(b.x * kx)), int(math.floor(b.y * ky))
    c1 = min(w - 1, int(math.ceil((b.x + b.w + 1) * kx)) - 1)
    r1 = min(h - 1, int(math.ceil((b.y + b.h + 1) * ky)) - 1)
    return c0, r0, c1, r1


def generate(case: Case, cfg: SynthConfig, root: str | Path) -> Record:
    """Render ``case`` and write its image (and XML) under ``root``; return its record."""
    root = Path(root)
    img, boxes = render(case, cfg)
    if cfg.raw:
        rh, rw = img.shape
        big = Image.fromarray(img, mode="F").resize((case.width, case.height), Image.BILINEAR)
        arr = np.asarray(big, dtype=np.float32).copy()
        rng = _rng(cfg.seed, 5, case.index)
        arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(0.008)
        np.clip(arr, 0.0, 1.0, out=arr)
        kx, ky = case.width / rw, case.height / rh
        vox = [_scale_box(b, kx, ky, case.width, case.height) for b in boxes]
        out_boxes = [
            Box(float(c0), float(r0), float(c1 - c0), float(r1 - r0), b.category)
            for (c0, r0, c1, r1), b in zip(vox, boxes)
        ]
        path = root / case.file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        if case.dicom_bits:
            top = (1 << case.dicom_bits) - 1
            r = _rng(cfg.seed, 6, case.index)
            lo = r.uniform(0.02, 0.12) * top
            span = r.uniform(0.75, 0.95) * (top - lo)
            values = np.rint(lo + arr * span).astype(np.uint16)
            if case.monochrome1:
                values = (top - values).astype(np.uint16)
            path.write_bytes(_dicom_bytes(values, case, cfg))
        else:
            path.write_bytes(_png_bytes(np.rint(arr * 255).astype(np.uint8), compress_level=1))
        width, height, file_name = case.width, case.height, case.file_name
        xml_filename = Path(case.file_name).name
    else:
        out_boxes = boxes
        path = root / IMGS / case.file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png_bytes(np.rint(img * 255).astype(np.uint8), compress_level=1))
        width, height, file_name = cfg.size, cfg.size, case.file_name
        xml_filename = Path(case.file_name).stem  # the release writes the stem
    if case.xml_name:  # VOC: 1-based pixel indices (docs/dataset.md §1.3 conversion subtracts 1)
        write_voc(
            root / case.xml_name,
            xml_filename,
            width,
            height,
            [Box(b.x + 1, b.y + 1, b.w, b.h, b.category) for b in out_boxes],
        )
    return Record(
        image_id=case.index + 1,
        file_name=file_name,
        width=width,
        height=height,
        label=case.label,
        tb_type=case.tb_type if case.label == "tb" else "none",
        source="tbx11k",
        patient_id=case.patient_id,
        boxes=out_boxes,
    )


def _generate_star(args: tuple[Case, SynthConfig, str]) -> Record:
    return generate(*args)


def write_manifest(path: str | Path, records: list[Record]) -> None:
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(MANIFEST_COLUMNS)
    for r in records:
        wr.writerow([r.file_name, r.patient_id, r.label, r.tb_type, r.source])
    atomic_write_text(path, buf.getvalue())


def synthesize(
    out: str | Path,
    cfg: SynthConfig,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[Record]:
    """Generate the synthetic dataset (layout) or hospital export (``cfg.raw``) at ``out``.

    ``out`` is built in a temporary sibling and moved into place; an existing non-empty ``out`` is
    refused unless ``overwrite``.  ``progress(done, total)`` is called after every image.
    Returns the records written (see the module docstring for their frame).
    """
    from tbx.provenance import write_provenance

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TbxError("output path exists and is not a directory", out, "choose another OUT")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TbxError(
            "output directory exists and is not empty",
            out,
            "choose another OUT or pass --force to replace it",
        )
    cases = plan_cases(cfg)
    total = len(cases)
    with atomic_dir(out, overwrite=True, kind="export" if cfg.raw else "dataset") as tmp:
        jobs = [(c, cfg, str(tmp)) for c in cases]
        records: list[Record] = []
        if cfg.workers > 1 and total > 1:
            chunk = max(1, min(16, total // (4 * cfg.workers)))
            with cf.ProcessPoolExecutor(max_workers=cfg.workers, initializer=init_worker) as ex:
                try:
                    for rec in ex.map(_generate_star, jobs, chunksize=chunk):
                        records.append(rec)
                        if progress:
                            progress(len(records), total)
                except BaseException:  # Ctrl-C or a failure: stop the workers now
                    stop_pool(ex)
                    raise
        else:
            for job in jobs:
                records.append(generate(*job))
                if progress:
                    progress(len(records), total)
        if cfg.raw:
            records = [r.replace(image_id=i + 1) for i, r in enumerate(records)]  # manifest order
            write_manifest(tmp / "manifest.csv", records)
        else:
            from tbx.data.split import SplitConfig, split_records
            from tbx.data.views import write_views

            records.sort(key=lambda r: r.image_id)  # deterministic split input; views sort officially
            records = split_records(records, SplitConfig(seed=cfg.seed))
            write_views(tmp, records)
        write_provenance(
            tmp,
            cfg,
            cfg.seed,
            n_images=total,
            mode="raw-dicom" if cfg.dicom else ("raw-png" if cfg.raw else "layout"),
        )
    return records
