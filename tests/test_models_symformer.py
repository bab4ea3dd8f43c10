"""RetinaNet / SymFormer-RetinaNet (docs/models.md §2): parameter budget, MACs, anchors, assignment, losses,
the Detector contract (both stages), overfitting, backbone weights and the `tbx models` commands."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from tbx.engine.schedule import load_train_config
from tbx.errors import TbxError
from tbx.models import backbone as backbone_mod
from tbx.models.backbone import ResNetBackbone, imagenet_weights_file, load_backbone_weights
from tbx.models.base import CLS_LOSS_WEIGHTS
from tbx.models.cls_head import ClsHead
from tbx.models.config import ModelConfig, RetinaNetConfig, SymFormerConfig
from tbx.models.info import count_macs, count_params
from tbx.models.registry import MODELS, build
from tbx.models.retinanet import AnchorGenerator, RetinaNet, max_iou_assign

# docs/models.md §2.5 component counts (ResNet-50, 2 box classes)
R50_COMPONENTS = {
    "backbone": 23_508_032,
    "fpn": 7_997_440,
    "sym_attention": 682_848,
    "spe": 20_280,
    "head": 4_845_110,
    "cls_head": 12_849_667,
}


def _meta_model(name: str, **kw) -> RetinaNet:
    with torch.device("meta"):  # no weight init, no memory: parameter shapes only
        return build(name, ModelConfig(pretrained="none", **kw))


def test_symformer_retinanet_r50_parameter_budget():
    m = _meta_model("symformer_retinanet")
    counts = {k: count_params(v) for k, v in m.components().items()}
    assert counts == R50_COMPONENTS
    assert count_params(m) == 49_903_377
    assert count_params(m) + m.dead_params == 50_033_789


def test_retinanet_r50_is_symformer_without_sas():
    m = _meta_model("retinanet")
    assert m.sas is None and getattr(m, "dead_params", 0) == 0
    assert count_params(m) == 49_903_377 - 682_848 - 20_280


@pytest.mark.parametrize(
    "pos,att",
    [
        ("sine", "deformable"),
        ("spe_no_stn", "symmetric"),
        ("spe_left_to_right", "symmetric"),
        ("none", "deformable"),
    ],
)
def test_ablation_switches_reach_the_sas_block(pos, att):
    m = _meta_model(
        "symformer_retinanet", backbone="resnet18", symformer=SymFormerConfig(pos_encoding=pos, attention=att)
    )
    spe = m.sas.spe
    assert spe.mode == {"sine": "sine", "none": "none"}.get(pos, "spe")
    assert (spe.stn is not None) == (pos in ("spe", "spe_left_to_right"))
    assert spe.direction == ("left_to_right" if pos == "spe_left_to_right" else "right_to_left")
    assert m.sas.encoder.self_attn.mirror is (att == "symmetric")


def test_cls_head_macs_match_hand_count():
    """mmcv-style counting (conv MACs + bias, ReLU, pooling) of the docs/models.md §2.6 head at 16×16."""
    head = ClsHead(2048, 512, 3)
    macs, functional = count_macs(head, torch.randn(1, 2048, 16, 16))
    e18, e9 = 18 * 18 * 512, 9 * 9 * 512
    expected = (
        e18 * 2048
        + e18
        + e18  # 1×1 conv, pad 1 → 18×18 (+bias) + ReLU
        + 3 * (e18 * 512 * 9 + e18 + e18)  # 3 × 3×3 conv + ReLU
        + e18  # max pool (input elements)
        + 2 * (e9 * 512 * 9 + e9 + e9)  # 2 × 3×3 conv at 9×9 + ReLU
        + e9  # global average pool
        + 3 * 512
        + 3
    )  # 1×1 classifier
    assert sum(macs.values()) == expected and functional == 0


def test_cls_head_init_paper_default_and_kaiming():
    """``paper`` is nn.Conv2d's own initialisation (same draws, same order); ``kaiming`` draws
    N(0, 2/fan_in) weights and zero biases, and keeps the signal's scale through the stack where
    torch's default shrinks it layer after layer (the tiny preset's stage-II failure mode)."""
    torch.manual_seed(0)
    head = ClsHead(256, 128, 3)
    torch.manual_seed(0)
    shapes = [(256, 128, 1)] + [(128, 128, 3)] * 5 + [(128, 3, 1)]
    ref = [torch.nn.Conv2d(i, o, k) for i, o, k in shapes]
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(ref)
    for c, r in zip(convs, ref):
        assert torch.equal(c.weight, r.weight) and torch.equal(c.bias, r.bias)

    torch.manual_seed(1)
    head_k = ClsHead(256, 128, 3, init="kaiming")
    for c in (m for m in head_k.modules() if isinstance(m, torch.nn.Conv2d)):
        fan_in = c.weight[0].numel()
        if c.weight.numel() >= 10_000:  # enough draws for a tight estimate
            assert c.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.03)
        assert c.weight.mean().abs().item() < 0.1 * math.sqrt(2 / fan_in)
        assert torch.count_nonzero(c.bias) == 0

    x = torch.relu(torch.randn(64, 256, 8, 8, generator=torch.Generator().manual_seed(2)))

    def last_relu_rms(h: ClsHead) -> float:
        with torch.no_grad():
            return h.features(x).pow(2).mean().sqrt().item()

    rms_in = x.pow(2).mean().sqrt().item()
    # He init: E[y²] = E[x²] through every conv + ReLU (zero bias) — the rms stays within ±35 %
    assert 0.65 < last_relu_rms(head_k) / rms_in < 1.35
    # torch's default: Var(w) = 1/(3·fan_in), E[y²] ≈ E[x²]/6 per layer (biases keep a floor)
    assert last_relu_rms(head) / rms_in < 0.05
    with pytest.raises(ValueError, match="kaiming"):
        ClsHead(256, 128, 3, init="xavier")

    cfg = ModelConfig(
        backbone="resnet18",
        pretrained="none",
        cls_channels=128,
        cls_head_init="kaiming",
        retinanet=RetinaNetConfig(width=64),
    )
    m = build("symformer_retinanet", cfg)
    w = m.cls_head.features[2].weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / w[0].numel()), rel=0.03)


def test_box_head_init_paper_and_kaiming():
    """``head_init``: the towers' convs N(0, 2/fan_in) instead of N(0, 0.01²); the output convs keep
    N(0, 0.01²), zero biases and the focal-loss prior on the class bias; nothing else changes."""
    models = {}
    for init in ("paper", "kaiming"):
        torch.manual_seed(3)
        models[init] = build(
            "symformer_retinanet",
            ModelConfig(
                backbone="resnet18",
                pretrained="none",
                cls_channels=128,
                retinanet=RetinaNetConfig(width=64, head_init=init),
            ),
        )
    for init, m in models.items():
        for conv in [c for c in m.head.cls_convs if isinstance(c, torch.nn.Conv2d)] + [
            c for c in m.head.reg_convs if isinstance(c, torch.nn.Conv2d)
        ]:
            std = math.sqrt(2 / (64 * 9)) if init == "kaiming" else 0.01
            assert conv.weight.std().item() == pytest.approx(std, rel=0.03)
            assert torch.count_nonzero(conv.bias) == 0
        for conv in (m.head.retina_cls, m.head.retina_reg):
            assert conv.weight.std().item() == pytest.approx(0.01, rel=0.05)
        assert torch.allclose(m.head.retina_cls.bias, torch.full((18,), -math.log(99)))
    # same number of draws: every other parameter is identical
    sd_p, sd_k = models["paper"].state_dict(), models["kaiming"].state_dict()
    differ = {k for k in sd_p if not torch.equal(sd_p[k], sd_k[k])}
    assert differ == {f"head.{t}.{i}.weight" for t in ("cls_convs", "reg_convs") for i in (0, 2, 4, 6)}
    with pytest.raises(TbxError, match="kaiming"):
        load_train_config(None, "tiny", ["model.retinanet.head_init=xavier"])


def test_symformer_retinanet_r50_macs_at_512():
    """docs/models.md §2.5: 59.14 GMACs (mmcv counting) at 512×512, classifier included (counted on the
    meta device: shapes only, no compute)."""
    from tbx.models.info import model_info

    info = model_info("symformer_retinanet", ModelConfig(pretrained="none"), 512, latency_runs=0)
    assert info["params_live"] == 49_903_377 and info["params_paper"] == 50_033_789
    assert abs(info["gmacs"] - 59.14) / 59.14 < 0.03
    comps = info["components"]
    assert set(comps) == set(R50_COMPONENTS)
    # the SAS block is a small share of the cost (SymAttention layer: ~3.7 of ~59 GMACs)
    assert comps["sym_attention"]["gmacs"] < 0.08 * info["gmacs"]
    base = model_info("retinanet", ModelConfig(pretrained="none"), 512, latency_runs=0)
    sas_gmacs = comps["sym_attention"]["gmacs"] + comps["spe"]["gmacs"]
    assert base["gmacs"] == pytest.approx(info["gmacs"] - sas_gmacs)


# ---------------------------------------------------------------------------------------------
# anchors, assignment, coding


def test_anchors_follow_mmdet_v2_conventions():
    gen = AnchorGenerator()
    a = gen([(4, 5), (2, 3), (1, 2), (1, 1), (1, 1)], torch.device("cpu"))
    assert [x.shape[0] for x in a] == [4 * 5 * 9, 2 * 3 * 9, 1 * 2 * 9, 9, 9]
    p3 = a[0].view(4, 5, 9, 4)
    # ratio-major, scale-minor; ratio = h/w
    for r_i, ratio in enumerate((0.5, 1.0, 2.0)):
        for k in range(3):
            size = 8 * 4 * 2 ** (k / 3)
            w, h = size / math.sqrt(ratio), size * math.sqrt(ratio)
            expected = torch.tensor([-w / 2, -h / 2, w / 2, h / 2])
            torch.testing.assert_close(p3[0, 0, r_i * 3 + k], expected)
            torch.testing.assert_close(p3[1, 2, r_i * 3 + k], expected + torch.tensor([16.0, 8, 16, 8]))
    # P7 (stride 128), ratio 1, smallest scale: 4·128 = 512 square
    torch.testing.assert_close(a[4][3], torch.tensor([-256.0, -256, 256, 256]))


def test_max_iou_assigner_hand_example():
    gt = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110]])
    anchors = torch.tensor(
        [
            [0.0, 0, 10, 10],  # IoU 1 → gt 1
            [0, 0, 10, 20],  # IoU .5 → gt 1 (pos ≥ .5)
            [0, 0, 10, 24],  # IoU .417 → ignore
            [0, 0, 10, 30],  # IoU .333 → background
            [50, 50, 60, 60],  # 0 → background
            [100, 100, 110, 125],
        ]
    )  # IoU .4 with gt 2: ignore band, but its best → gt 2
    assert max_iou_assign(gt, anchors).tolist() == [1, 1, -1, 0, 0, 2]
    # two GTs share the same best anchor: the later one takes it (mmdetection's loop order)
    gt2 = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11]])
    anchors2 = torch.tensor([[0.0, 0, 10, 30], [40, 40, 50, 50]])
    assert max_iou_assign(gt2, anchors2).tolist() == [2, 0]
    assert max_iou_assign(torch.zeros(0, 4), anchors2).tolist() == [0, 0]


def test_box_coder_uses_unit_stds():
    m = _meta_model("retinanet", backbone="resnet18")
    anchor = torch.tensor([[0.0, 0, 20, 10]])
    gt = torch.tensor([[4.0, 2, 28, 22]])
    d = m.box_coder.encode_single(gt, anchor)
    expected = torch.tensor([[(16 - 10) / 20, (12 - 5) / 10, math.log(24 / 20), math.log(20 / 10)]])
    torch.testing.assert_close(d, expected)
    torch.testing.assert_close(m.box_coder.decode_single(d, anchor), gt)


def test_postprocess_classwise_nms_and_threshold():
    m = _meta_model("retinanet", backbone="resnet18")
    anchors = [torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]])]
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    logits = [torch.tensor([[logit(0.9), -9.0], [logit(0.8), -9.0], [-9.0, logit(0.7)], [logit(0.04), -9.0]])]
    boxes, scores, labels = m.postprocess(logits, [torch.zeros(4, 4)], anchors, (40, 40))
    # B suppressed by A (same class, IoU .82); C kept (other class); D below 0.05; D's box clipped
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]]))
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7]))
    assert labels.tolist() == [1, 2]


# ---------------------------------------------------------------------------------------------
# the Detector contract on small CPU models


@pytest.fixture(scope="module")
def small_models():
    torch.manual_seed(0)
    return {
        name: build(name, ModelConfig(backbone="resnet18", pretrained="none"))
        for name in ("retinanet", "symformer_retinanet")
    }


def _batch(size: int = 128):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, size, size, generator=g)
    targets = [
        {
            "boxes": torch.tensor([[10.0, 20, 60, 90], [70, 30, 120, 100]]),
            "labels": torch.tensor([1, 2]),
            "cls_label": torch.tensor(2),
        },
        {
            "boxes": torch.tensor([[30.0, 30, 90, 70]]),
            "labels": torch.tensor([1]),
            "cls_label": torch.tensor(2),
        },
    ]
    return images, targets


@pytest.mark.parametrize("name", ["retinanet", "symformer_retinanet"])
def test_stage1_forward_backward(small_models, name):
    model = copy.deepcopy(small_models[name])
    model.set_stage(1)
    model.train()
    assert all(
        not m.training
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d) and n.startswith("backbone")
    )
    images, targets = _batch(160)
    losses = model(images, targets, [(160, 160), (128, 150)])
    assert set(losses) == {"loss_cls", "loss_box"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for part in ("backbone", "fpn", "head") + (("sas",) if name.startswith("symformer") else ()):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(part + ".")]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
    assert all(p.grad is None for p in model.cls_head.parameters())  # no loss on it in stage 1


@pytest.mark.parametrize("name", ["retinanet", "symformer_retinanet"])
def test_predict_contract(small_models, name):
    model = copy.deepcopy(small_models[name]).eval()
    with torch.no_grad():
        model.head.retina_cls.bias.zero_()  # scores ≈ 0.5: many boxes survive the threshold
    images, _ = _batch(128)
    sizes = [(128, 128), (100, 90)]
    with torch.inference_mode():
        preds = model.predict(images, sizes)
    assert len(preds) == 2
    for p, (h, w) in zip(preds, sizes):
        assert p.probs.shape == (3,)
        torch.testing.assert_close(p.probs.sum(), torch.tensor(1.0))
        k = p.boxes.shape[0]
        assert 0 < k <= 100 and p.scores.shape == (k,) and p.labels.shape == (k,)
        assert set(p.labels.tolist()) <= {1, 2}
        assert (p.scores >= 0.05).all() and (p.scores[:-1] >= p.scores[1:]).all()
        assert (p.boxes[:, 0] >= 0).all() and (p.boxes[:, 1] >= 0).all()
        assert (p.boxes[:, 2] <= w).all() and (p.boxes[:, 3] <= h).all()
        assert (p.boxes[:, 2] >= p.boxes[:, 0]).all() and (p.boxes[:, 3] >= p.boxes[:, 1]).all()


@pytest.mark.parametrize("name", ["retinanet", "symformer_retinanet"])
def test_stage2_trains_only_the_cls_head(small_models, name):
    model = copy.deepcopy(small_models[name])
    model.set_stage(2)
    model.train()
    images, targets = _batch(128)
    targets[1]["cls_label"] = torch.tensor(0)
    losses = model(images, targets)
    assert set(losses) == {"loss_img_cls"}
    losses["loss_img_cls"].backward()
    for n, p in model.named_parameters():
        if n.startswith("cls_head."):
            assert p.grad is not None and p.grad.abs().sum() > 0
        else:
            assert p.grad is None, n
    # the value is the class-weighted cross-entropy (docs/models.md §2.6) of the head on C5 (all in eval mode)
    with torch.no_grad():
        logp = F.log_softmax(model.cls_head(model.backbone(images)[-1]), -1)
    w = torch.tensor(CLS_LOSS_WEIGHTS)
    y = torch.tensor([2, 0])
    expected = -(w[y] * logp[torch.arange(2), y]).sum() / w[y].sum()
    torch.testing.assert_close(losses["loss_img_cls"].detach(), expected)


def test_symformer_overfits_a_tiny_batch(small_models):
    """12 Adam steps on 2 synthetic 64-px images: the detection loss must fall clearly.
    (Backbone frozen and dropout off to keep it fast and deterministic on a loaded CPU.)"""
    torch.manual_seed(0)
    model = copy.deepcopy(small_models["symformer_retinanet"])
    model.set_stage(1)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 64, 64, generator=g)
    targets = [
        {
            "boxes": torch.tensor([[8.0, 10, 40, 44]]),
            "labels": torch.tensor([1]),
            "cls_label": torch.tensor(2),
        },
        {
            "boxes": torch.tensor([[20.0, 4, 60, 30]]),
            "labels": torch.tensor([2]),
            "cls_label": torch.tensor(2),
        },
    ]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    history = []
    for _ in range(12):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    last = history[-3:]
    assert min(last) < 0.5 * history[0] and sum(last) / 3 < 0.75 * history[0], history


# ---------------------------------------------------------------------------------------------
# backbone weights


def test_pretrained_path_loads_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(5)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = ResNetBackbone("resnet18")
    load_backbone_weights(bb, str(path))
    ref_state = ref.state_dict()
    for k, v in bb.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    # a tbx checkpoint: the model's backbone.* entries
    ckpt = tmp_path / "ckpt.pt"
    torch.save(
        {
            "model": {
                **{f"backbone.{k}": v for k, v in ref_state.items() if not k.startswith("fc.")},
                "fpn.p6.weight": torch.zeros(1),
            },
            "epoch": 3,
        },
        ckpt,
    )
    bb2 = ResNetBackbone("resnet18")
    load_backbone_weights(bb2, ckpt)
    assert all(torch.equal(v, ref_state[k]) for k, v in bb2.state_dict().items())
    # wrong depth / missing file → clear errors
    with pytest.raises(TbxError, match="do not fit resnet34"):
        load_backbone_weights(ResNetBackbone("resnet34"), str(path))
    with pytest.raises(TbxError, match="not found"):
        load_backbone_weights(bb, str(tmp_path / "nope.pth"))


def test_imagenet_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url, dst):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(backbone_mod, "_download", no_network)
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_weights_file("resnet18") == expected
    with pytest.raises(TbxError) as err:
        load_backbone_weights(ResNetBackbone("resnet18"), "imagenet")
    assert "resnet18-f37072fd.pth" in str(err.value) and str(expected.parent) in str(err.value)
    # once the file is where torchvision expects it, it loads without any download
    expected.parent.mkdir(parents=True)
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), expected)
    bb = ResNetBackbone("resnet18")
    load_backbone_weights(bb, "imagenet")
    assert torch.equal(bb.conv1.weight, ref.conv1.weight)


# ---------------------------------------------------------------------------------------------
# registry and CLI


def test_registry():
    assert {"symformer_retinanet", "retinanet"} <= set(MODELS)
    with pytest.raises(TbxError, match="unknown model"):
        build("yolo", ModelConfig())
    with pytest.raises(TbxError, match="unknown backbone"):
        _meta_model("retinanet", backbone="resnet12")


def test_cli_models_list_and_info(cli):
    code, out, _ = cli("models", "list")
    assert code == 0 and "symformer_retinanet" in out and "retinanet" in out
    code, out, _ = cli(
        "models", "info", "retinanet", "--backbone", "resnet18", "--input", "128", "--runs", "1", "--json"
    )
    assert code == 0
    res = json.loads(out)
    # hand counts: torchvision resnet18 w/o fc; FPN on 128/256/512 ch; head; cls head on 512 ch
    comps = {"backbone": 11_689_512 - 513_000, "fpn": 3_770_368, "head": 4_845_110, "cls_head": 12_063_235}
    assert {k: v["params"] for k, v in res["components"].items()} == comps
    assert res["params_live"] == res["params_paper"] == sum(comps.values())
    assert res["gmacs"] > 0 and res["latency_ms"] > 0
    code, _, err = cli("models", "info", "nope")
    assert code == 2 and "unknown model" in err


def test_norm_eval_switch_for_from_scratch_presets():
    """docs/models.md §2.1 keeps backbone BN in eval; `model.norm_eval: false` lets it train (from
    scratch)."""
    import torch.nn as nn

    for norm_eval in (True, False):
        m = build(
            "retinanet",
            ModelConfig(
                backbone="resnet18",
                pretrained="none",
                cls_channels=32,
                norm_eval=norm_eval,
                retinanet=RetinaNetConfig(width=32),
            ),
        )
        m.set_stage(1)
        m.train()
        bns = [
            mod
            for name, mod in m.named_modules()
            if name.startswith("backbone") and isinstance(mod, nn.BatchNorm2d)
        ]
        assert bns and all(bn.training == (not norm_eval) for bn in bns)
        m.set_stage(2)
        m.train()
        assert not any(bn.training for bn in bns)  # stage 2: everything but the head is frozen


def test_stage2_trainable_prefixes():
    """Paper: stage 2 trains the cls head only; a from-scratch preset may also train the backbone."""
    m = build(
        "symformer_retinanet",
        ModelConfig(
            backbone="resnet18",
            pretrained="none",
            cls_channels=32,
            norm_eval=False,
            retinanet=RetinaNetConfig(width=32),
        ),
    )
    m.set_stage(2)
    assert {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad} == {"cls_head"}
    m.set_stage(2, ("cls_head", "backbone"))
    m.train()
    trainable = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"cls_head", "backbone"}
    assert m.backbone.training and m.cls_head.training
    assert not m.fpn.training and not m.sas.training and not m.head.training
    # the stage-2 forward really back-propagates into a trainable backbone
    x = torch.randn(2, 3, 64, 64)
    loss = m(
        x,
        [
            {
                "boxes": torch.zeros(0, 4),
                "labels": torch.zeros(0, dtype=torch.long),
                "cls_label": torch.tensor(c),
            }
            for c in (0, 2)
        ],
        [(64, 64)] * 2,
    )["loss_img_cls"]
    loss.backward()
    assert all(p.grad is not None for p in m.backbone.parameters())
    assert all(p.grad is None for p in m.fpn.parameters())
    # a part of the backbone: gradients reach exactly that part
    m.zero_grad(set_to_none=True)
    m.set_stage(2, ("cls_head", "backbone.layer4"))
    m.train()
    loss = m(
        x,
        [
            {
                "boxes": torch.zeros(0, 4),
                "labels": torch.zeros(0, dtype=torch.long),
                "cls_label": torch.tensor(c),
            }
            for c in (0, 2)
        ],
        [(64, 64)] * 2,
    )["loss_img_cls"]
    loss.backward()
    got = {n for n, p in m.named_parameters() if p.grad is not None}
    assert got and all(n.startswith(("cls_head.", "backbone.layer4.")) for n in got)
    assert any(n.startswith("backbone.layer4.") for n in got)
    assert m.backbone.layer4.training and not m.backbone.layer3.training


def test_anchor_scale_scales_the_anchors():
    """docs/models.md §2.4 anchors are 4·2^(k/3)·stride; anchor_scale replaces the 4 (CPU presets only)."""
    widths = []
    for scale in (4.0, 1.0):
        m = build(
            "retinanet",
            ModelConfig(
                backbone="resnet18",
                pretrained="none",
                cls_channels=32,
                retinanet=RetinaNetConfig(width=32, anchor_scale=scale),
            ),
        )
        p3 = m.anchor_generator.base_anchors[0]  # stride 8, (9, 4)
        widths.append(sorted(float(w) for w in (p3[:, 2] - p3[:, 0])))
    assert widths[0] == pytest.approx([4 * w for w in widths[1]])
    square = [8 * 4 * 2 ** (k / 3) for k in range(3)]  # ratio 1 anchors at stride 8, docs/models.md §2.4
    assert all(any(abs(w - s) < 1e-3 for w in widths[0]) for s in square)


def test_joint_loss_weights(small_models):
    """StageConfig loss weights: stage 1 may add weight × the docs/models.md §2.6 weighted cross-entropy to
    the detector losses (images without boxes are negatives); stage 2 may keep the detector losses."""
    model = copy.deepcopy(small_models["symformer_retinanet"])
    model.set_stage(1, loss_weights=(1.0, 0.5))
    model.train()
    images, targets = _batch(128)
    targets[1] = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.long),
        "cls_label": torch.tensor(1),
    }  # a sick CXR: no boxes, all anchors background
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_box", "loss_img_cls"}
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cls_head.parameters())
    model.eval()  # independent value: 0.5 × weighted CE of the head on C5 (BN statistics frozen)
    with torch.no_grad():
        logp = F.log_softmax(model.cls_head(model.backbone(images)[-1]), -1)
        model.train()
        joint = model(images, targets)
    w, y = torch.tensor(CLS_LOSS_WEIGHTS), torch.tensor([2, 1])
    expected = -0.5 * (w[y] * logp[torch.arange(2), y]).sum() / w[y].sum()
    assert all(
        not m.training
        for n, m in model.named_modules()  # norm_eval: BN as in eval above
        if isinstance(m, torch.nn.BatchNorm2d) and n.startswith("backbone")
    )
    torch.testing.assert_close(joint["loss_img_cls"], expected)

    # stage 2 with the detector kept in tune: 2 × the same detection losses + the plain CE
    def losses_at(stage, trainable, weights):
        model.set_stage(stage, trainable, loss_weights=weights)
        model.train()
        for m in model.modules():  # no dropout: both forwards see the same network
            if isinstance(m, torch.nn.Dropout):
                m.eval()
        with torch.no_grad():
            return model(images, targets)

    ref = losses_at(1, ["cls_head"], (1.0, 0.5))
    got = losses_at(2, ["cls_head", "backbone", "fpn", "sas", "head"], (2.0, 1.0))
    torch.testing.assert_close(got["loss_box"], 2 * ref["loss_box"])
    torch.testing.assert_close(got["loss_img_cls"], 2 * ref["loss_img_cls"])
    model.set_stage(2)
    assert model.loss_weights == (0.0, 1.0)
    with pytest.raises(ValueError, match="joint"):
        build("faster_rcnn", ModelConfig(backbone="resnet18", pretrained="none")).set_stage(
            1, loss_weights=(1.0, 1.0)
        )


def test_fold_batchnorm_keeps_outputs_and_removes_every_bn():
    from tbx.models.inference import fold_batchnorm, prepare_for_inference

    torch.manual_seed(0)
    m = build(
        "retinanet",
        ModelConfig(
            backbone="resnet18",
            pretrained="none",
            cls_channels=32,
            norm_eval=False,
            retinanet=RetinaNetConfig(width=32),
        ),
    )
    m.train()
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for _ in range(3):
            m.backbone(torch.randn(4, 3, 96, 96) * 2 + 0.5)
        for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(m)
    m.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = m.backbone(x)
        ref_probs = m.predict(x, [(96, 96)] * 2)
    folded = copy.deepcopy(m)
    # resnet18: stem 1 + 8 blocks × 2 + 3 downsample branches
    assert fold_batchnorm(folded) == 20
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in folded.modules())
    with torch.no_grad():
        for a, b in zip(ref, folded.backbone(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    prepare_for_inference(m)  # what `tbx predict` runs: folded + channels_last
    with torch.no_grad():
        got = m.predict(x.contiguous(memory_format=torch.channels_last), [(96, 96)] * 2)
    for a, b in zip(ref_probs, got):
        torch.testing.assert_close(a.probs, b.probs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("agnostic", [False, True])
def test_class_agnostic_nms(agnostic):
    """Two near-identical boxes of different classes: class-wise NMS (the paper) keeps both,
    class-agnostic NMS only the higher-scoring one."""
    m = build(
        "retinanet",
        ModelConfig(
            backbone="resnet18",
            pretrained="none",
            cls_channels=32,
            retinanet=RetinaNetConfig(width=32, nms_class_agnostic=agnostic),
        ),
    )
    anchors = [torch.tensor([[10.0, 10.0, 50.0, 50.0], [12.0, 10.0, 52.0, 50.0], [80.0, 80.0, 90.0, 90.0]])]
    p = torch.tensor([[0.9, 0.01], [0.01, 0.8], [0.01, 0.01]])  # sigmoid scores: A active, B latent
    logits = [torch.log(p / (1 - p))]
    boxes, scores, labels = m.postprocess(logits, [torch.zeros(3, 4)], anchors, (100, 100))
    iou = float(torchvision.ops.box_iou(anchors[0][:1], anchors[0][1:2]))
    assert iou > 0.5  # the pair overlaps beyond the NMS threshold
    if agnostic:
        assert labels.tolist() == [1] and scores.tolist() == pytest.approx([0.9])
    else:
        assert sorted(labels.tolist()) == [1, 2] and sorted(scores.tolist()) == pytest.approx([0.8, 0.9])
    assert torch.allclose(boxes[0], anchors[0][0])


@pytest.mark.parametrize("box_loss,weight", [("l1", 1.0), ("giou", 2.0)])
def test_box_loss_matches_hand_computation(box_loss, weight):
    """One positive anchor (IoU 0.64 with the GT) and one negative: L1 on the encoded deltas (the
    paper) or weight × (1 − GIoU) of the decoded box, over one positive."""
    m = RetinaNet(
        "resnet18", "none", sas=False, width=32, cls_channels=32, box_loss=box_loss, box_loss_weight=weight
    )
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0], [100.0, 100.0, 120.0, 120.0]])
    gt = [2.0, 1.0, 22.0, 25.0]  # centre (12, 13), 20 × 24
    d = [0.1, -0.05, 0.2, 0.1]
    targets = [{"boxes": torch.tensor([gt]), "labels": torch.tensor([1])}]
    got = m.detection_loss(torch.zeros(1, 2, 2), torch.tensor([[d, [0.0] * 4]]), anchors, targets)
    if box_loss == "l1":
        enc = [(12 - 10) / 20, (13 - 10) / 20, math.log(20 / 20), math.log(24 / 20)]
        expected = sum(abs(a - b) for a, b in zip(d, enc))
    else:
        cx, cy, w, h = 10 + d[0] * 20, 10 + d[1] * 20, 20 * math.exp(d[2]), 20 * math.exp(d[3])
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        iw = min(box[2], gt[2]) - max(box[0], gt[0])
        ih = min(box[3], gt[3]) - max(box[1], gt[1])
        union = w * h + 20 * 24 - iw * ih
        hull = (max(box[2], gt[2]) - min(box[0], gt[0])) * (max(box[3], gt[3]) - min(box[1], gt[1]))
        expected = weight * (1 - (iw * ih / union - (hull - union) / hull))
    assert float(got["loss_box"]) == pytest.approx(expected, rel=1e-5)


def test_cls_input_size_downscales_only_the_classification_branch():
    """``cls_input_size``: the classification ResNet sees the input resized to that side (its
    probabilities change), the detector the full input (boxes identical); it needs cls_backbone."""

    def make(cls_input_size):
        torch.manual_seed(0)
        return build(
            "symformer_retinanet",
            ModelConfig(
                backbone="resnet18",
                pretrained="none",
                cls_channels=32,
                input_size=96,
                norm_eval=False,
                retinanet=RetinaNetConfig(
                    width=32, cls_backbone=True, cls_input_size=cls_input_size, anchor_scale=1.0
                ),
            ),
        ).eval()

    full, small = make(0), make(64)
    assert (full.cls_scale, small.cls_scale, make(128).cls_scale) == (1.0, 64 / 96, 1.0)  # at most
    small.load_state_dict(full.state_dict())
    seen = []
    small.cls_backbone.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    x = torch.rand(2, 3, 96, 96)
    a, b = full.predict(x), small.predict(x)
    assert [tuple(t.shape) for t in seen] == [(2, 3, 64, 64)]
    for pa, pb in zip(a, b):
        assert torch.equal(pa.boxes, pb.boxes) and torch.equal(pa.scores, pb.scores)
    assert not torch.equal(a[0].probs, b[0].probs)

    # the branch's input is the image downscaled as PIL does it (bilinear, antialiased; float mode)
    def pil(ch):
        return np.asarray(Image.fromarray(ch.numpy(), mode="F").resize((64, 64), Image.BILINEAR))

    ref = torch.tensor(np.stack([[pil(ch) for ch in img] for img in x]))
    torch.testing.assert_close(seen[0], ref, rtol=0, atol=1e-5)
    with pytest.raises(TbxError, match="cls_backbone"):
        build(
            "symformer_retinanet",
            ModelConfig(
                backbone="resnet18",
                pretrained="none",
                input_size=96,
                retinanet=RetinaNetConfig(cls_input_size=64),
            ),
        )


def test_cls_backbone_stage2_leaves_the_detector_unchanged():
    """``cls_backbone``: stage I does not train it, stage II forks it from the detector's backbone
    and trains it with the head — the detections stay bit-identical, the class probabilities move."""
    torch.manual_seed(0)
    m = build(
        "symformer_retinanet",
        ModelConfig(
            backbone="resnet18",
            pretrained="none",
            cls_channels=32,
            norm_eval=False,
            retinanet=RetinaNetConfig(width=32, cls_backbone=True, anchor_scale=1.0),
        ),
    )
    m.set_stage(1)
    assert not any(p.requires_grad for n, p in m.named_parameters() if n.startswith("cls_backbone."))
    m.start_stage(2)
    for (ka, a), (kb, b) in zip(m.backbone.state_dict().items(), m.cls_backbone.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    m.set_stage(2, ("cls_head", "cls_backbone.layer4"))
    x = torch.randn(2, 3, 64, 64)
    m.eval()
    before = m.predict(x)
    m.train()
    assert m.cls_backbone.layer4.training and not m.cls_backbone.layer1.training and not m.backbone.training
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    targets = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "cls_label": torch.tensor(c)}
        for c in (1, 2)
    ]
    m(x, targets, [(64, 64)] * 2)["loss_img_cls"].backward()
    grads = {n.split(".")[0] + "." + n.split(".")[1] for n, p in m.named_parameters() if p.grad is not None}
    assert grads == {"cls_backbone.layer4", "cls_head.features", "cls_head.classifier"}
    opt.step()
    m.eval()
    after = m.predict(x)
    for b, a in zip(before, after):
        assert torch.equal(b.boxes, a.boxes) and torch.equal(b.scores, a.scores)
        assert not torch.allclose(b.probs, a.probs)
