"""Shared fixtures: the real reference data in ../shared/data, an in-process CLI runner, and a
small synthetic TBX11K-layout dataset built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real TBX11K metadata, sample CXRs, official results)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside the checkout")
    return SHARED_DATA


@pytest.fixture()
def cli(capsys):
    """Run ``tbx ARGS`` in-process: returns ``(exit_code, stdout, stderr)``."""
    from tbx.cli.main import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic TBX11K-layout dataset (all classes, split assigned), built once.

    Tests must not modify it; copy it first (``shutil.copytree``) when a test needs to.
    """
    from tbx.data.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("synth") / "TBX11K"
    synthesize(
        root,
        SynthConfig(
            n_healthy=12, n_sick=12, n_active=12, n_latent=6, n_both=4, n_uncertain=2, size=256, seed=0
        ),
    )
    return root
