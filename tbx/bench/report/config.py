"""Options, constants and the result of ``tbx report``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tbx.bench.schema import DET_ROW_LABELS
from tbx.errors import TbxError

FORMATS = ("md", "tex", "csv", "html")
CLS_COLUMNS = (
    ("accuracy", "Acc"),
    ("auc", "AUC (TB)"),
    ("sensitivity", "Sens"),
    ("specificity", "Spec"),
    ("ap", "AP"),
    ("ar", "AR"),
)
DET_MODES = (("all_cxr", "ALL"), ("tb_only", "Only TB"))
DET_CATS = tuple(DET_ROW_LABELS.items())  # (row, label) in table order
OVERLAY_SCORE_THR = 0.3
PUBLISHED_MARK = "(published)"
DAGGER = "†"
_CONFIG_IGNORE = {"name", "run_name", "out", "out_dir", "output", "output_dir", "run_dir", "work_dir", "fold"}


# ----------------------------------------------------------------------------------------- configs
@dataclass
class ReportConfig:
    """Options of ``tbx report``."""

    formats: tuple[str, ...] = FORMATS
    reference: Literal["paper", "none"] = "paper"
    study: Path | None = None  # a directory holding study_compare.json, or the file itself
    overlays: int = 6  # total number of overlay images per run (0 = none)
    figures: bool = True
    dpi: int = 150

    def __post_init__(self) -> None:
        if isinstance(self.formats, str):
            self.formats = tuple(f.strip() for f in self.formats.split(",") if f.strip())
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise TbxError(
                f"unknown report format '{bad[0] if bad else ''}'",
                fix=f"use a comma-separated subset of {','.join(FORMATS)}",
            )
        if self.reference not in ("paper", "none"):
            raise TbxError(f"bad --reference '{self.reference}'", fix="use 'paper' or 'none'")
        if self.overlays < 0:
            raise TbxError("--overlays must be ≥ 0")


@dataclass
class ReportResult:
    """Paths of everything a report wrote (final locations under ``out``)."""

    out: Path
    tables: dict[str, list[Path]] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    markdown: Path | None = None
    html: Path | None = None
    notes_file: Path | None = None
    provenance: Path | None = None
    notes: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        out = [p for paths in self.tables.values() for p in paths] + list(self.figures)
        out += [p for p in (self.markdown, self.html, self.notes_file, self.provenance) if p]
        return out
