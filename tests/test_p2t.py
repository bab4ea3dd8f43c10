"""P2T-Small backbone and the P2T SymFormer / RetinaNet models (docs/models.md §3.1, §2.5): parameter
and MAC counts against hand counts from the architecture, the official checkpoint key layout (built
here from the architecture, not from the model), the pooling attention against its explicit
formula, shapes, one training step of each stage, presets and `tbx models info`."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from tbx.engine.schedule import load_train_config
from tbx.errors import TbxError
from tbx.models.backbone import load_state_checked
from tbx.models.config import ModelConfig
from tbx.models.info import count_params, model_info
from tbx.models.p2t import P2T, PoolingAttention, p2t_small
from tbx.models.registry import build

# the architecture (docs/models.md §3.1)
DIMS, DEPTHS, RATIOS = (64, 128, 320, 512), (2, 2, 9, 3), (8, 8, 4, 4)
POOLS = ((12, 16, 20, 24), (6, 8, 10, 12), (3, 4, 5, 6), (1, 2, 3, 4))
# docs/models.md §2.5 component counts of SymFormer w/ RetinaNet on P2T-Small
P2T_COMPONENTS = {
    "backbone": 23_566_848,
    "fpn": 3_786_752,
    "sym_attention": 682_848,
    "spe": 20_280,
    "head": 4_845_110,
    "cls_head": 12_063_235,
}


def official_shapes() -> dict[str, tuple[int, ...]]:
    """Key → shape of the official ImageNet P2T-Small checkpoint's backbone tensors."""
    shapes: dict[str, tuple[int, ...]] = {}
    cin = 3
    for s, (c, depth, r) in enumerate(zip(DIMS, DEPTHS, RATIOS, strict=True), 1):
        k = 7 if s == 1 else 3
        shapes |= {
            f"patch_embed{s}.proj.weight": (c, cin, k, k),
            f"patch_embed{s}.proj.bias": (c,),
            f"patch_embed{s}.norm.weight": (c,),
            f"patch_embed{s}.norm.bias": (c,),
        }
        for j in range(4):
            shapes |= {f"d_convs{s}.{j}.weight": (c, 1, 3, 3), f"d_convs{s}.{j}.bias": (c,)}
        for b in range(depth):
            p = f"block{s}.{b}."
            shapes |= {
                p + "norm1.weight": (c,),
                p + "norm1.bias": (c,),
                p + "attn.q.0.weight": (c, c),
                p + "attn.q.0.bias": (c,),
                p + "attn.kv.0.weight": (2 * c, c),
                p + "attn.kv.0.bias": (2 * c,),
                p + "attn.proj.weight": (c, c),
                p + "attn.proj.bias": (c,),
                p + "attn.norm.weight": (c,),
                p + "attn.norm.bias": (c,),
                p + "norm2.weight": (c,),
                p + "norm2.bias": (c,),
                p + "mlp.fc1.weight": (r * c, c, 1, 1),
                p + "mlp.fc1.bias": (r * c,),
                p + "mlp.conv.weight": (r * c, 1, 3, 3),
                p + "mlp.conv.bias": (r * c,),
                p + "mlp.fc2.weight": (c, r * c, 1, 1),
                p + "mlp.fc2.bias": (c,),
            }
        cin = c
    return shapes


