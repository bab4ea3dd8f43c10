"""torchvision baselines (Faster R-CNN, FCOS, SSD512) wrapped in the Detector contract (docs/models.md §3).

Small ResNet-18 models at 128 px keep the default run fast; SSD512's VGG-16 needs ≥ 384 px, so its
training / inference checks are marked slow and its architecture is checked on the meta device.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from tbx.errors import TbxError
from tbx.models import backbone as backbone_module
from tbx.models.config import ModelConfig
from tbx.models.registry import build
from tbx.models.tv_detectors import (
    SSD512_RATIOS,
    SSD512_SIZES,
    FasterRCNNDetector,
    SSD512FeatureExtractor,
    SSDDetector,
    build_fcos,
    build_ssd,
    load_vgg16_weights,
    resnet_fpn_backbone,
    vgg16_features,
    vgg16_imagenet_file,
)

SIZE = 128


def _batch(size: int = SIZE, n: int = 2):
    torch.manual_seed(0)
    images = torch.randn(n, 3, size, size) * 0.5
    sizes = [(size, size), (size - 32, size - 64)][:n]  # the second image is padded bottom/right
    images[1:, :, size - 32 :, :] = 0
    images[1:, :, :, size - 64 :] = 0
    targets = [
        {
            "boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0], [60.0, 20.0, 120.0, 70.0]]),
            "labels": torch.tensor([1, 2]),
            "cls_label": torch.tensor(2),
        },
        {
            "boxes": torch.tensor([[8.0, 8.0, 40.0, 50.0]]),
            "labels": torch.tensor([2]),
            "cls_label": torch.tensor(1),
        },
    ][:n]
    return images, sizes, targets


def _faster_rcnn(size: int = SIZE) -> FasterRCNNDetector:
    bb, report = resnet_fpn_backbone("resnet18", "none", [1, 2, 3, 4], LastLevelMaxPool())
    assert report is None  # nothing loaded
    # fewer proposals/samples than the defaults keep the CPU test fast; the code path is the same
    return FasterRCNNDetector(
        bb,
        num_classes=3,
        input_size=size,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=64,
    )


def _fcos(size: int = SIZE):
    return build_fcos(ModelConfig(backbone="resnet18", pretrained="none", input_size=size))


BUILDERS = {"faster_rcnn": _faster_rcnn, "fcos": _fcos}
LOSS_KEYS = {
    "faster_rcnn": {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"},
    "fcos": {"loss_cls", "loss_box", "loss_centerness"},
    "ssd": {"loss_cls", "loss_box"},
}


def _check_contract(model, name: str, size: int, n: int = 2) -> None:
    images, sizes, targets = _batch(size, n)
    # the pipeline already normalised/padded: torchvision's transform must never run
    model.transform.forward = lambda *a, **k: pytest.fail("GeneralizedRCNNTransform was called")

    model.train()
    losses = model(images, targets, sizes)
    assert set(losses) == LOSS_KEYS[name]
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    det_grads = [p.grad for n_, p in model.named_parameters() if not n_.startswith("cls_head.")]
    assert any(g is not None and g.abs().sum() > 0 for g in det_grads)
    assert all(p.grad is None for p in model.cls_head.parameters())  # stage 1: no image-level loss

    preds = model.predict(images, sizes)
    assert model.training  # predict restores the mode
    assert len(preds) == n
    for p, (h, w) in zip(preds, sizes):
        assert p.probs.shape == (3,) and torch.allclose(p.probs.sum(), torch.tensor(1.0))
        assert p.boxes.ndim == 2 and p.boxes.shape[1] == 4 and len(p.boxes) <= 100
        assert p.scores.shape == p.labels.shape == (len(p.boxes),)
        assert set(p.labels.tolist()) <= {1, 2}
        if len(p.boxes):  # input pixels, clipped to the valid (unpadded) image
            assert p.boxes[:, 0::2].min() >= 0 and p.boxes[:, 0::2].max() <= w
            assert p.boxes[:, 1::2].min() >= 0 and p.boxes[:, 1::2].max() <= h

    # stage 2: only the weighted cross-entropy of the cls head; no detector forward, no grads elsewhere
    model.set_stage(2)
    model.zero_grad(set_to_none=True)
    detector_parts = [m for k, m in model.components().items() if k not in ("backbone", "cls_head")]
    hooks = [
        m.register_forward_hook(lambda *a: pytest.fail("detector ran in stage 2")) for m in detector_parts
    ]
    out = model(images, targets, sizes)
    for h in hooks:
        h.remove()
    assert set(out) == {"loss_img_cls"}
    out["loss_img_cls"].backward()
    for n_, p in model.named_parameters():
        if n_.startswith("cls_head."):
            assert p.requires_grad and p.grad is not None
        else:
            assert not p.requires_grad and p.grad is None, n_
    model.set_stage(1)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_train_predict_stage2_contract(name):
    _check_contract(BUILDERS[name](), name, SIZE)


def _fit(model, images, sizes, targets, steps: int, lr: float) -> list[float]:
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    history = []
    for _ in range(steps):
        loss = sum(model(images, targets, sizes).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    return history


@pytest.mark.slow  # ~20 s on a loaded 2-core machine; FCOS below covers the default run
def test_faster_rcnn_loss_drops_on_tiny_batch():
    torch.manual_seed(1)
    images, sizes, targets = _batch(SIZE, 1)
    history = _fit(_faster_rcnn(), images, sizes, targets, steps=12, lr=1e-4)
    assert min(history[-3:]) < 0.7 * history[0], history


def test_fcos_overfits_one_box_in_input_pixels():
    """FCOS fitted to one box: the loss drops and the best detection lies where the box was given
    (input pixels: nothing rescaled by a second transform)."""
    torch.manual_seed(0)
    model = _fcos()
    images, sizes, _ = _batch(SIZE, 1)
    gt = torch.tensor([[24.0, 40.0, 88.0, 104.0]])
    targets = [{"boxes": gt, "labels": torch.tensor([2]), "cls_label": torch.tensor(2)}]
    history = _fit(model, images, sizes, targets, steps=12, lr=3e-4)
    assert min(history[-3:]) < 0.7 * history[0], history
    pred = model.predict(images, sizes)[0]
    assert len(pred.boxes) > 0
    best = pred.scores.argmax()
    assert torchvision.ops.box_iou(pred.boxes[best][None], gt).item() > 0.5
    assert pred.labels[best].item() == 2


@pytest.mark.parametrize(
    "name,builder,tv_builder,classes",
    [
        ("faster_rcnn", "faster_rcnn", torchvision.models.detection.fasterrcnn_resnet50_fpn, 3),
        ("fcos", "fcos", torchvision.models.detection.fcos_resnet50_fpn, 2),
    ],
)
def test_r50_architecture_matches_torchvision(name, builder, tv_builder, classes):
    """Our R50-FPN models hold exactly the parameters of torchvision's builders, plus the cls head."""
    ours = build(builder, ModelConfig(backbone="resnet50", pretrained="none"))
    ref = tv_builder(weights=None, weights_backbone=None, num_classes=classes)
    n_ours = sum(p.numel() for p in ours.parameters()) - sum(p.numel() for p in ours.cls_head.parameters())
    assert n_ours == sum(p.numel() for p in ref.parameters())
    assert sum(p.numel() for p in ours.cls_head.parameters()) == 12_849_667  # docs/models.md §2.5
    # nothing frozen in stage 1 (docs/models.md §2.1 policy); backbone BN in eval mode
    assert all(p.requires_grad for p in ours.parameters())
    ours.train()
    bns = [m for n, m in ours.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)


