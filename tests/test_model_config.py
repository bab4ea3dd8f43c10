"""Per-family ``model:`` sections: a key the chosen model does not read is an error."""

from __future__ import annotations

import pytest
import yaml

from tbx.config import dump_yaml
from tbx.engine.schedule import load_train_config
from tbx.errors import TbxError
from tbx.models.config import SECTIONS, DetrConfig, ModelConfig, RetinaNetConfig, check_sections


def test_tiny_preset_reads_its_retinanet_section():
    cfg = load_train_config(None, "tiny")
    assert cfg.model.retinanet == RetinaNetConfig(
        width=64,
        anchor_scale=3.0,
        nms_class_agnostic=True,
        cls_backbone=True,
        cls_input_size=112,
        head_init="kaiming",
    )
    # sections the model reads are filled with their defaults, the others stay absent
    assert cfg.model.symformer is not None and cfg.model.symformer.pos_encoding == "spe"
    assert cfg.model.detr is None
    dumped = yaml.safe_load(dump_yaml(cfg))["model"]
    assert dumped["retinanet"]["width"] == 64 and dumped["detr"] is None


def test_dotted_overrides_reach_a_section():
    sets = ["model.retinanet.width=32", "model.symformer.attention=deformable"]
    cfg = load_train_config(None, "tiny", sets)
    assert cfg.model.retinanet.width == 32 and cfg.model.symformer.attention == "deformable"
    d = load_train_config("deformable_detr", None, ["model.detr.num_queries=100"])
    assert d.model.detr == DetrConfig(num_queries=100)


@pytest.mark.parametrize(
    "model,sets,section",
    [
        ("fcos", ["model.retinanet.width=64"], "retinanet"),
        ("retinanet", ["model.symformer.pos_encoding=sine"], "symformer"),
        ("symformer", ["model.detr.num_queries=10"], "detr"),
        ("deformable_detr", ["model.symformer.attention=deformable"], "symformer"),
    ],
)
def test_a_section_the_model_does_not_read_is_an_error(model, sets, section):
    with pytest.raises(TbxError, match=rf"model\.{section} is not read by"):
        load_train_config(model, None, sets)


def test_tiny_preset_is_for_the_retinanet_family_only():
    assert load_train_config("retinanet", "tiny").model.symformer is None
    with pytest.raises(TbxError, match="model.retinanet is not read by faster_rcnn"):
        load_train_config("faster_rcnn", "tiny")


def test_flat_family_keys_are_unknown():
    with pytest.raises(TbxError, match="unknown config key 'model.width'"):
        load_train_config(None, "tiny", ["model.width=32"])


def test_removed_knob_is_unknown():
    with pytest.raises(TbxError, match="unknown config key 'bn_calibration_batches'"):
        load_train_config(None, "tiny", ["bn_calibration_batches=4"])


def test_check_sections_table():
    assert set(SECTIONS["symformer_retinanet"]) == {"retinanet", "symformer"}
    filled = check_sections("faster_rcnn", ModelConfig())
    assert (filled.retinanet, filled.symformer, filled.detr) == (None, None, None)
    assert check_sections("not_registered", ModelConfig(detr=DetrConfig())).detr == DetrConfig()
