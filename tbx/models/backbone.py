"""ResNet trunk (torchvision) and the RetinaNet-style FPN (docs/models.md §2.1), plus backbone weights
loading.

* :class:`ResNetBackbone` — torchvision ResNet-18/34/50/101 without ``avgpool``/``fc``; returns
  C2..C5.  Its BatchNorm layers are plain ``BatchNorm2d`` whose affine parameters train while the
  running statistics stay frozen (the detector keeps them in eval mode, docs/models.md §2.1).
* :class:`FPN` — 1×1 laterals on C3..C5, nearest top-down, 3×3 outputs, no norm/activation;
  P6 = 3×3 stride-2 conv on **C5**, P7 = 3×3 stride-2 conv on P6 with **no ReLU** in between
  (mmdetection's ``add_extra_convs="on_input"``; torchvision's ``LastLevelP6P7`` puts a ReLU
  before P7, hence our own module).  Xavier-uniform init, zero bias (mmdetection's FPN init).
* :func:`load_backbone_weights` — ``"imagenet"`` (torchvision's weights API, cached file in
  ``$TORCH_HOME/hub/checkpoints``), ``"none"`` or a path to a torchvision ResNet ``state_dict`` or a
  tbx checkpoint (its ``backbone.*`` entries).  The file reading (:func:`read_backbone_state`) and
  the checked load with its loaded / missing / unexpected :class:`WeightsReport`
  (:func:`load_state_checked`) are shared with :mod:`tbx.models.p2t`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from tbx.errors import TbxError

RESNETS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1),
}


class ResNetBackbone(nn.Module):
    """torchvision ResNet trunk → ``[C2, C3, C4, C5]`` (strides 4, 8, 16, 32).

    Parameter names are torchvision's (``conv1.weight``, ``layer1.0.conv1.weight`` …) so that a
    torchvision ``state_dict`` (minus ``fc.*``) loads directly.
    """

    def __init__(self, depth: str = "resnet50"):
        super().__init__()
        if depth not in RESNETS:
            raise TbxError(f"unknown backbone {depth!r}", fix=f"use one of {sorted(RESNETS)}")
        net = RESNETS[depth][0](weights=None)
        self.depth = depth
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth in ("resnet50", "resnet101") else 1
        self.out_channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: Tensor) -> list[Tensor]:
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


class FPN(nn.Module):
    """FPN on C3..C5 with P6 (from C5) and P7 (from P6, no ReLU): ``[P3..P7]`` (docs/models.md §2.1)."""

    def __init__(self, in_channels: list[int], out_channels: int = 256):
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        self.p6 = nn.Conv2d(in_channels[-1], out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.out_channels = out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """``feats`` = [C3, C4, C5] → [P3, P4, P5, P6, P7]."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down, nearest upsampling
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        p6 = self.p6(feats[-1])
        outs += [p6, self.p7(p6)]
        return outs


# ---------------------------------------------------------------------------------------------
# weights


