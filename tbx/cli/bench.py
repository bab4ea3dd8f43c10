"""`tbx bench` — score predictions with the TBX11K protocol (docs/protocol.md §4); `tbx bench compare A B`."""

from __future__ import annotations

from pathlib import Path

import typer

from tbx.bench.protocol import compare, write_result
from tbx.cli.bench_core import make_config, make_console, print_compare, run_bench
from tbx.errors import TbxError

app = typer.Typer(
    help="Score predictions with the TBX11K protocol (docs/protocol.md §4): classification, "
    "detection (all-cxr / tb-only), screening operating points, bootstrap CIs.",
    no_args_is_help=True,
)

MODE_HELP = "all-cxr (paper 'ALL': boxes dropped on images not classified TB), tb-only, or both."


@app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    gt: Path = typer.Option(None, "--gt", help="COCO annotation file of the evaluated images."),
    pred: Path = typer.Option(None, "--pred", help="Folder with cls_result.txt and/or bbox_result.json."),
    mode: str = typer.Option("both", "--mode", help=MODE_HELP),
    json_out: Path = typer.Option(
        None, "--json", help="Write the full result (and <name>.provenance.json beside it) to this JSON file."
    ),
    bootstrap: int = typer.Option(
        0, "--bootstrap", min=0, help="Bootstrap resamples for 95 % CIs (0 = none)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    keep_uncertain: bool = typer.Option(
        False,
        "--keep-uncertain",
        help="Keep uncertain-type TB images in the active/latent rows (the authors' script did).",
    ),
    save_operating_points: Path = typer.Option(
        None,
        "--save-operating-points",
        help="Write the "
        "sens90 / spec70 / argmax thresholds to "
        "RUN/operating_points.json (for tbx screen); bench a "
        "validation set.",
    ),
) -> None:
    """Score predictions against ANN.json with the paper's protocol (docs/protocol.md §4)."""
    if ctx.invoked_subcommand is not None:
        return
    if gt is None or pred is None:
        raise TbxError(
            "tbx bench needs --gt and --pred",
            fix="tbx bench --gt ANN.json --pred DIR (or tbx bench compare A B --gt ANN.json)",
        )
    run_bench(gt, pred, mode, json_out, bootstrap, seed, keep_uncertain, save_operating_points)


@app.command("compare")
def compare_cmd(
    a: Path = typer.Argument(..., help="Prediction folder A."),
    b: Path = typer.Argument(..., help="Prediction folder B."),
    gt: Path = typer.Option(..., "--gt", help="COCO annotation file of the evaluated images."),
    mode: str = typer.Option("both", "--mode", help=MODE_HELP),
    json_out: Path = typer.Option(None, "--json", help="Write the comparison to this JSON file."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=1, help="Paired bootstrap resamples."),
    seed: int = typer.Option(0, "--seed"),
    keep_uncertain: bool = typer.Option(False, "--keep-uncertain"),
) -> None:
    """Paired comparison of two prediction sets on the same images (bootstrap CIs, DeLong test)."""
    cfg = make_config(mode, bootstrap, seed, keep_uncertain)
    console = make_console()
    res = compare(gt, a, b, cfg)
    print_compare(res, console)
    if json_out is not None:
        write_result(res, json_out, cfg)
        console.print(f"wrote {json_out} (+ {json_out.stem}.provenance.json)")
