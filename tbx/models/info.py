"""Model size and cost: parameters (live and paper accounting), multiply-accumulates, CPU latency.

Counting is generic (nothing per model is hard-coded):

* ``params_live`` — every parameter the model holds; ``params_trainable`` — those with
  ``requires_grad`` after ``set_stage(1)`` (Deformable DETR freezes its stem, layer1 and BN);
  ``params_paper`` — trainable + the model's optional ``dead_params`` attribute: parameters the
  authors' code creates but never uses (docs/models.md §2.5: 130,412 for SymFormer-RetinaNet), so that the
  figure is comparable with the paper's table.
* ``gmacs`` — multiply-accumulates of one forward pass at ``input × input``, batch 1 (the model's
  ``macs_forward`` — every layer but post-processing — when it has one, else ``predict``),
  counted like mmcv's ``get_flops`` (the paper's tool, docs/models.md §2.5) with forward hooks on modules:
  Conv (k·k·C_in/groups per output element + 1 for the bias), Linear (input elements × out
  features), BatchNorm/GroupNorm/LayerNorm/InstanceNorm (elements, ×2 when affine), the
  activations mmcv hooks (ReLU, ReLU6, PReLU, ELU, LeakyReLU: output elements), pooling modules
  (input elements), Upsample (output elements).
  Not in ``gmacs`` (mmcv does not see them either): functional calls — deformable/bilinear
  sampling (``grid_sample``), attention matrix products (``matmul``/``bmm``/``einsum``/
  ``scaled_dot_product_attention``), functional adaptive average pooling (P2T's pyramid pooling),
  ``F.interpolate``, ``F.linear`` inside ``nn.MultiheadAttention`` —, activation modules mmcv has
  no hook for (Hardswish, GELU, SiLU, Sigmoid …) and detection post-processing (decoding, NMS).
  The first three are counted separately as ``gmacs_functional`` (grid_sample: 4 taps per sampled
  element; products: the usual m·n·k; pooling: input elements), the activations as
  ``gmacs_activations`` (output elements), and ``gmacs_full`` = ``gmacs`` + both.
* ``latency_ms`` — median wall time of ``predict`` on CPU (batch 1, ``torch.inference_mode``)
  after warm-up runs, on a copy prepared as ``tbx predict`` prepares it (BatchNorm folded,
  channels_last: :func:`tbx.models.inference.prepare_for_inference`).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from tbx.models.config import ModelConfig
from tbx.models.inference import prepare_for_inference
from tbx.models.registry import build

_ACT = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU)  # the activations mmcv's counter hooks
_ACT_UNHOOKED = (nn.Hardswish, nn.Hardsigmoid, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Mish)
_POOL = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
_NORM = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _first_tensor(x):
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (list, tuple)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _fused_relu(module: nn.Module, out: Tensor) -> int:
    """The ReLU an inference rewrite fused into a conv / linear layer (``relu = True``,
    :mod:`tbx.models.inference`) counts as the ReLU module it replaced."""
    return out.numel() if getattr(module, "relu", False) is True else 0


def module_macs(module: nn.Module, inputs: tuple, output) -> int:
    """mmcv-style MACs of one call of a leaf module (0 for modules mmcv does not count)."""
    inp, out = _first_tensor(inputs), _first_tensor(output)
    if inp is None or out is None:
        return 0
    if isinstance(module, nn.modules.conv._ConvNd):
        k = 1
        for s in module.kernel_size:
            k *= s
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            per = k * module.in_channels * module.out_channels // module.groups
            macs = per * inp.numel() // module.in_channels
            return macs + (out.numel() if module.bias is not None else 0)
        per = k * module.in_channels // module.groups
        return out.numel() * per + (out.numel() if module.bias is not None else 0) + _fused_relu(module, out)
    if isinstance(module, nn.Linear):
        return inp.numel() * module.out_features + _fused_relu(module, out)
    if isinstance(module, _NORM):
        affine = getattr(module, "affine", getattr(module, "elementwise_affine", False))
        return inp.numel() * (2 if affine else 1)
    if isinstance(module, _ACT):
        return out.numel()
    if isinstance(module, _POOL):
        return inp.numel()
    if isinstance(module, nn.Upsample):
        return out.numel()
    return 0


class _FunctionalCounter(TorchFunctionMode):
    """Counts MACs of functional calls mmcv does not see (grid_sample, matrix products, adaptive
    average pooling outside a pooling module)."""

    def __init__(self):
        super().__init__()
        self.macs = 0
        self.in_pool_module = 0  # > 0 while a pooling module (counted by its hook) runs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            if func is F.adaptive_avg_pool2d and not self.in_pool_module:
                self.macs += args[0].numel()
            elif func is F.grid_sample:
                out = func(*args, **kwargs)
                self.macs += out.numel() * 4  # bilinear: 4 taps per output element
                return out
            if func in (torch.matmul, torch.bmm, Tensor.__matmul__, Tensor.matmul, Tensor.bmm):
                a, b = args[0], args[1]
                if a.dim() >= 2 and b.dim() >= 2:
                    batch = max(a[..., 0, 0].numel(), b[..., 0, 0].numel())
                    self.macs += batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
            elif func in (torch.baddbmm,):
                a, b = args[1], args[2]
                self.macs += a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
            elif func is F.scaled_dot_product_attention:
                q, k, v = args[:3]
                self.macs += q[..., 0, 0].numel() * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
            elif func is torch.einsum:
                out = func(*args, **kwargs)
                operands = args[1:] if len(args) > 2 else args[1]
                sizes = {}
                spec = args[0].replace(" ", "").split("->")[0].split(",")
                for sub, op in zip(spec, operands):
                    for ch, n in zip(sub, op.shape):
                        sizes[ch] = n
                total = 1
                for n in sizes.values():
                    total *= n
                self.macs += total
                return out
        except Exception:  # counting must never break the forward pass
            pass
        return func(*args, **kwargs)


def model_components(model: nn.Module) -> dict[str, nn.Module]:
    """The model's paper components (``model.components()`` when defined, else its children)."""
    if hasattr(model, "components"):
        return dict(cast(Any, model).components())
    return dict(model.named_children())


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@dataclass
class MacCount:
    """MACs of one pass: mmcv-style per component, and what mmcv does not see (module docstring)."""

    per_component: dict[str, int]
    functional: int
    activations: int

    @property
    def total(self) -> int:
        return sum(self.per_component.values())


