"""SymAttention (docs/models.md §2.2): mirrored sampling, init, gradients — checked against hand
computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tbx.models.sym_attention import SymAttention, SymEncoderLayer, reference_points_for


def _identity_attention(c: int, heads: int, mirror: bool, zero_offsets: bool = True) -> SymAttention:
    att = SymAttention(d_model=c, n_heads=heads, n_levels=1, n_points=4, mirror=mirror)
    with torch.no_grad():
        if zero_offsets:
            att.sampling_offsets.weight.zero_()
            att.sampling_offsets.bias.zero_()
        att.attention_weights.weight.zero_()
        att.attention_weights.bias.zero_()
        for lin in (att.value_proj, att.output_proj):
            lin.weight.copy_(torch.eye(c))
            lin.bias.zero_()
    return att


def _run(att: SymAttention, value_map: torch.Tensor, query: torch.Tensor | None = None, mask=None):
    """value_map (N, H, W, C) → output (N, H, W, C) with pixel-centre reference points."""
    n, h, w, c = value_map.shape
    value = value_map.reshape(n, h * w, c)
    if query is None:
        query = torch.randn(n, h * w, c)
    ref = reference_points_for([(h, w)])[None, :, None, :].expand(n, -1, 1, 2)
    out = att(query, ref, value, [(h, w)], mask)
    return out.reshape(n, h, w, c)


@pytest.mark.parametrize("h,w", [(4, 6), (5, 7), (3, 8), (6, 1)])
def test_zero_offsets_read_the_mirrored_pixel(h, w):
    torch.manual_seed(0)
    n, c = 2, 8
    att = _identity_attention(c, heads=2, mirror=True)
    value = torch.zeros(n, h, w, c)
    # plant a one-hot per image at different places
    plants = [(h - 1, 0, 3), (h // 2, w - 1, 5)]
    for b, (i, j, ch) in enumerate(plants):
        value[b, i, j, ch] = 1.0
    out = _run(att, value)
    for b, (i, j, ch) in enumerate(plants):
        hits = torch.nonzero(out[b].abs() > 1e-6)
        assert hits.tolist() == [[i, w - 1 - j, ch]]
        assert out[b, i, w - 1 - j, ch].item() == pytest.approx(1.0, abs=1e-6)
    # the whole map: output(i, j) == value(i, W-1-j)
    dense = torch.randn(n, h, w, c)
    torch.testing.assert_close(_run(att, dense), dense.flip(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("h,w", [(4, 6), (5, 7)])
def test_mirror_false_reads_the_pixel_itself(h, w):
    torch.manual_seed(1)
    att = _identity_attention(8, heads=2, mirror=False)
    dense = torch.randn(3, h, w, 8)
    torch.testing.assert_close(_run(att, dense), dense, atol=1e-5, rtol=0)


def _bilinear(vmap: np.ndarray, x: float, y: float) -> np.ndarray:
    """Bilinear sample of vmap (H, W, D) at normalised (x, y), pixel centres at (j+.5)/W, zeros outside."""
    h, w, _ = vmap.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = np.zeros(vmap.shape[-1])
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < h and 0 <= xx < w:
                out += (1 - abs(px - xx)) * (1 - abs(py - yy)) * vmap[yy, xx]
    return out


@pytest.mark.parametrize("mirror", [True, False])
def test_matches_naive_per_point_reference(mirror):
    """Random offsets/weights: compare against a per-query, per-head, per-point numpy loop."""
    torch.manual_seed(2)
    n, h, w, c, heads, pts = 2, 3, 5, 8, 2, 4
    att = SymAttention(c, heads, 1, pts, mirror=mirror)
    with torch.no_grad():
        att.sampling_offsets.weight.normal_(0, 0.3)
        att.attention_weights.weight.normal_(0, 0.5)
    value = torch.randn(n, h * w, c)
    query = torch.randn(n, h * w, c)
    ref = reference_points_for([(h, w)])[None, :, None, :].expand(n, -1, 1, 2)
    out = att(query, ref, value, [(h, w)]).detach().numpy()

    with torch.no_grad():
        v = att.value_proj(value).numpy().reshape(n, h, w, heads, c // heads)
        off = att.sampling_offsets(query).numpy().reshape(n, h * w, heads, pts, 2)
        logits = att.attention_weights(query).numpy().reshape(n, h * w, heads, pts)
    wts = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = np.zeros((n, h * w, c))
    for b in range(n):
        for q in range(h * w):
            i, j = divmod(q, w)
            for m in range(heads):
                acc = np.zeros(c // heads)
                for k in range(pts):
                    x = (j + 0.5) / w + off[b, q, m, k, 0] / w
                    y = (i + 0.5) / h + off[b, q, m, k, 1] / h
                    if mirror:
                        x = 1.0 - x
                    acc += wts[b, q, m, k] * _bilinear(v[b, :, :, m], x, y)
                expected[b, q, m * (c // heads) : (m + 1) * (c // heads)] = acc
    with torch.no_grad():
        expected_t = att.output_proj(torch.from_numpy(expected).float()).numpy()
    np.testing.assert_allclose(out, expected_t, atol=1e-5)


def test_init_follows_spec():
    att = SymAttention(256, 8, 1, 4)
    assert att.sampling_offsets.weight.abs().sum() == 0
    assert att.attention_weights.weight.abs().sum() == 0 and att.attention_weights.bias.abs().sum() == 0
    bias = att.sampling_offsets.bias.detach().view(8, 1, 4, 2)
    for hd in range(8):
        d = np.array([math.cos(2 * math.pi * hd / 8), math.sin(2 * math.pi * hd / 8)])
        d = d / np.abs(d).max()
        for k in range(4):
            np.testing.assert_allclose(bias[hd, 0, k].numpy(), d * (k + 1), atol=1e-5)


def test_gradients_reach_every_projection():
    torch.manual_seed(3)
    att = SymAttention(16, 2, 1, 4, mirror=True)
    out = _run(att, torch.randn(2, 5, 7, 16))
    (out**2).sum().backward()
    for lin in (att.sampling_offsets, att.attention_weights, att.value_proj, att.output_proj):
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_value_padding_mask_zeroes_values():
    att = _identity_attention(8, heads=2, mirror=True)
    value = torch.zeros(1, 3, 4, 8)
    value[0, 1, 0, 2] = 1.0
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 1 * 4 + 0] = True
    assert _run(att, value, mask=mask).abs().max() == 0


def test_multi_level_shapes_and_encoder_layer():
    torch.manual_seed(4)
    shapes = [(6, 6), (3, 5)]
    att = SymAttention(32, 4, n_levels=2, n_points=2)
    s = sum(h * w for h, w in shapes)
    ref = torch.rand(2, 7, 2, 2)
    out = att(torch.randn(2, 7, 32), ref, torch.randn(2, s, 32), torch.tensor(shapes))
    assert out.shape == (2, 7, 32)
    layer = SymEncoderLayer(32, 64, 0.1, 4, 1, 4)
    src = torch.randn(2, 15, 32)
    y = layer(src, torch.randn(2, 15, 32), reference_points_for([(3, 5)]), [(3, 5)])
    assert y.shape == src.shape
    # post-norm: the output is layer-normalised
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 15), atol=1e-5, rtol=0)


def test_cpu_bag_sum_kernel_matches_grid_sample_kernel():
    """The two kernels of ms_deform_sample (CPU bag sum, CUDA grid_sample — run here on CPU) agree
    in value and in every gradient, with locations outside the maps and odd multi-level shapes; the
    bag-sum backward passes gradcheck in float64."""
    from tbx.models.deform_core import _bag_sum_core, _grid_sample_core

    torch.manual_seed(4)
    shapes = [(5, 7), (3, 4), (1, 2)]
    s = sum(h * w for h, w in shapes)
    n, q, m, d, p = 2, 6, 3, 4, 2
    value = torch.randn(n, s, m, d, dtype=torch.float64, requires_grad=True)
    loc = (torch.rand(n, q, m, len(shapes), p, 2, dtype=torch.float64) * 1.3 - 0.15).requires_grad_(True)
    wts = torch.rand(n, q, m, len(shapes), p, dtype=torch.float64, requires_grad=True)
    g = torch.randn(n, q, m * d, dtype=torch.float64)
    a = _bag_sum_core(value, shapes, loc, wts)
    b = _grid_sample_core(value, shapes, loc, wts)
    torch.testing.assert_close(a, b)
    inputs = (value, loc, wts)
    for ga, gb in zip(torch.autograd.grad(a, inputs, g), torch.autograd.grad(b, inputs, g)):
        torch.testing.assert_close(ga, gb)
    assert torch.autograd.gradcheck(lambda v, lc, w: _bag_sum_core(v, shapes, lc, w), (value, loc, wts))


@pytest.mark.parametrize("shapes", [[(4, 3), (2, 2)], [(4, 3)]])  # one level: the SAS block's path
def test_cpu_bag_sum_kernel_far_outside_locations(shapes):
    """Samples far outside the maps (clamped top-left taps, all weights zero) and exactly on the
    borders give grid_sample's values and gradients."""
    from tbx.models.deform_core import _bag_sum_core, _grid_sample_core

    torch.manual_seed(5)
    s = sum(h * w for h, w in shapes)
    n, q, m, d, p = 1, 9, 2, 3, 3
    value = torch.randn(n, s, m, d, dtype=torch.float64, requires_grad=True)
    loc = torch.rand(n, q, m, len(shapes), p, 2, dtype=torch.float64) * 4 - 1.5
    loc[0, :3] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64).view(3, 1, 1, 1, 1)  # borders
    loc.requires_grad_(True)
    wts = torch.rand(n, q, m, len(shapes), p, dtype=torch.float64, requires_grad=True)
    g = torch.randn(n, q, m * d, dtype=torch.float64)
    a = _bag_sum_core(value, shapes, loc, wts)
    b = _grid_sample_core(value, shapes, loc, wts)
    torch.testing.assert_close(a, b)
    inputs = (value, loc, wts)
    for ga, gb in zip(torch.autograd.grad(a, inputs, g), torch.autograd.grad(b, inputs, g), strict=True):
        torch.testing.assert_close(ga, gb)