def hand_macs(size: int) -> dict[str, int]:
    """The backbone's MACs at ``size × size``: mmcv-style (convs incl. bias, Linears, LayerNorms ×2),
    attention products + functional pooling (mmcv does not see them), Hardswish elements."""
    mmcv = functional = hswish = 0
    cin, h = 3, size
    for s, (c, depth, r, pools) in enumerate(zip(DIMS, DEPTHS, RATIOS, POOLS, strict=True), 1):
        k, h = (7, h // 4) if s == 1 else (3, h // 2)
        n = h * h
        mmcv += n * c * k * k * cin + n * c + 2 * n * c  # patch embed conv + bias, LayerNorm
        m_sizes = [max(1, round(h / p)) ** 2 for p in pools]
        m = sum(m_sizes)
        per_block = (
            2 * n * c
            + n * c * c  # norm1, q
            + sum(ms * c * 9 + ms * c for ms in m_sizes)  # shared depthwise convs on the pools
            + 2 * m * c
            + m * c * 2 * c
            + n * c * c  # attn.norm, kv, proj
            + 2 * n * c  # norm2
            + n * r * c * c
            + n * r * c
            + n * r * c * 9
            + n * r * c
            + n * c * r * c
            + n * c
        )  # IRB
        mmcv += depth * per_block
        functional += depth * (n * m * 2 * c + len(pools) * n * c)  # q·kᵀ and attn·v; pooling inputs
        hswish += depth * 2 * n * r * c
        cin = c
    return {"mmcv": mmcv, "functional": functional, "hardswish": hswish}


def _meta(name: str, **kw) -> torch.nn.Module:
    with torch.device("meta"):
        return build(name, ModelConfig(backbone="p2t_small", pretrained="none", **kw))


def test_parameter_counts_are_the_papers():
    assert sum(math.prod(s) for s in official_shapes().values()) == 23_566_848
    with torch.device("meta"):
        bb = P2T("p2t_small")
    assert {k: tuple(v.shape) for k, v in bb.state_dict().items()} == official_shapes()
    sym = _meta("symformer_retinanet")
    assert {k: count_params(v) for k, v in sym.components().items()} == P2T_COMPONENTS
    assert count_params(sym) == sum(P2T_COMPONENTS.values()) == 44_965_073
    assert count_params(sym) + sym.dead_params == 45_095_485  # the paper's 45.10 M (same 130,412 dead)
    ret = _meta("retinanet")
    assert count_params(ret) == 44_965_073 - 682_848 - 20_280 and getattr(ret, "dead_params", 0) == 0


def test_macs_at_512_counted_as_mmcv():
    """55.46 GMACs at 512 (mmcv: no attention products, no Hardswish); the backbone's share equals
    the hand count exactly, and so do the parts mmcv does not see."""
    sym = model_info(
        "symformer_retinanet", ModelConfig(backbone="p2t_small", pretrained="none"), 512, latency_runs=0
    )
    r50 = model_info("symformer_retinanet", ModelConfig(pretrained="none"), 512, latency_runs=0)
    hand = hand_macs(512)
    assert round(sym["gmacs"], 2) == 55.46
    assert sym["components"]["backbone"]["gmacs"] * 1e9 == pytest.approx(hand["mmcv"], abs=0.5)
    # the rest of the model is the R50 model's on 128/320/512-ch stages: FPN laterals + P6 differ
    fpn = sum(n * 256 * cin + n * 256 for n, cin in ((64 * 64, 128), (32 * 32, 320), (16 * 16, 512)))
    fpn += sum(n * 256 * 256 * 9 + n * 256 for n in (64 * 64, 32 * 32, 16 * 16, 4 * 4))  # outputs, P7
    fpn += 8 * 8 * 256 * 512 * 9 + 8 * 8 * 256  # P6 on the 512-ch stage 4
    assert sym["components"]["fpn"]["gmacs"] * 1e9 == pytest.approx(fpn, abs=0.5)
    # beyond mmcv: the backbone's attention products + pooling (the SAS block's are the R50 model's)
    assert (sym["gmacs_functional"] - r50["gmacs_functional"]) * 1e9 == pytest.approx(
        hand["functional"], abs=1
    )
    assert sym["gmacs_activations"] * 1e9 == pytest.approx(hand["hardswish"], abs=0.5)
    assert sym["gmacs_full"] == pytest.approx(
        sym["gmacs"] + sym["gmacs_functional"] + sym["gmacs_activations"]
    )


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory):
    """A checkpoint with the official key layout (+ the ImageNet classifier), bare and wrapped."""
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) for k, s in official_shapes().items()}
    sd |= {"head.weight": torch.randn(1000, 512, generator=g), "head.bias": torch.zeros(1000)}
    d = tmp_path_factory.mktemp("p2t")
    torch.save(sd, d / "p2t_small.pth")
    torch.save({"model": sd}, d / "p2t_small_wrapped.pth")
    return d, sd