def count_macs_detail(model: nn.Module, images: Tensor) -> MacCount:
    """mmcv-style MACs per component of one ``predict`` (or forward) pass, plus the functional
    MACs and the MACs of activation modules mmcv has no hook for."""
    comps = model_components(model)
    owner: dict[nn.Module, str] = {}
    for cname, cmod in comps.items():
        for m in cmod.modules():
            owner.setdefault(m, cname)
    per: dict[str, int] = defaultdict(int)
    unhooked = [0]
    counter = _FunctionalCounter()

    def hook(mod: nn.Module, inputs: tuple, output: object, name: str) -> None:
        per[name] += module_macs(mod, inputs, output)
        if isinstance(mod, _ACT_UNHOOKED):
            out = _first_tensor(output)
            unhooked[0] += out.numel() if out is not None else 0
        if isinstance(mod, _POOL):
            counter.in_pool_module -= 1

    def pre_hook(mod: nn.Module, inputs: tuple) -> None:
        counter.in_pool_module += 1

    handles = []
    for m in model.modules():
        if len(list(m.children())) == 0:
            handles.append(m.register_forward_hook(partial(hook, name=owner.get(m, "other"))))
            if isinstance(m, _POOL):
                handles.append(m.register_forward_pre_hook(pre_hook))
    try:
        with torch.inference_mode(), counter:
            _run_for_macs(model, images)
    finally:
        for h in handles:
            h.remove()
    per_component = {c: per.get(c, 0) for c in list(comps) + (["other"] if per.get("other") else [])}
    return MacCount(per_component, counter.macs, unhooked[0])


