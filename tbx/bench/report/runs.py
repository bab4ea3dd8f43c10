"""Loading run directories (the contract in :mod:`tbx.bench.report`) and grouping k-fold runs."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tbx.bench.report.config import _CONFIG_IGNORE
from tbx.bench.schema import check_bench_result
from tbx.errors import TbxError, where


@dataclass
class Run:
    """Everything ``tbx report`` reads from one run directory."""

    name: str
    path: Path
    config: dict[str, Any]
    model: str | None
    fold: int | None
    provenance: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    bench: dict[str, Any]
    manifest: dict[str, Any] | None
    model_info: dict[str, Any] | None
    study: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """Row label: the run name, with the model appended when the name does not mention it."""
        if self.model and self.model.lower() not in self.name.lower():
            return f"{self.name} ({self.model})"
        return self.name

    @property
    def cls(self) -> dict[str, Any]:
        c = self.bench.get("classification")
        return c if isinstance(c, dict) else {}

    def det(self, mode: str, cat: str) -> dict[str, Any]:
        d = _get(self.bench, ("detection", mode, cat))
        return d if isinstance(d, dict) else {}

    def has_mode(self, mode: str) -> bool:
        d = _get(self.bench, ("detection", mode))
        return isinstance(d, dict) and bool(d)

    def ci(self, *path: str) -> tuple[float, float] | None:
        iv = _as_interval(_get(self.bench.get("ci") or {}, path))
        if iv is None and tuple(path) == ("classification", "auc"):  # DeLong interval of tbx bench
            iv = _as_interval(_get(self.bench, ("classification", "auc_delong", "ci")))
        return iv


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TbxError(
            f"invalid JSON: {e.msg}",
            where(path, e.lineno),
            "regenerate the file (or remove it from the run directory)",
        ) from None
    except OSError as e:
        raise TbxError(f"cannot read file: {e.strerror}", path) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise TbxError(
            f"invalid YAML: {getattr(e, 'problem', e)}",
            where(path, mark.line + 1 if mark else None),
            "fix the syntax",
        ) from None
    if not isinstance(data, dict):
        raise TbxError("config.yaml must be a YAML mapping", path)
    return data


def _get(d: Any, path: tuple[str, ...] | list[str]) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _num(v: Any) -> float | None:
    """A finite float, or None for missing / non-numeric / COCO's -1 ("no ground truth")."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    if not math.isfinite(v) or v < 0:
        return None
    return v


def _as_interval(v: Any) -> tuple[float, float] | None:
    """A ``[lo, hi]`` interval of the bench schema (None where missing or not finite)."""
    if not (isinstance(v, (list, tuple)) and len(v) == 2):
        return None
    lo, hi = v
    lo, hi = _num(lo), _num(hi)
    return (lo, hi) if lo is not None and hi is not None else None


def _merge(base: dict[str, Any], new: dict[str, Any], src: str, notes: list[str], prefix: str = "") -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, src, notes, f"{prefix}{k}.")
        else:
            if k in base and base[k] != v and not isinstance(v, list):
                notes.append(f"bench files disagree on {prefix}{k}; using {src}")
            base[k] = v