# ---------------------------------------------------------------------------------------------
# SSD512


def test_ssd512_feature_maps_and_default_boxes():
    """7 maps of 64, 32, 16, 8, 4, 2, 1 at 512 px and the paper's 24,564 default boxes (SSD512)."""
    with torch.device("meta"):
        ext = SSD512FeatureExtractor(vgg16_features())
        maps = list(ext(torch.empty(1, 3, 512, 512)).values())
    assert [tuple(m.shape[1:]) for m in maps] == [
        (c, s, s) for c, s in zip([512, 1024, 512, 256, 256, 256, 256], [64, 32, 16, 8, 4, 2, 1])
    ]
    assert tuple(ext.fc7(torch.empty(1, 3, 512, 512, device="meta")).shape) == (1, 1024, 32, 32)

    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.image_list import ImageList

    gen = DefaultBoxGenerator([list(r) for r in SSD512_RATIOS], scales=[s / 512 for s in SSD512_SIZES])
    assert gen.num_anchors_per_location() == [4, 6, 6, 6, 6, 4, 4]
    feats = [torch.zeros(1, 1, s, s) for s in (64, 32, 16, 8, 4, 2, 1)]
    anchors = gen(ImageList(torch.zeros(1, 3, 512, 512), [(512, 512)]), feats)[0]
    assert anchors.shape == (24_564, 4)
    # first location of conv4_3: centre (4, 4) px (step 8); sizes 20, √(20·51), 20√2 × 20/√2 and
    # its transpose
    first = anchors[:4]
    assert torch.allclose((first[:, :2] + first[:, 2:]) / 2, torch.full((4, 2), 4.0), atol=1e-3)
    expected = torch.tensor(
        [
            [20.0, 20.0],
            [math.sqrt(20 * 51)] * 2,
            [20 * math.sqrt(2), 20 / math.sqrt(2)],
            [20 / math.sqrt(2), 20 * math.sqrt(2)],
        ]
    )
    assert torch.allclose(first[:, 2:] - first[:, :2], expected, atol=1e-3)
    # the last map (1×1, step 512) is centred in the image: sizes 460 and √(460·542)
    last = anchors[-4:]
    assert torch.allclose((last[:, :2] + last[:, 2:]) / 2, torch.full((4, 2), 256.0), atol=1e-3)
    assert torch.allclose(last[0, 2:] - last[0, :2], torch.tensor([460.0, 460.0]), atol=1e-2)
    assert torch.allclose(last[1, 2:] - last[1, :2], torch.tensor([math.sqrt(460 * 542)] * 2), atol=1e-2)


