"""`tbx dataset validate ROOT` — consistency checks of a TBX11K-layout dataset.

Checks (each finding has a severity ``error`` / ``warning`` / ``info``, a check name, a path and a
message):

- ``json``: every COCO file parses; image ids, annotation ids and file names are unique; every
  annotation refers to an image; category ids are the official 1/2/3; boxes are non-degenerate and
  inside the declared image frame (tolerance 1 px on the low side for the release's −1 offset,
  docs/dataset.md §1.3);
- ``labels``: TB images have ≥ 1 box (a TB image without any is a *warning*: the release has one,
  ``tb/tb1199.png``), non-TB images have none, ``*_only_tb`` files hold only boxed TB images;
- ``images``: every listed image exists, decodes and has the declared size (when images are
  available — ``images="auto"`` skips these checks, with one ``info`` finding, when ``imgs/`` is
  absent, e.g. on the metadata-only release files);
- ``lists``: each list file equals the file order of its JSON;
- ``splits``: train / val / test are disjoint (file names and, when recorded, patient ids), and
  trainval = train + val;
- ``patients``: one image per patient (docs/dataset.md §1.1), when the JSONs record pseudonymous patient ids
  (``tbx dataset build`` writes them);
- ``xml``: boxes of the JSONs equal the VOC XMLs converted with the official rule (≤ 1e-3 px);
- ``near-duplicates``: 64-bit perceptual hashes (DCT pHash, 32×32) of all images propose pairs
  within ``dhash_threshold`` bits lying in different splits or sources (bucketed search,
  :func:`tbx.data.imageio.near_duplicate_pairs`); each is confirmed at the pixel level
  (:mod:`tbx.data.duplicates`) before it is reported: pixel-identical images in different splits
  are *errors* (leakage), other confirmed pairs (pixel correlation ≥ ``near_duplicate_min_corr``)
  *warnings* with the figure; rejected candidates are only counted (``stats["near_duplicates"]``).

The JSON folder is ``ROOT/annotations/json`` or, when absent, ROOT itself (the metadata-only
distribution puts the JSONs at the top); XMLs likewise ``annotations/xml`` or ``xml``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tbx.data.duplicates import MIN_CORRELATION, match_files
from tbx.data.layout import ANN_JSON, ANN_XML, IMGS, LISTS, label_from_path, resolve_inside
from tbx.data.records import CATEGORIES
from tbx.errors import TbxError

SEVERITIES = ("error", "warning", "info")
VALID_CATEGORIES = {c["id"] for c in CATEGORIES}
_SPLIT_RE = re.compile(r"^(TBX11K|all)_(train|val|trainval|test)(_only_tb)?$")
BOX_TOL = 1.0  # px, docs/dataset.md §1.3: 1-based VOC boxes become x ≥ −1 after the −1 offset


@dataclass
class ValidateConfig:
    images: str = "auto"  # auto | yes | no
    strict: bool = False  # warnings fail too
    dhash_threshold: int = 4  # Hamming distance (of 64 bits) for near-duplicate candidates
    near_duplicate_min_corr: float = MIN_CORRELATION  # pixel correlation confirming a candidate
    near_duplicates: bool = True
    max_findings_per_check: int = 200  # per check and file; the rest is summarised
    workers: int = 1  # processes decoding images


@dataclass
class Finding:
    severity: str
    check: str
    path: str
    message: str


@dataclass
class ValidationReport:
    root: str
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def ok(self, strict: bool = False) -> bool:
        return not self.errors and not (strict and self.warnings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "n_errors": len(self.errors),
            "n_warnings": len(self.warnings),
            "stats": self.stats,
            "findings": [asdict(f) for f in self.findings],
        }


class _Collector:
    def __init__(self, report: ValidationReport, cap: int):
        self.report, self.cap = report, cap
        self.counts: dict[tuple[str, str, str], int] = defaultdict(int)

    def add(self, severity: str, check: str, path: str | Path, message: str, group: str = "") -> None:
        key = (severity, check, group)
        self.counts[key] += 1
        if self.counts[key] <= self.cap:
            self.report.findings.append(Finding(severity, check, str(path), message))

    def summarise(self) -> None:
        for (sev, check, group), n in self.counts.items():
            if n > self.cap:
                self.report.findings.append(
                    Finding(sev, check, group or "-", f"… and {n - self.cap} more like the above")
                )


def _json_dir(root: Path) -> Path:
    return root / ANN_JSON if (root / ANN_JSON).is_dir() else root


def _xml_dir(root: Path) -> Path | None:
    for d in (root / ANN_XML, root / "xml"):
        if d.is_dir():
            return d
    return None


def _image_info(path: str) -> dict[str, Any]:
    """Decode one image fully: size and perceptual hash (or the error)."""
    from PIL import Image

    from tbx.data.imageio import phash64

    try:
        with Image.open(path) as im:
            im.load()
            size = im.size
            gray = np.asarray(im.convert("L"), dtype=np.uint8)
        return {"size": size, "phash": phash64(gray)}
    except Exception as e:  # noqa: BLE001 - any decode failure is a finding
        return {"error": f"{type(e).__name__}: {e}"}


def validate_dataset(
    root: str | Path, cfg: ValidateConfig | None = None, progress: Callable[[int, int], None] | None = None
) -> ValidationReport:
    """Run every check on the dataset at ``root`` (see the module docstring)."""
    cfg = cfg or ValidateConfig()
    if cfg.images not in ("auto", "yes", "no"):
        raise TbxError(f"images mode '{cfg.images}' is not auto/yes/no")
    root = Path(root)
    if not root.is_dir():
        raise TbxError("dataset root not found", root, "give the folder holding annotations/ (and imgs/)")
    jdir = _json_dir(root)
    jsons = sorted(p for p in jdir.glob("*.json") if _SPLIT_RE.match(p.stem))
    if not jsons:
        raise TbxError(
            "no annotation JSONs (TBX11K_*.json / all_*.json)",
            jdir,
            "give a TBX11K-layout root (annotations/json/) or the folder holding the JSONs",
        )
    report = ValidationReport(root=str(root))
    col = _Collector(report, cfg.max_findings_per_check)
    imgs_dir = root / IMGS
    use_images = cfg.images == "yes" or (cfg.images == "auto" and imgs_dir.is_dir())
    if cfg.images == "yes" and not imgs_dir.is_dir():
        col.add("error", "images", imgs_dir, "imgs/ folder is missing")
        use_images = False

    import json

    files: dict[str, dict[str, Any]] = {}  # view name → parsed
    for p in jsons:
        try:
            files[p.stem] = json.loads(p.read_text())
            if not isinstance(files[p.stem], dict) or "images" not in files[p.stem]:
                raise ValueError("no 'images'")
        except (ValueError, OSError) as e:
            col.add("error", "json", p, f"not a readable COCO file ({e})")
            files.pop(p.stem, None)

    # image universe: file name → declared (w, h) and the views it appears in
    declared: dict[str, tuple[int, int]] = {}
    split_of: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    patient_split: dict[str, set[str]] = defaultdict(set)
    boxes_by_file: dict[str, list[tuple[float, float, float, float, int]]] = {}
    warned_no_box: set[str] = set()
    patient_files: dict[str, set[str]] = defaultdict(set)
    for name, data in files.items():
        path = jdir / f"{name}.json"
        m = _SPLIT_RE.match(name)
        split = m.group(2)
        ids, fnames = set(), set()
        by_id: dict[int, dict[str, Any]] = {}
        for img in data.get("images", []):
            iid, fn = img.get("id"), img.get("file_name")
            if iid in ids:
                col.add("error", "json", path, f"duplicate image id {iid}", name)
            if fn in fnames:
                col.add("error", "json", path, f"duplicate file name {fn}", name)
            ids.add(iid)
            fnames.add(fn)
            by_id[iid] = img
            w, h = img.get("width"), img.get("height")
            if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
                col.add("error", "json", path, f"{fn}: bad width/height {w}×{h}", name)
                continue
            if fn in declared and declared[fn] != (w, h):
                col.add(
                    "error",
                    "json",
                    path,
                    f"{fn}: size {w}×{h} differs from {declared[fn]} declared in another file",
                    name,
                )
            declared.setdefault(fn, (w, h))
            if split != "trainval":
                split_of[fn][split].add(name)
                if img.get("patient_id"):
                    patient_split[str(img["patient_id"])].add(split)
            if img.get("patient_id"):
                patient_files[str(img["patient_id"])].add(fn)
        anns_by_img: dict[int, list[dict[str, Any]]] = defaultdict(list)
        ann_ids = set()
        for a in data.get("annotations", []):
            aid = a.get("id")
            if aid in ann_ids:
                col.add("error", "json", path, f"duplicate annotation id {aid}", name)
            ann_ids.add(aid)
            img = by_id.get(a.get("image_id"))
            if img is None:
                col.add(
                    "error",
                    "json",
                    path,
                    f"annotation {aid} refers to missing image id {a.get('image_id')}",
                    name,
                )
                continue
            anns_by_img[a["image_id"]].append(a)
            fn = img["file_name"]
            if a.get("category_id") not in VALID_CATEGORIES:
                col.add(
                    "error",
                    "categories",
                    path,
                    f"{fn}: annotation {aid} has category {a.get('category_id')} (valid: 1, 2, 3)",
                    name,
                )
            try:
                x, y, bw, bh = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError):
                col.add("error", "boxes", path, f"{fn}: annotation {aid} has no valid bbox", name)
                continue
            W, H = img.get("width", 0), img.get("height", 0)
            if not (bw > 0 and bh > 0):
                col.add(
                    "error", "boxes", path, f"{fn}: annotation {aid} is degenerate (w={bw:g}, h={bh:g})", name
                )
            elif x < -BOX_TOL or y < -BOX_TOL or x + bw > W + 1e-3 or y + bh > H + 1e-3:
                col.add(
                    "error",
                    "boxes",
                    path,
                    f"{fn}: box [{x:.1f}, {y:.1f}, {bw:.1f}, {bh:.1f}] lies outside the {W}×{H} image",
                    name,
                )
        for iid, img in by_id.items():
            fn = img.get("file_name", "")
            try:
                label, _ = label_from_path(fn)
            except TbxError:
                label = "unknown"
            n = len(anns_by_img.get(iid, []))
            if name.endswith("_only_tb") and (label != "tb" or n == 0):
                col.add(
                    "error",
                    "labels",
                    path,
                    f"{fn}: an *_only_tb file holds an image that is not a boxed TB image",
                    name,
                )
            elif label == "tb" and n == 0 and fn.startswith("tb/"):
                if fn not in warned_no_box:  # once per image, not once per view holding it
                    warned_no_box.add(fn)
                    col.add("warning", "labels", path, f"{fn}: TB image without any box", name)
            elif label in ("healthy", "sick") and n > 0:
                col.add("error", "labels", path, f"{fn}: {label} image has {n} box(es)", name)
            if fn.startswith("tb/") and fn not in boxes_by_file:
                boxes_by_file[fn] = [
                    (*[float(v) for v in a["bbox"]], int(a["category_id"]))
                    for a in anns_by_img.get(iid, [])
                    if "bbox" in a
                ]
        report.stats.setdefault("files", {})[name] = {
            "images": len(by_id),
            "annotations": len(data.get("annotations", [])),
        }
        _check_list(root, name, [img.get("file_name") for img in data.get("images", [])], col)

    # list files take part in the disjointness check too (a list may exist without its JSON)
    if (root / LISTS).is_dir():
        for lp in sorted((root / LISTS).glob("*.txt")):
            m = _SPLIT_RE.match(lp.stem)
            if m and m.group(2) != "trainval" and not m.group(3):
                for s_ in lp.read_text().splitlines():
                    s_ = s_.strip()
                    if s_:
                        s_ = s_[len(IMGS) + 1 :] if s_.startswith(f"{IMGS}/") else s_
                        split_of[s_][m.group(2)].add(lp.name)
    _check_splits(split_of, patient_split, files, col, jdir)
    for pid, fns in sorted(patient_files.items()):
        if len(fns) > 1:  # docs/dataset.md §1.1: one CXR per person
            col.add(
                "warning",
                "patients",
                pid,
                f"patient has {len(fns)} images: {', '.join(sorted(fns)[:4])}",
                "multi",
            )
    report.stats["xml_checked"] = _check_xml(root, boxes_by_file, declared, col)
    report.stats["images"] = len(declared)

    if not use_images:
        col.add(
            "info",
            "images",
            imgs_dir,
            f"images unavailable: the {len(declared)} image checks "
            "(exists, decodes, size) and the near-duplicate search were skipped",
        )
    else:
        _check_images(root, declared, split_of, cfg, col, progress)
    col.summarise()
    order = {s: i for i, s in enumerate(SEVERITIES)}
    report.findings.sort(key=lambda f: order[f.severity])
    return report


def _check_list(root: Path, name: str, fnames: list[str], col: _Collector) -> None:
    if name.endswith("_only_tb"):
        return
    lp = root / LISTS / f"{name}.txt"
    if not lp.is_file():
        return
    listed = [s.strip() for s in lp.read_text().splitlines() if s.strip()]
    listed = [s[len(IMGS) + 1 :] if s.startswith(f"{IMGS}/") else s for s in listed]
    if listed != fnames:
        a, b = set(listed), set(fnames)
        if a == b:
            msg = "same images as the JSON but in another order"
        else:
            msg = (
                f"{len(a - b)} listed image(s) not in the JSON (e.g. {sorted(a - b)[:1]}), "
                f"{len(b - a)} JSON image(s) not listed (e.g. {sorted(b - a)[:1]})"
            )
        col.add("error", "lists", lp, f"list disagrees with {name}.json: {msg}")


def _check_splits(
    split_of: dict[str, dict[str, set[str]]],
    patient_split: dict[str, set[str]],
    files: dict[str, dict[str, Any]],
    col: _Collector,
    jdir: Path,
) -> None:
    for fn, splits in split_of.items():
        if len(splits) > 1:
            desc = "; ".join(f"{s} ({', '.join(sorted(v))})" for s, v in sorted(splits.items()))
            col.add("error", "splits", fn, f"image is in several splits: {desc}")
    for pid, splits in patient_split.items():
        if len(splits) > 1:
            col.add("error", "splits", pid, f"patient has images in {', '.join(sorted(splits))}")
    for prefix in ("TBX11K", "all"):
        tv = files.get(f"{prefix}_trainval")
        if tv is None:
            continue
        parts = [files.get(f"{prefix}_{s}") for s in ("train", "val")]
        if any(p is None for p in parts):
            continue
        want = [i["file_name"] for p in parts for i in p["images"]]
        got = [i["file_name"] for i in tv["images"]]
        if sorted(want) != sorted(got):
            col.add(
                "error",
                "splits",
                jdir / f"{prefix}_trainval.json",
                "trainval is not the union of train and val",
            )


def _check_xml(
    root: Path, boxes_by_file: dict[str, list], declared: dict[str, tuple[int, int]], col: _Collector
) -> int:
    """Compare JSON boxes with the XMLs; returns the number of XML files compared."""
    from tbx.data.voc import category_of, convert_voc_box, read_voc

    xdir = _xml_dir(root)
    if xdir is None or not boxes_by_file:
        return 0
    checked = 0
    for fn, boxes in boxes_by_file.items():
        xml = xdir / f"{Path(fn).stem}.xml"
        if not xml.is_file():
            continue
        try:
            ann = read_voc(xml)
            conv = []
            for o in ann.objects:
                if o.difficult:
                    continue
                c = convert_voc_box(o.xmin, o.ymin, o.xmax, o.ymax, ann.width, ann.height, declared[fn])
                if c is not None:
                    conv.append((*c, category_of(o.name, xml)))
        except TbxError as e:
            col.add("error", "xml", xml, e.what)
            continue
        checked += 1
        ok = len(conv) == len(boxes) and all(
            a[4] == b[4] and max(abs(p - q) for p, q in zip(a[:4], b[:4])) <= 1e-3
            for a, b in zip(sorted(conv), sorted(boxes))
        )
        if not ok:
            col.add(
                "error",
                "xml",
                xml,
                f"{fn}: JSON boxes ({len(boxes)}) differ from the XML "
                f"converted with the official rule ({len(conv)})",
            )
    return checked


def _check_images(
    root: Path,
    declared: dict[str, tuple[int, int]],
    split_of: dict[str, dict[str, set[str]]],
    cfg: ValidateConfig,
    col: _Collector,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Exists / decodes / declared size per image, then near-duplicate pairs across groups."""
    from tbx.data.imageio import near_duplicate_pairs

    names = []
    for fn in sorted(declared):  # paths from the JSONs must stay inside imgs/ (layout.resolve_inside)
        try:
            resolve_inside(root / IMGS, fn, None, "imgs/")
            names.append(fn)
        except TbxError as e:
            col.add("error", "images", fn, e.what, "path")
    hashes: list[int] = []
    hashed: list[str] = []
    present = [str(root / IMGS / fn) for fn in names if (root / IMGS / fn).is_file()]
    if cfg.workers > 1 and len(present) > 1:
        from concurrent.futures import ProcessPoolExecutor

        from tbx.workers import init_worker

        with ProcessPoolExecutor(cfg.workers, initializer=init_worker) as ex:
            infos = dict(
                zip(
                    present, ex.map(_image_info, present, chunksize=max(1, len(present) // (cfg.workers * 8)))
                )
            )
    else:
        infos = None
    for i, fn in enumerate(names):
        path = root / IMGS / fn
        if not path.is_file():
            col.add("error", "images", path, "annotated image is missing", "missing")
        else:
            info = infos[str(path)] if infos is not None else _image_info(str(path))
            if "error" in info:
                col.add("error", "images", path, f"image does not decode ({info['error']})", "decode")
            else:
                if tuple(info["size"]) != declared[fn]:
                    col.add(
                        "error",
                        "images",
                        path,
                        f"image is {info['size'][0]}×{info['size'][1]}, "
                        f"declared {declared[fn][0]}×{declared[fn][1]}",
                        "size",
                    )
                hashes.append(info["phash"])
                hashed.append(fn)
        if progress:
            progress(i + 1, len(names))
    if not cfg.near_duplicates or len(hashed) < 2:
        return
    arr = np.array(hashes, dtype=np.uint64)

    def group(fn: str) -> tuple[str, str]:
        splits = ",".join(sorted(split_of.get(fn, {}))) or "-"
        try:
            source = label_from_path(fn)[1]
        except TbxError:
            source = "tbx11k"
        return splits, source

    candidates = [
        (hashed[i], hashed[j], d)
        for i, j, d in near_duplicate_pairs(arr, cfg.dhash_threshold)
        if group(hashed[i]) != group(hashed[j])
    ]
    _report_near_duplicates(root, candidates, group, cfg.near_duplicate_min_corr, col)


def _report_near_duplicates(
    root: Path,
    candidates: list[tuple[str, str, int]],
    group: Callable[[str], tuple[str, str]],
    min_corr: float,
    col: _Collector,
) -> None:
    """Confirm each pHash candidate pair at the pixel level, then report it (module docstring)."""
    stats = {
        "candidates": len(candidates),
        "identical": 0,
        "confirmed": 0,
        "rejected": 0,
        "max_rejected_correlation": None,
        "min_correlation": min_corr,
    }
    for a, b, d in candidates:
        (sa, oa), (sb, ob) = group(a), group(b)
        where_ = "; ".join(f"{k} {x} vs {y}" for k, x, y in (("split", sa, sb), ("source", oa, ob)) if x != y)
        try:
            m = match_files(root / IMGS / a, root / IMGS / b)
        except TbxError as e:  # decodable when hashed; a file changed since is reported, not fatal
            col.add("warning", "near-duplicates", a, f"cannot compare with {b}: {e.what}", "pairs")
            continue
        if m.identical:
            stats["identical"] += 1
            sev, what = ("error", "leakage between splits") if sa != sb else ("warning", "same image twice")
            col.add(sev, "near-duplicates", a, f"pixel-identical to {b} ({where_}) — {what}", "identical")
        elif m.confirmed(min_corr):
            stats["confirmed"] += 1
            col.add(
                "warning",
                "near-duplicates",
                a,
                f"near-duplicate of {b} (pixel correlation {m.correlation:.4f} ≥ {min_corr:g}, "
                f"pHash distance {d}/64; {where_}) — possible leakage",
                "pairs",
            )
        else:
            stats["rejected"] += 1
            best = stats["max_rejected_correlation"]
            stats["max_rejected_correlation"] = round(max(m.correlation, best or -1.0), 4)
    col.report.stats["near_duplicates"] = stats
    if stats["rejected"]:
        col.add(
            "info",
            "near-duplicates",
            "-",
            f"{stats['rejected']} pHash candidate pair(s) are "
            f"different images at the pixel level (correlation ≤ {stats['max_rejected_correlation']}"
            f" < {min_corr:g}); not reported",
        )
