"""The image classification head shared by every detector (docs/models.md §2.6).

Input: the last backbone stage (C5; 2048 ch and 16×16 for ResNet-50 at 512).  Conv 1×1 → 512
**with padding 1** (16×16 → 18×18) + ReLU; 3 × (Conv 3×3 512, pad 1, + ReLU); MaxPool 2 (→ 9×9);
2 × (Conv 3×3 512, pad 1, + ReLU); global average pool; Conv 1×1 → 3 logits (healthy, sick, TB).
The loss (cross-entropy with class weights [1, 1, 4]) lives in :meth:`tbx.models.base.Detector.cls_loss`.

Initialisation: the paper's code leaves torch's default (``"paper"``: uniform with std
1/√(3·fan_in)), under which each conv + ReLU of this norm-free stack shrinks the signal ≈ 2.4×,
so at initialisation the logits barely depend on the input (their spread over images is ≈ 1e-4 of
the input's).  ``"kaiming"`` (He normal, fan_in, ReLU gain; zero biases) keeps the signal's scale
through the stack — for heads trained from scratch on a small budget (the CPU ``tiny`` preset).
"""

from __future__ import annotations

from torch import Tensor, nn

from tbx.models.config import HeadInit


class ClsHead(nn.Module):
    """``forward(c5 (N, in_channels, H, W)) → logits (N, num_classes)`` (docs/models.md §2.6)."""

    def __init__(
        self, in_channels: int = 2048, mid_channels: int = 512, num_classes: int = 3, init: HeadInit = "paper"
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, mid_channels, 1, padding=1), nn.ReLU(inplace=True)]
        for _ in range(3):
            layers += [nn.Conv2d(mid_channels, mid_channels, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.MaxPool2d(2, stride=2))
        for _ in range(2):
            layers += [nn.Conv2d(mid_channels, mid_channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1)
        if init != "paper":  # the layers above already drew torch's default
            self.init_weights(init)

    def init_weights(self, init: HeadInit) -> None:
        """(Re)initialise every conv: ``"paper"`` (torch's default) or ``"kaiming"``."""
        if init not in ("paper", "kaiming"):
            raise ValueError(f"classification-head init must be 'paper' or 'kaiming', got {init!r}")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if init == "paper":
                    m.reset_parameters()
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, c5: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(c5))).flatten(1)
