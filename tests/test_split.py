"""tbx dataset split: exact stratified counts (hand-computed largest remainder), the published
table (docs/dataset.md §1.2), patient grouping, folds, determinism, all-or-nothing writes and CLI errors."""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tbx.data import split as split_mod
from tbx.data.apportion import controlled_rounding, largest_remainder
from tbx.data.coco import write_coco
from tbx.data.records import Box, Record
from tbx.data.split import SplitConfig, load_root_records, parse_ratio, plan_split, run_split, split_records
from tbx.errors import TbxError

FOLDER = {"healthy": "health", "sick": "sick", "tb": "tb"}
BOX_CATS = {"active": [1], "latent": [2], "active+latent": [1, 2], "uncertain": [3], "unknown": []}


def make_records(counts: dict[tuple[str, str], int], source: str = "tbx11k", start: int = 0) -> list[Record]:
    """Metadata-only records: ``{(label, tb_type): n}``; TB records get boxes of their type."""
    recs = []
    i = start
    for (label, tb_type), n in counts.items():
        for _ in range(n):
            i += 1
            if source == "tbx11k":
                fname = f"{FOLDER[label]}/{label[0]}{i:05d}.png"
            else:
                fname = f"extra/mc+shenzhen/train/CHNCXR_{i:04d}_{int(label == 'tb')}.png"
            boxes = [Box(10, 10, 50, 50, c) for c in BOX_CATS.get(tb_type, [])]
            recs.append(
                Record(
                    i,
                    fname,
                    512,
                    512,
                    label,
                    tb_type if label == "tb" else "none",
                    source=source,
                    boxes=boxes,
                )
            )
    return recs


# docs/dataset.md §1.1 class counts; the release's 212 latent include tb1199 (TB without a box).
PUBLISHED_COUNTS = {
    ("healthy", "none"): 5000,
    ("sick", "none"): 5000,
    ("tb", "active"): 924,
    ("tb", "latent"): 211,
    ("tb", "unknown"): 1,
    ("tb", "active+latent"): 54,
    ("tb", "uncertain"): 10,
}


def split_table(records: list[Record]) -> dict[str, tuple[int, int, int]]:
    c: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        key = r.label if not r.is_tb else ("latent" if r.tb_type == "unknown" else r.tb_type)
        c[key if r.source == "tbx11k" else f"{r.source}:{r.label}"][r.split] += 1
    return {k: (v["train"], v["val"], v["test"]) for k, v in c.items()}


# ---------------------------------------------------------------------------------------------
# apportionment rules, checked against hand computations


def test_largest_remainder_hand_cases():
    assert largest_remainder(7, [3, 2, 1]) == [4, 2, 1]  # 3.5 2.33 1.17 → +1 to train
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]  # tie → earlier split
    assert largest_remainder(2, [1, 1, 1]) == [1, 1, 0]
    assert largest_remainder(5000, [15, 4, 6]) == [3000, 800, 1200]  # docs/dataset.md §1.2
    assert largest_remainder(5, [0, 1, 1]) == [0, 3, 2]
    assert largest_remainder(0, [3, 2, 1]) == [0, 0, 0]


def test_controlled_rounding_published_tb():
    # 1190 TB images of known type into train/val/test quotas 600/200/390 (docs/dataset.md §1.2, 3:1:2 with
    # the 10 uncertain in test).  Proportional shares: active 465.88/155.29/302.82, latent
    # 106.89/35.63/69.48, both 27.23/9.08/17.70; floors leave 2/1/2 units for train/val/test and
    # 2/2/1 for active/latent/both; the best placement (sum of fractions 3.924) is active→train,
    # test; latent→train, val; both→test.
    got = controlled_rounding({"active": 924, "latent": 212, "both": 54}, [600, 200, 390])
    assert got == {"active": [466, 155, 303], "latent": [107, 36, 69], "both": [27, 9, 18]}


def test_parse_ratio_errors():
    assert parse_ratio("3:2:1") == (3, 2, 1)
    assert parse_ratio("1.5:1:0") == (Fraction(3, 2), 1, 0)
    for bad, msg in (
        ("3:2", "three parts"),
        ("a:b:c", "not numeric"),
        ("-1:2:3", "negative"),
        ("0:0:0", "all zero"),
        ("3:2:1:1", "three parts"),
    ):
        with pytest.raises(TbxError, match=msg):
            parse_ratio(bad)


# ---------------------------------------------------------------------------------------------
# the published table and exact counts