def _read_metrics(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                notes.append(f"{path}:{i}: truncated last line skipped (run still writing?)")
                continue
            raise TbxError(
                f"invalid JSON line: {e.msg}",
                where(path, i),
                "each line of metrics.jsonl must be one JSON object",
            ) from None
        if not isinstance(row, dict):
            raise TbxError("metrics line is not a JSON object", where(path, i))
        rows.append(row)
    return rows


def _find_study(run_dir: Path) -> Path | None:
    for p in (run_dir / "study_compare.json", run_dir / "study" / "study_compare.json"):
        if p.is_file():
            return p
    return None


def study_file(path: Path) -> Path:
    """``--study DIR`` → ``DIR/study_compare.json`` (or the file itself)."""
    path = Path(path)
    p = path if path.is_file() else path / "study_compare.json"
    if not p.is_file():
        raise TbxError(
            "no study_compare.json found",
            path,
            "pass the output directory of `tbx study compare` (or the JSON file)",
        )
    return p


def _check_study(data: Any, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("readers", []), list):
        raise TbxError("study comparison must be a JSON object with a 'readers' list", path)
    return data


def load_run(path: str | Path) -> Run:
    """Read one run directory (see the module docstring for the contract)."""
    path = Path(path)
    if not path.is_dir():
        raise TbxError("run directory not found", path, "give directories such as runs/<name>")
    has_cfg = (path / "config.yaml").is_file()
    bench_dir = path / "bench"
    if not has_cfg and not bench_dir.is_dir():
        raise TbxError(
            "not a run directory (no config.yaml and no bench/)",
            path,
            "give a directory written by `tbx train` (runs/<name>) or one holding "
            "bench/*.json from `tbx bench --json`",
        )
    notes: list[str] = []
    name = path.resolve().name
    config = _read_yaml(path / "config.yaml") if has_cfg else {}
    if not has_cfg:
        notes.append(f"{name}: no config.yaml (model name and fold taken from other files)")

    prov = _read_json(path / "provenance.json") if (path / "provenance.json").is_file() else None
    metrics = _read_metrics(path / "metrics.jsonl", notes) if (path / "metrics.jsonl").is_file() else []

    bench: dict[str, Any] = {}
    files = sorted(bench_dir.glob("*.json")) if bench_dir.is_dir() else []
    files = [f for f in files if not f.name.endswith("provenance.json")]  # written beside by tbx bench
    n_used = 0
    for f in files:
        data = check_bench_result(_read_json(f), f)
        if "classification" not in data and "detection" not in data:
            notes.append(
                f"{name}: bench/{f.name} has no classification/detection block — ignored "
                "(a `tbx bench compare` output?)"
            )
            continue
        n_used += 1
        for bn in data.get("notes") or []:
            notes.append(f"{name}: bench/{f.name}: {bn}")
        data = {k: v for k, v in data.items() if k not in ("notes", "config", "pred", "schema")}
        merge_notes: list[str] = []
        _merge(bench, data, f.name, merge_notes)
        notes += [f"{name}: {n}" for n in merge_notes]
    if not n_used:
        notes.append(f"{name}: no bench/*.json — no metrics for this run")

    pred = path / "predictions"
    manifest = None
    if (pred / "manifest.json").is_file():
        manifest = _read_json(pred / "manifest.json")
        if not isinstance(manifest, dict):
            raise TbxError("predictions/manifest.json must be a JSON object", pred / "manifest.json")
    info = _read_json(path / "model_info.json") if (path / "model_info.json").is_file() else None
    sf = _find_study(path)
    study = _check_study(_read_json(sf), sf) if sf else None

    model = config.get("model_name")  # tbx train's TrainConfig, else tbx predict's manifest
    if not model and manifest and isinstance(manifest.get("model"), str):
        model = manifest["model"]
    fold = _get(config, ("data", "fold"))
    if fold is None:
        mm = re.search(r"_fold(\d+)$", name)
        fold = int(mm.group(1)) if mm else None
    try:
        fold = int(fold) if fold is not None else None
    except (TypeError, ValueError):
        raise TbxError(
            f"bad fold index {fold!r} in config.yaml", path / "config.yaml", "data.fold must be an integer"
        ) from None
    return Run(
        name=name,
        path=path,
        config=config,
        model=str(model) if model else None,
        fold=fold,
        provenance=prov if isinstance(prov, dict) else None,
        metrics=metrics,
        bench=bench,
        manifest=manifest,
        model_info=info if isinstance(info, dict) else None,
        study=study,
        notes=notes,
    )


def _unfold(v: Any) -> Any:
    """Mask fold indices inside strings (per-fold annotation paths such as ``folds/fold3/…``)."""
    if isinstance(v, dict):
        return {k: _unfold(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unfold(x) for x in v]
    if isinstance(v, str):
        return re.sub(r"fold[_-]?\d+", "fold*", v)
    return v


def _fold_key(run: Run) -> str:
    cfg = {k: v for k, v in run.config.items() if k not in _CONFIG_IGNORE}
    if isinstance(cfg.get("data"), dict):
        cfg["data"] = {k: v for k, v in cfg["data"].items() if k != "fold"}
    cfg = _unfold(cfg)
    base = re.sub(r"_fold\d+$", "", run.name) if not run.config else ""
    return json.dumps({"cfg": cfg, "name": base, "model": run.model}, sort_keys=True, default=str)


def fold_groups(runs: list[Run]) -> list[list[Run]]:
    """Groups (≥ 2 runs, distinct folds) of runs sharing a config except the fold index."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        if r.fold is not None:
            groups.setdefault(_fold_key(r), []).append(r)
    out = []
    for g in groups.values():
        if len(g) >= 2 and len({r.fold for r in g}) == len(g):
            out.append(sorted(g, key=lambda r: r.fold))
    return out


def _group_label(g: list[Run]) -> str:
    base = re.sub(r"_fold\d+$", "", g[0].name)
    if g[0].model and g[0].model.lower() not in base.lower():
        base = f"{base} ({g[0].model})"
    return f"{base}: {len(g)}-fold mean ± sd"
