"""Symmetric positional encoding + STN (docs/models.md §2.3), checked against a hand-written DETR encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tbx.models.sas import POS_ENCODINGS, SASBlock
from tbx.models.spe import STN, SymmetricPositionalEncoding


def _sine_ref(h: int, w: int, num_feats: int = 128, temperature: float = 10000.0) -> np.ndarray:
    """DETR sine encoding (2·num_feats, H, W) written independently with numpy (docs/models.md §2.3)."""
    out = np.zeros((2 * num_feats, h, w))
    for axis, n in ((0, h), (1, w)):
        pos = (np.arange(n) + 0.5) / n * 2 * math.pi
        for d in range(num_feats):
            freq = temperature ** (2 * (d // 2) / num_feats)
            val = np.sin(pos / freq) if d % 2 == 0 else np.cos(pos / freq)
            ch = d if axis == 0 else num_feats + d  # [y, x]
            out[ch] = val[:, None] if axis == 0 else val[None, :]
    return out


def _set_theta(spe: SymmetricPositionalEncoding, theta) -> None:
    with torch.no_grad():
        spe.stn.fc_loc[2].weight.zero_()
        spe.stn.fc_loc[2].bias.copy_(torch.tensor(theta, dtype=torch.float32))


@pytest.mark.parametrize("h,w", [(4, 6), (5, 7), (3, 1), (8, 8)])
def test_sine_mode_matches_detr_formula(h, w):
    pe = SymmetricPositionalEncoding(mode="sine")(torch.randn(2, 256, h, w))
    assert pe.shape == (2, 256, h, w)
    np.testing.assert_allclose(pe[1].numpy(), _sine_ref(h, w), atol=1e-5)


@pytest.mark.parametrize("h,w", [(4, 6), (5, 7), (6, 9), (2, 2)])
def test_identity_theta_is_mirror_symmetric(h, w):
    torch.manual_seed(0)
    spe = SymmetricPositionalEncoding(mode="spe", stn=True)
    feat = torch.randn(2, 256, h, w)
    theta = spe.stn(feat)
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3))
    pe = spe(feat).detach().numpy()
    ref = _sine_ref(h, w)
    half = w // 2
    for j in range(half):  # left column j is the plain encoding of column W-1-j
        expected = np.broadcast_to(ref[:, :, w - 1 - j], pe[:, :, :, j].shape)
        np.testing.assert_allclose(pe[:, :, :, j], expected, atol=1e-5)
    # the right half (and the centre column of an odd W) keep the plain encoding
    np.testing.assert_allclose(pe[0][:, :, half:], ref[:, :, half:], atol=1e-6)
    np.testing.assert_allclose(pe[:, :, :, ::-1], pe, atol=1e-5)


def test_translation_theta_moves_the_left_half():
    h, w = 6, 10
    spe = SymmetricPositionalEncoding(mode="spe", stn=True)
    theta = [1.0, 0.0, 0.3, 0.0, 1.0, -0.2]
    _set_theta(spe, theta)
    pe = spe(torch.randn(1, 256, h, w)).detach()
    plain = torch.from_numpy(_sine_ref(h, w)).float()[None]
    right = plain[..., w // 2 :]
    grid = F.affine_grid(torch.tensor(theta).view(1, 2, 3), [1, 256, h, w // 2], align_corners=False)
    warped = F.grid_sample(right, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(pe[..., : w // 2], warped.flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(pe[..., w // 2 :], right, atol=1e-5, rtol=0)
    # it really moved: not symmetric any more
    assert (pe[..., : w // 2] - right.flip(-1)).abs().max() > 0.1


def test_odd_width_centre_column_unchanged_under_any_theta():
    h, w = 5, 9
    spe = SymmetricPositionalEncoding(mode="spe", stn=True)
    _set_theta(spe, [0.8, 0.1, 0.25, -0.1, 1.1, 0.3])
    pe = spe(torch.randn(1, 256, h, w)).detach()[0].numpy()
    np.testing.assert_allclose(pe[:, :, w // 2 :], _sine_ref(h, w)[:, :, w // 2 :], atol=1e-6)


def test_left_to_right_direction():
    h, w = 4, 7
    spe = SymmetricPositionalEncoding(mode="spe", stn=True, direction="left_to_right")
    pe = spe(torch.randn(1, 256, h, w)).detach()[0].numpy()
    ref = _sine_ref(h, w)
    np.testing.assert_allclose(pe[:, :, : w - w // 2], ref[:, :, : w - w // 2], atol=1e-6)  # left + centre
    np.testing.assert_allclose(pe, pe[:, :, ::-1], atol=1e-5)


def test_spe_without_stn_has_no_parameters_and_mirrors():
    spe = SymmetricPositionalEncoding(mode="spe", stn=False)
    assert sum(p.numel() for p in spe.parameters()) == 0
    pe = spe(torch.randn(1, 256, 3, 6)).numpy()
    np.testing.assert_allclose(pe, pe[..., ::-1], atol=1e-6)


def test_stn_architecture_and_init():
    stn = STN(256)
    assert sum(p.numel() for p in stn.parameters()) == 20_280  # docs/models.md §2.5
    assert stn.fc_loc[2].weight.abs().sum() == 0
    for size in (4, 8, 64):  # P7..P3 at 512 — the adaptive pool makes every level work
        theta = stn(torch.randn(3, 256, size, size))
        torch.testing.assert_close(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(3, 2, 3))


def test_one_stn_shared_across_levels():
    torch.manual_seed(0)
    block = SASBlock(256, "spe", "symmetric")
    stns = [m for m in block.modules() if isinstance(m, STN)]
    assert len(stns) == 1
    # both levels push gradient into the same STN parameters.  At the paper's init nothing flows
    # (zero offset/weight layers ignore the query, zero last STN layer ignores the feature), so
    # perturb those first, as training does after the first step.
    with torch.no_grad():
        stns[0].fc_loc[2].weight.normal_(0, 0.01)
        block.encoder.self_attn.sampling_offsets.weight.normal_(0, 0.01)
    feats = [torch.randn(1, 256, 8, 8), torch.randn(1, 256, 4, 4)]
    grads = []
    for f in feats:
        block.zero_grad()
        block([f])[0].pow(2).sum().backward()
        grads.append(stns[0].fc_loc[0].weight.grad.clone())
    assert all(g.abs().sum() > 0 for g in grads) and not torch.equal(grads[0], grads[1])


def test_none_and_relative_modes():
    feat = torch.randn(2, 256, 5, 6)
    assert SymmetricPositionalEncoding(mode="none")(feat).abs().sum() == 0
    rel = SymmetricPositionalEncoding(mode="relative")
    pe = rel(feat)
    assert pe.shape == feat.shape
    # conditional PE is translation-equivariant away from the borders
    shifted = torch.roll(feat, 1, dims=-1)
    torch.testing.assert_close(rel(shifted)[..., 1:4, 2:5], pe[..., 1:4, 1:4], atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        SymmetricPositionalEncoding(mode="bogus")


@pytest.mark.parametrize("pos", sorted(POS_ENCODINGS))
@pytest.mark.parametrize("attention", ["symmetric", "deformable"])
def test_sas_block_ablations_run(pos, attention):
    block = SASBlock(256, pos, attention)
    assert block.encoder.self_attn.mirror is (attention == "symmetric")
    outs = block([torch.randn(1, 256, 4, 6), torch.randn(1, 256, 2, 3)])
    assert [o.shape for o in outs] == [(1, 256, 4, 6), (1, 256, 2, 3)]