def test_published_table_with_ratio_312():
    """``--published`` (3:1:2 over the TB class, 15:4:6) on the published class counts (docs/dataset.md §1.1)
    reproduces every row and column total of docs/dataset.md §1.2 exactly.  The per-type TB cells of the
    published table
    are not proportional (active 473/924 = 51.2 % train, both 23/54 = 42.6 %), so no stratified rule
    yields them; ours are the controlled rounding of the proportional shares (hand-computed in
    test_controlled_rounding_published_tb)."""
    recs = make_records(PUBLISHED_COUNTS)
    plan = plan_split(recs, SplitConfig.published())
    assert plan.ratios["tb"] == "3:1:2" and plan.ratios["tb_quota"] == "class"
    t = split_table(plan.records)
    assert t["healthy"] == (3000, 800, 1200)
    assert t["sick"] == (3000, 800, 1200)
    assert t["uncertain"] == (0, 0, 10)
    assert t["active"] == (466, 155, 303)
    assert t["latent"] == (107, 36, 69)
    assert t["active+latent"] == (27, 9, 18)
    tb = [sum(t[k][i] for k in ("active", "latent", "active+latent", "uncertain")) for i in range(3)]
    assert tb == [600, 200, 400]  # = published TB 473+104+23 / 157+36+7 / 294+72+24+10
    cols = [sum(v[i] for v in t.values()) for i in range(3)]
    assert cols == [6600, 1800, 2800]  # published column totals
    table = plan.table()
    assert table["total"] == {"train": 6600, "val": 1800, "test": 2800, "total": 11200}
    assert table["latent TB"]["total"] == 212  # tb1199-like image counted with latent
    assert plan.warnings == []


def test_tb_quota_type_on_published_counts():
    # each TB type by 3:1:2 on its own: 924 → 462/154/308; 212 → 106/35.33/70.67 → 106/35/71;
    # 54 → 27/9/18; the 10 uncertain on top in test
    t = split_table(
        split_records(make_records(PUBLISHED_COUNTS), SplitConfig(ratio="3:1:2", tb_quota="type"))
    )
    assert t["active"] == (462, 154, 308)
    assert t["latent"] == (106, 35, 71)
    assert t["active+latent"] == (27, 9, 18)
    assert t["uncertain"] == (0, 0, 10)
    with pytest.raises(TbxError, match="tb_quota"):
        plan_split(make_records(PUBLISHED_COUNTS), SplitConfig(tb_quota="x"))


def test_class_quota_321_on_published_counts():
    # TB 1200 by 3:2:1 → 600/400/200; 10 uncertain take test → 1190 into 600/400/190; active
    # 924·(600, 400, 190)/1190 = 465.9/310.6/147.5 → 466/311/147 (the old default the user rejected)
    recs = make_records(PUBLISHED_COUNTS)
    t = split_table(split_records(recs, SplitConfig(tb_quota="class")))
    assert t["active"] == (466, 311, 147)
    tb = [sum(t[k][i] for k in ("active", "latent", "active+latent", "uncertain")) for i in range(3)]
    assert tb == [600, 400, 200]
    assert t["uncertain"] == (0, 0, 10)
    assert t["healthy"] == (3000, 800, 1200)
    for k, n in (("active", 924), ("latent", 212), ("active+latent", 54)):
        exact = [Fraction(n * q, 1190) for q in (600, 400, 190)]
        assert sum(t[k]) == n
        assert all(abs(a - e) < 1 for a, e in zip(t[k], exact))


@pytest.fixture(scope="module")
def real_train(shared_data):
    from tbx.data.coco import read_coco

    return read_coco(shared_data / "tbx11k-meta" / "TBX11K_train.json")


@pytest.mark.parametrize(
    "ratio,non_tb,expected",
    [
        # TB 600 (473 active, 103 latent + tb1199, 23 both) → 300/200/100. Floors active 236/157/78,
        # latent 52/34/17, both 11/7/3; leftover units: rows 2/1/2, columns 1/2/2; two placements tie
        # at 3.5 — the preference order (largest fraction, larger stratum first) picks active→val,test.
        (
            "3:2:1",
            "15:4:6",
            {
                "active": (236, 158, 79),
                "latent": (52, 35, 17),
                "active+latent": (12, 7, 4),
                "healthy": (1800, 480, 720),
            },
        ),
        # 300/100/200: floors 236/78/157, 52/17/34, 11/3/7; latent→test, active→val,test, both→train,val
        (
            "3:1:2",
            "1:1:1",
            {
                "active": (236, 79, 158),
                "latent": (52, 17, 35),
                "active+latent": (12, 4, 7),
                "healthy": (1000, 1000, 1000),
            },
        ),
        # 200/200/200: every fraction is 2/3; active (largest) takes train,val; then latent train,test;
        # both val,test.
        (
            "1:1:1",
            "3:1:1",
            {
                "active": (158, 158, 157),
                "latent": (35, 34, 35),
                "active+latent": (7, 8, 8),
                "healthy": (1800, 600, 600),
            },
        ),
    ],
)
def test_exact_counts_on_real_train_metadata(real_train, ratio, non_tb, expected):
    cfg = SplitConfig(ratio=ratio, non_tb_ratio=non_tb, tb_quota="class")
    t = split_table(split_records(real_train, cfg))
    for k, v in expected.items():
        assert t[k] == v, k
    assert t["sick"] == t["healthy"]