def test_inference_linear_matches_linear():
    """InferenceLinear = x·Wᵀ + b (an independent einsum) under inference mode on channels-last
    strided input, with autograd and a plain nn.Linear state dict unchanged."""
    from tbx.models.sym_attention import InferenceLinear

    torch.manual_seed(6)
    lin = InferenceLinear(32, 24)
    ref = torch.nn.Linear(32, 24)
    ref.load_state_dict(lin.state_dict())
    x = torch.randn(2, 32, 5, 7).flatten(2).transpose(1, 2)  # (N, H·W, C), strided
    expect = torch.einsum("nsc,oc->nso", x, lin.weight) + lin.bias
    residual = torch.randn(2, 35, 24)
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), expect, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lin(x, residual), expect + residual, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lin(x, residual), expect + residual, atol=1e-5, rtol=1e-5)  # autograd path
    lin.relu = True
    with pytest.raises(ValueError, match="residual sum or a ReLU"):
        lin(x, residual)
    lin.relu = False
    xg = x.clone().requires_grad_(True)
    lin(xg).sum().backward()
    assert xg.grad is not None
    torch.testing.assert_close(xg.grad, lin.weight.sum(0).expand_as(xg).detach())


def test_cpu_bag_sum_kernel_bfloat16_backward():
    """bf16 (CPU autocast) runs forward and backward, close to the float32 gradients."""
    from tbx.models.deform_core import _bag_sum_core

    torch.manual_seed(7)
    shapes = [(6, 5), (3, 3)]
    inputs32 = (
        torch.randn(1, 39, 2, 4),
        torch.rand(1, 7, 2, 2, 3, 2) * 0.9 + 0.05,
        torch.rand(1, 7, 2, 2, 3),
    )
    inputs32 = tuple(t.bfloat16().float() for t in inputs32)  # the same samples (and cells) in both
    grads = []
    for dtype in (torch.float32, torch.bfloat16):
        ins = [t.detach().to(dtype).requires_grad_(True) for t in inputs32]
        _bag_sum_core(ins[0], shapes, ins[1], ins[2]).sum().backward()
        grads.append([t.grad.float() for t in ins])
    # value and attention-weight gradients match; a location's gradient may jump where bf16 rounding
    # moves a sample into the next pixel cell, so it is only checked to be finite
    for g32, g16 in zip(grads[0][::2], grads[1][::2], strict=True):
        torch.testing.assert_close(g16, g32, atol=0.1, rtol=0.05)
    assert torch.isfinite(grads[1][1]).all()
