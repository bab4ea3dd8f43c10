"""Provenance: what produced an output (command line, resolved config, seed, versions, commit)."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tbx
from tbx.config import to_dict
from tbx.io import atomic_write_json


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current commit of the tbx source tree (``+dirty`` when modified), or None."""
    cwd = Path(cwd) if cwd else Path(tbx.__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Installed versions of tbx and its key dependencies (package metadata: imports nothing)."""
    out = {"tbx": tbx.__version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "numpy", "pycocotools", "pydicom"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def provenance(config: Any = None, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "config": to_dict(config) if config is not None else None,
        "versions": versions(),
        "git_commit": git_commit(),
        "host": platform.node(),
        **extra,
    }


def write_provenance(
    out_dir: str | Path,
    config: Any = None,
    seed: int | None = None,
    name: str = "provenance.json",
    **extra: Any,
) -> Path:
    """Write ``provenance.json`` into ``out_dir`` (atomic) and return its path."""
    path = Path(out_dir) / name
    atomic_write_json(path, provenance(config, seed, **extra))
    return path