def count_macs(model: nn.Module, images: Tensor) -> tuple[dict[str, int], int]:
    """mmcv-style MACs per component of one ``predict`` (or forward) pass, and functional MACs."""
    res = count_macs_detail(model, images)
    return res.per_component, res.functional


def _run_for_macs(model: nn.Module, images: Tensor):
    if hasattr(model, "macs_forward"):
        return cast(Any, model).macs_forward(images)
    return _run(model, images)


def _run(model: nn.Module, images: Tensor):
    sizes = [(images.shape[-2], images.shape[-1])] * images.shape[0]
    if hasattr(model, "predict"):
        return cast(Any, model).predict(images, sizes)
    return model(images)


def measure_latency(model: nn.Module, images: Tensor, runs: int = 5, warmup: int = 2) -> float:
    """Median seconds of one ``predict`` pass (inference mode)."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            _run(model, images)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def model_info(
    name: str,
    cfg: ModelConfig | None = None,
    input_size: int | None = None,
    latency_runs: int = 3,
    model: nn.Module | None = None,
    load_weights: bool = False,
) -> dict:
    """Parameters, MACs and CPU latency of model ``name`` (weights random: ``pretrained="none"``,
    unless ``load_weights``: then ``cfg.pretrained`` is loaded and its report returned).

    Returns a JSON-serialisable dict: ``model``, ``backbone``, ``input``, ``params_live``,
    ``params_trainable``, ``dead_params``, ``params_paper``, ``gmacs`` (mmcv-style),
    ``gmacs_functional``, ``gmacs_activations``, ``gmacs_full`` (see the module docstring),
    ``latency_ms`` (None when ``latency_runs`` is 0), ``pretrained`` (``{"loaded", "missing",
    "unexpected"}`` tensors of the backbone weights file, None without weights) and ``components``
    (per component: ``params``, ``params_trainable``, ``gmacs``).
    """
    cfg = cfg or ModelConfig()
    if not load_weights:
        cfg = replace(cfg, pretrained="none")
    size = int(input_size or cfg.input_size)
    if model is None and latency_runs <= 0 and not load_weights:
        # nothing to time: count on the meta device (no weights, no compute) when the model offers a
        # post-processing-free `macs_forward`
        try:
            with torch.device("meta"):
                meta_model = build(name, cfg)
        except Exception:  # a builder that needs real tensors: count on the CPU below
            meta_model = None
        if meta_model is not None and hasattr(meta_model, "macs_forward"):
            model = meta_model
    if model is None:
        model = build(name, cfg)
    cast(Any, model).set_stage(1)
    model.eval()
    device = next(model.parameters()).device
    images = torch.randn(1, 3, size, size, device=device)
    count = count_macs_detail(model, images)
    macs = count.per_component
    comps = model_components(model)
    components = {
        c: {
            "params": count_params(m),
            "params_trainable": count_params(m, True),
            "gmacs": macs.get(c, 0) / 1e9,
        }
        for c, m in comps.items()
    }
    if "other" in macs:
        components["other"] = {"params": 0, "params_trainable": 0, "gmacs": macs["other"] / 1e9}
    report = getattr(model, "pretrained_report", None)
    dead = int(getattr(model, "dead_params", 0))
    trainable = count_params(model, True)
    latency = None
    if latency_runs > 0:
        fast = prepare_for_inference(copy.deepcopy(model))
        nhwc = images.contiguous(memory_format=torch.channels_last)
        latency = measure_latency(fast, nhwc, latency_runs) * 1000
    return {
        "model": name,
        "backbone": cfg.backbone,
        "input": size,
        "params_live": count_params(model),
        "params_trainable": trainable,
        "dead_params": dead,
        "params_paper": trainable + dead,
        "gmacs": count.total / 1e9,
        "gmacs_functional": count.functional / 1e9,
        "gmacs_activations": count.activations / 1e9,
        "gmacs_full": (count.total + count.functional + count.activations) / 1e9,
        "latency_ms": latency,
        "pretrained": report.to_dict() if report is not None else None,
        "components": components,
    }
