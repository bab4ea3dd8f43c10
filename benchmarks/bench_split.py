"""Benchmark `tbx dataset split` on a metadata-only 11,200-record fixture (docs/dataset.md §1.1 counts).

Target: the whole split (read annotations, plan, write every official view + 4 folds, report)
in < 5 s for 11,200 images, from metadata alone (no image decoding).  Reference measured in the same
run: scikit-learn's two-stage stratified `train_test_split` on the same strata (planning only,
writes nothing), to show the planning overhead of exact largest-remainder + patient grouping.

    python benchmarks/bench_split.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tbx.data.coco import write_coco
from tbx.data.records import Box, Record
from tbx.data.split import SplitConfig, load_root_records, plan_split, run_split
from tbx.provenance import versions

COUNTS = {
    ("healthy", "none"): 5000,
    ("sick", "none"): 5000,
    ("tb", "active"): 924,
    ("tb", "latent"): 211,
    ("tb", "unknown"): 1,
    ("tb", "active+latent"): 54,
    ("tb", "uncertain"): 10,
}  # docs/dataset.md §1.1
FOLDER = {"healthy": "health", "sick": "sick", "tb": "tb"}
CATS = {"active": [1], "latent": [2], "active+latent": [1, 2], "uncertain": [3], "unknown": []}


def fixture() -> list[Record]:
    recs, i = [], 0
    for (label, t), n in COUNTS.items():
        for _ in range(n):
            i += 1
            boxes = [Box(100, 100, 80, 90, c) for c in CATS.get(t, [])]
            recs.append(Record(i, f"{FOLDER[label]}/{label[0]}{i:05d}.png", 512, 512, label, t, boxes=boxes))
    return recs


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    versions()  # warm the provenance imports (torchvision) so they are not timed
    recs = fixture()
    # sklearn needs ≥ 2 per class: fold the single box-less TB image into latent (as we do)
    labels = [r.label + ":" + ("latent" if r.tb_type == "unknown" else r.tb_type) for r in recs]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        write_coco(root / "annotations/json/all_trainval.json", recs)  # unsplit index
        t_read = best(lambda: load_root_records(root), args.repeat)
        t_plan = best(lambda: plan_split(recs, SplitConfig(ratio="3:1:2")), args.repeat)
        t_plan_f = best(lambda: plan_split(recs, SplitConfig(ratio="3:1:2", folds=4)), args.repeat)
        t_all = best(lambda: run_split(root, SplitConfig(ratio="3:1:2", folds=4), force=True), args.repeat)

    from sklearn.model_selection import train_test_split

    def sk() -> None:
        idx = list(range(len(recs)))
        tv, te = train_test_split(idx, test_size=1 / 3, stratify=labels, random_state=0)
        train_test_split(tv, test_size=1 / 4, stratify=[labels[i] for i in tv], random_state=0)

    t_sk = best(sk, args.repeat)
    print(f"records: {len(recs)}")
    print(f"read annotations (load_root_records):      {t_read:7.3f} s")
    print(f"plan_split (3:1:2):                        {t_plan:7.3f} s")
    print(f"plan_split (3:1:2, 4 folds):               {t_plan_f:7.3f} s")
    print(
        f"run_split end to end (read+plan+write, 4 folds): {t_all:7.3f} s  (target < 5 s: "
        f"{'PASS' if t_all < 5 else 'FAIL'})"
    )
    print(
        f"reference sklearn stratified train_test_split x2 (plan only): {t_sk:7.3f} s; "
        f"plan_split / reference = {t_plan / t_sk:.1f}x"
    )


if __name__ == "__main__":
    main()
