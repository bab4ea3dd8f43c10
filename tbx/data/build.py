"""`tbx dataset build SRC OUT` — turn a source into the TBX11K layout (docs/dataset.md §1.3).

Two kinds of source:

**Raw hospital export** — ``SRC/manifest.csv`` with columns ``file, patient_id, label, tb_type,
source`` (optional ``split``); boxes in VOC XML ``SRC/xml/<stem>.xml`` or in ``SRC/boxes.csv``
(``file, xmin, ymin, xmax, ymax, label``) at the original resolution; images PNG/JPEG/DICOM at any
size.  The build decodes every image to 8-bit grayscale (DICOM: modality LUT → VOI LUT →
MONOCHROME1 inversion, :mod:`tbx.data.dicom`), stretches it to ``size``×``size`` like the release,
converts the boxes with the official rule (:func:`tbx.data.voc.convert_voc_box`), assigns the split (manifest
column, else :func:`tbx.data.split.split_records`) and writes images, XMLs, lists and COCO JSONs.

**Official release root** — ``imgs/``, ``lists/``, ``annotations/xml/``: the lists and XMLs are
re-read and every official JSON is regenerated (:func:`tbx.data.views.write_views`), images are
linked/copied unchanged (or left out with ``no_images``, automatic when ``imgs/`` is absent).

Privacy (raw exports): output names are generated (``h0001.png`` …), only pixels are taken from
DICOM files, patient ids become ``HMAC-SHA256(salt, id)`` (16 hex digits), the original-name mapping
is written only to ``cfg.mapping`` (never inside OUT), and reports refer to source rows by manifest
line, never by name.  The default salt is a fixed public constant (:data:`DEFAULT_SALT`): builds are
reproducible and the salt is derived from nothing identifying, but short patient ids could be
brute-forced from their hashes — pass a secret ``--salt`` for real exports (it is never written).

Robustness: the build happens in ``OUT.partial/`` and is renamed to ``OUT`` only when complete.
``OUT.partial/.build_state.json`` records, per source content hash, the hash of the PNG produced;
re-running after a failure (or with ``--overwrite`` over a finished OUT) reuses every image whose
output verifies, so a resumed build yields the same bytes as a clean one.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from tbx.data.layout import (
    ANN_XML,
    BOXES_COLUMNS,
    EXTRA_GROUPS,
    FOLDER_OF_LABEL,
    IMGS,
    LISTS,
    MANIFEST_COLUMNS,
    check_relpath,
    label_from_path,
    list_name,
    resolve_inside,
)
from tbx.data.records import (
    CATEGORY_BY_NAME,
    CATEGORY_SHORT,
    LABELS,
    SPLITS,
    TB_TYPES,
    Box,
    Record,
    tb_type_from_categories,
)
from tbx.data.voc import convert_voc_box, read_voc, write_voc
from tbx.errors import TbxError, where
from tbx.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_replaceable,
    clean_stale_tmp,
    link_or_copy,
    read_csv,
    replace_dir,
)
from tbx.workers import init_worker, stop_pool

if TYPE_CHECKING:
    from tbx.data.split import SplitConfig

DEFAULT_SALT = "tbx-patient-id-v1"  # public constant: reproducible, derived from nothing identifying
STATE_NAME = ".build_state.json"
STATE_VERSION = 1
CLASS_PREFIX = {"healthy": "h", "sick": "s", "tb": "tb"}  # the release's file-name prefixes
# box labels accepted in raw exports: official category names and their short forms
BOX_LABELS = {**CATEGORY_BY_NAME, **{v: k for k, v in CATEGORY_SHORT.items()}}


DATASET_KIND = "dataset"  # the output marker of a TBX11K-layout folder (tbx.io.mark_output)


@dataclass
class BuildConfig:
    size: int = 512  # output images are size×size (docs/dataset.md §1.1: the release is 512×512)
    channels: int = 1  # 1 = 8-bit grayscale PNG; 3 = RGB with equal channels (the release's PNGs)
    workers: int = 1
    seed: int = 0  # split seed (raw exports without a split column)
    # the split of raw exports without a split column, as `tbx dataset split` makes it
    # (docs/dataset.md §1.2); None: SplitConfig's defaults (TB 3:2:1 on each TB type)
    ratio: str | None = None  # TB train:val:test
    tb_quota: str | None = None  # type | class
    published: bool = False  # the published table's rule (TB 3:1:2, class quota)
    salt: str | None = None  # patient-id HMAC salt; None → DEFAULT_SALT (documented above)
    mapping: str | None = None  # CSV original → new file name (must lie outside OUT)
    name_pattern: str = "{prefix}{n:04d}"  # generated stems for healthy/sick/tb (+ ".png")
    skip_bad: bool = False
    allow_multi_per_patient: bool = False
    no_images: bool = False  # release roots: metadata only
    overwrite: bool = False


@dataclass
class BuildReport:
    kind: str  # raw | release
    out: str
    n_images: int = 0
    counts: dict[str, Any] = field(default_factory=dict)
    decoded: int = 0
    reused: int = 0
    skipped_bad: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    images: str = "written"  # written | linked | none
    salt: str = "default"
    # console-only details (may contain source names; never written into OUT)
    console: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("console")
        d.pop("out")
        return d


Progress = Callable[[int, int], None]


# ----------------------------------------------------------------------------------------------
# helpers


def patient_hash(patient_id: str, salt: str | None) -> str:
    """Pseudonymous patient id: ``"P"`` + 16 hex digits of HMAC-SHA256(salt, id)."""
    key = (salt if salt is not None else DEFAULT_SALT).encode("utf-8")
    return "P" + hmac.new(key, patient_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_source_path(root: Path, rel: str, at: str) -> Path:
    """Resolve ``rel`` inside ``root``; absolute paths, ``..`` and symlinks leaving ``root`` are
    errors naming ``at`` (the manifest line)."""
    real = resolve_inside(root, rel, at, "the source folder")
    if not real.is_file():
        raise TbxError(
            f"file '{rel}' listed in the manifest does not exist",
            at,
            "fix the path or remove the row (or pass --skip-bad)",
        )
    return real


def _scrub(text: str, names: list[str]) -> str:
    for n in sorted({n for n in names if n}, key=len, reverse=True):
        text = text.replace(n, "<file>")
    return text


# ----------------------------------------------------------------------------------------------
# worker: decode → resize → PNG (runs in a process pool)

_KNOWN: dict[str, dict[str, Any]] = {}


def _init_worker(known: dict[str, dict[str, Any]]) -> None:
    global _KNOWN
    _KNOWN = known


def _params_tag(size: int, channels: int) -> bytes:
    return f"tbx-build-v{STATE_VERSION}:size={size}:channels={channels}:".encode()


def _verified(path: Path, sha: str) -> bool:
    try:
        return _sha256(path.read_bytes()) == sha
    except OSError:
        return False


def _process_image(task: tuple[int, str, str, int, int]) -> dict[str, Any]:
    """Decode one source image into ``work_dir/<key>.png``; reuse a verified earlier output."""
    from tbx.data.imageio import decode_gray8, encode_png, phash64, resize_gray8

    idx, src, work_dir, size, channels = task
    try:
        data = Path(src).read_bytes()
    except OSError as e:
        return {"idx": idx, "error": f"cannot read image ({e.strerror})"}
    key = _sha256(_params_tag(size, channels) + data)
    out = Path(work_dir) / f"{key}.png"
    known = _KNOWN.get(key)
    if known is not None:
        for cand in [out, *[Path(c) for c in known.get("candidates", [])]]:
            if _verified(cand, known["out_sha"]):
                if cand != out:
                    link_or_copy(cand, out)
                return {
                    "idx": idx,
                    "key": key,
                    "reused": True,
                    **{k: known[k] for k in ("out_sha", "pixel_sha", "width", "height", "phash")},
                }
    try:
        arr = decode_gray8(data, Path(src).name)
    except TbxError as e:
        return {"idx": idx, "error": e.what, "fix": e.fix}
    except Exception as e:  # noqa: BLE001 - any decoder crash is a bad input, reported per file
        return {"idx": idx, "error": f"cannot decode image ({type(e).__name__})"}
    pixel_sha = _sha256(f"{arr.shape}".encode() + arr.tobytes())
    png = encode_png(resize_gray8(arr, size), channels)
    atomic_write_bytes(out, png)
    meta = {
        "out_sha": _sha256(png),
        "pixel_sha": pixel_sha,
        "width": int(arr.shape[1]),
        "height": int(arr.shape[0]),
        "phash": f"{phash64(arr):016x}",
    }
    # sidecar: an interrupted run (Ctrl-C, crash) can still reuse this image on resume
    atomic_write_json(out.with_suffix(".json"), meta, indent=None)
    return {"idx": idx, "key": key, "reused": False, **meta}


def _run_tasks(
    tasks: list[tuple],
    known: dict[str, dict[str, Any]],
    workers: int,
    progress: Progress | None,
    stop_on_error: bool,
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    total = len(tasks)
    if progress:
        progress(0, total)
    if workers <= 1 or total <= 1:
        _init_worker(known)
        for t in tasks:
            res = _process_image(t)
            results.append(res)
            if progress:
                progress(len(results), total)
            if stop_on_error and "error" in res:
                break
        return results
    chunk = max(1, min(16, total // (workers * 8)))
    with ProcessPoolExecutor(
        max_workers=workers, initializer=init_worker, initargs=(_init_worker, known)
    ) as ex:
        try:
            for res in ex.map(_process_image, tasks, chunksize=chunk):
                results.append(res)
                if progress:
                    progress(len(results), total)
                if stop_on_error and "error" in res:
                    ex.shutdown(wait=True, cancel_futures=True)
                    break
        except BaseException:  # Ctrl-C or a failure: stop the workers now
            stop_pool(ex)
            raise
    return results


# ----------------------------------------------------------------------------------------------
# raw export: manifest + boxes


@dataclass
class _Item:
    line: int
    rel: str
    path: Path | None
    patient_id: str
    label: str
    tb_type: str
    source: str
    split: str | None
    boxes: list[tuple[float, float, float, float, int, bool]] = field(default_factory=list)
    box_where: str | None = None
    xml_size: tuple[int, int] | None = None
    error: TbxError | None = None


def _norm_rel(rel: str) -> str:
    return str(PurePosixPath(rel.strip().replace("\\", "/")))


def _parse_manifest(src: Path) -> tuple[list[_Item], bool]:
    manifest = src / "manifest.csv"
    rows = read_csv(manifest, MANIFEST_COLUMNS)
    if not rows:
        raise TbxError("the manifest lists no images", manifest, "add one row per image")
    has_split = any(r.get("split") for _, r in rows)
    items: list[_Item] = []
    for line, row in rows:
        at = where(manifest, line)
        item = _Item(
            line=line,
            rel=row["file"],
            path=None,
            patient_id=row["patient_id"],
            label=row["label"].lower(),
            tb_type=(row["tb_type"] or "").lower(),
            source=row["source"],
            split=(row.get("split") or "").lower() or None,
        )
        try:
            item.path = safe_source_path(src, row["file"], at)
            if item.label not in LABELS:
                raise TbxError(
                    f"label '{row['label']}' is not in the vocabulary", at, f"use one of {', '.join(LABELS)}"
                )
            if item.label == "tb":
                if item.tb_type in ("", "none"):
                    item.tb_type = "unknown"
                if item.tb_type not in TB_TYPES:
                    raise TbxError(
                        f"tb_type '{row['tb_type']}' is not in the vocabulary",
                        at,
                        f"use one of {', '.join(TB_TYPES[1:])}",
                    )
            else:
                if item.tb_type not in ("", "none"):
                    raise TbxError(
                        f"tb_type '{row['tb_type']}' given for a {item.label} image",
                        at,
                        "leave tb_type empty or 'none' for non-TB images",
                    )
                item.tb_type = "none"
            src_key = item.source.lower()
            if src_key in EXTRA_GROUPS:
                item.source = src_key
                if item.label == "sick":
                    raise TbxError(
                        f"source '{item.source}' has only healthy/TB labels, got 'sick'",
                        at,
                        "fix the label or the source",
                    )
            if has_split and item.split not in SPLITS:
                raise TbxError(
                    f"split '{row.get('split', '')}' is not train/val/test",
                    at,
                    "fill the split column for every row, or leave it empty everywhere",
                )
        except TbxError as e:
            item.error = e
        items.append(item)
    return items, has_split


def _parse_box_label(name: str, at: str) -> int:
    cat = BOX_LABELS.get(name.strip()) or BOX_LABELS.get(name.strip().lower())
    if cat is None:
        raise TbxError(
            f"box label '{name}' is not in the vocabulary",
            at,
            f"use one of {', '.join(CATEGORY_BY_NAME)} (or active/latent/uncertain)",
        )
    return cat


def _attach_boxes(src: Path, items: list[_Item]) -> list[str]:
    """Read boxes (boxes.csv, else xml/<stem>.xml) into the items; errors go onto the item."""
    notes: list[str] = []
    boxes_csv = src / "boxes.csv"
    if boxes_csv.is_file():
        if (src / "xml").is_dir():
            notes.append("both boxes.csv and xml/ exist: boxes.csv is used, xml/ is ignored")
        by_file = {_norm_rel(it.rel): it for it in items}
        for line, row in read_csv(boxes_csv, BOXES_COLUMNS):
            at = where(boxes_csv, line)
            it = by_file.get(_norm_rel(row["file"]))
            if it is None:
                raise TbxError(
                    f"boxes.csv row refers to '{row['file']}', which is not in the manifest",
                    at,
                    "fix the file column or add the image to manifest.csv",
                )
            if it.error:
                continue
            try:
                try:
                    coords = [float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
                except ValueError:
                    raise TbxError("non-numeric box coordinate", at, "fix the row") from None
                it.boxes.append((*coords, _parse_box_label(row["label"], at), False))
                it.box_where = at
            except TbxError as e:
                it.error = e
        return notes
    xml_dir = src / "xml"
    for it in items:
        if it.error or it.path is None:
            continue
        xml = xml_dir / f"{PurePosixPath(_norm_rel(it.rel)).stem}.xml"
        if not xml.is_file():
            continue
        try:
            ann = read_voc(xml)
            it.box_where = str(xml)
            it.xml_size = (ann.width, ann.height)
            for o in ann.objects:
                it.boxes.append(
                    (o.xmin, o.ymin, o.xmax, o.ymax, _parse_box_label(o.name, str(xml)), o.difficult)
                )
        except TbxError as e:
            it.error = e
    return notes


def _convert_item_boxes(it: _Item, width: int, height: int, size: int) -> tuple[list[Box], list[Box]]:
    """(boxes in the size×size frame, kept boxes at the original resolution) or TbxError."""
    at = it.box_where or str(it.path)
    if it.xml_size is not None and it.xml_size != (width, height):
        raise TbxError(
            f"XML <size> {it.xml_size[0]}×{it.xml_size[1]} differs from the image's {width}×{height}",
            at,
            "fix <size> or re-export the XML for this image",
        )
    if it.boxes and it.label != "tb":
        raise TbxError(
            f"a {it.label} image has boxes (only TB images may have boxes)",
            at,
            "remove the boxes or fix the manifest label",
        )
    out, orig = [], []
    for xmin, ymin, xmax, ymax, cat, difficult in it.boxes:
        if xmax <= xmin or ymax <= ymin:
            raise TbxError(
                f"box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) has zero or negative size",
                at,
                "fix or delete the box",
            )
        if xmin < 0 or ymin < 0 or xmax > width or ymax > height:
            raise TbxError(
                f"box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) lies outside the {width}×{height} image",
                at,
                "fix or delete the box",
            )
        if difficult:  # docs/dataset.md §1.3: difficult boxes are ignored
            continue
        conv = convert_voc_box(xmin, ymin, xmax, ymax, width, height, size)
        if conv is None:  # docs/dataset.md §1.3: narrower than 1 px after scaling
            continue
        out.append(Box(*conv, cat))
        orig.append(Box(xmin, ymin, xmax - xmin, ymax - ymin, cat))
    return out, orig


# ----------------------------------------------------------------------------------------------
# output naming


def _stem_for(label: str, source: str, n: int, pattern: str) -> str:
    """Generated stem; extra sources follow their public naming so labels stay derivable."""
    tb = label == "tb"
    if source == "da":
        return f"{'p' if tb else 'n'}{n}"
    if source == "db":
        return f"{'px' if tb else 'nx'}{n}"
    if source == "montgomery":
        return f"MCUCXR_{n:04d}_{int(tb)}"
    if source == "shenzhen":
        return f"CHNCXR_{n:04d}_{int(tb)}"
    try:
        return pattern.format(prefix=CLASS_PREFIX[label], n=n, label=label)
    except (KeyError, IndexError, ValueError) as e:
        raise TbxError(
            f"bad --name-pattern '{pattern}' ({e})",
            fix="use the fields {prefix}, {n} and {label}, e.g. '{prefix}{n:04d}'",
        ) from None


def _folder_for(label: str, source: str, split: str) -> str:
    if source in EXTRA_GROUPS:
        return f"extra/{EXTRA_GROUPS[source]}/{split}"
    return FOLDER_OF_LABEL[label]


# ----------------------------------------------------------------------------------------------
# partial dir / state


def _partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _load_state(path: Path) -> dict[str, Any]:
    import json

    try:
        state = json.loads(path.read_text())
        if state.get("version") == STATE_VERSION and isinstance(state.get("images"), dict):
            return state
    except (OSError, ValueError):
        pass
    return {"version": STATE_VERSION, "images": {}}


def _known_outputs(partial: Path, out: Path, size: int, channels: int) -> dict[str, dict[str, Any]]:
    """Earlier outputs that a build may reuse: from OUT.partial (resume) and a finished OUT."""
    import json

    known: dict[str, dict[str, Any]] = {}
    for side in sorted((partial / ".work").glob("*.json")) if (partial / ".work").is_dir() else []:
        try:
            meta = json.loads(side.read_text())
            known[side.stem] = {
                **{k: meta[k] for k in ("out_sha", "pixel_sha", "width", "height", "phash")},
                "candidates": [],
            }
        except (OSError, ValueError, KeyError):
            continue
    for base in (out, partial):  # partial last: its entries are the most recent
        state = _load_state(base / STATE_NAME)
        if state.get("params") != {"size": size, "channels": channels}:
            continue
        for key, ent in state["images"].items():
            cands = [str(base / ent["file"])] if ent.get("file") else []
            prev = known.get(key, {}).get("candidates", [])
            known[key] = {**ent, "candidates": cands + prev}
    known = {k: v for k, v in known.items() if isinstance(v.get("out_sha"), str)}
    return known


def _stash_previous_outputs(partial: Path) -> None:
    """Move images of an interrupted finalisation back into ``.work/`` (keyed by content)."""
    state = _load_state(partial / STATE_NAME)
    work = partial / ".work"
    for key, ent in state["images"].items():
        f = ent.get("file")
        if f and (partial / f).is_file():
            work.mkdir(parents=True, exist_ok=True)
            os.replace(partial / f, work / f"{key}.png")
    for sub in (IMGS, "annotations", LISTS):
        if (partial / sub).exists():
            shutil.rmtree(partial / sub)


def _swap_into_place(partial: Path, out: Path, overwrite: bool) -> None:
    try:
        replace_dir(partial, out, overwrite, kind=DATASET_KIND)
    except FileExistsError:
        raise TbxError(
            "output folder already exists", out, "pass --overwrite or choose another OUT"
        ) from None


def _check_name_pattern(pattern: str) -> None:
    """The generated names must be distinct, free of '/' and keep their label derivable."""
    for label, folder in (("healthy", "health"), ("sick", "sick"), ("tb", "tb")):
        stems = {_stem_for(label, "tbx11k", n, pattern) for n in (1, 2, 10, 1000)}
        bad = next((st for st in stems if "/" in st or "\\" in st or not st.strip()), None)
        if bad is not None or len(stems) < 4:
            raise TbxError(
                f"--name-pattern '{pattern}' gives an invalid or repeated name '{bad or min(stems)}'",
                fix="include {n} in the pattern and no '/'",
            )
        if label_from_path(f"{folder}/{min(stems)}.png")[0] != label:
            raise TbxError(
                f"--name-pattern '{pattern}' gives names whose label cannot be derived back",
                fix="keep the default pattern '{prefix}{n:04d}'",
            )


def split_config(cfg: BuildConfig) -> SplitConfig:
    """The split of a raw export without a split column (``--ratio``, ``--tb-quota``,
    ``--published`` as ``tbx dataset split`` reads them)."""
    from tbx.data.split import SplitConfig

    return SplitConfig.from_options(cfg.published, seed=cfg.seed, ratio=cfg.ratio, tb_quota=cfg.tb_quota)


def _check_out(src: Path, out: Path, cfg: BuildConfig) -> None:
    """Every option and the output folder, checked before any image is decoded."""
    from tbx.data.split import parse_ratio

    if out.exists() and not cfg.overwrite:
        raise TbxError("output folder already exists", out, "pass --overwrite or choose another OUT")
    s, o = src.resolve(), out.resolve()
    if o == s or o.is_relative_to(s) or s.is_relative_to(o):
        raise TbxError("OUT must lie outside SRC (and SRC outside OUT)", out, "choose another OUT")
    if cfg.overwrite:
        check_replaceable(out, DATASET_KIND, [src])
    split = split_config(cfg)
    parse_ratio(split.ratio)
    split.check()
    _check_name_pattern(cfg.name_pattern)
    if cfg.mapping:
        m = Path(cfg.mapping).resolve()
        for base in (o, _partial_dir(out).resolve(), s):
            if m.is_relative_to(base):
                raise TbxError(
                    "the --mapping file must lie outside OUT and SRC (it re-identifies images)",
                    cfg.mapping,
                    "write it to a private folder",
                )
    if cfg.size < 32:
        raise TbxError(f"--size {cfg.size} is too small", fix="use e.g. 512 (the release's size)")
    if cfg.channels not in (1, 3):
        raise TbxError(f"--channels {cfg.channels} must be 1 or 3")
    if cfg.workers < 1:
        raise TbxError(f"--workers {cfg.workers} must be ≥ 1")


# ----------------------------------------------------------------------------------------------
# the public entry point


def source_kind(src: str | Path) -> str:
    """``"raw"`` (manifest.csv) or ``"release"`` (lists/ + imgs/ or annotations/xml/)."""
    src = Path(src)
    if not src.is_dir():
        raise TbxError("source folder not found", src, "give the raw export or release root folder")
    if (src / "manifest.csv").is_file():
        return "raw"
    if (src / LISTS).is_dir() and ((src / IMGS).is_dir() or (src / ANN_XML).is_dir()):
        return "release"
    raise TbxError(
        "not a dataset source: no manifest.csv (raw export) and no lists/ + imgs/ or "
        "annotations/xml/ (TBX11K release)",
        src,
        "point SRC at a raw export or an official TBX11K root",
    )


def build_dataset(
    src: str | Path, out: str | Path, cfg: BuildConfig | None = None, progress: Progress | None = None
) -> BuildReport:
    """Build the TBX11K layout from ``src`` into ``out`` (see the module docstring)."""
    cfg = cfg or BuildConfig()
    src, out = Path(src), Path(out)
    kind = source_kind(src)
    _check_out(src, out, cfg)
    if kind == "raw":
        return _build_raw(src, out, cfg, progress)
    return _build_release(src, out, cfg, progress)


def _write_common(
    partial: Path,
    records: list[Record],
    report: BuildReport,
    cfg: BuildConfig,
    extra: dict[str, Any],
    list_order: dict[str, list[str]] | None = None,
) -> None:
    from tbx.data.views import write_views
    from tbx.provenance import provenance

    write_views(partial, records, list_order)
    report.n_images = len(records)
    report.counts = {
        "by_label": dict(Counter(r.label for r in records)),
        "by_tb_type": dict(Counter(r.tb_type for r in records if r.is_tb)),
        "by_split": dict(Counter(r.split or "none" for r in records)),
        "by_source": dict(Counter(r.source for r in records)),
        "boxes": sum(len(r.boxes) for r in records),
    }
    atomic_write_json(partial / "build_report.json", report.to_json())
    conf = asdict(cfg)
    conf["salt"] = "<default>" if cfg.salt is None else "<secret, not recorded>"
    conf["mapping"] = None if cfg.mapping is None else "<private path, not recorded>"
    prov = provenance(None, cfg.seed, kind=report.kind, **extra)
    prov["config"] = conf
    # the command line may carry the source path (often named after patients), the salt and the
    # mapping path: record the verb and option names only
    prov["command"] = [
        "tbx",
        "dataset",
        "build",
        "<SRC>",
        "<OUT>",
        *[a.split("=")[0] for a in prov["command"] if a.startswith("--")],
    ]
    atomic_write_json(partial / "provenance.json", prov)


def _build_raw(src: Path, out: Path, cfg: BuildConfig, progress: Progress | None) -> BuildReport:
    report = BuildReport(kind="raw", out=str(out), salt="default" if cfg.salt is None else "custom")
    if cfg.salt is None:
        report.console.append(
            "patient ids are hashed with the default public salt; pass --salt "
            "SECRET for real exports (hashes of short ids can be brute-forced)"
        )
    items, has_split = _parse_manifest(src)
    report.warnings.extend(_attach_boxes(src, items))

    def bad(it: _Item, err: TbxError) -> None:
        if not cfg.skip_bad:
            raise err
        names = [it.rel, PurePosixPath(_norm_rel(it.rel)).name, PurePosixPath(_norm_rel(it.rel)).stem]
        report.skipped_bad.append({"manifest_line": it.line, "reason": _scrub(err.what, names)})
        report.console.append(f"skipped: {err.one_line()}")
        it.error = err

    for it in items:
        if it.error is not None:
            bad(it, it.error)
    live = [it for it in items if it.error is None]

    partial = _partial_dir(out)
    partial.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(partial)  # left by a killed build
    _stash_previous_outputs(partial)
    known = _known_outputs(partial, out, cfg.size, cfg.channels)
    work = partial / ".work"
    work.mkdir(exist_ok=True)
    tasks = [(i, str(it.path), str(work), cfg.size, cfg.channels) for i, it in enumerate(live)]
    results = _run_tasks(tasks, known, cfg.workers, progress, stop_on_error=not cfg.skip_bad)
    by_idx = {r["idx"]: r for r in results}

    # state first, so that whatever was decoded survives a failure below (resume)
    state = {"version": STATE_VERSION, "params": {"size": cfg.size, "channels": cfg.channels}, "images": {}}
    for r in results:
        if "error" not in r:
            state["images"][r["key"]] = {
                k: r[k] for k in ("out_sha", "pixel_sha", "width", "height", "phash")
            }
    atomic_write_json(partial / STATE_NAME, state)

    # per-image results in manifest order: errors, boxes, duplicates
    kept: list[tuple[_Item, dict[str, Any], list[Box], list[Box]]] = []
    seen_pixels: dict[str, int] = {}
    seen_patients: dict[str, int] = {}
    for i, it in enumerate(live):
        res = by_idx[i]
        if "error" in res:
            bad(
                it,
                TbxError(
                    res["error"],
                    f"{it.path} (manifest line {it.line})",
                    res.get("fix") or "re-export the image",
                ),
            )
            continue
        report.decoded += not res["reused"]
        report.reused += res["reused"]
        try:
            boxes, orig = _convert_item_boxes(it, res["width"], res["height"], cfg.size)
        except TbxError as e:
            bad(it, TbxError(e.what, f"{e.where} (manifest line {it.line})", e.fix))
            continue
        if res["pixel_sha"] in seen_pixels:
            first = seen_pixels[res["pixel_sha"]]
            report.duplicates.append(
                {"kind": "pixels", "manifest_line": it.line, "duplicate_of_line": first, "action": "dropped"}
            )
            continue
        pid = it.patient_id.strip()
        if pid and pid in seen_patients:
            first = seen_patients[pid]
            action = "kept" if cfg.allow_multi_per_patient else "dropped"
            report.duplicates.append(
                {"kind": "patient", "manifest_line": it.line, "duplicate_of_line": first, "action": action}
            )
            if not cfg.allow_multi_per_patient:
                continue
        seen_pixels[res["pixel_sha"]] = it.line
        if pid:
            seen_patients.setdefault(pid, it.line)
        else:
            report.warnings.append(
                f"manifest line {it.line}: empty patient_id (one-image-per-patient cannot be checked for it)"
            )
        kept.append((it, res, boxes, orig))
    if not kept:
        raise TbxError(
            "no usable images in the source",
            src / "manifest.csv",
            "fix the problems reported above (or check the manifest rows)",
        )

    # records (provisional names), split
    records: list[Record] = []
    for n, (it, _res, boxes, _) in enumerate(kept):
        if it.label == "tb" and boxes:
            tb_type = tb_type_from_categories(b.category for b in boxes)
            if it.tb_type not in ("unknown", tb_type):
                report.warnings.append(
                    f"manifest line {it.line}: tb_type '{it.tb_type}' disagrees with "
                    f"the box categories ('{tb_type}'); the boxes win"
                )
        else:
            tb_type = it.tb_type
            if it.label == "tb" and it.source not in EXTRA_GROUPS:
                report.warnings.append(f"manifest line {it.line}: TB image without any box")
        records.append(
            Record(
                image_id=n + 1,
                file_name=f"pending/{n:06d}.png",
                width=cfg.size,
                height=cfg.size,
                label=it.label,
                tb_type=tb_type,
                source=it.source if it.source in EXTRA_GROUPS else "tbx11k",
                patient_id=patient_hash(it.patient_id, cfg.salt) if it.patient_id.strip() else None,
                split=it.split if has_split else None,
                boxes=boxes,
            )
        )
    if has_split:  # the manifest's split: report patients whose images straddle splits
        by_patient: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for rec, (it, *_rest) in zip(records, kept):
            if rec.patient_id:
                by_patient[rec.patient_id].append((it.line, rec.split))
        for rows in by_patient.values():
            if len({sp for _, sp in rows}) > 1:
                report.warnings.append(
                    "manifest lines "
                    + ", ".join(str(ln) for ln, _ in rows)
                    + ": one patient in "
                    + " and ".join(sorted({sp for _, sp in rows}))
                    + " (leakage between splits)"
                )
    else:
        from tbx.data.split import split_records

        records = split_records(records, split_config(cfg))

    # final names: per folder, numbered in manifest order
    counters: dict[str, int] = defaultdict(int)
    used: set[str] = set()
    mapping_rows = []
    for rec, (it, res, _, orig) in zip(records, kept):
        folder = _folder_for(rec.label, rec.source, rec.split)
        counter = rec.source if rec.source in EXTRA_GROUPS else folder
        counters[counter] += 1
        stem = _stem_for(rec.label, rec.source, counters[counter], cfg.name_pattern)
        fname = f"{folder}/{stem}.png"
        if "/" in stem or "\\" in stem or fname in used:
            raise TbxError(
                f"--name-pattern '{cfg.name_pattern}' gives an invalid or repeated name '{stem}'",
                fix="include {n} in the pattern and no '/'",
            )
        if label_from_path(fname) != (rec.label, rec.source if rec.source in EXTRA_GROUPS else "tbx11k"):
            raise TbxError(
                f"--name-pattern '{cfg.name_pattern}' gives '{fname}', whose label cannot be derived back",
                fix="keep the default pattern '{prefix}{n:04d}'",
            )
        used.add(fname)
        rec.file_name = fname
        link_or_copy(work / f"{res['key']}.png", partial / IMGS / fname)
        state["images"][res["key"]]["file"] = f"{IMGS}/{fname}"
        if rec.is_tb and orig:
            write_voc(partial / ANN_XML / f"{stem}.xml", stem, res["width"], res["height"], orig)
        mapping_rows.append((it.rel, it.line, fname))
    atomic_write_json(partial / STATE_NAME, state)

    # the release's order: tb, health, sick (then extras), each by name
    folder_rank = {"tb": 0, "health": 1, "sick": 2}
    records.sort(key=lambda r: (folder_rank.get(r.file_name.split("/")[0], 3), r.file_name))
    _write_common(
        partial,
        records,
        report,
        cfg,
        {"source_fingerprint": _sha256("".join(sorted(state["images"])).encode())[:16]},
    )
    shutil.rmtree(work, ignore_errors=True)
    if cfg.mapping:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["original", "manifest_line", "new"])
        w.writerows(mapping_rows)
        atomic_write_text(cfg.mapping, buf.getvalue())
    _swap_into_place(partial, out, cfg.overwrite)
    return report


# ----------------------------------------------------------------------------------------------
# official release root


def _read_list(path: Path) -> list[str]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        s = line.strip().replace("\\", "/")
        if not s:
            continue
        if s.startswith(f"{IMGS}/"):
            s = s[len(IMGS) + 1 :]
        out.append(str(check_relpath(s, where(path, n))))
    return out


def _build_release(src: Path, out: Path, cfg: BuildConfig, progress: Progress | None) -> BuildReport:
    from PIL import Image

    no_images = cfg.no_images or not (src / IMGS).is_dir()
    report = BuildReport(kind="release", out=str(out), images="none" if no_images else "linked")
    if no_images and not cfg.no_images:
        report.warnings.append("imgs/ is absent: metadata-only build (no images copied)")
    # records: per split, the TBX11K list then the all_ list's extra entries; every view is written
    # in the order of its list (trainval included: the release orders it by class folder)
    order: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    list_order: dict[str, list[str]] = {}
    for split in SPLITS:
        for prefix in ("TBX11K", "all"):
            lp = src / LISTS / list_name(split, prefix)
            if not lp.is_file():
                continue
            list_order[lp.stem] = _read_list(lp)
            for fn in list_order[lp.stem]:
                if fn in seen:
                    if seen[fn] != split:
                        raise TbxError(
                            f"'{fn}' is listed in both {seen[fn]} and {split}",
                            lp,
                            "the split lists must be disjoint",
                        )
                    continue
                seen[fn] = split
                order.append((fn, split))
    if not order:
        raise TbxError(
            "no list files (lists/TBX11K_{train,val}.txt, all_{train,val,test}.txt)",
            src / LISTS,
            "give the official release root",
        )
    list_order.update(_trainval_lists(src, seen))
    partial = _partial_dir(out)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    records: list[Record] = []
    total = len(order)
    for i, (fn, split) in enumerate(order):
        try:
            label, source = label_from_path(fn)
        except TbxError:
            label, source = "unknown", "tbx11k"  # imgs/test/: labels are withheld by the authors
        width = height = cfg.size
        img = src / IMGS / fn
        try:
            if not no_images:
                if not img.is_file():
                    raise TbxError("image listed but missing", img, "restore it or pass --no-images")
                try:
                    with Image.open(img) as im:
                        width, height = im.size
                        im.verify()
                except Exception as e:  # noqa: BLE001
                    raise TbxError(
                        f"unreadable or corrupt image ({type(e).__name__})",
                        img,
                        "restore the file from the release",
                    ) from None
            boxes: list[Box] = []
            xml = src / ANN_XML / f"{PurePosixPath(fn).stem}.xml" if label == "tb" else None
            if xml is not None and source == "tbx11k":
                if xml.is_file():
                    ann = read_voc(xml)
                    for o in ann.objects:
                        cat = _parse_box_label(o.name, str(xml))
                        if (
                            o.xmax <= o.xmin
                            or o.ymax <= o.ymin
                            or o.xmin < 0
                            or o.ymin < 0
                            or o.xmax > ann.width
                            or o.ymax > ann.height
                        ):
                            raise TbxError(
                                f"box ({o.xmin:g}, {o.ymin:g}, {o.xmax:g}, {o.ymax:g}) is "
                                f"empty or outside the {ann.width}×{ann.height} image",
                                xml,
                                "fix or delete the box",
                            )
                        if o.difficult:
                            continue
                        conv = convert_voc_box(
                            o.xmin, o.ymin, o.xmax, o.ymax, ann.width, ann.height, (width, height)
                        )
                        if conv is not None:
                            boxes.append(Box(*conv, cat))
                    if not boxes:
                        report.warnings.append(f"{fn}: TB image without any box")
                else:
                    report.warnings.append(f"{fn}: TB image without an XML file")
            tb_type = tb_type_from_categories(b.category for b in boxes) if label == "tb" else "none"
            records.append(
                Record(
                    image_id=len(records) + 1,
                    file_name=fn,
                    width=width,
                    height=height,
                    label=label,
                    tb_type=tb_type,
                    source=source,
                    split=split,
                    boxes=boxes,
                )
            )
            if not no_images:
                link_or_copy(img, partial / IMGS / fn)
            if xml is not None and xml.is_file():
                link_or_copy(xml, partial / ANN_XML / xml.name)
        except TbxError as e:
            if not cfg.skip_bad:
                raise
            report.skipped_bad.append({"file": fn, "reason": e.what})
            report.console.append(f"skipped: {e.one_line()}")
        if progress:
            progress(i + 1, total)
    if not records:
        raise TbxError("no usable images in the release root", src, "check lists/ and imgs/")
    _write_common(partial, records, report, cfg, {}, list_order)
    _swap_into_place(partial, out, cfg.overwrite)
    return report


def _trainval_lists(src: Path, split_of: dict[str, str]) -> dict[str, list[str]]:
    """The release's ``lists/{TBX11K,all}_trainval.txt`` (their order is the file order of the
    trainval JSONs); each must list exactly the train + val images of its prefix."""
    out: dict[str, list[str]] = {}
    for prefix in ("TBX11K", "all"):
        lp = src / LISTS / list_name("trainval", prefix)
        if not lp.is_file():
            continue
        listed = _read_list(lp)
        want = {
            fn
            for fn, sp in split_of.items()
            if sp in ("train", "val") and (prefix == "all" or not fn.startswith("extra/"))
        }
        got = set(listed)
        if got != want or len(listed) != len(got):
            if len(listed) != len(got):
                what = "lists an image twice"
            else:
                diff = sorted(got - want) or sorted(want - got)
                what = (
                    f"differs from {prefix}_train.txt + {prefix}_val.txt ({len(got - want)} extra, "
                    f"{len(want - got)} missing, e.g. '{diff[0]}')"
                )
            raise TbxError(f"{lp.name} {what}", lp, "restore the release's list files")
        out[lp.stem] = listed
    return out
