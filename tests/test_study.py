"""tbx study: sampling composition, reading form, scoring rules (type sets, kappa, Fleiss, McNemar)
against hand computations / scikit-learn / scipy, model comparison and bad-input errors."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import binomtest, chi2
from sklearn.metrics import cohen_kappa_score

from tbx.bench import study as st
from tbx.data.coco import write_coco
from tbx.data.records import Box, Record
from tbx.errors import TbxError

# test split of a mini layout: enough of every stratum for the paper's 400-case study
COUNTS = {
    ("healthy", "none"): 150,
    ("sick", "none"): 150,
    ("tb", "active"): 70,
    ("tb", "latent"): 45,
    ("tb", "active+latent"): 16,
    ("tb", "uncertain"): 2,
    ("tb", "unknown"): 1,
}
FOLDER = {"healthy": "health", "sick": "sick", "tb": "tb"}
CATS = {"active": [1], "latent": [2], "active+latent": [1, 2], "uncertain": [3], "unknown": []}


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study") / "TBX11K"
    recs = []
    png = io.BytesIO()
    Image.new("L", (8, 8), 90).save(png, format="PNG")
    for (label, t), n in COUNTS.items():
        for _ in range(n):
            i = len(recs) + 1
            name = f"{FOLDER[label]}/{label[0]}{i:04d}.png"
            (root / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "imgs" / name).write_bytes(png.getvalue())
            recs.append(
                Record(
                    i, name, 8, 8, label, t, split="test", boxes=[Box(1, 1, 3, 3, c) for c in CATS.get(t, [])]
                )
            )
    # file order interleaved (not grouped by class), positional ids as in the release
    order = sorted(recs, key=lambda r: (r.image_id * 7919) % 433)
    write_coco(
        root / "annotations/json/TBX11K_test.json", [r.replace(image_id=k + 1) for k, r in enumerate(order)]
    )
    return root


@pytest.fixture(scope="module")
def study_dir(mini_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s") / "study"
    st.sample_study(mini_root, out, st.StudyConfig(seed=1))
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def gold_of(study: Path) -> list[dict[str, str]]:
    return read_rows(study / "key.csv")


def write_reads(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "label", "comment"])
        for cid, lab in rows:
            w.writerow([cid, lab, ""])
    return path


# ---------------------------------------------------------------------------------------------
# sample


def test_sample_composition_and_files(study_dir, mini_root, tmp_path):
    key = gold_of(study_dir)
    cases = read_rows(study_dir / "cases.csv")
    assert len(key) == len(cases) == 400
    assert [c["case_id"] for c in cases] == [f"case_{i:03d}" for i in range(1, 401)]
    assert set(cases[0]) == {"case_id", "image"}  # no gold in what the reader sees
    kinds = [k["tb_type"] if k["label"] == "tb" else k["label"] for k in key]
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "healthy": 140,
        "sick": 140,
        "active": 63,
        "latent": 41,
        "active+latent": 15,
        "uncertain": 1,
    }
    # reading order is randomised: the first 140 cases are not all one class
    assert len(set(kinds[:140])) > 2
    assert all((study_dir / c["image"]).is_file() for c in cases)
    assert all(Path(c["image"]).name == f"{c['case_id']}.png" for c in cases)
    # key rows point at the annotation's images; file names are unique
    assert len({k["file_name"] for k in key}) == 400
    meta = json.loads((study_dir / "study.json").read_text())
    assert meta["annotation"] == "annotations/json/TBX11K_test.json" and meta["n_cases"] == 400
    # same seed → same study; another seed → another draw
    again = st.sample_study(mini_root, tmp_path / "again", st.StudyConfig(seed=1))
    assert (again / "key.csv").read_bytes() == (study_dir / "key.csv").read_bytes()
    other = st.sample_study(mini_root, tmp_path / "other", st.StudyConfig(seed=2))
    assert (other / "key.csv").read_bytes() != (study_dir / "key.csv").read_bytes()


def test_sample_errors(mini_root, tmp_path):
    with pytest.raises(TbxError, match=r"uncertain: 2 available, 5 requested"):
        st.sample_study(mini_root, tmp_path / "x", st.StudyConfig(n_tb=5, tb_mix="0:0:0:5"))
    with pytest.raises(TbxError, match=r"healthy: 150 available, 151 requested.*sick: 150"):
        st.sample_study(mini_root, tmp_path / "x", st.StudyConfig(n_healthy=151, n_sick=160))
    with pytest.raises(TbxError, match="tb-mix"):
        st.sample_study(mini_root, tmp_path / "x", st.StudyConfig(tb_mix="1:2"))
    with pytest.raises(TbxError, match="no annotation file"):
        st.sample_study(mini_root, tmp_path / "x", st.StudyConfig(split="val"))
    assert not (tmp_path / "x").exists()
    # proportional mix: 12 TB by 63:41:15:1 → 6.3/4.1/1.5/0.1 → 6/4/2/0 (largest remainder)
    assert st.tb_counts(12, "63:41:15:1") == {"active": 6, "latent": 4, "active+latent": 2, "uncertain": 0}


# ---------------------------------------------------------------------------------------------
# sheet


def test_sheet_html_and_template(study_dir):
    import base64
    import re

    html, template = st.write_sheet(study_dir)
    text = html.read_text()
    cases = read_rows(study_dir / "cases.csv")
    data = json.loads(
        re.search(r'<script type="application/json" id="study-data">(.*?)</script>', text, re.S).group(1)
    )
    # every case in reading order, its image inlined byte for byte
    assert [c["id"] for c in data["cases"]] == [c["case_id"] for c in cases]
    for c, row in zip(data["cases"], cases):
        head, b64 = c["src"].split(",", 1)
        assert head == "data:image/png;base64"
        assert base64.b64decode(b64) == (study_dir / row["image"]).read_bytes()
    assert data["columns"] == ["case_id", "label", "comment", "seconds"]
    assert [v for v, _ in data["choices"]] == ["healthy", "sick", "active", "latent", "active+latent"]
    for k, value in enumerate(("healthy", "sick", "active", "latent", "active+latent"), start=1):
        assert f'value="{value}"><kbd>{k}</kbd>' in text  # keys 1–5 in the order
    # one file: the assets' CSS and JS inlined, no placeholder left, nothing fetched
    assert "{{" not in text and "<link" not in text and "<script src" not in text
    assert "http://" not in text and "https://" not in text
    assert "tbx study sheet: the reading form" in text and 'id="reader"' in text
    assert '<label for="reader">Reader</label>' in text and ">Export reads</button>" in text
    # localStorage is keyed by a token of the images (16 hex digits)
    assert re.fullmatch(r"[0-9a-f]{16}", data["token"])
    rows = read_rows(template)
    assert [r["case_id"] for r in rows] == [c["case_id"] for c in cases]
    assert all(r["label"] == "" for r in rows)
    assert list(rows[0]) == ["case_id", "label", "comment", "seconds"]


# ---------------------------------------------------------------------------------------------
# scoring rules


def test_type_set_rule():
    tc = st.type_correct
    assert tc("active", "tb", "active") and not tc("latent", "tb", "active")
    assert tc("active+latent", "tb", "active+latent") and not tc("active", "tb", "active+latent")
    assert not tc("active+latent", "tb", "latent")
    for ans in ("active", "latent", "active+latent", "tb"):
        assert tc(ans, "tb", "uncertain")  # uncertain gold: any TB answer is right
    assert not tc("sick", "tb", "uncertain") and not tc("tb", "tb", "active")
    assert tc("healthy", "healthy", "none") and not tc("sick", "healthy", "none")
    assert st.normalise_answer(" Active TB ") == "active"
    assert st.normalise_answer("Active + Latent") == "active+latent"
    assert st.normalise_answer("maybe") is None


def test_kappas_against_references():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, 200)
    b = np.where(rng.random(200) < 0.7, a, rng.integers(0, 3, 200))
    assert st.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    # Fleiss: the classic 10 subjects × 14 raters × 5 categories example (Fleiss 1971 / Wikipedia):
    # P̄ = 0.378, P̄e = 0.2133 → κ = 0.2099
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    ratings = np.array([[j for j, n in enumerate(row) for _ in range(n)] for row in table])
    p_bar = np.mean([(sum(n * n for n in row) - 14) / (14 * 13) for row in table])
    p_j = np.array(table).sum(axis=0) / 140
    hand = (p_bar - (p_j**2).sum()) / (1 - (p_j**2).sum())
    assert hand == pytest.approx(0.2099, abs=1e-4)
    assert st.fleiss_kappa(ratings, k=5) == pytest.approx(hand, abs=1e-12)


def test_mcnemar_exact_and_chi_square():
    # b = 3 (model right, reader wrong), c = 9 → exact (b + c < 25)
    m = np.array([1] * 3 + [0] * 9 + [1] * 50 + [0] * 5, bool)
    r = np.array([0] * 3 + [1] * 9 + [1] * 50 + [0] * 5, bool)
    res = st.mcnemar(m, r)
    assert (res["b"], res["c"], res["method"]) == (3, 9, "exact binomial")
    assert res["p_value"] == pytest.approx(binomtest(3, 12, 0.5).pvalue, rel=1e-12)
    # b = 20, c = 8 → chi-square with continuity correction: (|20 − 8| − 1)² / 28 = 121 / 28
    m = np.array([1] * 20 + [0] * 8, bool)
    res = st.mcnemar(m, ~m)
    assert res["statistic"] == pytest.approx(121 / 28)
    assert res["p_value"] == pytest.approx(chi2.sf(121 / 28, 1))
    assert st.mcnemar(m, m)["p_value"] == 1.0


# ---------------------------------------------------------------------------------------------
# compare


def _known_reads(study: Path) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """Reads right on exactly 337/400 cases (3-class) and 327/400 with types."""
    key = gold_of(study)
    answers = {}
    counters = {"h2s": 30, "s2h": 20, "tb2s": 8, "h2tb": 5, "typeswap": 10}
    for k in key:
        g = k["tb_type"] if k["label"] == "tb" else k["label"]
        ans = {"uncertain": "latent"}.get(g, g)  # uncertain gold answered latent → right
        if g == "healthy" and counters["h2s"]:
            counters["h2s"] -= 1
            ans = "sick"
        elif g == "healthy" and counters["h2tb"]:
            counters["h2tb"] -= 1
            ans = "active"
        elif g == "sick" and counters["s2h"]:
            counters["s2h"] -= 1
            ans = "Healthy"  # case-insensitive
        elif g == "active" and counters["tb2s"]:
            counters["tb2s"] -= 1
            ans = "sick"
        elif g == "active" and counters["typeswap"]:
            counters["typeswap"] -= 1
            ans = "latent TB"
        answers[k["case_id"]] = ans
    expected = {
        "accuracy_3class": 337 / 400,
        "accuracy_types": 327 / 400,
        "sensitivity": 112 / 120,
        "specificity": 275 / 280,
    }
    rows = [(c["case_id"], answers[c["case_id"]]) for c in read_rows(study / "cases.csv")]
    return rows, expected


def test_compare_known_reader_and_model(study_dir, mini_root, tmp_path):
    rows, expected = _known_reads(study_dir)
    reads = write_reads(tmp_path / "reads_alice.csv", rows)
    key = {k["case_id"]: k for k in gold_of(study_dir)}
    gold3 = np.array([{"healthy": 0, "sick": 1, "tb": 2}[key[c]["label"]] for c, _ in rows])
    ans3 = np.array([{"healthy": 0, "sick": 1}.get(a.lower(), 2) for _, a in rows])
    # model: p(TB) high for TB cases except the first 4 TB cases; calls sick → healthy on 6 cases
    ann = json.loads((mini_root / "annotations/json/TBX11K_test.json").read_text())
    line_of = {img["file_name"]: i for i, img in enumerate(ann["images"])}
    probs = np.tile([0.8, 0.1, 0.1], (len(line_of), 1))
    by_name = {v["file_name"]: v for v in key.values()}
    model3 = {}
    tb_seen = sick_seen = 0
    for cid, _ in rows:
        g = key[cid]
        i = line_of[g["file_name"]]
        if g["label"] == "tb":
            tb_seen += 1
            probs[i] = [0.5, 0.3, 0.2] if tb_seen <= 4 else [0.05, 0.05, 0.9]
        elif g["label"] == "sick":
            sick_seen += 1
            probs[i] = [0.6, 0.3, 0.1] if sick_seen <= 6 else [0.1, 0.8, 0.1]
        model3[cid] = int(np.argmax(probs[i]))
    assert len(by_name) == 400
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    (pred_dir / "cls_result.txt").write_text("".join(f"{a} {b} {c}\n" for a, b, c in probs))
    res, out = st.run_compare(
        study_dir, [reads], pred_dir, tmp_path / "cmp.json", st.CompareConfig(n_boot=200, seed=0)
    )
    (r,) = res["readers"]
    assert r["name"] == "alice"
    for k, v in expected.items():
        assert r[k] == pytest.approx(v), k
    assert r["kappa_vs_gold"] == pytest.approx(cohen_kappa_score(gold3, ans3))
    assert r["confusion"] == [[105, 30, 5], [20, 120, 0], [0, 8, 112]]
    assert r["confusion_types"]["uncertain"]["latent"] == 1
    assert r["confusion_types"]["active"]["latent"] == 10
    lo, hi = r["ci"]["accuracy_3class"]
    assert lo < 337 / 400 < hi and hi - lo < 0.15
    assert r["operating_point"] == {"fpr": pytest.approx(5 / 280), "tpr": pytest.approx(112 / 120)}
    m = res["model"]
    m3 = np.array([model3[c] for c, _ in rows])
    assert m["accuracy_3class"] == pytest.approx((m3 == gold3).mean())
    assert m["accuracy_3class"] == pytest.approx((400 - 4 - 6) / 400)
    assert m["sensitivity"] == pytest.approx(116 / 120) and m["specificity"] == 1.0
    assert m["kappa_vs_gold"] == pytest.approx(cohen_kappa_score(gold3, m3))
    assert "accuracy_types" not in m and m["auc"] > 0.9
    (test,) = res["tests"]
    b = int(((m3 == gold3) & (ans3 != gold3)).sum())
    c = int(((m3 != gold3) & (ans3 == gold3)).sum())
    assert (test["b"], test["c"]) == (b, c)
    if b + c < 25:
        assert test["p_value"] == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue)
    else:
        assert test["statistic"] == pytest.approx((abs(b - c) - 1) ** 2 / (b + c))
    assert json.loads(out.read_text())["readers"][0]["accuracy_3class"] == pytest.approx(0.8425)
    assert (tmp_path / "provenance_compare.json").is_file()


def test_compare_agreement_two_and_three_readers(study_dir, tmp_path):
    rows, _ = _known_reads(study_dir)
    key = {k["case_id"]: k for k in gold_of(study_dir)}
    perfect = [
        (
            c,
            key[c]["tb_type"]
            if key[c]["label"] == "tb" and key[c]["tb_type"] != "uncertain"
            else ("active" if key[c]["label"] == "tb" else key[c]["label"]),
        )
        for c, _ in rows
    ]
    all_healthy = [(c, "healthy") for c, _ in rows]
    fa = write_reads(tmp_path / "reads_a.csv", rows)
    fb = write_reads(tmp_path / "reads_b.csv", perfect)
    fc = write_reads(tmp_path / "reads_c.csv", all_healthy)
    res2 = st.compare(study_dir, [fa, fb], cfg=st.CompareConfig(n_boot=50))
    to3 = {"healthy": 0, "sick": 1}
    a3 = [to3.get(a.lower(), 2) for _, a in rows]
    b3 = [to3.get(a, 2) for _, a in perfect]
    c3 = [0] * len(rows)
    assert res2["agreement"]["method"] == "cohen"
    assert res2["agreement"]["kappa"] == pytest.approx(cohen_kappa_score(a3, b3))
    assert res2["readers"][1]["accuracy_types"] == 1.0 and res2["readers"][1]["kappa_vs_gold"] == 1.0
    assert res2["average"]["accuracy_3class"] == pytest.approx((337 / 400 + 1) / 2)
    res3 = st.compare(study_dir, [fa, fb, fc], cfg=st.CompareConfig(n_boot=50))
    ag = res3["agreement"]
    assert ag["method"] == "fleiss" and len(ag["pairwise_cohen"]) == 3
    # hand Fleiss over the three readers
    ratings = np.array([a3, b3, c3]).T
    counts = np.stack([(ratings == j).sum(1) for j in range(3)], 1)
    p_bar = ((counts**2).sum(1) - 3).mean() / 6
    pj = counts.sum(0) / (3 * len(rows))
    assert ag["kappa"] == pytest.approx((p_bar - (pj**2).sum()) / (1 - (pj**2).sum()))
    c = res3["readers"][2]
    assert c["sensitivity"] == 0 and c["specificity"] == 1.0
    assert c["accuracy_3class"] == pytest.approx(140 / 400)


def test_compare_bad_reads(study_dir, tmp_path):
    rows, _ = _known_reads(study_dir)
    bad = list(rows)
    bad[3] = (bad[3][0], "pneumonia")  # invalid label → line 5
    bad[7] = ("case_999", "healthy")  # unknown id → line 9 (and rows[7] missing)
    bad.append(bad[10])  # duplicate → line 402
    path = write_reads(tmp_path / "reads_bad.csv", bad)
    out = tmp_path / "cmp.json"
    with pytest.raises(TbxError) as e:
        st.run_compare(study_dir, [path], json_out=out)
    msg = e.value.one_line()
    assert f"{path}:5: invalid label 'pneumonia'" in msg
    assert f"{path}:9: unknown case id 'case_999'" in msg
    assert f"{path}:402: duplicate row for '{bad[10][0]}'" in msg
    assert f"without a row: {rows[7][0]}" in msg
    assert not out.exists()
    empty = tmp_path / "reads_empty.csv"
    empty.write_text("case,answer\n")
    with pytest.raises(TbxError, match="missing column"):
        st.compare(study_dir, [empty])


def test_key_cases_mismatch(study_dir, tmp_path):
    import shutil

    d = tmp_path / "broken"
    shutil.copytree(study_dir, d, ignore=shutil.ignore_patterns("images", "*.html"))
    lines = (d / "key.csv").read_text().splitlines()
    (d / "key.csv").write_text("\n".join(lines[:-1] + ["case_999,healthy,none,x.png,1"]) + "\n")
    with pytest.raises(
        TbxError,
        match=r"do not match.*case_400' has no row in key.csv.*"
        r"key.csv:401: case 'case_999' is not in cases.csv",
    ):
        st.load_study(d)


def test_simulated_reader(study_dir):
    path = st.simulate_reader(study_dir, seed=3)
    assert path.name == "reads_simulated_reader.csv"
    rows = read_rows(path)
    assert all("SIMULATED" in r["comment"] for r in rows)
    res = st.compare(study_dir, [path], cfg=st.CompareConfig(n_boot=20))
    (r,) = res["readers"]
    assert r["accuracy_3class"] == pytest.approx(round(0.848 * 400) / 400)  # 339 / 400
    assert r["accuracy_types"] == pytest.approx(round(0.687 * 400) / 400)  # 275 / 400
    ct = r["confusion_types"]
    type_errors = sum(
        ct[g][a]
        for g in ("active", "latent", "active+latent")
        for a in ("active", "latent", "active+latent")
        if a != g
    )
    tb_vs_non = r["confusion"][2][0] + r["confusion"][2][1] + r["confusion"][0][2] + r["confusion"][1][2]
    assert type_errors == 339 - 275 and type_errors > tb_vs_non
    with pytest.raises(TbxError):
        st.simulate_reader(study_dir, accuracy=0.5, type_accuracy=0.6)


def test_cli_study_flow(mini_root, tmp_path, cli):
    d = tmp_path / "cli_study"
    code, out, err = cli(
        "study",
        "sample",
        mini_root,
        "--out",
        d,
        "--n-healthy",
        "10",
        "--n-sick",
        "10",
        "--n-tb",
        "8",
        "--seed",
        "4",
    )
    assert code == 0, err
    key = gold_of(d)
    assert len(key) == 28 and sum(k["label"] == "tb" for k in key) == 8
    code, _, err = cli("study", "sample", mini_root, "--out", d)
    assert code == 2 and "--force" in err
    code, out, err = cli("study", "sheet", d)
    assert code == 0 and (d / "reading_form.html").is_file()
    reads = write_reads(
        tmp_path / "reads_r1.csv", [(k["case_id"], k["label"] if k["label"] != "tb" else "tb") for k in key]
    )
    code, out, err = cli("study", "compare", d, reads, "--n-boot", "50")
    assert code == 0, err
    res = json.loads((d / "study_compare.json").read_text())
    assert res["readers"][0]["accuracy_3class"] == 1.0
    # untyped "tb" answers are right only for uncertain gold
    n_unc = sum(k["tb_type"] == "uncertain" for k in key)
    assert math.isclose(res["readers"][0]["accuracy_types"], (20 + n_unc) / 28)
    assert "r1" in out
    bad = write_reads(tmp_path / "reads_r2.csv", [("case_001", "x")])
    code, _, err = cli("study", "compare", d, bad)
    assert code == 2 and "reads_r2.csv:2: invalid label" in err


def test_compare_reading_time(study_dir, tmp_path, cli):
    """The ``seconds`` column: median and total per reader over the timed cases (blank = not timed);
    a reads file without the column still scores; bad times are listed with file:line."""
    rows, expected = _known_reads(study_dir)
    # 4 cases not timed; of the 396 timed: 197 × 10 s, one 12.4 s, 198 × 20 s
    # → median = mean of the 198th and 199th smallest = (12.4 + 20) / 2 = 16.2 s,
    #   total = 1970 + 12.4 + 3960 = 5942.4 s (1:39:02)
    secs = [""] * 4 + ["10"] * 197 + ["12.4"] + ["20.0"] * 198
    timed = tmp_path / "reads_timed.csv"
    with open(timed, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "label", "comment", "seconds"])
        w.writerows([cid, lab, "", t] for (cid, lab), t in zip(rows, secs))
    plain = write_reads(tmp_path / "reads_plain.csv", rows)
    res = st.compare(study_dir, [timed, plain], cfg=st.CompareConfig(n_boot=20))
    a, b = res["readers"]
    assert a["reading_time"] == {
        "median_s": pytest.approx(16.2),
        "total_s": pytest.approx(5942.4),
        "n_timed": 396,
        "n_cases": 400,
    }
    assert b["reading_time"] is None
    assert a["accuracy_3class"] == b["accuracy_3class"] == pytest.approx(expected["accuracy_3class"])
    code, out, err = cli(
        "study", "compare", study_dir, timed, plain, "--n-boot", "20", "--json", tmp_path / "c.json"
    )
    assert code == 0, err
    line = next(x for x in out.splitlines() if "timed" in x and "16.2" in x)
    assert "1:39:02" in line
    assert "over the 396 of 400 cases with a time" in out
    # invalid times: negative, not a number, not finite
    with open(timed, newline="") as f:
        lines = list(csv.reader(f))
    for line_no, bad in ((6, "-3"), (7, "abc"), (8, "nan"), (9, "inf")):
        lines[line_no - 1][3] = bad
    badfile = tmp_path / "reads_badtime.csv"
    with open(badfile, "w", newline="") as f:
        csv.writer(f).writerows(lines)
    with pytest.raises(TbxError) as e:
        st.compare(study_dir, [badfile])
    msg = e.value.one_line()
    for line_no, bad in ((6, "-3"), (7, "abc"), (8, "nan"), (9, "inf")):
        assert f"{badfile}:{line_no}: invalid seconds '{bad}'" in msg