@pytest.mark.parametrize("fname", ["p2t_small.pth", "p2t_small_wrapped.pth"])
def test_official_checkpoint_loads_completely(official_ckpt, fname):
    d, sd = official_ckpt
    model = p2t_small(pretrained=d / fname)
    assert model.pretrained_report is not None
    rep = model.pretrained_report.to_dict()
    assert (rep["loaded"], rep["missing"], rep["unexpected"]) == (len(official_shapes()), 0, 2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_tbx_checkpoint_backbone_entries_load(official_ckpt, tmp_path):
    _, sd = official_ckpt
    ckpt = {
        "format": "tbx",
        "model": {
            **{f"backbone.{k}": v for k, v in sd.items() if k in official_shapes()},
            "fpn.p6.weight": torch.zeros(1),
        },
    }
    torch.save(ckpt, tmp_path / "run.pt")
    model = p2t_small(pretrained=tmp_path / "run.pt")
    assert model.pretrained_report is not None and model.pretrained_report.unexpected == 0
    assert torch.equal(model.block3[8].attn.kv[0].weight, sd["block3.8.attn.kv.0.weight"])


def test_missing_or_misshaped_tensor_fails_in_one_line(official_ckpt, tmp_path):
    _, sd = official_ckpt
    missing = {k: v for k, v in sd.items() if k != "block3.4.attn.q.0.weight"}
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(TbxError) as err:
        p2t_small(pretrained=tmp_path / "missing.pth")
    msg = str(err.value)
    assert "\n" not in msg and "do not fit p2t_small" in msg and "block3.4.attn.q.0.weight" in msg
    # the same check in memory (no file round trip): the pre-`.0` layout of q (`attn.q.weight`) is not
    # silently skipped as the official strict=False loader did, nor is a mis-shaped tensor
    model = P2T("p2t_small")
    renamed = {k.replace("attn.q.0.", "attn.q."): v for k, v in sd.items()}
    with pytest.raises(TbxError, match="32 missing"):  # q weight + bias of 16 blocks
        load_state_checked(model, renamed, tmp_path / "renamed.pth", "p2t_small", "use the official file")
    wrong = dict(sd, **{"d_convs2.1.weight": torch.zeros(128, 1, 5, 5)})
    with pytest.raises(TbxError, match=r"shape mismatch at \['d_convs2.1.weight'\]: file \(128, 1, 5, 5\)"):
        load_state_checked(model, wrong, tmp_path / "wrong.pth", "p2t_small", "use the official file")
    with pytest.raises(TbxError, match="not found"):
        p2t_small(pretrained=tmp_path / "nope.pth")


def test_imagenet_needs_the_cached_official_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(TbxError) as err:
        build("retinanet", ModelConfig(backbone="p2t_small", pretrained="imagenet", input_size=128))
    assert str(tmp_path / "hub" / "checkpoints" / "p2t_small.pth") in str(err.value)


def test_pooling_attention_is_the_explicit_formula():
    """SDPA path == softmax(q·kᵀ/√d)·v on the pooled, depthwise-refined, normalised sequence."""
    torch.manual_seed(0)
    c, heads, h, w = 128, 2, 12, 20
    attn = PoolingAttention(c, heads, (6, 8, 10, 12)).eval()
    d_convs = torch.nn.ModuleList(torch.nn.Conv2d(c, c, 3, padding=1, groups=c) for _ in range(4))
    x = torch.randn(2, h * w, c)
    with torch.no_grad():
        got = attn(x, h, w, d_convs)
        fmap = x.transpose(1, 2).reshape(2, c, h, w)
        pooled = []
        for r, conv in zip((6, 8, 10, 12), d_convs, strict=True):
            p = torch.nn.functional.adaptive_avg_pool2d(fmap, (max(1, round(h / r)), max(1, round(w / r))))
            pooled.append((p + conv(p)).flatten(2))
        seq = torch.nn.functional.layer_norm(
            torch.cat(pooled, 2).transpose(1, 2), (c,), attn.norm.weight, attn.norm.bias, eps=1e-5
        )
        q = (x @ attn.q[0].weight.T + attn.q[0].bias).reshape(2, -1, heads, 64).transpose(1, 2)
        kv = seq @ attn.kv[0].weight.T + attn.kv[0].bias
        k = kv[..., :c].reshape(2, -1, heads, 64).transpose(1, 2)
        v = kv[..., c:].reshape(2, -1, heads, 64).transpose(1, 2)
        a = ((q @ k.transpose(-2, -1)) / 8.0).softmax(-1) @ v
        want = a.transpose(1, 2).reshape(2, h * w, c) @ attn.proj.weight.T + attn.proj.bias
    # pooled sizes round(12/r) × round(20/r) (Python rounding, half to even): 2×3, 2×2 (1.5, 2.5), 1×2, 1×2
    assert seq.shape[1] == 6 + 4 + 2 + 2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("hw", [(512, 512), (256, 384), (64, 96)])
def test_forward_shapes(hw):
    """Strides 4/8/16/32 at 512, non-square, and below the largest pooling ratio (pools ≥ 1×1)."""
    torch.manual_seed(0)
    model = p2t_small().eval()
    h, w = hw
    with torch.no_grad():
        outs = model(torch.randn(1, 3, h, w))
    assert [tuple(o.shape) for o in outs] == [
        (1, c, h // s, w // s) for c, s in zip(DIMS, (4, 8, 16, 32), strict=True)
    ]
    assert all(torch.isfinite(o).all() for o in outs)


def _batch(n: int = 2, size: int = 128):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=g)
    targets = [
        {
            "boxes": torch.tensor([[20.0, 30.0, 60.0, 80.0]]),
            "labels": torch.tensor([1]),
            "cls_label": torch.tensor(2),
        },
        {
            "boxes": torch.zeros((0, 4)),
            "labels": torch.zeros((0,), dtype=torch.long),
            "cls_label": torch.tensor(0),
        },
    ][:n]
    return images, targets


def test_one_training_step_of_each_stage_at_128():
    torch.manual_seed(0)
    model = build("symformer_retinanet", ModelConfig(backbone="p2t_small", pretrained="none", input_size=128))
    images, targets = _batch()
    # stage I (the official optimiser: AdamW 1e-4, wd 1e-4): every part of the detector trains
    model.set_stage(1)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)
    losses = model(images, targets, [(128, 128)] * 2)
    assert set(losses) == {"loss_cls", "loss_box"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for part in (
        "backbone.patch_embed1.proj.weight",
        "backbone.d_convs3.2.weight",
        "backbone.block4.2.attn.kv.0.weight",
        "backbone.block1.0.mlp.conv.weight",
        "fpn.p6.weight",
    ):
        grad = model.get_parameter(part).grad
        assert grad is not None and grad.abs().sum() > 0, part
    before = model.backbone.block2[1].attn.q[0].weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.backbone.block2[1].attn.q[0].weight)
    # stage II (SGD 1e-3): the classification head only, everything else frozen
    model.set_stage(2)
    model.train()
    model.zero_grad(set_to_none=True)
    frozen = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("cls_head.")}
    opt2 = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9, weight_decay=1e-4
    )
    losses = model(images, targets, [(128, 128)] * 2)
    assert set(losses) == {"loss_img_cls"} and torch.isfinite(losses["loss_img_cls"])
    losses["loss_img_cls"].backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("cls_head.") for n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("cls_head."))
    opt2.step()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())


