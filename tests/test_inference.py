"""Inference rewrites (tbx.models.inference) and the SAS block's batched levels: the same numbers
as plain PyTorch ops written out here (convolution + residual + ReLU; per-level deformable
attention through ``F.grid_sample``)."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tbx.models.config import ModelConfig, RetinaNetConfig
from tbx.models.inference import FusedBlock, FusedConv2d, fold_batchnorm, prepare_for_inference
from tbx.models.info import count_macs
from tbx.models.registry import build
from tbx.models.sas import SASBlock
from tbx.models.spe import sine_encoding


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize(
    "kernel,stride,relu,residual",
    [(1, 1, True, True), (3, 1, True, False), (3, 2, False, False), (1, 1, False, True)],
)
def test_fused_conv_matches_conv_residual_relu(kernel, stride, relu, residual):
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 48, kernel, stride=stride, padding=kernel // 2)
    fused = FusedConv2d.from_conv(conv, relu=relu)
    assert fused.weight is conv.weight  # the same parameters, not copies
    x = torch.randn(2, 32, 24, 24).contiguous(memory_format=torch.channels_last)
    out_hw = (24 + 2 * (kernel // 2) - kernel) // stride + 1
    res = (
        torch.randn(2, 48, out_hw, out_hw).contiguous(memory_format=torch.channels_last) if residual else None
    )
    ref = F.conv2d(x, conv.weight, conv.bias, stride, kernel // 2)
    if res is not None:
        ref = ref + res
    if relu:
        ref = ref.clamp_min(0)
    with torch.inference_mode():  # oneDNN fast path
        fast = fused(x, res)
    slow = fused(x, res)  # autograd on: the plain path
    assert _rel(fast, ref) < 1e-5 and _rel(slow, ref) < 1e-6


def _retinanet(name: str) -> nn.Module:
    cfg = ModelConfig(
        backbone="resnet18", pretrained="none", input_size=128, retinanet=RetinaNetConfig(width=64)
    )
    torch.manual_seed(0)
    model = build(name, cfg).eval()
    with torch.no_grad():  # non-trivial BN statistics and a non-identity STN / offsets
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
        if getattr(model, "sas", None) is not None:
            model.sas.spe.stn.fc_loc[2].weight.normal_(0, 0.01)
            model.sas.encoder.self_attn.sampling_offsets.weight.normal_(0, 0.01)
            model.sas.encoder.self_attn.attention_weights.weight.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("name", ["retinanet", "symformer_retinanet"])
def test_prepared_model_has_the_same_outputs_and_macs(name):
    model = _retinanet(name)
    prepared = prepare_for_inference(copy.deepcopy(model))
    assert any(isinstance(m, FusedBlock) for m in prepared.modules())
    assert not any(type(m) is nn.Conv2d for m in prepared.modules())  # all run by FusedConv2d
    if name == "symformer_retinanet":
        assert prepared.sas.encoder.self_attn.query_proj is not None
    torch.manual_seed(1)
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        ref = model.network(x, [(128, 128)])
        out = prepared.network(x.contiguous(memory_format=torch.channels_last), [(128, 128)])
    for a, b in zip([out[0], *out[1], *out[2]], [ref[0], *ref[1], *ref[2]], strict=True):
        assert _rel(a, b) < 1e-4
    # the fused ReLUs and projections count as the modules they replaced
    only_folded = copy.deepcopy(model)
    assert fold_batchnorm(only_folded) > 0
    assert sum(count_macs(prepared, x)[0].values()) == sum(count_macs(only_folded, x)[0].values())


def _reference_sas(block: SASBlock, feat: torch.Tensor) -> torch.Tensor:
    """One level of the SAS block with plain ops: SPE (sine, STN warp by ``affine_grid`` +
    ``grid_sample``, mirrored right → left), then the post-norm encoder layer whose SymAttention
    samples each head's value map by ``grid_sample`` at the mirrored locations."""
    n, c, h, w = feat.shape
    spe, enc = block.spe, block.encoder
    att = enc.self_attn
    m, k = att.n_heads, att.n_points
    d = c // m
    pe = sine_encoding(n, h, w, c // 2).contiguous()  # (tests/test_spe.py checks it against DETR's formula)
    half = w // 2
    right = pe[..., w - half :]
    theta = spe.stn(feat)
    grid = F.affine_grid(theta, list(right.shape), align_corners=False)
    warped = F.grid_sample(right, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    pe = torch.cat([warped.flip(-1), pe[..., half:]], -1)
    src = feat.flatten(2).transpose(1, 2)
    query = src + pe.flatten(2).transpose(1, 2)
    value = att.value_proj(src).view(n, h, w, m, d).permute(0, 3, 4, 1, 2).reshape(n * m, d, h, w)
    offsets = att.sampling_offsets(query).view(n, h * w, m, k, 2)
    weights = att.attention_weights(query).view(n, h * w, m, k).softmax(-1)
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    ref = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # (HW, 2) = (x, y)
    loc = ref[None, :, None, None, :] + offsets / torch.tensor([w, h])
    loc = torch.stack([1 - loc[..., 0], loc[..., 1]], -1)  # SymAttention's mirror
    grid = (2 * loc - 1).permute(0, 2, 1, 3, 4).reshape(n * m, h * w, k, 2)
    sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    wts = weights.permute(0, 2, 1, 3).reshape(n * m, 1, h * w, k)
    attn = (sampled * wts).sum(-1).view(n, m * d, h * w).transpose(1, 2)
    x = enc.norm1(src + att.output_proj(attn))
    x = enc.norm2(
        x
        + F.linear(
            F.linear(x, enc.linear1.weight, enc.linear1.bias).relu(), enc.linear2.weight, enc.linear2.bias
        )
    )
    return x.transpose(1, 2).reshape(n, c, h, w)


@pytest.mark.parametrize("prepared", [False, True])
def test_sas_block_levels_batched_match_per_level_reference(prepared):
    torch.manual_seed(0)
    block = SASBlock(64, "spe", "symmetric", d_ffn=256).eval()
    with torch.no_grad():
        block.spe.stn.fc_loc[2].weight.normal_(0, 0.02)  # θ off the identity
        att = block.encoder.self_attn
        att.sampling_offsets.weight.normal_(0, 0.05)
        att.attention_weights.weight.normal_(0, 0.05)
    feats = [torch.randn(2, 64, s, s + 1) for s in (16, 8, 4, 2, 1)]  # odd widths too; W = 2 … 17
    with torch.no_grad():
        refs = [_reference_sas(block, f) for f in feats]
    if prepared:
        for module in block.modules():
            fuse = getattr(module, "fuse_for_inference", None)
            if callable(fuse):
                fuse()
        with torch.inference_mode():
            outs = block(feats)
    else:
        outs = block(feats)  # autograd on
    for out, ref in zip(outs, refs, strict=True):
        assert out.shape == ref.shape
        assert _rel(out.detach(), ref) < 1e-4


def test_sas_block_with_padding_masks_equals_one_call_per_level():
    torch.manual_seed(0)
    block = SASBlock(64, "spe", "symmetric", d_ffn=256).eval()
    feats = [torch.randn(2, 64, 8, 8), torch.randn(2, 64, 4, 4)]
    masks = [torch.zeros(2, 8, 8, dtype=torch.bool), torch.zeros(2, 4, 4, dtype=torch.bool)]
    masks[0][1, :, 5:] = True
    masks[1][1, :, 3:] = True
    with torch.no_grad():
        both = block(feats, masks)
        single = [block([f], [m])[0] for f, m in zip(feats, masks, strict=True)]
    for a, b in zip(both, single, strict=True):
        assert _rel(a, b) < 1e-5


def test_stn_over_levels_equals_one_call_per_level():
    torch.manual_seed(0)
    block = SASBlock(64, "spe", "symmetric", d_ffn=256)
    stn = block.spe.stn
    with torch.no_grad():
        stn.fc_loc[2].weight.normal_(0, 0.1)
    feats = [torch.randn(2, 64, s, s) for s in (16, 9, 4)]
    thetas = stn.forward_levels(feats)
    for f, t in zip(feats, thetas, strict=True):
        assert torch.allclose(stn(f), t, atol=1e-6)
    assert not math.isclose(float(thetas[0][0, 0, 0].detach()), 1.0, abs_tol=1e-6)


_FAULTS_SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch
    from tbx.models.inference import reuse_freed_memory

    def faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):  # 3 × 16 MiB live at once (a 128² map of 256 ch each), written in full
            maps = [torch.empty(4 << 20).fill_(1.0) for _ in range(3)]
            del maps
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    plain = faults()
    applied = reuse_freed_memory()
    faults()  # the heap grows once
    print(plain, applied, faults())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_reuse_freed_memory_stops_page_faults_of_repeated_allocations():
    """The kernel's page-fault count (getrusage) for 20 cycles of three 16 MiB maps (allocated,
    written, freed): glibc's default hands some back to the kernel, so their pages fault in again
    (36,000–171,000 faults here, depending on how its dynamic threshold settles), and almost none
    fault once it keeps the freed blocks — in a subprocess: the setting is process-wide."""
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, check=True
    ).stdout.split()
    plain, applied, reused = int(out[0]), out[1], int(out[2])
    assert applied == "True"
    assert plain > 20 * 1024, (plain, reused)
    assert reused < 0.05 * plain, (plain, reused)


