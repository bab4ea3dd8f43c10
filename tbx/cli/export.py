"""`tbx export` — a run's network as an ONNX graph (for `tbx screen model.onnx`, onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from tbx.errors import TbxError


def export(
    run: Path = typer.Argument(..., help="Run directory or .pt checkpoint."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (the only format)."),
    out: Path = typer.Option(..., "--out", help="The .onnx file to write."),
    input_size: int = typer.Option(
        None,
        "--input-size",
        help="Static input side in pixels (multiple of 32); default: the run's model.input_size.",
    ),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (≥ 16: GridSample)."),
) -> None:
    """Export the network (image tensor → class probabilities and raw detection outputs) to ONNX;
    pre-/post-processing stay in tbx and serve both backends. symformer_retinanet and retinanet
    export; faster_rcnn / fcos / ssd run NMS inside their forward and the Deformable DETR models have
    no network/post-processing split yet, so they screen with the torch backend only."""
    if fmt != "onnx":
        raise TbxError(f"unknown --format {fmt!r}", fix="use --format onnx")
    from tbx.deploy.export import export_onnx

    path = export_onnx(run, out, input_size=input_size, opset=opset)
    Console().print(f"wrote {path} (opset {opset}); screen with: tbx screen {path} INPUT... --out DIR")
