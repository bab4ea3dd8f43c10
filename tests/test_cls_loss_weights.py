"""``model.cls_loss_weights``: the classification cross-entropy's class weights (docs/models.md §2.6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tbx.engine.schedule import load_train_config
from tbx.errors import TbxError
from tbx.models.config import CLS_LOSS_WEIGHTS, ModelConfig
from tbx.models.registry import build


def test_default_weights_are_the_papers():
    assert CLS_LOSS_WEIGHTS == (1.0, 1.0, 4.0)
    assert ModelConfig().cls_loss_weights == (1.0, 1.0, 4.0)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 4.0), (1.0, 1.0, 1.0), (2.0, 0.5, 1.5)])
def test_stage2_loss_uses_the_configured_weights(weights):
    torch.manual_seed(0)
    model = build("retinanet", ModelConfig(backbone="resnet18", pretrained="none", cls_loss_weights=weights))
    model.set_stage(2)
    model.train()
    images = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    labels = [0, 1, 2]
    targets = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "cls_label": torch.tensor(c)}
        for c in labels
    ]
    loss = model(images, targets)["loss_img_cls"]
    with torch.no_grad():  # independent: the weighted mean of -log p(y) written out by hand
        logp = F.log_softmax(model.cls_head(model.backbone(images)[-1]), -1)
    w = [weights[c] for c in labels]
    expected = -sum(wi * logp[i, c] for i, (wi, c) in enumerate(zip(w, labels))) / sum(w)
    torch.testing.assert_close(loss.detach(), expected)


def test_weights_come_from_the_config_and_are_range_checked():
    cfg = load_train_config("symformer", "tiny", ["model.cls_loss_weights=[1,1,1.5]"])
    assert cfg.model.cls_loss_weights == (1.0, 1.0, 1.5)
    for bad in ("[1,0,1]", "[1,-2,1]"):
        with pytest.raises(TbxError, match=r"each item of 'model.cls_loss_weights' must be > 0"):
            load_train_config("symformer", "tiny", [f"model.cls_loss_weights={bad}"])
    with pytest.raises(TbxError, match="3 items"):
        load_train_config("symformer", "tiny", ["model.cls_loss_weights=[1,1]"])
