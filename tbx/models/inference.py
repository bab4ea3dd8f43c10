"""Inference-only model rewrites (``tbx predict``, ``tbx models info``, the speed benchmarks).

:func:`prepare_for_inference` is the one entry point.  Every rewrite keeps the outputs (up to
float rounding) and the parameters; all of them are for models that will not train again.

* :func:`fold_batchnorm` folds every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d``
  (ResNet/VGG stems, blocks and downsample branches) into the convolution's weight and bias —
  ``y = γ·(W∗x + b − μ)/√(σ² + ε) + β`` is again a convolution — and replaces the BN by
  ``nn.Identity``: one memory pass per convolution disappears.
* :func:`fuse_activations` then runs each ``Conv2d`` followed by a ``ReLU`` (``nn.Sequential``
  pairs: the RetinaNet towers, the classification head) as one :class:`FusedConv2d`, and each
  folded torchvision ResNet block as a :class:`FusedBlock` whose last convolution adds the
  shortcut and applies the ReLU in the same oneDNN call.  A ReLU or a residual sum is a full pass
  over a large NHWC map: on one thread these passes, and PyTorch's choice of its im2col/GEMM path
  for 1×1 convolutions of batches < 16 (slower than oneDNN's), were ≈ 15 % of RetinaNet's time.
* modules with a ``fuse_for_inference()`` method rewrite themselves: the SAS block's attention
  runs its two query projections (sampling offsets, attention weights) as one matrix product
  (:meth:`tbx.models.sym_attention.SymAttention.fuse_for_inference`), its encoder layer the
  FFN's ReLU inside the first linear layer's oneDNN call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import BasicBlock, Bottleneck

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def onednn_fast_path(x: Tensor) -> bool:
    """Whether an inference-only oneDNN kernel may replace the plain op for input ``x``: float32 on
    the CPU with autograd off (``torch.inference_mode`` / ``no_grad``), not while exporting to ONNX."""
    return (
        _ONEDNN
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.onnx.is_in_onnx_export()
    )


def prepare_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """What ``tbx predict`` does to a loaded model: eval mode, :func:`fold_batchnorm`,
    :func:`fuse_activations`, fused SAS query projections, and NHWC weights when
    ``channels_last`` (feed NHWC images too).  In place; returns the model."""
    fold_batchnorm(model.eval())
    fuse_activations(model)
    for module in list(model.modules()):
        fuse = getattr(module, "fuse_for_inference", None)
        if callable(fuse):  # SymAttention: one query projection; SymEncoderLayer: the FFN's ReLU
            fuse()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and not bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
    )


def _rewrite_pairs(seq: nn.Sequential, rewrite: Callable[[nn.Module, nn.Module], nn.Module | None]) -> int:
    """For consecutive entries ``(a, b)`` of ``seq`` where ``rewrite(a, b)`` gives a module: ``a`` ←
    that module, ``b`` ← ``nn.Identity``; returns how many pairs were rewritten."""
    names = list(seq._modules)
    done = 0
    for a, b in zip(names, names[1:]):
        first, second = seq._modules[a], seq._modules[b]
        new = rewrite(first, second) if first is not None and second is not None else None
        if new is not None:
            seq._modules[a], seq._modules[b] = new, nn.Identity()
            done += 1
    return done


def fold_batchnorm(model: nn.Module) -> int:
    """Fold Conv2d → BatchNorm2d pairs in place; returns how many were folded.

    Pairs are found structurally: attributes ``convK``/``bnK`` of one module (torchvision's ResNet
    stem and blocks) and consecutive entries of an ``nn.Sequential`` (downsample branches, VGG).
    Raises ``ValueError`` on a model in training mode.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (model.eval())")
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            folded += _rewrite_pairs(
                module,
                lambda conv, bn: fuse_conv_bn_eval(conv, bn) if _foldable(conv, bn) else None,  # type: ignore[arg-type,type-var]
            )
            continue
        for name, child in list(module.named_children()):
            if not name.startswith("conv"):
                continue
            bn_name = "bn" + name[len("conv") :]
            norm: Any = getattr(module, bn_name, None)
            if norm is not None and _foldable(child, norm):
                setattr(module, name, fuse_conv_bn_eval(child, norm))  # type: ignore[type-var]
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded


