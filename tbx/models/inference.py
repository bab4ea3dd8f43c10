"""Inference-only model rewrites (``tbx predict``, ``tbx models info``, the speed benchmarks).

:func:`prepare_for_inference` is the one entry point; :func:`fold_batchnorm` folds every eval-mode
``BatchNorm2d`` that directly follows a ``Conv2d`` (ResNet/VGG stems, blocks and downsample
branches) into the convolution's weight and bias —
``y = γ·(W∗x + b − μ)/√(σ² + ε) + β`` is again a convolution — and replaces the BN by
``nn.Identity``.  The outputs are unchanged (up to float rounding) and one memory pass per
convolution disappears.  Only for models that will not train again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def prepare_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """What ``tbx predict`` does to a loaded model: eval mode, :func:`fold_batchnorm`, and NHWC
    weights when ``channels_last`` (feed NHWC images too).  In place; returns the model."""
    fold_batchnorm(model.eval())
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
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if _foldable(conv, bn):
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)  # type: ignore[arg-type,type-var]
                    module._modules[b] = nn.Identity()
                    folded += 1
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
