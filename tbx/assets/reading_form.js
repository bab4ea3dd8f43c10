// tbx study sheet: the reading form. One case at a time, keys 1-5 answer, window/level and zoom,
// reading time per case; answers, comments and times are kept in localStorage per study and reader.
(() => {
  "use strict";
  const DATA = JSON.parse(document.getElementById("study-data").textContent);
  const CASES = DATA.cases; // [{id, src}] in reading order
  const N = CASES.length;
  const LABELS = DATA.choices.map((c) => c[0]); // key k (1-based) answers LABELS[k - 1]
  const PREFIX = "tbx-study:" + DATA.token + ":";
  const COLUMNS = DATA.columns; // case_id,label,comment,seconds
  const SAVE_EVERY_MS = 5000;
  const ZOOM_STEP = 1.5;
  const ZOOM_MAX = 8;
  const $ = (id) => document.getElementById(id);
  const ui = {
    reader: $("reader"), position: $("position"), bar: $("done-bar"), count: $("done-count"),
    exportBtn: $("export"), viewport: $("viewport"), img: $("xray"), status: $("view-status"),
    caseId: $("case-id"), answers: $("answers"), comment: $("comment"), prev: $("prev"),
    next: $("next"), firstOpen: $("first-open"), zoomIn: $("zoom-in"), zoomOut: $("zoom-out"),
    reset: $("reset-view"), message: $("message"), done: $("done"), doneFile: $("done-file"),
    review: $("review"),
  };
  const radios = Array.from(ui.answers.querySelectorAll("input[type=radio]"));
  const funcs = Array.from(document.querySelectorAll("#wl feFuncR, #wl feFuncG, #wl feFuncB"));

  let reads = emptyReads();
  let reader = "";
  let index = 0;
  let since = null; // performance.now() from which the current case's reading time runs
  let storageOk = true;
  // view: zoom factor, pan in CSS px, window width / level as fractions of the grey range 0..1
  let view = freshView();

  function emptyReads() { return { answers: {}, comments: {}, seconds: {} }; }
  function freshView() { return { zoom: 1, panX: 0, panY: 0, width: 1, level: 0.5 }; }
  function clamp(x, lo, hi) { return Math.min(hi, Math.max(lo, x)); }

  // ------------------------------------------------------------------------- storage
  function storageGet(key) {
    try { return window.localStorage.getItem(key); } catch (e) { storageOk = false; return null; }
  }
  function storageSet(key, value) {
    try { window.localStorage.setItem(key, value); return true; } catch (e) {
      if (storageOk) say("This browser does not keep the answers (storage blocked): export often.", true);
      storageOk = false;
      return false;
    }
  }
  function readsKey(name) { return PREFIX + "reads:" + name; }
  function loadReads(name) {
    const out = emptyReads();
    let stored = null;
    try { stored = JSON.parse(storageGet(readsKey(name)) || "null"); } catch (e) { stored = null; }
    if (!stored || typeof stored !== "object") return out;
    for (const c of CASES) {
      const a = stored.answers && stored.answers[c.id];
      if (LABELS.includes(a)) out.answers[c.id] = a;
      const t = stored.comments && stored.comments[c.id];
      if (typeof t === "string" && t) out.comments[c.id] = t;
      const s = stored.seconds && Number(stored.seconds[c.id]);
      if (Number.isFinite(s) && s >= 0) out.seconds[c.id] = s;
    }
    return out;
  }
  function save() {
    if (!reader) return;
    storageSet(readsKey(reader), JSON.stringify(reads));
    storageSet(PREFIX + "reader", reader);
  }

  // ------------------------------------------------------------------------- reading time
  function flushTime() {
    if (since === null) return;
    const t = performance.now();
    const id = CASES[index].id;
    reads.seconds[id] = (reads.seconds[id] || 0) + (t - since) / 1000;
    since = t;
  }
  function timing() { return Boolean(reader) && !document.hidden && ui.done.hidden; }
  function syncTimer() {
    flushTime();
    if (!timing()) since = null;
    else if (since === null) since = performance.now();
  }

  // ------------------------------------------------------------------------- state helpers
  function answered() { return CASES.reduce((n, c) => n + (c.id in reads.answers ? 1 : 0), 0); }
  function firstOpen() { return CASES.findIndex((c) => !(c.id in reads.answers)); }
  function say(text, warn) {
    ui.message.textContent = text;
    ui.message.classList.toggle("warn", Boolean(warn));
  }
  function fileName() {
    const safe = reader.replace(/[^\p{L}\p{N}_-]+/gu, "_").replace(/^_+|_+$/g, "");
    return "reads_" + (safe || "reader") + ".csv";
  }
  function needReader() {
    if (reader) return true;
    ui.reader.setAttribute("aria-invalid", "true");
    say("Enter your name in the Reader field first (then press Enter).", true);
    ui.reader.focus();
    return false;
  }

  // ------------------------------------------------------------------------- rendering
  function render() {
    const c = CASES[index];
    if (ui.img.dataset.case !== c.id) {
      ui.img.src = c.src;
      ui.img.dataset.case = c.id;
    }
    ui.img.alt = "Chest X-ray, case " + (index + 1) + " of " + N;
    ui.position.textContent = (index + 1) + " / " + N;
    ui.caseId.textContent = "Case " + (index + 1) + " · " + c.id;
    const n = answered();
    ui.bar.value = n;
    ui.count.textContent = n + " answered";
    const a = reads.answers[c.id];
    for (const r of radios) r.checked = r.value === a;
    ui.comment.value = reads.comments[c.id] || "";
    ui.prev.disabled = index === 0;
    ui.next.disabled = index === N - 1;
    ui.exportBtn.classList.toggle("ready", n === N);
    ui.doneFile.textContent = fileName();
    applyView();
    if (index + 1 < N) new Image().src = CASES[index + 1].src; // decode the next case ahead
  }
  function applyView() {
    ui.img.style.transform =
      "translate(" + view.panX + "px, " + view.panY + "px) scale(" + view.zoom + ")";
    const slope = 1 / view.width;
    const intercept = 0.5 - view.level / view.width;
    for (const f of funcs) {
      f.setAttribute("slope", slope.toFixed(5));
      f.setAttribute("intercept", intercept.toFixed(5));
    }
    ui.status.textContent = "zoom " + view.zoom.toFixed(2) + "× · window " +
      Math.round(view.width * 255) + " · level " + Math.round(view.level * 255) +
      (view.zoom === 1 && view.width === 1 && view.level === 0.5 ? "" : " · press 0 to reset");
  }

  // ------------------------------------------------------------------------- actions
  function go(i) {
    i = clamp(i, 0, N - 1);
    flushTime();
    index = i;
    view = freshView();
    render();
    save();
  }
  function answer(k) {
    if (!needReader()) { render(); return; } // undo a radio the browser already checked
    const label = LABELS[k - 1];
    const id = CASES[index].id;
    const wasComplete = answered() === N;
    reads.answers[id] = label;
    flushTime();
    save();
    const open = firstOpen();
    if (open === -1 && !wasComplete) { render(); showDone(); return; }
    if (index < N - 1) go(index + 1);
    else if (open !== -1) go(open);
    else render();
    say("");
  }
  function showDone() {
    ui.done.hidden = false;
    syncTimer();
    ui.exportBtn.focus();
    say("All cases answered: press Export reads.");
  }
  function hideDone() {
    if (ui.done.hidden) return;
    ui.done.hidden = true;
    syncTimer();
    ui.viewport.focus();
  }
  function setReader(name) {
    name = name.trim();
    if (!name) { needReader(); return; }
    ui.reader.removeAttribute("aria-invalid");
    if (name === reader) { ui.viewport.focus(); return; }
    const previous = reader;
    flushTime();
    save();
    const known = storageGet(readsKey(name)) !== null;
    const carried = answered();
    reader = name;
    let note;
    if (previous && carried && !known && window.confirm("Rename the reader '" + previous + "' to '" +
        name + "' and keep the " + carried + " answer(s)?\n(Cancel: start a new reading as '" +
        name + "'; the reads of '" + previous + "' stay saved under that name.)")) {
      try { window.localStorage.removeItem(readsKey(previous)); } catch (e) { storageOk = false; }
      save();
      note = "Renamed " + previous + " to " + name + ".";
    } else {
      reads = loadReads(name);
      note = previous ? "The reads of " + previous + " stay saved under that name." : "";
    }
    storageSet(PREFIX + "reader", name);
    ui.done.hidden = true;
    const open = firstOpen();
    index = open === -1 ? N - 1 : open;
    view = freshView();
    since = null;
    render();
    syncTimer();
    const n = answered();
    say((n ? "Reading as " + name + ": " + n + " of " + N + " answered. " : "Reading as " + name + ". ") +
      note);
    if (open === -1) showDone(); else ui.viewport.focus();
  }
  function exportReads() {
    if (!needReader()) return;
    flushTime();
    save();
    const cell = (v) => {
      v = String(v);
      return /[",\n\r]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
    };
    const lines = [COLUMNS.join(",")];
    for (const c of CASES) {
      const s = reads.seconds[c.id];
      lines.push([c.id, reads.answers[c.id] || "", reads.comments[c.id] || "",
        s === undefined ? "" : s.toFixed(1)].map(cell).join(","));
    }
    const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv;charset=utf-8" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = fileName();
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    const open = N - answered();
    say(open ? "Exported " + a.download + " with " + open + " case(s) unanswered: tbx study compare " +
      "needs every case answered." : "Exported " + a.download + ": send it to the study coordinator.",
    open > 0);
  }
  function zoomAt(factor, px, py) { // px, py: point relative to the viewport centre (CSS px)
    const z = clamp(view.zoom * factor, 1, ZOOM_MAX);
    const f = z / view.zoom;
    view.panX = px - (px - view.panX) * f;
    view.panY = py - (py - view.panY) * f;
    view.zoom = z;
    if (z === 1) { view.panX = 0; view.panY = 0; }
    applyView();
  }
  function windowBy(dWidth, dLevel) { // dWidth: log factor (>0 = wider window = less contrast)
    view.width = clamp(view.width * Math.exp(dWidth), 0.02, 2);
    view.level = clamp(view.level + dLevel, 0, 1);
    applyView();
  }
  function pan(dx, dy) {
    if (view.zoom === 1) return;
    view.panX += dx;
    view.panY += dy;
    applyView();
  }
  function resetView() { view = freshView(); applyView(); }

  // ------------------------------------------------------------------------- keyboard
  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    const typing = t === ui.reader || t === ui.comment;
    if (typing) {
      if (e.key === "Escape") { e.preventDefault(); t.blur(); ui.viewport.focus(); }
      if (t === ui.reader && e.key === "Enter") { e.preventDefault(); setReader(ui.reader.value); }
      return;
    }
    const isButton = t instanceof HTMLButtonElement;
    if (!ui.done.hidden && e.key === "Escape") { e.preventDefault(); hideDone(); return; }
    let handled = true;
    const step = 40;
    switch (e.key) {
      case "1": case "2": case "3": case "4": case "5": // a held key answers one case only
        if (!e.repeat) answer(Number(e.key));
        break;
      case "ArrowLeft": if (e.shiftKey) pan(step, 0); else { hideDone(); go(index - 1); } break;
      case "ArrowRight": if (e.shiftKey) pan(-step, 0); else { hideDone(); go(index + 1); } break;
      case "ArrowUp": if (e.shiftKey) pan(0, step); else windowBy(0, -0.04); break;
      case "ArrowDown": if (e.shiftKey) pan(0, -step); else windowBy(0, 0.04); break;
      case "+": case "=": windowBy(-0.15, 0); break;
      case "-": case "_": windowBy(0.15, 0); break;
      case "z": zoomAt(ZOOM_STEP, 0, 0); break;
      case "Z": zoomAt(1 / ZOOM_STEP, 0, 0); break;
      case "0": resetView(); break;
      case "c": case "C": hideDone(); ui.comment.focus(); break;
      case "u": case "U": { hideDone(); const o = firstOpen(); if (o !== -1) go(o); break; }
      default: handled = false;
    }
    // Enter / Space keep activating a focused button; every other handled key is ours
    if (handled && !(isButton && (e.key === "Enter" || e.key === " "))) e.preventDefault();
  }

  // ------------------------------------------------------------------------- mouse
  let drag = null;
  function onPointerDown(e) {
    if (e.button !== 0 && e.button !== 1) return;
    ui.viewport.focus();
    e.preventDefault();
    const panMode = e.shiftKey || e.button === 1;
    drag = { x: e.clientX, y: e.clientY, pan: panMode, view: Object.assign({}, view) };
    ui.viewport.classList.toggle("panning", panMode);
    ui.viewport.setPointerCapture(e.pointerId);
  }
  function onPointerMove(e) {
    if (!drag) return;
    const dx = e.clientX - drag.x;
    const dy = e.clientY - drag.y;
    if (drag.pan) {
      if (view.zoom === 1) return;
      view.panX = drag.view.panX + dx;
      view.panY = drag.view.panY + dy;
    } else { // right = more contrast (narrower window), up = brighter (lower level)
      view.width = clamp(drag.view.width * Math.exp(-dx / 300), 0.02, 2);
      view.level = clamp(drag.view.level + dy / 400, 0, 1);
    }
    applyView();
  }
  function onPointerUp(e) {
    if (!drag) return;
    drag = null;
    ui.viewport.classList.remove("panning");
    if (ui.viewport.hasPointerCapture(e.pointerId)) ui.viewport.releasePointerCapture(e.pointerId);
  }
  function onWheel(e) {
    if (e.ctrlKey) return; // browser zoom
    e.preventDefault();
    const r = ui.viewport.getBoundingClientRect();
    zoomAt(Math.pow(1.1, -e.deltaY / 100), e.clientX - r.left - r.width / 2,
      e.clientY - r.top - r.height / 2);
  }

  // ------------------------------------------------------------------------- wiring
  document.addEventListener("keydown", onKey);
  ui.viewport.addEventListener("pointerdown", onPointerDown);
  ui.viewport.addEventListener("pointermove", onPointerMove);
  ui.viewport.addEventListener("pointerup", onPointerUp);
  ui.viewport.addEventListener("pointercancel", onPointerUp);
  ui.viewport.addEventListener("wheel", onWheel, { passive: false });
  ui.viewport.addEventListener("dblclick", resetView);
  radios.forEach((r, k) => r.addEventListener("click", () => answer(k + 1)));
  ui.reader.addEventListener("change", () => setReader(ui.reader.value));
  ui.comment.addEventListener("input", () => {
    if (!needReader()) { render(); return; }
    const id = CASES[index].id;
    if (ui.comment.value) reads.comments[id] = ui.comment.value;
    else delete reads.comments[id];
    save();
  });
  ui.exportBtn.addEventListener("click", exportReads);
  ui.prev.addEventListener("click", () => go(index - 1));
  ui.next.addEventListener("click", () => go(index + 1));
  ui.firstOpen.addEventListener("click", () => { const o = firstOpen(); if (o !== -1) go(o); });
  ui.zoomIn.addEventListener("click", () => zoomAt(ZOOM_STEP, 0, 0));
  ui.zoomOut.addEventListener("click", () => zoomAt(1 / ZOOM_STEP, 0, 0));
  ui.reset.addEventListener("click", resetView);
  ui.review.addEventListener("click", hideDone);
  document.addEventListener("visibilitychange", () => { syncTimer(); save(); });
  window.addEventListener("pagehide", () => { flushTime(); save(); });
  setInterval(() => { flushTime(); save(); }, SAVE_EVERY_MS);

  render();
  const last = storageGet(PREFIX + "reader");
  if (last) {
    ui.reader.value = last;
    setReader(last);
  } else {
    say("Enter your name in the Reader field, then press Enter to start.");
    ui.reader.focus();
  }
})();
