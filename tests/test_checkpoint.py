"""Checkpoints: atomic save, safe load, RNG round trip, clear errors for wrong/corrupt files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from engine_fixtures import OracleDetector, TinyDetector

from tbx.engine.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    load_model_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tbx.errors import TbxError


def _save(path, model=None, name="tiny"):
    model = model or TinyDetector()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return save_checkpoint(
        path,
        model=model,
        model_name=name,
        config={"model_name": name},
        stage=1,
        epoch=2,
        batch=3,
        iteration=7,
        optimizer=opt,
        sampler={"seed": 0, "epoch": 2, "batch": 3},
    )


def test_round_trip_weights_only(tmp_path):
    m = TinyDetector()
    p = _save(tmp_path / "c.pt", m)
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind
    st = load_checkpoint(p, expect_model="tiny")  # uses torch.load(weights_only=True)
    assert (st["epoch"], st["batch"], st["iteration"], st["stage"]) == (2, 3, 7, 1)
    m2 = TinyDetector()
    load_model_weights(m2, st["model"], p)
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    # plain pickle-free content: weights_only load of the raw file works too
    torch.load(p, weights_only=True)


def test_rng_state_round_trip():
    st = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(st)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_corrupt_checkpoint_is_clear_error(tmp_path):
    p = _save(tmp_path / "c.pt")
    data = p.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    for bad in ("trunc.pt", "junk.pt"):
        with pytest.raises(TbxError, match="cannot read checkpoint") as e:
            load_checkpoint(tmp_path / bad)
        assert bad in str(e.value)


def test_not_a_tbx_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(TbxError, match="not a tbx checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_of_another_model_is_clear_error(tmp_path):
    p = _save(tmp_path / "c.pt", OracleDetector(), name="oracle")
    with pytest.raises(TbxError, match="model 'oracle', not 'tiny'"):
        load_checkpoint(p, expect_model="tiny")
    st = load_checkpoint(p)
    with pytest.raises(TbxError, match="do not fit this model"):
        load_model_weights(TinyDetector(), st["model"], p)


def test_find_checkpoint(tmp_path):
    with pytest.raises(TbxError, match="not found"):
        find_checkpoint(tmp_path / "nope")
    with pytest.raises(TbxError, match="no checkpoint"):
        find_checkpoint(tmp_path)
    (tmp_path / "stage1").mkdir()
    _save(tmp_path / "stage1" / "final.pt")
    assert find_checkpoint(tmp_path) == tmp_path / "stage1" / "final.pt"
    (tmp_path / "stage2").mkdir()
    _save(tmp_path / "stage2" / "final.pt")
    assert find_checkpoint(tmp_path) == tmp_path / "stage2" / "final.pt"
