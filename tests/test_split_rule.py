"""The split rule (docs/dataset.md §1.2): the default splits each TB type on its own by the user's
3:2:1 (every cell within ±1 of n·share, uncertain TB on top in test); ``--published`` reproduces
every row and column total of the published table.  Expected cells are computed here from n·share
or copied from the published table, never from the code."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from test_split import PUBLISHED_COUNTS, make_records, split_table

from tbx.data.coco import write_coco
from tbx.data.split import SplitConfig, split_records
from tbx.errors import TbxError

TYPES = {"active": 924, "latent": 212, "active+latent": 54}  # latent includes the boxless tb1199
PUBLISHED_TABLE = {  # docs/dataset.md §1.2 Table 2 (train, val, test)
    "healthy": (3000, 800, 1200),
    "sick": (3000, 800, 1200),
    "active": (473, 157, 294),
    "latent": (104, 36, 72),
    "active+latent": (23, 7, 24),
    "uncertain": (0, 0, 10),
}


def _shares(ratio: tuple[int, int, int]) -> list[Fraction]:
    return [Fraction(r, sum(ratio)) for r in ratio]


def test_default_splits_each_tb_type_by_321():
    t = split_table(split_records(make_records(PUBLISHED_COUNTS), SplitConfig()))
    shares = _shares((3, 2, 1))
    for kind, n in TYPES.items():
        exact = [n * s for s in shares]
        assert sum(t[kind]) == n
        assert all(abs(c - e) < 1 for c, e in zip(t[kind], exact, strict=True)), (kind, t[kind], exact)
    # the figure: active TB 924 · (1/2, 1/3, 1/6) = 462 / 308 / 154 (not 466/311/147)
    assert t["active"] == (462, 308, 154)
    assert t["active+latent"] == (27, 18, 9)  # 54 · shares, exact
    assert t["latent"] == (106, 71, 35)  # 106 / 70.67 / 35.33: the leftover unit to val (0.67)
    assert t["uncertain"] == (0, 0, 10)  # on top in test
    assert t["healthy"] == t["sick"] == (3000, 800, 1200)


def test_published_reproduces_every_total(tmp_path, cli):
    src = tmp_path / "all.json"
    write_coco(src, make_records(PUBLISHED_COUNTS))
    code, out, err = cli("dataset", "split", src, "--out", tmp_path / "root", "--published")
    assert code == 0, err
    assert "active TB" in out
    report = json.loads((tmp_path / "root" / "split_report.json").read_text())
    assert (report["ratios"]["tb"], report["ratios"]["tb_quota"], report["ratios"]["non_tb"]) == (
        "3:1:2",
        "class",
        "15:4:6",
    )
    table = report["table"]
    rows = {
        "healthy": "healthy",
        "sick": "sick",
        "active": "active TB",
        "latent": "latent TB",
        "active+latent": "active & latent TB",
        "uncertain": "uncertain TB",
    }
    got = {k: tuple(table[v][s] for s in ("train", "val", "test")) for k, v in rows.items()}
    for k in ("healthy", "sick", "uncertain"):  # row totals and cells
        assert got[k] == PUBLISHED_TABLE[k]
    tb = ("active", "latent", "active+latent", "uncertain")
    for i in range(3):  # the TB row total and every column total
        assert sum(got[k][i] for k in tb) == sum(PUBLISHED_TABLE[k][i] for k in tb)
        assert sum(v[i] for v in got.values()) == sum(v[i] for v in PUBLISHED_TABLE.values())
    for k in tb:  # per-type row totals
        assert sum(got[k]) == sum(PUBLISHED_TABLE[k])
    assert table["total"] == {"train": 6600, "val": 1800, "test": 2800, "total": 11200}


def test_published_fixes_its_ratios(tmp_path, cli):
    assert SplitConfig.from_options(True, ratio="3:1:2", seed=3) == SplitConfig.published(seed=3)
    with pytest.raises(TbxError, match="--published fixes .*combined with --ratio 3:2:1"):
        SplitConfig.from_options(True, ratio="3:2:1")
    src = tmp_path / "all.json"
    write_coco(src, make_records({("healthy", "none"): 30, ("tb", "active"): 12}))
    code, _, err = cli("dataset", "split", src, "--out", tmp_path / "r", "--published", "--tb-quota", "type")
    assert code == 2 and "--tb-quota type" in err and not (tmp_path / "r").exists()


def test_published_per_type_cells_follow_no_common_share():
    """The published active/both cells are ≥ 5 images away from any common proportion: a rule that
    gives every TB type the same share s (within ±k of n·s) cannot reproduce them for k ≤ 4."""
    for col in (0, 2):  # train and test
        (ca, na), (cb, nb) = (
            (PUBLISHED_TABLE["active"][col], 924),
            (PUBLISHED_TABLE["active+latent"][col], 54),
        )
        for k in range(5):
            lo = max(Fraction(ca - k, na), Fraction(cb - k, nb))
            hi = min(Fraction(ca + k, na), Fraction(cb + k, nb))
            assert lo > hi, (col, k)  # the two intervals of admissible shares are disjoint
    lo = max(Fraction(473 - 5, 924), Fraction(23 - 5, 54))
    assert lo <= min(Fraction(473 + 5, 924), Fraction(23 + 5, 54))  # k = 5 is the first overlap