def test_extra_sources_default_half_to_test():
    recs = make_records({("healthy", "none"): 30, ("tb", "active"): 12})
    recs += make_records({("healthy", "none"): 20, ("tb", "unknown"): 11}, source="shenzhen", start=100)
    plan = plan_split(recs, SplitConfig(ratio="3:2:1"))
    t = split_table(plan.records)
    # default extra ratio 3:2:5: 20 → 6/4/10; 11 → 3.3/2.2/5.5 → floors 3/2/5, +1 test (0.5)
    assert t["shenzhen:healthy"] == (6, 4, 10)
    assert t["shenzhen:tb"] == (3, 2, 6)
    assert plan.ratios["extra"] == "3:2:5"
    t2 = split_table(split_records(recs, SplitConfig(extra_ratio="1:0:1")))
    assert t2["shenzhen:healthy"] == (10, 0, 10)


def test_small_stratum_warning_and_uncertain_without_test_share():
    recs = make_records({("healthy", "none"): 30, ("tb", "active"): 2})
    plan = plan_split(recs, SplitConfig(ratio="3:2:1"))
    assert any("tb:active" in w and "too small" in w for w in plan.warnings)
    recs = make_records({("healthy", "none"): 30, ("tb", "active"): 12, ("tb", "uncertain"): 1})
    with pytest.raises(TbxError, match="uncertain.*no test share"):
        plan_split(recs, SplitConfig(ratio="3:1:0"))


def test_unknown_label_and_unknown_tb_as():
    recs = make_records({("healthy", "none"): 3})
    recs[0] = recs[0].replace(label="unknown")
    with pytest.raises(TbxError, match="unknown label"):
        plan_split(recs, SplitConfig())
    recs = make_records({("healthy", "none"): 30, ("tb", "active"): 12, ("tb", "unknown"): 2})
    out = split_records(recs, SplitConfig(unknown_tb_as="test"))
    assert {r.split for r in out if r.tb_type == "unknown"} == {"test"}
    with pytest.raises(TbxError, match="unknown_tb_as"):
        plan_split(recs, SplitConfig(unknown_tb_as="active"))


# ---------------------------------------------------------------------------------------------
# patients


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(["healthy", "sick", "active", "latent", "uncertain"]), st.integers(0, 25)),
        min_size=1,
        max_size=120,
    ),
    st.integers(0, 3),
)
def test_patients_never_separated(items, seed):
    recs = []
    for i, (kind, pid) in enumerate(items):
        label = kind if kind in ("healthy", "sick") else "tb"
        tb_type = "none" if label != "tb" else kind
        recs.append(
            Record(i + 1, f"{FOLDER[label]}/x{i:04d}.png", 512, 512, label, tb_type, patient_id=f"p{pid}")
        )
    plan = plan_split(recs, SplitConfig(seed=seed))
    by_patient = defaultdict(set)
    for r in plan.records:
        by_patient[r.patient_id].add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())
    # a patient with an uncertain-type TB image goes to test as a whole
    for r in plan.records:
        if r.tb_type == "uncertain":
            assert by_patient[r.patient_id] == {"test"}
    if len({r.patient_id for r in plan.records if r.split != "test"}) >= 2:
        with_folds = plan_split(recs, SplitConfig(seed=seed, folds=2))
        assert [r.split for r in with_folds.records] == [r.split for r in plan.records]
        fold_of = defaultdict(set)
        for r, f in zip(with_folds.records, with_folds.folds):
            if f is not None:
                fold_of[r.patient_id].add(f)
        assert all(len(s) == 1 for s in fold_of.values())
    achieved = {s.stratum: s.achieved for s in plan.strata}
    assert sum(sum(v) for v in achieved.values()) == len(recs)