def imagenet_weights_file(depth: str) -> Path:
    """Where torchvision looks for the ImageNet weights of ``depth``:
    ``$TORCH_HOME/hub/checkpoints/<file name of the weights URL>``."""
    weights = RESNETS[depth][1]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _download(url: str, dst: Path) -> None:
    """Fetch ``url`` into ``dst`` (torch.hub's downloader; tests replace this to stay offline)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dst), progress=False)


def fetch_weights(name: str, url: str, path: Path) -> None:
    """Download ``url`` into the cache file ``path`` unless it is there; a failure is one
    TbxError saying where to put the file by hand."""
    if path.is_file():
        return
    try:
        _download(url, path)
    except Exception as e:  # offline, proxy, disk… — all the same to the user
        raise TbxError(
            f"ImageNet weights for {name} are not cached and could not be downloaded "
            f"({type(e).__name__}: {e})",
            where=path,
            fix=f"download {url} and place it at {path} (directory: $TORCH_HOME/hub/"
            f"checkpoints, TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')}), "
            "or use pretrained: none / a path to a state_dict",
        ) from e


def _imagenet_state_dict(depth: str) -> object:
    path = imagenet_weights_file(depth)
    fetch_weights(depth, RESNETS[depth][1].url, path)
    return _safe_load(path)


_RESNET_FIX = "pass a torchvision ResNet state_dict or a tbx checkpoint"


def _safe_load(path: Path, fix: str = _RESNET_FIX) -> object:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TbxError(f"cannot read backbone weights ({type(e).__name__}: {e})", where=path, fix=fix) from e
    return obj


@dataclass(frozen=True)
class WeightsReport:
    """What a backbone weights file gave: tensors loaded, backbone tensors missing (always 0 once
    loaded: a missing one is an error) and file tensors the backbone has no use for (an ImageNet
    classifier, …)."""

    source: str
    loaded: int
    missing: int
    unexpected: int

    def to_dict(self) -> dict[str, int]:
        """``{"loaded", "missing", "unexpected"}`` (the JSON of ``tbx models info``)."""
        return {"loaded": self.loaded, "missing": self.missing, "unexpected": self.unexpected}


def _extract_backbone(
    obj: object, path: Path, probe: str = "conv1.weight", fix: str = _RESNET_FIX
) -> dict[str, Tensor]:
    """A backbone state_dict — bare, or wrapped (``{"model": …}``/``{"state_dict": …}``) — or a
    checkpoint whose ``backbone.*`` (or torchvision-detection ``backbone.body.*``) entries form one
    (recognised by the ``probe`` key)."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise TbxError("not a state_dict of tensors", where=path, fix=fix)
    for prefix in ("backbone.body.", "backbone."):
        sub = {k[len(prefix) :]: v for k, v in obj.items() if k.startswith(prefix)}
        if sub and probe in sub:
            return sub
    return dict(obj)


def read_backbone_state(path: Path, probe: str, fix: str) -> dict[str, Tensor]:
    """The backbone state_dict in the file ``path`` (see :func:`_extract_backbone`)."""
    if not path.is_file():
        raise TbxError(
            "backbone weights file not found",
            where=path,
            fix="pretrained must be 'imagenet', 'none' or an existing file",
        )
    return _extract_backbone(_safe_load(path, fix), path, probe, fix)


def load_state_checked(
    module: nn.Module, state: dict[str, Tensor], where: Path, arch: str, fix: str
) -> WeightsReport:
    """Load ``state`` into ``module``: every tensor of ``module`` must be there with its shape (else
    one-line :class:`TbxError`); extra tensors are counted as unexpected and ignored."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    wrong = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
    if missing or wrong:
        if missing:
            detail = f"{len(missing)} missing, e.g. {missing[:3]}"
        else:
            detail = (
                f"shape mismatch at {wrong[:3]}: file {tuple(state[wrong[0]].shape)}, "
                f"model {tuple(own[wrong[0]].shape)}"
            )
        raise TbxError(f"backbone weights do not fit {arch} ({detail})", where=where, fix=fix)
    module.load_state_dict({k: state[k] for k in own}, strict=True)
    return WeightsReport(str(where), loaded=len(own), missing=0, unexpected=len(set(state) - set(own)))


def load_backbone_weights(backbone: ResNetBackbone, pretrained: str | Path) -> WeightsReport | None:
    """Load ``pretrained`` (``"imagenet"``, ``"none"`` or a file path) into ``backbone``; returns
    the loaded / missing / unexpected report (None for ``"none"``; the ImageNet ``fc.*`` is unexpected)."""
    spec = str(pretrained)
    if spec.lower() == "none":
        return None
    if spec.lower() == "imagenet":
        where = imagenet_weights_file(backbone.depth)
        state = _extract_backbone(_imagenet_state_dict(backbone.depth), where)
    else:
        where = Path(spec).expanduser()
        state = read_backbone_state(where, probe="conv1.weight", fix=_RESNET_FIX)
    return load_state_checked(
        backbone, state, where, arch=backbone.depth, fix=f"use weights of a torchvision {backbone.depth}"
    )
