"""The reading form (``tbx study sheet``) and ``tbx report``'s report.html in headless Chromium.

A reader answers every case by keyboard with a fake clock (known reading time per case), reloads
half-way, finishes, exports with the "Export reads" button, and ``tbx study compare`` scores the
downloaded file; window/level / zoom / reset are checked on the rendered pixels; controls must be
labelled (Chromium's accessibility tree) and show a focus ring; no console error, no request
leaves the page's own file.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from browser_fixtures import launch_chromium, watch
from PIL import Image

from tbx.bench import study as st

pytestmark = pytest.mark.browser

# the key map: 1–5 = healthy / sick (non-TB) / active TB / latent TB / active + latent TB
KEY_LABEL = {"1": "healthy", "2": "sick", "3": "active", "4": "latent", "5": "active+latent"}
READER = "Dr Test"
VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


@pytest.fixture(scope="module")
def form(synth_root, tmp_path_factory) -> Path:
    """A 10-case study (3 healthy, 3 sick, 4 TB) of the synthetic layout with its reading form."""
    out = tmp_path_factory.mktemp("browser") / "study"
    st.sample_study(synth_root, out, st.StudyConfig(n_healthy=3, n_sick=3, n_tb=4, tb_mix="1:1:0:2", seed=2))
    html, _ = st.write_sheet(out)
    return html


@pytest.fixture()
def page(browser, form):
    """A fresh context (empty localStorage) on the form, fake clock paused; ``page.w`` = Watch."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    pg = context.new_page()
    pg.w = watch(context, pg)
    pg.clock.install(time=1_000_000)
    pg.goto(form.as_uri())
    pg.clock.pause_at(1_000_100)
    yield pg
    context.close()


def text(pg, sel: str) -> str:
    return pg.locator(sel).inner_text().strip()


def start_reading(pg, name: str = READER) -> None:
    assert pg.evaluate("document.activeElement.id") == "reader"  # the form opens on the Reader field
    pg.keyboard.type(name)
    pg.keyboard.press("Enter")
    assert pg.evaluate("document.activeElement.id") == "viewport"


def viewport_pixels(pg) -> np.ndarray:
    """Grey values on screen inside the viewer (its focus ring cut off)."""
    png = pg.locator("#viewport").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)[8:-8, 8:-8]