def test_presets_and_alias():
    sym = load_train_config("symformer_p2t")
    assert sym.model_name == "symformer_retinanet" and sym.model.backbone == "p2t_small"
    assert sym.model.pretrained == "imagenet" and sym.model.input_size == 512
    s1, s2 = sym.stage1, sym.stage2
    assert (
        s1.optimizer,
        s1.lr,
        s1.weight_decay,
        s1.warmup_iters,
        s1.warmup_ratio,
        s1.lr_steps,
        s1.epochs,
        s1.batch_size,
    ) == ("adamw", 1e-4, 1e-4, 500, 0.001, [16, 22], 24, 16)
    assert (s2.optimizer, s2.lr, s2.momentum, s2.weight_decay, s2.lr_steps, s2.epochs, s2.trainable) == (
        "sgd",
        1e-3,
        0.9,
        1e-4,
        [8, 11],
        12,
        ["cls_head"],
    )
    assert load_train_config(None, "symformer_retinanet_p2t") == sym
    ret = load_train_config(None, "retinanet_p2t")
    assert (
        ret.model_name == "retinanet" and ret.model == replace(sym.model, symformer=None) and ret.stage1 == s1
    )


def test_published_p2t_row():
    from tbx.bench.published import PUBLISHED_ROWS

    row = next(r for r in PUBLISHED_ROWS if "P2T" in r.method)
    assert list(row.classification.values()) == [94.6, 99.1, 92.1, 96.7, 93.4, 94.2]
    assert row.detection[("all_cxr", "agnostic")] == (70.4, 30.0)
    assert row.detection[("tb_only", "latent")] == (13.0, 4.7)
    assert (row.params_paper_m, row.gmacs, row.fps) == (45.10, 55.46, 17.9)


