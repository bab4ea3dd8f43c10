"""Foundation: errors, atomic IO, typed configs, provenance, path rules, COCO round trip, views."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from tbx.config import dump_yaml, load_config, parse_overrides
from tbx.data.coco import coco_from_records, read_coco, write_coco
from tbx.data.layout import label_from_path
from tbx.data.records import Box, Record, tb_type_from_categories
from tbx.data.views import annotation_views, write_views
from tbx.errors import TbxError
from tbx.io import atomic_dir, atomic_path, atomic_write_json, output_kind
from tbx.provenance import write_provenance


# --- errors & atomic IO ------------------------------------------------------------------------
def test_error_is_one_line():
    e = TbxError("bad ratio\n'3:2'", "x.yaml:3", "write three numbers")
    assert e.one_line() == "bad ratio '3:2' [x.yaml:3] — write three numbers"


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp debris


def test_atomic_dir_all_or_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        with atomic_dir(out) as tmp:
            (tmp / "x").write_text("1")
            raise ValueError
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(out, kind="test") as tmp:
        (tmp / "x").write_text("1")
    assert (out / "x").read_text() == "1" and output_kind(out) == "test"
    with pytest.raises(FileExistsError):
        with atomic_dir(out) as tmp:
            pass
    with atomic_dir(out, overwrite=True, kind="test") as tmp:
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [".tbx-output.json", "y"]
    # overwrite replaces only tbx's own folders of the same kind, never one holding an input
    with pytest.raises(TbxError, match="holds a tbx test, not a report"):
        with atomic_dir(out, overwrite=True, kind="report"):
            pass
    with pytest.raises(TbxError, match="holds or lies inside the command's input"):
        with atomic_dir(out, overwrite=True, kind="test", inputs=[out / "y"]):
            pass
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(TbxError, match="not created by tbx"):
        with atomic_dir(user, overwrite=True):
            pass
    assert (user / "notes.txt").read_text() == "mine" and (out / "y").read_text() == "2"


# --- configs --------------------------------------------------------------------------------------
@dataclass
class _Optim:
    lr: float = 0.001
    steps: list[int] = field(default_factory=lambda: [16, 22])


@dataclass
class _Cfg:
    name: str = "m"
    seed: int = 0
    amp: str | None = None
    optim: _Optim = field(default_factory=_Optim)


def test_config_yaml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("name: tiny\noptim:\n  lr: 0.01\n")
    cfg = load_config(_Cfg, y, ["optim.steps=[1,2]", "seed=3", "optim.lr=1e-4"])
    assert cfg.name == "tiny" and cfg.seed == 3 and cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.optim.steps == [1, 2]
    assert "lr: 0.0001" in dump_yaml(cfg)


@pytest.mark.parametrize(
    "override,msg",
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'"),
        ("seed=abc", "bad value 'abc' for 'seed'"),
        ("novalue", "bad override"),
    ],
)
def test_config_errors(override, msg):
    with pytest.raises(TbxError, match=msg):
        load_config(_Cfg, None, [override])


def test_config_yaml_syntax_error_names_line(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("name: a\noptim: [\n")
    with pytest.raises(TbxError, match=r"c\.yaml:\d"):
        load_config(_Cfg, y)


def test_parse_overrides_nested():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_provenance(tmp_path):
    p = write_provenance(tmp_path, _Cfg(), seed=7)
    data = json.loads(p.read_text())
    assert data["seed"] == 7 and data["config"]["optim"]["lr"] == 0.001
    assert {"tbx", "torch", "python"} <= set(data["versions"])
    assert "git_commit" in data and "command" in data


# --- path rules (docs/dataset.md §1.3) ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "path,label,source",
    [
        ("health/h0001.png", "healthy", "tbx11k"),
        ("sick/s0001.png", "sick", "tbx11k"),
        ("tb/tb0005.png", "tb", "tbx11k"),
        ("imgs/tb/tb0005.png", "tb", "tbx11k"),
        ("extra/da+db/train/p12.png", "tb", "da"),
        ("extra/da+db/train/n11.png", "healthy", "da"),
        ("extra/da+db/val/px19.jpg", "tb", "db"),
        ("extra/da+db/val/nx3.jpg", "healthy", "db"),
        ("extra/mc+shenzhen/train/MCUCXR_0350_1.png", "tb", "montgomery"),
        ("extra/mc+shenzhen/train/CHNCXR_0004_0.png", "healthy", "shenzhen"),
    ],
)
def test_label_from_path(path, label, source):
    assert label_from_path(path) == (label, source)


def test_label_from_path_ignores_data_root_names():
    # The official code's substring search would call this TB ("tb" in the root) — we must not.
    with pytest.raises(TbxError):
        label_from_path("test/tb_study_0001.png")
    assert label_from_path("sick/tb_like_name.png")[0] == "sick"


def test_tb_type_from_categories():
    assert tb_type_from_categories([1, 1]) == "active"
    assert tb_type_from_categories([2]) == "latent"
    assert tb_type_from_categories([2, 1]) == "active+latent"
    assert tb_type_from_categories([3, 1]) == "uncertain"
    assert tb_type_from_categories([]) == "unknown"


# --- COCO and views -----------------------------------------------------------------------------
def test_read_real_train_json(shared_data):
    recs = read_coco(shared_data / "tbx11k-meta" / "TBX11K_train.json")
    assert len(recs) == 6600
    by = {}
    for r in recs:
        key = r.tb_type if r.is_tb else r.label
        by[key] = by.get(key, 0) + 1
    assert by == {
        "healthy": 3000,
        "sick": 3000,
        "active": 473,
        "latent": 103,
        "active+latent": 23,
        "unknown": 1,
    }
    assert next(r for r in recs if r.tb_type == "unknown").file_name == "tb/tb1199.png"


def test_coco_round_trip_matches_official(shared_data, tmp_path):
    src = shared_data / "tbx11k-meta" / "TBX11K_train.json"
    official = json.loads(src.read_text())
    write_coco(tmp_path / "x.json", read_coco(src))
    ours = json.loads((tmp_path / "x.json").read_text())
    assert [i["file_name"] for i in ours["images"]] == [i["file_name"] for i in official["images"]]
    assert ours["categories"] == official["categories"]
    assert len(ours["annotations"]) == len(official["annotations"])
    for a, b in zip(ours["annotations"], official["annotations"]):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-9)


def _rec(i, label, split, source="tbx11k", boxes=()):
    folder = {"healthy": "health", "sick": "sick", "tb": "tb"}[label]
    extra = f"extra/da+db/{split}/{'p' if label == 'tb' else 'n'}{i}.png"
    fn = f"{folder}/{i}.png" if source == "tbx11k" else extra
    tb_type = tb_type_from_categories(b.category for b in boxes) if label == "tb" else "none"
    return Record(i, fn, 512, 512, label, tb_type, source, None, split, list(boxes))


def test_views_names_membership_and_positional_ids(tmp_path):
    box = Box(10, 10, 20, 20, 1)
    recs = [
        _rec(1, "tb", "train", boxes=[box]),
        _rec(2, "healthy", "train"),
        _rec(3, "tb", "val"),
        _rec(4, "sick", "test"),
        _rec(5, "tb", "test", boxes=[box]),
        _rec(6, "healthy", "val", "da"),
        _rec(7, "tb", "test", "da"),
    ]
    views = annotation_views(recs)
    ids = {k: [r.image_id for r in v] for k, v in views.items()}
    assert ids["TBX11K_train"] == [1, 2]
    assert ids["TBX11K_trainval"] == [1, 3, 2]  # by class folder (tb, health), not train then val
    assert ids["TBX11K_trainval_only_tb"] == [1]  # record 3 is TB without box
    assert ids["all_trainval"] == [1, 3, 2, 6]
    assert ids["all_test"] == [5, 4, 7]
    assert "TBX11K_val_only_tb" not in views  # empty views are omitted
    write_views(tmp_path, recs)
    lst = (tmp_path / "lists" / "all_test.txt").read_text().split()
    assert lst == ["tb/5.png", "sick/4.png", "extra/da+db/test/p7.png"]
    coco = json.loads((tmp_path / "annotations/json/all_test.json").read_text())
    assert [i["id"] for i in coco["images"]] == [1, 2, 3]
    assert [a["image_id"] for a in coco["annotations"]] == [1]
    assert coco_from_records([])["images"] == []


# --- CLI error contract -------------------------------------------------------------------------
def test_cli_user_error_is_one_line_exit_2(cli, tmp_path):
    from tbx.cli import main as main_mod

    @main_mod.app.command("_boom", hidden=True)
    def _boom() -> None:
        raise TbxError("thing is broken", tmp_path / "f.json", "fix it")

    code, out, err = cli("_boom")
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and "thing is broken" in lines[0] and "fix it" in lines[0]
    assert "Traceback" not in err


def test_cli_unknown_command_nonzero(cli):
    code, _, _ = cli("no-such-command")
    assert code != 0
