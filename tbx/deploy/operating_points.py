"""``RUN/operating_points.json``: the decision thresholds on p(TB) picked on a validation set.

Written by ``tbx bench … --save-operating-points RUN`` and ``tbx train --val ANN`` (after stage II),
read by ``tbx screen`` (``--threshold sens90 | spec70 | argmax``) and embedded in the ONNX files of
``tbx export``.  The points themselves are computed in one place, :mod:`tbx.bench.classification`
(:func:`~tbx.bench.classification.screening_thresholds`, ``named_operating_points``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tbx.bench.classification import OPERATING_POINTS, named_operating_points, screening_thresholds
from tbx.errors import TbxError
from tbx.io import atomic_write_json

FILE = "operating_points.json"


def save_operating_points(run: str | Path, points: dict[str, dict], **source: Any) -> Path:
    """Write ``RUN/operating_points.json`` (atomic): ``points`` plus where they came from."""
    run = Path(run)
    if not run.is_dir():
        raise TbxError("run directory not found", run, "give the RUN folder of `tbx train`")
    path = run / FILE
    atomic_write_json(
        path, {"format": "tbx-operating-points", "version": 1, "source": source, "points": points}
    )
    return path


def save_from_bench_result(run: str | Path, result: dict[str, Any], gt: str | Path) -> Path:
    """``tbx bench --save-operating-points RUN``: the points of a bench result's classification."""
    cls, ops = result.get("classification"), result.get("operating_points")
    if not cls or not ops:
        raise TbxError(
            "the predictions have no classification (cls_result.txt)",
            fix="bench a prediction folder of `tbx predict` on a validation set",
        )
    return save_operating_points(
        run,
        named_operating_points(cls, ops),
        annotations=str(gt),
        n_images=cls["n_images"],
        n_tb=cls["n_tb"],
        written_by="tbx bench",
    )


def fit_operating_points(
    run: str | Path,
    data_root: str | Path,
    ann: str | Path,
    *,
    batch_size: int = 8,
    device: str = "auto",
    workers: int = 2,
) -> Path:
    """``tbx train --val ANN``: predict ``ann`` with the run's final checkpoint and save its points."""
    from tbx.data.dataset import TBXDataset
    from tbx.data.records import CLASS_INDEX
    from tbx.engine.checkpoint import find_checkpoint, load_checkpoint
    from tbx.engine.predict import model_from_checkpoint, predict_dataset
    from tbx.engine.runtime import resolve_device
    from tbx.models.inference import prepare_for_inference

    ckpt = find_checkpoint(run)
    model, cfg = model_from_checkpoint(load_checkpoint(ckpt, "cpu"), ckpt)
    dev = resolve_device(device)
    prepare_for_inference(model.to(dev), cfg.channels_last)
    ds = TBXDataset(data_root, ann, cfg.model.input_size, train=False)
    y = np.array([CLASS_INDEX.get(r.label, -1) for r in ds.records])
    if (y < 0).any():
        raise TbxError(
            "the validation annotation file has images without a label",
            ds.ann_path,
            "use a labelled split (e.g. annotations/json/all_val.json)",
        )
    probs, _ = predict_dataset(model, ds, batch_size, dev, workers=workers, channels_last=cfg.channels_last)
    return save_operating_points(
        run,
        screening_thresholds(probs, y),
        annotations=str(ds.ann_path),
        checkpoint=str(ckpt),
        n_images=len(y),
        n_tb=int((y == 2).sum()),
        written_by="tbx train --val",
    )


def load_operating_points(path: str | Path) -> dict[str, dict] | None:
    """The ``points`` of an operating-points file (or of ``RUN/operating_points.json``), None when
    there is none; a damaged file is a :class:`TbxError`."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE
    if not path.is_file():
        return None
    try:
        points = json.loads(path.read_text())["points"]
        if not all(name in points for name in OPERATING_POINTS):
            raise KeyError("points")
    except (ValueError, KeyError, TypeError):
        raise TbxError(
            "damaged operating-points file",
            path,
            "re-create it with `tbx bench … --save-operating-points RUN`",
        ) from None
    return points