def test_cli_models_info_table_and_json(cli, official_ckpt):
    code, out, _ = cli("models", "info", "symformer_retinanet_p2t", "--runs", "0")
    assert code == 0
    for text in (
        "p2t_small",
        "23,566,848",
        "3,786,752",
        "12,063,235",
        "44,965,073",
        "45,095,485",
        "55.46",
        "full count",
    ):
        assert text in out, text
    d, _ = official_ckpt
    code, out, _ = cli(
        "models",
        "info",
        "symformer_retinanet_p2t",
        "--set",
        f"model.pretrained={d / 'p2t_small.pth'}",
        "--json",
        "--runs",
        "0",
        "--input",
        "128",
    )
    assert code == 0
    res = json.loads(out)
    assert res["pretrained"] == {
        "loaded": len(official_shapes()),
        "missing": 0,
        "unexpected": 2,
    }
    assert res["params_live"] == 44_965_073 and res["params_paper"] == 45_095_485
    assert res["backbone"] == "p2t_small" and res["input"] == 128
    code, out, _ = cli(
        "models",
        "info",
        "symformer_p2t",
        "--set",
        f"model.pretrained={d / 'p2t_small_wrapped.pth'}",
        "--runs",
        "0",
        "--input",
        "64",
    )
    assert code == 0 and "336 tensors loaded, 0 missing, 2 unexpected" in " ".join(out.split())
    code, out, _ = cli("models", "info", "retinanet_p2t", "--runs", "0", "--json", "--input", "128")
    assert code == 0 and json.loads(out)["pretrained"] is None
    assert json.loads(out)["params_live"] == 44_965_073 - 682_848 - 20_280


def test_checkpoint_of_a_p2t_run_rebuilds_without_the_imagenet_file(tmp_path, monkeypatch):
    """`tbx predict` on a trained P2T run needs no ImageNet file: the checkpoint holds every weight."""
    from tbx.config import to_dict
    from tbx.engine.predict import model_from_checkpoint

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached here
    cfg = load_train_config("symformer_p2t", None, ["model.input_size=128"])
    with torch.device("meta"):
        shapes = build(cfg.model_name, ModelConfig(backbone="p2t_small", pretrained="none")).state_dict()
    state = {
        "config": to_dict(cfg),
        "model": {k: torch.full(v.shape, 0.5) for k, v in shapes.items()},
        "stage": 2,
    }
    model, got = model_from_checkpoint(state, tmp_path / "final.pt")
    assert got.model.pretrained == "imagenet" and model.pretrained_report is None
    assert torch.equal(model.backbone.block3[0].attn.q[0].weight, torch.full((320, 320), 0.5))