def test_packed_weights_follow_weight_updates_and_are_not_copied():
    """The oneDNN-layout weight copy (PackedWeight) is remade after an in-place update or
    ``load_state_dict``, and a deep copy or a pickle carries none: outputs always match
    ``F.conv2d`` / ``F.linear`` with the module's current weight."""
    import pickle

    from tbx.models.sym_attention import InferenceLinear

    torch.manual_seed(3)
    conv = FusedConv2d.from_conv(nn.Conv2d(16, 32, 3, padding=1), relu=False)
    lin = InferenceLinear(16, 24)
    x = torch.randn(1, 16, 12, 12).contiguous(memory_format=torch.channels_last)  # 12²·32 ≥ 4096
    t = torch.randn(1, 40, 16)

    def check(c: nn.Conv2d, li: nn.Linear) -> None:
        with torch.inference_mode():
            got_c, got_l = c(x), li(t)
        torch.testing.assert_close(got_c, F.conv2d(x, c.weight, c.bias, padding=1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_l, F.linear(t, li.weight, li.bias), atol=1e-5, rtol=1e-5)

    check(conv, lin)
    assert conv.packed.tensor is not None and lin.packed.tensor is not None
    with torch.no_grad():
        conv.weight.mul_(-2.0)
        lin.weight.add_(1.0)
    check(conv, lin)
    conv.load_state_dict({k: torch.randn_like(v) for k, v in conv.state_dict().items()})
    lin.load_state_dict({k: torch.randn_like(v) for k, v in lin.state_dict().items()})
    check(conv, lin)
    for c, li in ((copy.deepcopy(conv), copy.deepcopy(lin)), pickle.loads(pickle.dumps((conv, lin)))):
        assert c.packed.tensor is None and li.packed.tensor is None
        check(c, li)