def test_singleton_patients_exact_and_groups_reported():
    recs = make_records({("healthy", "none"): 60, ("tb", "active"): 30})
    for i, r in enumerate(recs):
        recs[i] = r.replace(patient_id=f"q{i}")
    plan = plan_split(recs, SplitConfig())
    assert all(s.achieved == s.requested for s in plan.strata)
    # 6 images of one patient in a 12-image stratum: 6/4/2 requested cannot be met exactly
    recs = make_records({("healthy", "none"): 12})
    recs = [r.replace(patient_id="big" if i < 6 else f"s{i}") for i, r in enumerate(recs)]
    plan = plan_split(recs, SplitConfig(non_tb_ratio="3:2:1"))
    (rep,) = plan.strata
    assert rep.requested == [6, 4, 2]
    assert len({r.split for r in plan.records if r.patient_id == "big"}) == 1
    assert sum(rep.achieved) == 12
    assert rep.achieved == [6, 4, 2]  # the big patient exactly fills train
    recs = [r.replace(patient_id="big" if i < 7 else f"s{i}") for i, r in enumerate(recs)]
    plan = plan_split(recs, SplitConfig(non_tb_ratio="3:2:1"))
    (rep,) = plan.strata
    assert rep.achieved == [7, 3, 2] and rep.deviation == [1, -1, 0]
    assert any("patients cannot be separated" in w for w in plan.warnings)


# ---------------------------------------------------------------------------------------------
# folds


def test_folds_disjoint_cover_trainval_and_stratified():
    recs = make_records(
        {
            ("healthy", "none"): 200,
            ("sick", "none"): 200,
            ("tb", "active"): 61,
            ("tb", "latent"): 22,
            ("tb", "active+latent"): 9,
            ("tb", "uncertain"): 3,
        }
    )
    plan = plan_split(recs, SplitConfig(folds=4, seed=3))
    trainval = {r.file_name for r in plan.records if r.split in ("train", "val")}
    vals = []
    for k in range(4):
        fk = split_mod.fold_records(plan.records, plan.folds, k)
        v = {r.file_name for r in fk if r.split == "val"}
        t = {r.file_name for r in fk if r.split == "train"}
        assert not v & t and v | t == trainval
        vals.append(v)
    assert set().union(*vals) == trainval
    assert sum(len(v) for v in vals) == len(trainval)
    for rep in plan.fold_strata:
        assert rep["achieved"] == rep["requested"]
        assert max(rep["achieved"]) - min(rep["achieved"]) <= 1
    assert all(f is None for r, f in zip(plan.records, plan.folds) if r.split == "test")


# ---------------------------------------------------------------------------------------------
# writing: determinism, force, all-or-nothing, CLI


def make_root(tmp_path: Path, recs: list[Record], name: str = "root") -> Path:
    """A layout root holding the records as an unsplit ``all_trainval.json`` (split None)."""
    root = tmp_path / name
    write_coco(root / "annotations" / "json" / "all_trainval.json", recs)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "provenance_split.json"
    }


def test_determinism_and_seed(tmp_path):
    recs = make_records(
        {
            ("healthy", "none"): 40,
            ("sick", "none"): 40,
            ("tb", "active"): 20,
            ("tb", "latent"): 6,
            ("tb", "uncertain"): 1,
        }
    )
    recs += make_records({("healthy", "none"): 8, ("tb", "unknown"): 6}, "shenzhen", 500)
    a, b, c = (make_root(tmp_path, recs, n) for n in "abc")
    shuffled = list(reversed(recs))  # input order must not matter
    write_coco(b / "annotations" / "json" / "all_trainval.json", shuffled)
    for d, seed in ((a, 1), (b, 1), (c, 2)):
        run_split(d, SplitConfig(seed=seed, folds=3), force=True)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert fa.keys() == fc.keys() and fa["lists/TBX11K_train.txt"] != fc["lists/TBX11K_train.txt"]
    ra = json.loads(fa["split_report.json"])
    rc = json.loads(fc["split_report.json"])
    assert ra["table"] == rc["table"]  # equally stratified
    assert "fold2_val_only_tb.json" in {Path(k).name for k in fa}
    assert "lists/all_test.txt" in fa and "lists/fold0_all_train.txt" in fa
    prov = json.loads((a / "provenance_split.json").read_text())
    assert prov["seed"] == 1 and prov["config"]["folds"] == 3


