"""One writer for ``benchmarks/RESULTS.md``: each benchmark script owns one ``## <section>`` block.

    from _results import update_results        # scripts run as `python benchmarks/bench_x.py`
    update_results("bench_eval", ["| what | ratio |", "|---|---|", "| tbx / faster-coco-eval | 0.41 |"])

The block of that section is replaced (or appended when new); every other section is kept, so the
file always holds the latest figures of every benchmark, each stamped with its date, machine and
git commit.  Measured figures live here, not in YAML presets or code comments.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
_HEADER = (
    "# Benchmark results\n\nWritten by the scripts in `benchmarks/` (one section each, replaced on "
    "every run); ratios are measured side by side in one process.\n"
)


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=RESULTS.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def update_results(section: str, lines: list[str], path: Path = RESULTS) -> Path:
    """Replace the ``## section`` block of ``path`` with ``lines`` (Markdown), stamped; return the path."""
    stamp = (
        f"_{_dt.date.today().isoformat()} · commit {_commit()} · {platform.machine()} · "
        f"{os.cpu_count()} CPUs · `python benchmarks/{section}.py`_"
    )
    block = f"## {section}\n\n{stamp}\n\n" + "\n".join(lines).rstrip() + "\n"
    text = path.read_text() if path.exists() else _HEADER
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text.rstrip() + "\n")
    tmp.replace(path)
    return path
