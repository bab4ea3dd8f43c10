"""The training engine with a tiny fixture Detector: exact resume, stage-2 freezing, NaN guard,
LR schedule, run-directory contents."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from engine_fixtures import TinyDetector, make_layout, oracle_builder, tiny_builder

from tbx.engine.checkpoint import load_checkpoint
from tbx.engine.schedule import (
    DataConfig,
    StageConfig,
    TrainConfig,
    build_optimizer,
    load_train_config,
    lr_factor,
)
from tbx.engine.trainer import train
from tbx.errors import TbxError
from tbx.models.config import ModelConfig


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_layout(tmp_path_factory.mktemp("layout"), n_tb=8, n_healthy=4, n_sick=4, size=48)


def _cfg(root, workers=0, **kw) -> TrainConfig:
    cfg = TrainConfig(
        model_name="tiny",
        model=ModelConfig(input_size=48),
        data=DataConfig(root=str(root), workers=workers, prefetch_factor=2),
        stage1=StageConfig(epochs=2, batch_size=4, lr=0.05, warmup_iters=2, lr_steps=[1]),
        stage2=StageConfig(
            epochs=2, batch_size=4, optimizer="adamw", lr=0.01, warmup_iters=1, lr_steps=[1], grad_clip=1.0
        ),
        log_every=1,
        ckpt_every_iters=1,
        seed=5,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


class Kill(Exception):
    pass


def _assert_same_weights(a, b):
    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("kill_at,workers", [((1, 3), 0), ((2, 5), 2)])
def test_resume_is_exact(root, tmp_path, kill_at, workers):
    straight = train(_cfg(root, workers), tmp_path / "a", model_builder=tiny_builder, progress=False)

    def killer(info):
        if (info["stage"], info["iteration"]) == kill_at:
            raise Kill

    with pytest.raises(Kill):
        train(
            _cfg(root, workers), tmp_path / "b", model_builder=tiny_builder, callback=killer, progress=False
        )
    st = load_checkpoint(tmp_path / "b" / f"stage{kill_at[0]}" / "last.pt")
    assert st["iteration"] == kill_at[1]
    resumed = train(
        _cfg(root, workers), tmp_path / "b", resume=True, model_builder=tiny_builder, progress=False
    )
    for s in (1, 2):
        _assert_same_weights(straight.final[s], resumed.final[s])

    # metrics.jsonl of the resumed run has each iteration once, like the straight run
    def iters(run):
        return [
            (r["stage"], r["iteration"])
            for r in map(json.loads, (run / "metrics.jsonl").open())
            if r["kind"] == "train"
        ]

    assert iters(tmp_path / "b") == iters(tmp_path / "a")


def test_ema_weights_match_an_independent_average_and_resume_exactly(root, tmp_path):
    """stage1.ema_decay: final.pt holds d·ema + (1 − d)·w over every step (the first step copies),
    parameters and BN statistics alike; last.pt keeps the trained weights; resume stays exact."""
    decay = 0.7

    def cfg():
        c = _cfg(root)
        c.stage1.ema_decay = decay
        c.stage2.epochs = 0
        return c

    built, history = [], []

    def builder(c):
        built.append(TinyDetector())
        return built[-1]

    def record(info):
        history.append({k: v.detach().clone().float() for k, v in built[-1].state_dict().items()})

    res = train(cfg(), tmp_path / "a", model_builder=builder, callback=record, progress=False)
    expected = {}
    for w in history:  # independent EMA in float64
        for k, v in w.items():
            expected[k] = v.double() if k not in expected else decay * expected[k] + (1 - decay) * v.double()
    final = load_checkpoint(res.final[1])["model"]
    last = load_checkpoint(tmp_path / "a" / "stage1" / "last.pt")
    assert len(history) == last["iteration"] == 4
    for k, v in final.items():
        if v.is_floating_point():
            assert torch.allclose(v.double(), expected[k], atol=1e-6), k
            assert torch.equal(last["model"][k], history[-1][k].to(v.dtype)), k
    assert not torch.equal(final["neck.weight"], last["model"]["neck.weight"])

    def killer(info):
        if info["iteration"] == 3:
            raise Kill

    with pytest.raises(Kill):
        train(cfg(), tmp_path / "b", model_builder=tiny_builder, callback=killer, progress=False)
    resumed = train(cfg(), tmp_path / "b", resume=True, model_builder=tiny_builder, progress=False)
    _assert_same_weights(res.final[1], resumed.final[1])
    # a checkpoint without the average cannot resume a run that keeps one
    with pytest.raises(Kill):
        train(_cfg(root), tmp_path / "c", model_builder=tiny_builder, callback=killer, progress=False)
    with pytest.raises(TbxError, match="'stage1.ema_decay' differs"):  # the run's record is the truth
        train(cfg(), tmp_path / "c", resume=True, model_builder=tiny_builder, progress=False)


def test_stage2_freezes_everything_but_cls_head(root, tmp_path):
    res = train(_cfg(root), tmp_path / "r", model_builder=tiny_builder, progress=False)
    s1, s2 = load_checkpoint(res.final[1])["model"], load_checkpoint(res.final[2])["model"]
    changed = {k for k in s1 if not torch.equal(s1[k], s2[k])}
    assert changed and all(k.startswith("cls_head.") for k in changed)
    assert {k for k in s1 if k.startswith("cls_head.") and "weight" in k} <= changed
    # stage-2 model: gradients reach the head only, frozen BN stays in eval mode
    m = TinyDetector()
    m.set_stage(2)
    m.train()
    opt = build_optimizer(m, _cfg(root).stage2)
    head = {id(p) for p in m.cls_head.parameters()}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == head
    x = torch.randn(2, 3, 32, 32)
    t = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "cls_label": torch.tensor(c)}
        for c in (0, 2)
    ]
    sum(m(x, t, [(32, 32)] * 2).values()).backward()
    for name, p in m.named_parameters():
        assert (p.grad is not None) == name.startswith("cls_head."), name
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and not any(b.training for b in bns)


def test_stage1_trains_detector_and_keeps_bn_stats(root, tmp_path):
    cfg = _cfg(root)
    cfg.stage2.epochs = 0
    res = train(cfg, tmp_path / "r", stage=1, model_builder=tiny_builder, progress=False)
    final = load_checkpoint(res.final[1])["model"]
    torch.manual_seed(cfg.seed + 1000)  # the trainer seeds this before building the model
    assert not torch.equal(TinyDetector().state_dict()["box_reg.weight"], final["box_reg.weight"])
    # backbone BN stays in eval mode (docs/models.md §2.1): running statistics keep their initial values
    assert torch.equal(final["backbone.1.running_mean"], torch.zeros(8))
    assert torch.equal(final["backbone.1.running_var"], torch.ones(8))
    assert "cls_head.4.weight" in final


def test_nan_loss_stops_with_clear_error(root, tmp_path):
    with pytest.raises(TbxError, match=r"non-finite loss at stage 1, epoch 2, iteration 4") as e:
        train(_cfg(root), tmp_path / "r", model_builder=lambda c: TinyDetector(nan_after=3), progress=False)
    assert "last good checkpoint" in str(e.value)
    assert load_checkpoint(tmp_path / "r" / "stage1" / "last.pt")["iteration"] == 3


def test_run_directory_contents(root, tmp_path):
    out = tmp_path / "r"
    train(_cfg(root), out, model_builder=tiny_builder, progress=False)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model_name"] == "tiny" and cfg["stage1"]["lr"] == 0.05
    assert load_train_config(None, out / "config.yaml").stage2.optimizer == "adamw"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["seed"] == 5 and "torch" in prov["versions"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    tr = [r for r in rows if r["kind"] == "train"]
    assert {"loss", "loss_box", "loss_obj", "lr", "img_s", "data_wait", "peak_mem_mb"} <= tr[0].keys()
    assert tr[0]["lr"] == pytest.approx(0.05 * lr_factor(0, 2, _cfg(root).stage1))
    assert "loss_img_cls" in [r for r in tr if r["stage"] == 2][0]
    for s in (1, 2):
        assert (out / f"stage{s}" / "final.pt").is_file() and (out / f"stage{s}" / "last.pt").is_file()
    assert not list(out.rglob("*.tmp"))


def test_stage2_needs_stage1_weights_and_same_model(root, tmp_path):
    with pytest.raises(TbxError, match="stage-1 weights"):
        train(_cfg(root), tmp_path / "r", stage=2, model_builder=tiny_builder, progress=False)
    train(_cfg(root), tmp_path / "r", stage=1, model_builder=tiny_builder, progress=False)
    cfg = _cfg(root, model_name="oracle")
    with pytest.raises(TbxError, match="model 'tiny', not 'oracle'"):
        train(cfg, tmp_path / "r", stage=2, resume=True, model_builder=oracle_builder, progress=False)
    with pytest.raises(TbxError, match="a run already exists"):  # a run is continued only with resume
        train(_cfg(root), tmp_path / "r", stage=2, model_builder=tiny_builder, progress=False)
    with pytest.raises(TbxError, match="nothing to resume"):
        train(_cfg(root), tmp_path / "empty", resume=True, model_builder=tiny_builder, progress=False)


def test_stage_loss_weights_resolve_and_are_checked(root, tmp_path):
    sc = StageConfig()
    assert sc.loss_weights(1) == (1.0, 0.0) and sc.loss_weights(2) == (0.0, 1.0)  # docs/models.md §2.7
    assert StageConfig(image_cls_weight=0.5).loss_weights(1) == (1.0, 0.5)
    zero, joint = _cfg(root), _cfg(root)
    zero.stage1.detection_weight = 0.0
    joint.stage1.image_cls_weight = 1.0  # the test detector has no joint losses
    with pytest.raises(TbxError, match="not both 0"):
        train(zero, tmp_path / "a", stage=1, model_builder=tiny_builder, progress=False)
    with pytest.raises(TbxError, match=r"paper's loss weights only"):
        train(joint, tmp_path / "b", stage=1, model_builder=tiny_builder, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_lr_schedule_matches_paper_formula():
    sc = StageConfig()  # docs/models.md §2.7: warm-up 500 from 0.001, ×0.1 at epochs 16 and 22
    ipe = 100
    assert lr_factor(0, ipe, sc) == pytest.approx(0.001)
    assert lr_factor(250, ipe, sc) == pytest.approx(1 - 0.5 * 0.999)
    assert lr_factor(500, ipe, sc) == 1.0
    assert lr_factor(16 * ipe - 1, ipe, sc) == 1.0
    assert lr_factor(16 * ipe, ipe, sc) == pytest.approx(0.1)
    assert lr_factor(22 * ipe, ipe, sc) == pytest.approx(0.01)


def test_presets_resolve():
    c = load_train_config("symformer")
    assert c.model_name == "symformer_retinanet" and c.model.backbone == "resnet50"
    assert (c.stage1.epochs, c.stage1.lr, c.stage1.lr_steps, c.stage1.batch_size) == (24, 0.001, [16, 22], 8)
    assert (c.stage2.epochs, c.stage2.lr_steps) == (12, [8, 11])
    assert c.data.stage1_ann.endswith("TBX11K_trainval_only_tb.json")
    d = load_train_config("deformable_detr")
    assert (
        d.stage1.optimizer,
        d.stage1.lr,
        d.stage1.backbone_lr_mult,
        d.stage1.grad_clip,
        d.stage1.epochs,
        d.stage1.lr_steps,
    ) == ("adamw", 2e-4, 0.1, 0.1, 50, [40])
    assert load_train_config("symformer_deformable_detr").stage1.optimizer == "adamw"
    t = load_train_config("retinanet", "tiny", ["stage1.epochs=3"])
    assert t.model_name == "retinanet" and t.model.backbone == "resnet18" and t.stage1.epochs == 3
    with pytest.raises(TbxError, match="unknown config key"):
        load_train_config("symformer", "tiny", ["stage1.nope=1"])
    with pytest.raises(TbxError, match="no config file or preset"):
        load_train_config("symformer", "no_such_preset")


def test_validation_selects_best_checkpoint(root, tmp_path):
    cfg = _cfg(root, val_ann="annotations/json/all_trainval.json", val_every=1, ckpt_every_iters=0)
    res = train(cfg, tmp_path / "r", model_builder=tiny_builder, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["kind"] == "val"]
    assert [(r["stage"], r["epoch"]) for r in val] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(r["metric"] == ("cat_agnostic_ap50" if r["stage"] == 1 else "accuracy") for r in val)
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["cat_agnostic_ap50"] <= 1 for r in val)
    for s in (1, 2):
        best_epoch = max((r for r in val if r["stage"] == s), key=lambda r: r[r["metric"]])["epoch"]
        assert load_checkpoint(res.best[s])["epoch"] == best_epoch  # saved after that epoch
        assert (tmp_path / "r" / f"stage{s}" / "val" / f"epoch_{best_epoch:03d}" / "cls_result.txt").is_file()