def test_force_and_all_or_nothing(tmp_path, monkeypatch):
    recs = make_records({("healthy", "none"): 30, ("sick", "none"): 30, ("tb", "active"): 12})
    root = make_root(tmp_path, recs)
    with pytest.raises(TbxError, match="already exist.*--force"):
        run_split(root, SplitConfig(folds=3))
    (root / "provenance.json").write_text('{"command": ["tbx", "dataset", "build"]}\n')
    run_split(root, SplitConfig(folds=3), force=True)
    before = _files(root)
    assert "provenance.json" in before  # the build's provenance is kept (ours: provenance_split)
    with pytest.raises(TbxError, match="already exist.*--force"):
        run_split(root, SplitConfig(seed=5))
    assert _files(root) == before
    # a failure while moving files into place restores every previous file
    real_replace = split_mod.os.replace
    calls = {"n": 0}

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == 40:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(split_mod.os, "replace", flaky)
    with pytest.raises(OSError):
        run_split(root, SplitConfig(seed=5), force=True)
    monkeypatch.setattr(split_mod.os, "replace", real_replace)
    assert _files(root) == before
    assert not [p for p in root.rglob("*") if ".tbx-split" in p.name]
    # with --force and no folds, the stale fold files of the earlier run are removed
    res = run_split(root, SplitConfig(seed=5), force=True)
    assert res.removed and not list((root / "lists").glob("fold*"))
    assert _files(root)["lists/TBX11K_train.txt"] != before["lists/TBX11K_train.txt"]
    # re-reading the split root gives back the same images
    assert {r.file_name for r in load_root_records(root)} == {r.file_name for r in recs}


def test_cli_split_and_errors(tmp_path, cli):
    recs = make_records(
        {("healthy", "none"): 30, ("sick", "none"): 30, ("tb", "active"): 12, ("tb", "uncertain"): 1}
    )
    src = tmp_path / "src.json"
    write_coco(src, recs)
    root = tmp_path / "root"
    code, _, err = cli("dataset", "split", src)
    assert code == 2 and "--out" in err
    code, _, err = cli("dataset", "split", tmp_path)  # bare annotation folder: never written into
    assert code == 2 and "--out" in err
    code, out, err = cli("dataset", "split", src, "--out", root, "--ratio", "3:1:2", "--folds", "2")
    assert code == 0, err
    assert "healthy" in out and "total" in out
    assert (root / "lists" / "fold1_val.txt").is_file()
    for bad in ("3:2", "a:b:c", "-3:2:1", "0:0:0"):
        code, _, err = cli("dataset", "split", root, "--ratio", bad, "--force")
        assert code == 2 and "error:" in err and "--ratio" in err
    code, _, err = cli("dataset", "split", root, "--ratio", "1:1:0", "--force")
    assert code == 2 and "uncertain" in err
    code, _, err = cli("dataset", "split", root)
    assert code == 2 and "--force" in err
    code, _, err = cli("dataset", "split", tmp_path / "nope")
    assert code == 2 and "not found" in err
    # unlabelled (test/) images in an annotation file
    bad_root = tmp_path / "bad"
    shutil.copytree(root / "annotations", bad_root / "annotations")
    data = json.loads((bad_root / "annotations/json/TBX11K_test.json").read_text())
    data["images"][0]["file_name"] = "test/t0001.png"
    (bad_root / "annotations/json/all_test.json").write_text(json.dumps(data))
    code, _, err = cli("dataset", "split", bad_root, "--force")
    assert code == 2 and "without a derivable label" in err and "test/t0001.png" in err
    # --out writes elsewhere and leaves ROOT alone
    out_dir = tmp_path / "out"
    code, _, err = cli("dataset", "split", root, "--out", out_dir, "--seed", "7")
    assert code == 0, err
    assert (out_dir / "split_report.json").is_file() and (out_dir / "provenance_split.json").is_file()


def test_written_views_equal_official_writer(tmp_path):
    """The split writes its views with fast positional ids; they must equal write_views' files."""
    from tbx.data.views import write_views

    recs = make_records(
        {("healthy", "none"): 20, ("sick", "none"): 20, ("tb", "active"): 9, ("tb", "active+latent"): 3}
    )
    recs += make_records({("healthy", "none"): 6, ("tb", "unknown"): 4}, "shenzhen", 300)
    root = make_root(tmp_path, recs)
    res = run_split(root, SplitConfig(seed=4), force=True)
    ref = tmp_path / "ref"
    write_views(ref, sorted(res.plan.records, key=lambda r: (r.source, r.file_name)))
    mine = _files(root)
    theirs = _files(ref)
    assert theirs and all(mine[k] == v for k, v in theirs.items())
    # the plan's records keep their ids after the positional-id writes
    plan = plan_split(recs, SplitConfig(seed=4, folds=2))
    ids = [r.image_id for r in plan.records]
    split_mod._stage_files(tmp_path / "stage", plan, SplitConfig(seed=4, folds=2))
    assert [r.image_id for r in plan.records] == ids == [r.image_id for r in recs]