def test_ssd_head_parameter_layout():
    with torch.device("meta"):
        model = SSDDetector(SSD512FeatureExtractor(vgg16_features()), num_classes=3, input_size=512)
    cls_convs = model.head.classification_head.module_list
    assert [c.out_channels for c in cls_convs] == [3 * a for a in (4, 6, 6, 6, 6, 4, 4)]
    assert model.cls_head.features[0].in_channels == 1024  # on VGG fc7
    assert all(p.requires_grad for p in model.parameters())


def test_vgg16_weights_loading(tmp_path, monkeypatch):
    features = vgg16_features()
    ref = vgg16_features()  # a torchvision VGG-16 state_dict holds these as features.* (+ classifier.*)
    path = tmp_path / "vgg16.pth"
    torch.save({"model": {f"features.{k}": v for k, v in ref.state_dict().items()}}, path)
    report = load_vgg16_weights(features, path)
    assert torch.equal(features[28].weight, ref[28].weight) and torch.equal(features[0].bias, ref[0].bias)
    assert (report.loaded, report.missing, report.unexpected) == (len(ref.state_dict()), 0, 0)
    # offline and not cached → a TbxError that says where to put the file
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst):
        raise OSError("network unreachable")

    monkeypatch.setattr(backbone_module, "_download", offline)
    with pytest.raises(TbxError) as e:
        load_vgg16_weights(features, "imagenet")
    assert str(vgg16_imagenet_file()) in str(e.value) and "vgg16" in str(e.value)
    bad = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), bad)
    with pytest.raises(TbxError, match="do not fit vgg16"):
        load_vgg16_weights(features, bad)
    with pytest.raises(TbxError, match="not found"):
        load_vgg16_weights(features, tmp_path / "missing.pth")


def test_builders_reject_wrong_backbones():
    with pytest.raises(TbxError, match="ResNet"):
        build("faster_rcnn", ModelConfig(backbone="vgg16", pretrained="none"))
    with pytest.raises(TbxError, match="VGG-16"):
        build("ssd", ModelConfig(backbone="mobilenet", pretrained="none"))
    with pytest.raises(TbxError, match="384"):
        build("ssd", ModelConfig(backbone="vgg16", pretrained="none", input_size=256))


@pytest.mark.slow
def test_ssd_train_predict_stage2_contract():
    model = build_ssd(ModelConfig(backbone="vgg16", pretrained="none", input_size=384))
    _check_contract(model, "ssd", 384, n=2)


@pytest.mark.slow
def test_ssd_loss_drops_on_tiny_batch():
    torch.manual_seed(1)
    model = build_ssd(ModelConfig(backbone="vgg16", pretrained="none", input_size=384))
    images, sizes, targets = _batch(384, 1)
    history = _fit(model, images, sizes, targets, steps=8, lr=1e-5)
    assert min(history[-3:]) < 0.7 * history[0], history


@pytest.mark.parametrize("name", ["fcos", "deformable_detr"])
def test_builders_report_what_the_backbone_file_gave(tmp_path, name):
    """Every builder fills ``pretrained_report`` (shown by `tbx models info` and the train log):
    a torchvision ResNet-18 file loads every trunk tensor, its ``fc.*`` pair is unexpected."""
    from tbx.models.config import DetrConfig, ModelConfig
    from tbx.models.registry import build

    ref = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(ref, path)
    detr = DetrConfig(num_queries=10, num_encoder_layers=1, num_decoder_layers=1) if name != "fcos" else None
    model = build(name, ModelConfig(backbone="resnet18", pretrained=str(path), detr=detr))
    r = model.pretrained_report
    trunk = [k for k in ref if not k.startswith("fc.")]
    assert (r.loaded, r.missing, r.unexpected) == (len(trunk), 0, 2)
    scratch = build(name, ModelConfig(backbone="resnet18", pretrained="none", detr=detr))
    assert scratch.pretrained_report is None
