"""DDP with 2 CPU processes (gloo): same weights as one process with the same global batch."""

from __future__ import annotations

import socket

import torch
import torch.multiprocessing as mp
from engine_fixtures import ddp_worker, make_layout, tiny_builder

from tbx.engine.checkpoint import load_checkpoint
from tbx.engine.distributed import torchrun_command
from tbx.engine.schedule import DataConfig, StageConfig, TrainConfig
from tbx.engine.trainer import train
from tbx.models.config import ModelConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    root = make_layout(tmp_path / "data", n_tb=8, n_healthy=4, n_sick=4, size=48)
    cfg = TrainConfig(
        model_name="tiny",
        model=ModelConfig(input_size=48),
        data=DataConfig(root=str(root), workers=0),
        stage1=StageConfig(epochs=2, batch_size=4, lr=0.05, warmup_iters=2, lr_steps=[1]),
        stage2=StageConfig(epochs=1, batch_size=4, lr=0.01, warmup_iters=0, lr_steps=[]),
        log_every=1,
        seed=1,
    )
    single = train(cfg, tmp_path / "single", model_builder=tiny_builder, progress=False)
    mp.start_processes(
        ddp_worker,
        args=(2, _free_port(), cfg, str(tmp_path / "ddp"), "both"),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    a = load_checkpoint(single.final[1])["model"]
    b = load_checkpoint(tmp_path / "ddp" / "stage1" / "final.pt")["model"]
    # each rank sees half of every global batch; the averaged gradient equals the full-batch one
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    s2 = load_checkpoint(tmp_path / "ddp" / "stage2" / "final.pt")
    assert s2["extra"]["world_size"] == 2 and s2["stage"] == 2
    # only rank 0 wrote: one line per logged iteration
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "single" / "metrics.jsonl").read_text().splitlines())


def test_torchrun_command():
    cmd = torchrun_command(4, ["train", "symformer", "--data", "D"])
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node=4", "--standalone"]
    assert cmd[-5:] == ["-m", "tbx", "train", "symformer", "--data", "D"][-5:]


def test_relaunch_command_line_keeps_every_option():
    """``--gpus N`` relaunches `tbx train` with the options it was given (None: left out)."""
    from tbx.engine.distributed import command_line

    args = command_line(
        "train",
        "symformer",
        options={"--data": "D", "--config": None, "--seed": 3},
        repeated={"--set": ["a=1", "b.c=2"]},
        flags={"--resume": True, "--x": False},
    )
    assert args == [
        "train",
        "symformer",
        "--data",
        "D",
        "--seed",
        "3",
        "--set",
        "a=1",
        "--set",
        "b.c=2",
        "--resume",
    ]
