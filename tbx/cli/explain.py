"""`tbx explain` — where a model looks: heatmaps, overlays and localisation scores."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console


def explain(
    model: Path = typer.Argument(
        ..., help="Run directory (uses stage2/final.pt, else stage1) or a .pt checkpoint."
    ),
    inputs: list[Path] = typer.Argument(
        None, help="Image files (PNG/JPEG/DICOM) to explain instead of --data/--ann.", show_default=False
    ),
    data: Path | None = typer.Option(None, "--data", help="TBX11K-layout dataset root."),
    ann: Path | None = typer.Option(
        None,
        "--ann",
        help="COCO annotation file listing the images "
        "(absolute or relative to --data); its boxes are scored.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder [default: RUN/explain/METHOD, where `tbx report` finds it]."
    ),
    method: str = typer.Option(
        "gradcam",
        "--method",
        help="gradcam | gradcam++ | xgradcam | hirescam | "
        "gradcamelementwise | layercam | eigencam | eigengradcam (grad-cam package, "
        "on the classification head's input) | features (SymFormer: the pyramid "
        "before/after the symmetric block).",
    ),
    target: str = typer.Option(
        "pred",
        "--target",
        help="Class to explain: tb | sick | healthy | pred (each image's predicted class).",
    ),
    limit: int | None = typer.Option(None, "--limit", help="Explain only the first N images."),
    batch: int = typer.Option(4, "--batch", help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cpu."),
    workers: int = typer.Option(2, "--workers", help="Image decoding processes (with --data)."),
    box_thresh: float = typer.Option(0.3, "--box-thresh", help="Draw predicted boxes with a score ≥ this."),
) -> None:
    """Heatmaps of where the model looks (`heatmaps/*.npy` in each source image's frame, values in
    [0, 1]), overlays with predicted and ground-truth boxes (`overlays/*.png`) and `explain.json`:
    per image the heatmap energy inside the ground-truth TB boxes and the pointing-game hit, and
    their means."""
    from tbx.explain.run import explain as run_explain

    out_dir = run_explain(
        model,
        out,
        data_root=data,
        ann=ann,
        inputs=inputs or (),
        method=method,
        target=target,
        batch_size=batch,
        device=device,
        workers=workers,
        limit=limit,
        box_thresh=box_thresh,
    )
    doc = json.loads((out_dir / "explain.json").read_text())
    con = Console(highlight=False, soft_wrap=True)
    con.print(f"explained {len(doc['images'])} image(s) with {method} → {out_dir}", markup=False)
    if doc.get("n_scored"):
        con.print(
            f"  {doc['n_scored']} with ground-truth boxes: mean energy in boxes "
            f"{doc['mean_energy_in_boxes']:.3f}, pointing game {doc['pointing_game']:.3f}",
            markup=False,
        )
