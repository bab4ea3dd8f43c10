"""`tbx demo`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def demo(
    out: Path = typer.Option(
        Path("runs/demo"), "--out", help="Output folder (replaced if it holds an earlier demo)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, split and training."),
    preset: str = typer.Option("tiny", "--config", help="Training preset (CPU: tiny)."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Training config override (repeatable; applied after the demo's own, a longer stage II).",
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Processes for synthesis/build/loading."),
) -> None:
    """Run the whole pipeline on synthetic CXRs: synth → build → validate → stats → split → train
    (tiny SymFormer, both stages) → predict → bench → explain → deploy (operating points, ONNX,
    screening of new patients) → study (simulated reader) → report."""
    from tbx.demo import DEMO_OVERRIDES, DemoConfig, run_demo

    console = Console()
    outputs = run_demo(
        out,
        DemoConfig(seed=seed, preset=preset, overrides=[*DEMO_OVERRIDES, *set_], workers=workers),
        say=console.print,
    )
    table = Table(title="tbx demo outputs")
    table.add_column("what")
    table.add_column("where")
    for k, v in outputs.items():
        table.add_row(k, str(v))
    console.print(table)