def test_keyboard_reading_reload_export_and_compare(page, form, tmp_path, cli):
    pg = page
    cases = [r["case_id"] for r in csv.DictReader(open(form.parent / "cases.csv"))]
    n = len(cases)
    assert n == 10
    # no reader yet: a key does not answer, the Reader field asks for a name
    pg.keyboard.press("Tab")
    pg.keyboard.press("1")
    assert text(pg, "#done-count") == "0 answered"
    assert pg.get_attribute("#reader", "aria-invalid") == "true"
    assert pg.evaluate("document.activeElement.id") == "reader"
    start_reading(pg)
    assert text(pg, "#position") == f"1 / {n}"
    keys = [str(i % 5 + 1) for i in range(n)]  # every answer used twice
    ms = [1300 + 700 * i for i in range(n)]  # reading time per case (fake clock)
    comment = 'apex, "faint"'
    for i in range(n):
        if i == n // 2:  # half-way: reload resumes at the first unanswered case
            pg.reload()
            assert text(pg, "#position") == f"{i + 1} / {n}"
            assert text(pg, "#done-count") == f"{i} answered"
            assert pg.input_value("#reader") == READER
            assert pg.locator("#answers input:checked").count() == 0
        if i == 2:
            pg.keyboard.press("c")
            pg.keyboard.type(comment)
            pg.keyboard.press("Escape")
        if i == 7:  # ← / → move between cases without answering
            pg.keyboard.press("ArrowLeft")
            assert text(pg, "#position") == f"7 / {n}"
            assert pg.locator("#answers input:checked").get_attribute("value") == KEY_LABEL[keys[6]]
            pg.keyboard.press("ArrowRight")
        assert text(pg, "#position") == f"{i + 1} / {n}"
        pg.clock.run_for(ms[i])
        pg.keyboard.press(keys[i])
    # finished: the done panel, Export reads focused; Enter exports
    assert pg.locator("#done").is_visible()
    assert text(pg, "#done-count") == f"{n} answered"
    export = pg.get_by_role("button", name="Export reads", exact=True)
    assert export.evaluate("b => b === document.activeElement")
    with pg.expect_download() as dl:
        pg.keyboard.press("Enter")
    assert dl.value.suggested_filename == "reads_Dr_Test.csv"
    path = tmp_path / dl.value.suggested_filename
    dl.value.save_as(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["case_id", "label", "comment", "seconds"]
    assert [r[0] for r in rows[1:]] == cases
    assert [r[1] for r in rows[1:]] == [KEY_LABEL[k] for k in keys]  # answers = keys pressed
    assert [r[2] for r in rows[1:]] == ["", "", comment] + [""] * (n - 3)
    assert [float(r[3]) for r in rows[1:]] == [t / 1000 for t in ms]
    # compare scores the exported file: accuracy from key.csv by hand, reading time by hand
    gold = {r["case_id"]: r for r in csv.DictReader(open(form.parent / "key.csv"))}
    to3 = {"healthy": "healthy", "sick": "sick"}
    right3 = sum(to3.get(KEY_LABEL[k], "tb") == gold[c]["label"] for c, k in zip(cases, keys))
    code, out, err = cli(
        "study", "compare", form.parent, path, "--n-boot", "20", "--json", tmp_path / "c.json"
    )
    assert code == 0, err
    (r,) = json.loads((tmp_path / "c.json").read_text())["readers"]
    assert r["name"] == "Dr_Test" and r["accuracy_3class"] == pytest.approx(right3 / n)
    secs = [t / 1000 for t in ms]
    assert r["reading_time"] == {
        "median_s": pytest.approx(statistics.median(secs)),
        "total_s": pytest.approx(sum(secs)),
        "n_timed": n,
        "n_cases": n,
    }
    assert "Dr_Test" in out and f"{statistics.median(secs):.1f}" in out
    assert pg.w.errors == [] and pg.w.external == []


def test_view_zoom_window_level_reset(page):
    pg = page
    start_reading(pg)
    pg.wait_for_function("document.getElementById('xray').complete")
    base = viewport_pixels(pg)
    assert base.std() > 5  # a real image is on screen

    for _ in range(3):
        pg.keyboard.press("ArrowUp")  # brighter
    brighter = viewport_pixels(pg)
    assert brighter.mean() > base.mean() + 10
    assert "level 128" not in text(pg, "#view-status")
    pg.keyboard.press("0")
    assert np.array_equal(viewport_pixels(pg), base)
    for _ in range(4):
        pg.keyboard.press("+")  # narrower window: more contrast
    assert viewport_pixels(pg).std() > base.std() * 1.1
    assert "window 255" not in text(pg, "#view-status")
    for _ in range(8):
        pg.keyboard.press("-")  # wider window: less contrast
    assert viewport_pixels(pg).std() < base.std() * 0.9
    pg.keyboard.press("0")
    assert np.array_equal(viewport_pixels(pg), base)
    assert text(pg, "#view-status").startswith("zoom 1.00× · window 255 · level 128")

    pg.keyboard.press("z")
    pg.keyboard.press("z")
    assert text(pg, "#view-status").startswith("zoom 2.25×")
    zoomed = viewport_pixels(pg)
    assert not np.array_equal(zoomed, base)
    box = pg.locator("#xray").bounding_box()  # the transformed image is 2.25× the viewport box
    vp = pg.locator("#viewport").bounding_box()
    assert box["width"] == pytest.approx(2.25 * vp["width"], rel=1e-3)
    pg.keyboard.press("Shift+Z")
    assert text(pg, "#view-status").startswith("zoom 1.50×")
    pg.keyboard.press("0")
    assert np.array_equal(viewport_pixels(pg), base)

    # mouse: drag right = more contrast, drag up = brighter; wheel up zooms in; double-click resets
    cx, cy = vp["x"] + vp["width"] / 2, vp["y"] + vp["height"] / 2
    pg.mouse.move(cx, cy)
    pg.mouse.down()
    pg.mouse.move(cx + 150, cy - 120, steps=5)
    pg.mouse.up()
    dragged = viewport_pixels(pg)
    assert dragged.mean() > base.mean() + 10 and dragged.std() > base.std()
    pg.mouse.wheel(0, -300)
    assert not text(pg, "#view-status").startswith("zoom 1.00×")
    pg.locator("#viewport").dblclick()
    assert np.array_equal(viewport_pixels(pg), base)
    # the buttons do the same as the keys
    pg.get_by_role("button", name="Zoom in").click()
    assert text(pg, "#view-status").startswith("zoom 1.50×")
    pg.get_by_role("button", name="Reset view").click()
    assert text(pg, "#view-status").startswith("zoom 1.00×")
    assert pg.w.errors == [] and pg.w.external == []


def test_labels_focus_and_readers_kept_apart(page):
    pg = page
    start_reading(pg, "A")
    pg.keyboard.press("2")
    pg.keyboard.press("3")
    # every control has an accessible name in Chromium's own accessibility tree
    cdp = pg.context.new_cdp_session(pg)
    nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
    controls = [
        (nd["role"]["value"], (nd.get("name") or {}).get("value", ""))
        for nd in nodes
        if not nd.get("ignored")
        and nd.get("role", {}).get("value")
        in ("button", "textbox", "radio", "checkbox", "slider", "spinbutton", "combobox")
    ]
    assert len(controls) >= 12
    assert all(name.strip() for _, name in controls), controls
    names = {name for _, name in controls}
    assert {
        "Reader",
        "Comment (optional)",
        "Export reads",
        "healthy",
        "sick, non-TB",
        "active TB",
        "latent TB",
        "active + latent TB",
    } <= {nm.split(" ", 1)[-1] if nm[:1].isdigit() else nm for nm in names}
    # Tab visits every control and each shows a visible focus ring (outline ≥ 2 px)
    seen = {}
    pg.evaluate("document.activeElement.blur()")
    for _ in range(20):
        pg.keyboard.press("Tab")
        info = pg.evaluate("""() => { const e = document.activeElement; const s = getComputedStyle(e);
            return [e.id || e.name || e.tagName, s.outlineStyle, parseFloat(s.outlineWidth)]; }""")
        if info[0] != "BODY":  # past the last control focus leaves the page once
            seen[info[0]] = info[1:]
    for wanted in (
        "reader",
        "export",
        "viewport",
        "answer",
        "comment",
        "prev",
        "next",
        "zoom-in",
        "reset-view",
    ):
        assert wanted in seen, (wanted, sorted(seen))
    assert all(style != "none" and width >= 2 for style, width in seen.values()), sorted(seen.items())
    # another reader in the same browser starts blank; the first one's reads come back
    pg.fill("#reader", "B")
    pg.keyboard.press("Enter")
    assert text(pg, "#done-count") == "0 answered" and text(pg, "#position") == "1 / 10"
    pg.fill("#reader", "A")
    pg.keyboard.press("Enter")
    assert text(pg, "#done-count") == "2 answered" and text(pg, "#position") == "3 / 10"
    # a new name for a reader with answers: accepting the question renames (typo fixed)
    pg.once("dialog", lambda d: d.accept())
    pg.fill("#reader", "Anna")
    pg.keyboard.press("Enter")
    assert text(pg, "#done-count") == "2 answered" and "Renamed A to Anna" in text(pg, "#message")
    pg.keyboard.press("1")  # key held down: one answer only
    pg.keyboard.down("2")
    pg.keyboard.down("2")
    pg.keyboard.up("2")
    assert text(pg, "#done-count") == "4 answered"
    # a partial export still downloads, with a warning
    with pg.expect_download() as dl:
        pg.get_by_role("button", name="Export reads").click()
    assert dl.value.suggested_filename == "reads_Anna.csv"
    assert "6 case(s) unanswered" in text(pg, "#message")
    assert pg.w.errors == [] and pg.w.external == []


def test_report_html_renders_offline(browser, tmp_path_factory):
    """``tbx report``'s report.html over a run with figures, overlays and reader rows (built with
    test_report's fixtures; curves of the classification only, to keep it quick)."""
    from test_report import _write_dataset, make_run

    from tbx.bench.report import ReportConfig, make_report

    base = tmp_path_factory.mktemp("report_browser")
    ann, _ = _write_dataset(base / "TBX11K")
    make_run(base / "runs" / "full", seed=1, arrays=True, detection=False, metrics=True, ann=ann, study=True)
    make_report([base / "runs" / "full"], base / "out", ReportConfig(formats="html", overlays=2, dpi=60))
    html = base / "out" / "report.html"
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    w = watch(context, pg)
    pg.goto(html.as_uri())
    pg.wait_for_load_state("load")
    widths = pg.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
    assert len(widths) >= 4  # confusion, ROC, training curves, overlays
    assert all(done and nw > 0 for done, nw in widths), widths
    context.close()
    assert w.errors == [] and w.external == []