class FusedConv2d(nn.Conv2d):
    """``Conv2d`` (same parameters and MAC hooks) → ``+ residual`` (optional) → ReLU (if ``relu``),
    as one oneDNN call (``torch.ops.mkldnn._convolution_pointwise``) on the :func:`onednn_fast_path`;
    otherwise ``F.conv2d`` and the same element-wise ops (autograd, ONNX export, CUDA, bf16)."""

    relu: bool

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, relu: bool) -> FusedConv2d:
        """The same convolution (its parameters, not copies) with a fused ReLU when ``relu``."""
        fused = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            conv.stride,  # type: ignore[arg-type]
            conv.padding,  # type: ignore[arg-type]
            conv.dilation,  # type: ignore[arg-type]
            conv.groups,
            conv.bias is not None,
            device="meta",
        )
        fused.weight = conv.weight
        fused.bias = conv.bias
        fused.relu = relu
        return fused

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        # tiny maps (the STN, P7's heads) stay on the plain path: oneDNN's per-call set-up costs more
        if onednn_fast_path(x) and x.dim() == 4 and x.shape[-2] * x.shape[-1] * self.out_channels >= 4096:
            args = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
            if residual is None:
                act = "relu" if self.relu else "none"
                return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, *args, act, [], "")
            return torch.ops.mkldnn._convolution_pointwise.binary(  # "add" then ReLU (or nothing)
                x, residual, self.weight, self.bias, *args, "add", 1.0, "relu" if self.relu else None, [], ""
            )
        y = self._conv_forward(x, self.weight, self.bias)
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y


def _fusable(conv: nn.Module) -> bool:
    return type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


class FusedBlock(nn.Module):
    """A BN-folded torchvision ``Bottleneck`` / ``BasicBlock`` with its ReLUs and shortcut sum fused
    into the convolutions (:class:`FusedConv2d`); attribute names (``conv1`` …, ``downsample``)
    and hence parameter names are the block's."""

    def __init__(self, block: Bottleneck | BasicBlock):
        super().__init__()
        convs = [block.conv1, block.conv2] + ([block.conv3] if isinstance(block, Bottleneck) else [])
        for i, conv in enumerate(convs, 1):
            setattr(self, f"conv{i}", FusedConv2d.from_conv(conv, relu=True))
        self.n_convs = len(convs)
        self.downsample = block.downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = x
        for i in range(1, self.n_convs):
            out = getattr(self, f"conv{i}")(out)
        return getattr(self, f"conv{self.n_convs}")(out, identity)


def _folded_block(block: nn.Module) -> bool:
    if type(block) not in (Bottleneck, BasicBlock):
        return False
    names = ("1", "2", "3") if isinstance(block, Bottleneck) else ("1", "2")
    return all(
        _fusable(getattr(block, "conv" + k)) and isinstance(getattr(block, "bn" + k), nn.Identity)
        for k in names
    )


def fuse_activations(model: nn.Module) -> int:
    """Fuse ``Conv2d → ReLU`` pairs of every ``nn.Sequential``, every BN-folded torchvision ResNet
    block (:class:`FusedBlock`) and a BN-folded ResNet stem (``conv1``/``bn1``/``relu``), and run
    every other ``Conv2d`` as a :class:`FusedConv2d` without activation (oneDNN also for 1×1
    convolutions), in place; returns how many ReLUs were fused.  Run after :func:`fold_batchnorm`."""
    fused = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            fused += _rewrite_pairs(
                module,
                lambda conv, act: (
                    FusedConv2d.from_conv(conv, relu=True)  # type: ignore[arg-type]
                    if _fusable(conv) and type(act) is nn.ReLU
                    else None
                ),
            )
            for name in list(module._modules):
                block = module._modules[name]
                if block is not None and _folded_block(block):
                    module._modules[name] = FusedBlock(block)
                    fused += 3 if isinstance(block, Bottleneck) else 2
        stem = module._modules.get("conv1"), module._modules.get("bn1"), module._modules.get("relu")
        if (
            type(module) not in (FusedBlock, Bottleneck, BasicBlock)  # their ReLU serves 2–3 convs
            and stem[0] is not None
            and _fusable(stem[0])
            and isinstance(stem[1], nn.Identity)
            and type(stem[2]) is nn.ReLU
        ):
            module._modules["conv1"] = FusedConv2d.from_conv(stem[0], relu=True)  # type: ignore[arg-type]
            module._modules["relu"] = nn.Identity()
            fused += 1
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if child is not None and _fusable(child):
                module._modules[name] = FusedConv2d.from_conv(child, relu=False)  # type: ignore[arg-type]
    return fused
