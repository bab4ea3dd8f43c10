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
* every oneDNN call reads its weight in oneDNN's blocked layout, packed once
  (:class:`PackedWeight`).
* :func:`reuse_freed_memory` (process-wide, a CPU model only): glibc keeps freed blocks of up to
  32 MiB for reuse instead of handing them back to the kernel.  PyTorch's CPU allocator does not
  cache, so every activation map of ≥ 128 KiB was otherwise a fresh ``mmap`` whose pages fault
  (and are zeroed) on first touch: ≈ 12,800 page faults (50 MB) per 512² RetinaNet image,
  ≈ 19,000 per SymFormer image and ≈ 12,200 in its SAS block alone, 0 after.
"""

from __future__ import annotations

import ctypes
import sys
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
    :func:`fuse_activations`, fused SAS query projections, NHWC weights when ``channels_last``
    (feed NHWC images too) and, for a model on the CPU, :func:`reuse_freed_memory`.  In place;
    returns the model."""
    if any(p.device.type == "cpu" for p in model.parameters()):
        reuse_freed_memory()
    fold_batchnorm(model.eval())
    fuse_activations(model)
    for module in list(model.modules()):
        fuse = getattr(module, "fuse_for_inference", None)
        if callable(fuse):  # SymAttention: one query projection; SymEncoderLayer: the FFN's ReLU
            fuse()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 1 << 30


def reuse_freed_memory() -> bool:
    """Make glibc serve allocations of up to 32 MiB from its heap and keep up to 1 GiB of freed
    memory there (``mallopt``), so that the next image's activations reuse the pages of the last
    one's instead of page-faulting fresh ones in.  Process-wide and permanent (the process keeps
    its peak heap); what oneDNN-based CPU inference stacks get from jemalloc or tcmalloc.
    Returns whether it applied (False off glibc Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


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


class PackedWeight:
    """oneDNN's blocked copy of a convolution or linear weight, for the :func:`onednn_fast_path`:
    made by ``pack`` at the first call and again whenever the weight changes (another tensor, or
    an in-place update such as ``load_state_dict``).  Without it oneDNN reorders the plain weight
    on every call: 0.1–0.9 ms of a 256-channel 3×3 convolution on one thread (a 4² map: 45 % of
    the call), ≈ 4 % of a 256 → 1024 linear layer — the same numbers either way.  The copy (as
    much memory again as the weights) is not in the state dict and is neither deep-copied nor
    pickled."""

    __slots__ = ("key", "tensor")

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.tensor: Tensor | None = None

    def __deepcopy__(self, memo: dict) -> PackedWeight:
        return PackedWeight()

    def __reduce__(self) -> tuple:
        return (PackedWeight, ())

    def get(self, weight: Tensor, pack: Callable[[Tensor], Tensor]) -> Tensor:
        try:
            version = weight._version
        except RuntimeError:  # an inference tensor has no version counter (and is never updated)
            version = 0
        key = (weight.data_ptr(), version, tuple(weight.shape), weight.dtype)
        if self.key != key or self.tensor is None:
            self.tensor, self.key = pack(weight), key
        return self.tensor


class FusedConv2d(nn.Conv2d):
    """``Conv2d`` (same parameters and MAC hooks) → ``+ residual`` (optional) → ReLU (if ``relu``),
    as one oneDNN call (``torch.ops.mkldnn._convolution_pointwise``, its weight a
    :class:`PackedWeight`) on the :func:`onednn_fast_path`; otherwise ``F.conv2d`` and the same
    element-wise ops (autograd, ONNX export, CUDA, bf16)."""

    relu: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.relu = False
        self.packed = PackedWeight()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, relu: bool) -> FusedConv2d:
        """The same convolution (its parameters, not copies) with a fused ReLU when ``relu``."""
        fused = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
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
            weight = self.packed.get(self.weight, lambda w: _pack_conv_weight(w, args, list(x.shape)))
            if residual is None:
                act = "relu" if self.relu else "none"
                return torch.ops.mkldnn._convolution_pointwise(x, weight, self.bias, *args, act, [], "")
            return torch.ops.mkldnn._convolution_pointwise.binary(  # "add" then ReLU (or nothing)
                x, residual, weight, self.bias, *args, "add", 1.0, "relu" if self.relu else None, [], ""
            )
        y = self._conv_forward(x, self.weight, self.bias)
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y


def _pack_conv_weight(weight: Tensor, args: tuple, input_shape: list[int]) -> Tensor:
    """oneDNN's blocked layout of a convolution weight for inputs like ``input_shape`` (``args``:
    padding, stride, dilation, groups); the layout serves other input sizes too (the call reorders
    if not).  The input shape is an argument torch's type stub omits."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), *args, input_shape)  # type: ignore[call-arg]


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
