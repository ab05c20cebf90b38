// The front end of the notebook apps (similar_images.apps.gallery.GalleryWidget), an anywidget ES module.
//
// One widget draws the whole app: header, toolbar, status line, query panel, results grid and lightbox.
// The kernel sends state (traits) and answers events; everything here is presentation and input:
//
//   kernel -> page   traits: header, query, results, bands, status, message, state, controls ...
//                    messages: {event: "preview", key} + [jpeg], {event: "action_result", ...} + [png]
//   page -> kernel   messages: {event: "random" | "url" | "text" | "search" | "preview" | "action" | "ready"
//                    | "upload_start" | "upload_chunk" | "upload_end" | "upload_refused", ...}
//                    traits set here: k, exact, speed, include_query, min_band, tile, selected, lightbox, present
//
// Keys: in the grid, arrows move the selection, Enter opens it (texts: searches with it); in the lightbox,
// left/right move through the query and the results, Enter searches with the one shown, Esc closes. P (outside a text
// box) turns presenter mode on and off: text that scales with the window, compact controls, the query beside the
// results so that the first row stays above the fold.

const CHUNK = 2 * 1024 * 1024; // upload piece size: far below any server's websocket message limit
const BAND_CLASS = { "near-duplicate": "nd", "very similar": "vs", "similar": "si", "weak": "wk" };
const STOP = new Set(["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Enter", "Escape", "Home", "End", " "]);

function h(tag, cls, attrs) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (attrs) for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  return e;
}

function blobUrl(data, type) {
  if (!data) return "";
  const view = data instanceof DataView ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : data;
  return URL.createObjectURL(new Blob([view], { type }));
}

// "COCO_val2014_000000123456.jpg" -> "COCO_val…00123456.jpg": keep the end, where names differ.
export function shortenMiddle(name, max) {
  if (!name || name.length <= max || max < 8) return name || "";
  const tail = Math.ceil((max - 1) * 0.6);
  const head = max - 1 - tail;
  return name.slice(0, head) + "\u2026" + name.slice(name.length - tail);
}

function fmtBytes(n) {
  return n >= 1048576 ? (n / 1048576).toFixed(1) + " MB" : Math.max(1, Math.round(n / 1024)) + " KB";
}

function fmtSeconds(s) {
  return s < 10 ? s.toFixed(1) + " s" : Math.round(s) + " s";
}

function render({ model, el }) {
  const mode = () => model.get("mode");
  const cleanups = [];
  const urls = new Set(); // blob URLs of the current render (revoked on the next)
  const previews = new Map(); // key -> blob URL of a server-made large image
  const waiting = new Map(); // key -> [callbacks]
  let renderGen = 0;
  let modelTimer = null;

  el.classList.add("sig-host");
  const root = h("div", "sig-app");
  el.appendChild(root);

  // ------------------------------------------------------------------ header
  const header = h("div", "sig-header");
  const title = h("h2", "sig-title");
  const sub = h("div", "sig-sub");
  header.append(title, sub);

  // ------------------------------------------------------------------ toolbar
  const toolbar = h("div", "sig-toolbar");
  const randomBtn = h("button", "sig-btn sig-primary sig-random", { type: "button" });
  const uploadBtn = h("button", "sig-btn sig-upload", { type: "button", text: "Upload image" });
  const fileInput = h("input", "sig-file", { type: "file", hidden: "" });
  const form = h("form", "sig-form");
  const input = h("input", "sig-input", { type: "text", spellcheck: "false", autocomplete: "off" });
  const goBtn = h("button", "sig-btn sig-go", { type: "submit" });
  form.append(input, goBtn);
  const presentBtn = h("button", "sig-btn sig-present-btn", { type: "button", "aria-pressed": "false",
    title: "Presenter mode: large text for a class, compact controls (key P)", text: "Present" });
  toolbar.append(randomBtn, uploadBtn, fileInput, form, presentBtn);
  const top = h("div", "sig-top");
  top.append(header, toolbar);

  const options = h("div", "sig-options");
  const kLabel = h("label", "sig-opt sig-k");
  const kRange = h("input", "", { type: "range", min: "1", max: "50", step: "1", "aria-label": "Number of results" });
  const kValue = h("span", "sig-k-value");
  kLabel.append(h("span", "", { text: "Results" }), kRange, kValue);
  const bandLabel = h("label", "sig-opt sig-minband");
  const bandSelect = h("select", "", { "aria-label": "Minimum score" });
  bandLabel.append(h("span", "", { text: "Show" }), bandSelect);
  const selfLabel = h("label", "sig-opt sig-self", { title: "The query is a database item: show it among its results" });
  const selfBox = h("input", "", { type: "checkbox" });
  selfLabel.append(selfBox, h("span", "", { text: "Include the query" }));
  const exactLabel = h("label", "sig-opt sig-exact", { title: "Brute force over all stored vectors (slower, always exact)" });
  const exactBox = h("input", "", { type: "checkbox" });
  exactLabel.append(exactBox, h("span", "", { text: "Exact search" }));
  const speedLabel = h("label", "sig-opt sig-speed", { title: "Higher: more accurate, slower" });
  const speedName = h("span", "");
  const speedRange = h("input", "", { type: "range", min: "1", max: "64", step: "1" });
  const speedValue = h("span", "sig-k-value");
  speedLabel.append(speedName, speedRange, speedValue);
  options.append(kLabel, bandLabel, selfLabel, exactLabel, speedLabel);

  // ------------------------------------------------------------------ status and message
  const statusLine = h("div", "sig-status", { role: "status", "aria-live": "polite" });
  const modelStatus = h("span", "sig-model");
  const timing = h("span", "sig-timing");
  statusLine.append(modelStatus, timing);
  const message = h("div", "sig-msg", { role: "alert" });
  message.hidden = true;

  // ------------------------------------------------------------------ query panel
  const body = h("div", "sig-body");
  const queryPanel = h("div", "sig-query");
  const qMedia = h("div", "sig-qmedia", { title: "Click to look closer" });
  const qImg = h("img", "sig-qimg", { alt: "" });
  const qText = h("div", "sig-qtext");
  const qSpinner = h("div", "sig-spinner");
  const qDrop = h("div", "sig-drop", { text: "Drop an image here" });
  qMedia.append(qImg, qText, qSpinner, qDrop);
  const qInfo = h("div", "sig-qinfo");
  const qLabel = h("div", "sig-qlabel", { text: "Query" });
  const qName = h("div", "sig-qname");
  const qDetail = h("div", "sig-qdetail");
  const qNote = h("div", "sig-qnote");
  const qHint = h("div", "sig-qhint", { text: "Click the picture to look closer (\u2190 \u2192 to browse the results)."
    + " Drop an image file here to search with it." });
  qInfo.append(qLabel, qName, qDetail, qNote, qHint);
  queryPanel.append(qMedia, qInfo);

  // ------------------------------------------------------------------ results
  const results = h("div", "sig-results");
  const rHead = h("div", "sig-rhead");
  const rTitle = h("div", "sig-rtitle");
  const legend = h("div", "sig-legend");
  const sizeLabel = h("label", "sig-size", { title: "Tile size" });
  const sizeRange = h("input", "", { type: "range", min: "140", max: "420", step: "20", "aria-label": "Tile size" });
  sizeLabel.append(h("span", "", { text: "Size" }), sizeRange);
  rHead.append(rTitle, legend, sizeLabel);
  const staleNote = h("div", "sig-stale-note", { text: "These results are for the previous query." });
  const grid = h("div", "sig-grid", { tabindex: "0", role: "listbox", "aria-label": "Results" });
  const empty = h("div", "sig-empty");
  results.append(rHead, staleNote, grid, empty);
  body.append(queryPanel, results);
  root.append(top, options, statusLine, message, body);

  // ------------------------------------------------------------------ lightbox (on <body>: above every front end's layout)
  const lb = h("div", "sig-lightbox", { tabindex: "-1", role: "dialog", "aria-modal": "true", "aria-label": "Image" });
  lb.hidden = true;
  const lbTop = h("div", "sig-lb-top");
  const lbCounter = h("span", "sig-lb-counter");
  const lbClose = h("button", "sig-lb-close", { type: "button", title: "Close (Esc)", "aria-label": "Close", text: "\u00d7" });
  lbTop.append(lbCounter, lbClose);
  const lbMain = h("div", "sig-lb-main");
  const lbPrev = h("button", "sig-lb-nav sig-lb-prev", { type: "button", title: "Previous (\u2190)", "aria-label": "Previous", text: "\u2039" });
  const lbStage = h("div", "sig-lb-stage");
  const lbImg = h("img", "sig-lb-img", { alt: "" });
  const lbSpin = h("div", "sig-spinner");
  lbStage.append(lbImg, lbSpin);
  const lbSide = h("div", "sig-lb-side");
  lbSide.hidden = true;
  const lbNext = h("button", "sig-lb-nav sig-lb-next", { type: "button", title: "Next (\u2192)", "aria-label": "Next", text: "\u203a" });
  lbMain.append(lbPrev, lbStage, lbSide, lbNext);
  const lbInfo = h("div", "sig-lb-info");
  const lbActions = h("div", "sig-lb-actions");
  lb.append(lbTop, lbMain, lbInfo, lbActions);
  lb.classList.add("sig-theme");
  document.body.appendChild(lb);
  cleanups.push(() => lb.remove());

  // ================================================================== drawing from the model
  function drawHeader() {
    const hd = model.get("header") || {};
    title.textContent = hd.title || "";
    sub.replaceChildren();
    const parts = hd.parts || [];
    parts.forEach((p, i) => {
      if (i) sub.append(h("span", "sig-dot", { text: " \u00b7 " }));
      const span = h("span", p.code ? "sig-code" : "", { text: p.text, title: p.title || null });
      sub.append(span);
    });
    header.hidden = !hd.title;
  }

  function drawControls() {
    const c = model.get("controls") || {};
    const text = mode() === "text";
    randomBtn.textContent = c.random_label || "Random";
    randomBtn.title = c.random_title || "";
    uploadBtn.hidden = !c.upload;
    const up = model.get("upload") || {};
    fileInput.accept = up.accept || "image/*";
    uploadBtn.title = up.limit ? `An image file up to ${fmtBytes(up.limit)} (or drop one on the query)` : "";
    input.placeholder = c.placeholder || "";
    goBtn.textContent = c.go_label || "Search";
    form.classList.toggle("sig-wide", text);
    kRange.max = String(c.max_k || 50);
    kRange.value = String(model.get("k"));
    kValue.textContent = String(model.get("k"));
    selfLabel.hidden = !c.include_query_option;
    selfBox.checked = model.get("include_query");
    exactBox.checked = model.get("exact");
    const sp = model.get("speed_spec") || {};
    speedLabel.hidden = !sp.name;
    if (sp.name) {
      speedName.textContent = sp.name;
      speedRange.min = String(sp.min || 1);
      speedRange.max = String(sp.max || 1);
      speedRange.value = String(model.get("speed"));
      speedValue.textContent = String(model.get("speed"));
      speedRange.disabled = exactBox.checked;
    }
    const bands = model.get("bands") || [];
    bandLabel.hidden = bands.length === 0;
    const want = model.get("min_band");
    const opts = [["", "all results"]].concat(
      bands.filter((b) => b.name !== "weak").map((b) => [b.name, `${b.label || b.name}${b.name === "near-duplicate" ? "s" : " or better"} (\u2265 ${b.min.toFixed(2)})`]));
    if (bandSelect.options.length !== opts.length || [...bandSelect.options].some((o, i) => o.value !== opts[i][0])) {
      bandSelect.replaceChildren(...opts.map(([v, t]) => h("option", "", { value: v, text: t })));
    }
    bandSelect.value = want;
    const tile = model.get("tile");
    sizeRange.value = String(tile);
    grid.style.setProperty("--sig-tile", tile + "px");
    root.classList.toggle("sig-mode-text", text);
  }

  function drawPresent() {
    const on = !!model.get("present");
    root.classList.toggle("sig-present", on);
    lb.classList.toggle("sig-present", on);
    presentBtn.setAttribute("aria-pressed", String(on));
    presentBtn.textContent = on ? "Exit presenting" : "Present";
    requestAnimationFrame(fitNames);
  }

  function drawStatus() {
    const st = model.get("status") || {};
    const m = st.model || {};
    clearInterval(modelTimer);
    modelStatus.className = "sig-model sig-model-" + (m.state || "none");
    modelStatus.hidden = !m.state || m.state === "none";
    if (m.state === "loading") {
      const t0 = performance.now() - (m.elapsed || 0) * 1000;
      const tick = () => {
        modelStatus.textContent = `${m.label || "Loading the model"} \u2026 ${fmtSeconds((performance.now() - t0) / 1000)}`;
      };
      tick();
      modelTimer = setInterval(tick, 500);
    } else {
      modelStatus.textContent = m.label || "";
    }
    modelStatus.title = m.title || "";
    timing.textContent = st.timing || "";
    timing.title = st.timing_title || "";
  }

  function drawMessage() {
    const msg = model.get("message") || {};
    message.hidden = !msg.text;
    message.className = "sig-msg sig-msg-" + (msg.kind || "error");
    message.textContent = msg.text || "";
  }

  function drawState() {
    const state = model.get("state");
    results.classList.toggle("sig-busy", state === "busy");
    results.classList.toggle("sig-stale", state === "stale");
    queryPanel.classList.toggle("sig-busy", state === "busy");
    queryPanel.classList.toggle("sig-stale", state === "stale");
    staleNote.hidden = state !== "stale";
  }

  let queryUrl = "";
  function drawQuery(localPreview) {
    const q = model.get("query") || {};
    const text = mode() === "text";
    queryPanel.hidden = !q.name && !q.text && !localPreview;
    queryPanel.classList.toggle("sig-text", text);
    if (queryUrl) URL.revokeObjectURL(queryUrl);
    queryUrl = localPreview || (q.thumb ? blobUrl(q.thumb, "image/jpeg") : "");
    qImg.hidden = text || !queryUrl;
    if (queryUrl) qImg.src = queryUrl;
    qText.hidden = !text;
    qText.textContent = text ? q.text || "" : "";
    if (text && q.text && document.activeElement !== input) input.value = q.text;
    qName.dataset.name = q.name || "";
    qName.textContent = q.name || "";
    qName.title = q.title || q.name || "";
    requestAnimationFrame(fitNames);
    qName.hidden = text;
    qDetail.hidden = text;
    qLabel.textContent = text && q.detail ? `Query \u00b7 ${q.detail}` : "Query";
    qDetail.textContent = q.detail || "";
    qDetail.title = q.detail_title || "";
    qNote.textContent = q.note || "";
    qMedia.classList.toggle("sig-clickable", !text && !!queryUrl);
    qHint.hidden = text || !q.key;
  }

  function cardsPerRow() {
    const cards = grid.children;
    if (!cards.length) return 1;
    const top = cards[0].offsetTop;
    let n = 0;
    while (n < cards.length && cards[n].offsetTop === top) n++;
    return Math.max(1, n);
  }

  // How many characters of a name fit in an element of width w (the font grows in presenter mode).
  function charsIn(node, w) {
    const px = parseFloat(getComputedStyle(node).fontSize) || 13;
    return Math.max(12, Math.floor(w / (px * 0.56)));
  }

  function nameChars() {
    const first = grid.querySelector(".sig-name");
    const w = grid.children.length ? grid.children[0].clientWidth - 16 : model.get("tile");
    return first ? charsIn(first, w) : Math.max(12, Math.floor(w / 7));
  }

  function markText(container, text, marks) {
    let pos = 0;
    for (const [a, b] of marks || []) {
      if (a > pos) container.append(document.createTextNode(text.slice(pos, a)));
      container.append(h("mark", "", { text: text.slice(a, b) }));
      pos = b;
    }
    if (pos < text.length) container.append(document.createTextNode(text.slice(pos)));
  }

  function buildCard(r, i, fresh) {
    const text = mode() === "text";
    const card = h("div", `sig-card sig-band-${BAND_CLASS[r.band] || "none"}${r.is_query ? " sig-is-query" : ""}`,
      { role: "option", "data-index": String(i), "aria-selected": "false" });
    let img = null;
    if (text) {
      const t = h("div", "sig-text");
      markText(t, r.text || "", r.marks);
      card.append(t);
    } else {
      const thumb = h("div", "sig-thumb");
      img = h("img", "", { alt: r.name || "", draggable: "false" });
      const url = blobUrl(r.thumb, "image/jpeg");
      fresh.add(url);
      img.src = url;
      thumb.append(img);
      card.append(thumb);
    }
    const cap = h("div", "sig-cap");
    const row = h("div", "sig-row");
    row.append(h("span", "sig-rank", { text: r.is_query ? `#${r.rank} (query)` : `#${r.rank}` }));
    row.append(h("span", "sig-score", { text: r.score.toFixed(3), title: "cosine similarity (1: identical)" }));
    cap.append(row);
    if (r.band) cap.append(h("div", "sig-band", { text: r.words || r.band, title: r.words_title || "" }));
    const bar = h("div", "sig-bar");
    const fill = h("div", "");
    fill.style.width = Math.max(0, Math.min(100, r.score * 100)).toFixed(0) + "%";
    bar.append(fill);
    cap.append(bar);
    if (!text) {
      const nm = h("div", "sig-name", { title: r.title || r.name, "data-name": r.name });
      cap.append(nm);
    } else if (r.detail) {
      cap.append(h("div", "sig-name", { text: r.detail, title: r.detail }));
    }
    card.append(cap);
    const btn = h("button", "sig-btn sig-similar", { type: "button", title: text ? "Search with this text" : "Use this image as the query" ,
      text: text ? "Search with this" : "Search similar" });
    btn.addEventListener("click", (ev) => { ev.stopPropagation(); searchWith(i); });
    card.append(btn);
    card.addEventListener("click", () => {
      select(i);
      if (mode() !== "text") openLightbox(i);
    });
    return { card, img };
  }

  // A name shortened in the middle until it fits its line (the digits at the end are what tell photos apart).
  function fitName(node, name, max) {
    node.textContent = shortenMiddle(name, max);
    while (node.clientWidth && node.scrollWidth > node.clientWidth && max > 8) {
      max -= 2;
      node.textContent = shortenMiddle(name, max);
    }
  }

  function fitNames() {
    const max = nameChars();
    for (const nm of grid.querySelectorAll(".sig-name[data-name]")) fitName(nm, nm.dataset.name, max);
    const qn = qName.dataset.name || "";
    if (qName.clientWidth) fitName(qName, qn, charsIn(qName, qName.clientWidth)); else qName.textContent = qn;
  }

  async function drawResults() {
    const gen = ++renderGen;
    const rs = model.get("results") || [];
    const fresh = new Set();
    const built = rs.map((r, i) => buildCard(r, i, fresh));
    // Decode every thumbnail before the swap: the new grid appears at once, never half-drawn.
    await Promise.all(built.filter((b) => b.img).map((b) => b.img.decode().catch(() => null)));
    if (gen !== renderGen) { fresh.forEach((u) => URL.revokeObjectURL(u)); return; }
    grid.replaceChildren(...built.map((b) => b.card));
    urls.forEach((u) => URL.revokeObjectURL(u));
    urls.clear();
    fresh.forEach((u) => urls.add(u));
    fitNames();
    const t = model.get("results_title") || {};
    rTitle.replaceChildren(h("span", "sig-rtitle-main", { text: t.text || "" }));
    if (t.note) rTitle.append(h("span", "sig-rtitle-note", { text: " " + t.note }));
    empty.hidden = rs.length > 0;
    rHead.hidden = rs.length === 0 && !t.text;
    drawEmpty();
    const sel = model.get("selected");
    markSelected(sel < rs.length ? sel : -1, false);
    if (!lb.hidden) showLightbox(Math.min(model.get("lightbox"), rs.length - 1));
    grid.dataset.rendered = String(model.get("render_id"));
    el.dispatchEvent(new CustomEvent("sig-rendered", { bubbles: true }));
  }

  function drawEmpty() {
    const e = model.get("empty") || {};
    empty.replaceChildren();
    if (e.text) empty.append(h("div", "sig-empty-text", { text: e.text }));
    if (e.samples && e.samples.length) {
      const row = h("div", "sig-samples", { role: "list", "aria-label": "Sample photos" });
      for (const smp of e.samples) {
        const b = h("button", "sig-sample", { type: "button", role: "listitem", title: `Search with ${smp.name}`,
          "aria-label": `Search with ${smp.name}` });
        const img = h("img", "", { alt: smp.name || "", draggable: "false" });
        const u = blobUrl(smp.thumb, "image/jpeg");
        urls.add(u);
        img.src = u;
        b.append(img);
        b.addEventListener("click", () => model.send({ event: "sample", id: smp.id }));
        row.append(b);
      }
      empty.append(row);
    }
    if (e.examples && e.examples.length) {
      const chips = h("div", "sig-examples");
      for (const ex of e.examples) {
        const chip = h("button", "sig-chip", { type: "button", text: ex });
        chip.addEventListener("click", () => { input.value = ex; model.send({ event: "text", text: ex }); });
        chips.append(chip);
      }
      empty.append(chips);
    }
  }

  function drawLegend() {
    const bands = model.get("bands") || [];
    legend.replaceChildren();
    if (!bands.length) return;
    bands.forEach((b) => {
      const item = h("span", `sig-legend-item sig-band-${BAND_CLASS[b.name] || "none"}`, { title: b.title || "" });
      const figure = b.name === "weak" ? `< ${bands[bands.length - 2].min.toFixed(2)}` : `\u2265 ${b.min.toFixed(2)}`;
      item.title = `${b.title || ""} (score ${figure})`;
      item.append(h("span", "sig-swatch"), h("span", "", { text: b.text || `${b.name} ${figure}` }));
      legend.append(item);
    });
    const info = model.get("bands_note");
    if (info) legend.title = info;
  }

  // ================================================================== selection and keys
  function markSelected(i, scroll) {
    const cards = grid.children;
    for (const c of grid.querySelectorAll(".sig-selected")) { c.classList.remove("sig-selected"); c.setAttribute("aria-selected", "false"); }
    if (i >= 0 && i < cards.length) {
      cards[i].classList.add("sig-selected");
      cards[i].setAttribute("aria-selected", "true");
      if (scroll) cards[i].scrollIntoView({ block: "nearest", inline: "nearest" });
    }
  }

  function select(i) {
    const n = grid.children.length;
    if (!n) return;
    i = Math.max(0, Math.min(n - 1, i));
    markSelected(i, true);
    if (model.get("selected") !== i) { model.set("selected", i); model.save_changes(); }
  }

  function searchWith(i) {
    closeLightbox(false);
    grid.focus({ preventScroll: true });
    model.send({ event: "search", index: i });
  }

  function gridKey(ev) {
    if (!STOP.has(ev.key) || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const n = grid.children.length;
    if (!n) return;
    let i = model.get("selected");
    if (i < 0 && ev.key.startsWith("Arrow")) { select(0); ev.preventDefault(); ev.stopPropagation(); return; }
    if (i < 0) i = 0;
    const cols = cardsPerRow();
    switch (ev.key) {
      case "ArrowRight": select(i + 1); break;
      case "ArrowLeft": select(i - 1); break;
      case "ArrowDown": if (i + cols < n) select(i + cols); break;
      case "ArrowUp": if (i - cols >= 0) select(i - cols); break;
      case "Home": select(0); break;
      case "End": select(n - 1); break;
      case "Enter": case " ":
        if (mode() === "text") searchWith(i); else openLightbox(i);
        break;
      default: return;
    }
    ev.preventDefault();
    ev.stopPropagation();
  }

  // ================================================================== lightbox
  function lbItem(i) {
    if (i === -1) {
      const q = model.get("query") || {};
      return { key: q.key, name: q.name, title: q.title, thumb: q.thumb, detail: q.detail, isQuery: true };
    }
    const r = (model.get("results") || [])[i];
    return r ? { key: r.key, name: r.name, title: r.title, thumb: r.thumb, score: r.score, band: r.band, rank: r.rank,
      words: r.words, wordsTitle: r.words_title, isQuery: !!r.is_query } : null;
  }

  function requestPreview(key, cb) {
    if (!key) return;
    if (previews.has(key)) { if (cb) cb(previews.get(key)); return; }
    if (waiting.has(key)) { if (cb) waiting.get(key).push(cb); return; }
    waiting.set(key, cb ? [cb] : []);
    model.send({ event: "preview", key });
  }

  let lbThumbUrl = "";
  function showLightbox(i) {
    const n = (model.get("results") || []).length;
    const hasQuery = !!(model.get("query") || {}).key;
    const lo = hasQuery ? -1 : 0;
    if (n === 0 && !hasQuery) return closeLightbox(true);
    i = Math.max(lo, Math.min(n - 1, i));
    const it = lbItem(i);
    if (!it) return closeLightbox(true);
    lb.dataset.index = String(i);
    lbCounter.textContent = i === -1 ? "Query" : `${i + 1} / ${n}`;
    lbPrev.disabled = i <= lo;
    lbNext.disabled = i >= n - 1;
    // The thumbnail at once (blurry), then the large image from the kernel.
    if (lbThumbUrl) URL.revokeObjectURL(lbThumbUrl);
    lbThumbUrl = it.thumb ? blobUrl(it.thumb, "image/jpeg") : "";
    lbImg.style.maxWidth = "";
    lbImg.style.maxHeight = "";
    lbImg.src = lbThumbUrl;
    lbImg.classList.add("sig-lb-low");
    lbSpin.hidden = false;
    const key = it.key;
    requestPreview(key, (url) => {
      if (lb.dataset.index !== String(i) || lb.hidden) return;
      lbSpin.hidden = true;
      if (!url) return;
      // Never larger than the image itself (the large image is the original when that is small).
      lbImg.onload = () => {
        lbImg.onload = null;
        lbImg.style.maxWidth = lbImg.naturalWidth + "px";
        lbImg.style.maxHeight = lbImg.naturalHeight + "px";
        lbImg.classList.remove("sig-lb-low");
      };
      lbImg.src = url;
    });
    for (const j of [i - 1, i + 1]) { const nb = j >= lo && j < n ? lbItem(j) : null; if (nb) requestPreview(nb.key); }
    lbInfo.replaceChildren();
    if (it.isQuery && i === -1) lbInfo.append(h("span", "sig-lb-rank", { text: "Query" }));
    else lbInfo.append(h("span", "sig-lb-rank", { text: `#${it.rank}` + (it.isQuery ? " (the query)" : "") }));
    if (it.band) lbInfo.append(h("span", `sig-band sig-band-${BAND_CLASS[it.band] || "none"}`, { text: it.words || it.band, title: it.wordsTitle || "" }));
    if (it.score !== undefined) lbInfo.append(h("span", "sig-lb-score", { text: it.score.toFixed(3), title: "cosine similarity" }));
    lbInfo.append(h("span", "sig-lb-name", { text: it.name || "", title: it.title || "" }));
    if (it.title && it.title !== it.name) lbInfo.append(h("span", "sig-lb-path", { text: it.title }));
    if (it.detail && i === -1) lbInfo.append(h("span", "sig-lb-path", { text: it.detail }));
    drawActions(i);
    lbSide.hidden = true;
    lbSide.replaceChildren();
    lb.classList.remove("sig-lb-explaining");
    if (i >= 0) markSelected(i, true);
  }

  // An explanation, drawn here: the query and the result side by side, the regions that make the match lit (the
  // rest dimmed), one sentence, the exact figures behind "details". The stage makes room for it.
  function lightMap(wrap, img, rows) {
    const gh = rows.length, gw = gh ? rows[0].length : 0;
    if (!gw) return;
    const c = h("canvas", "sig-xmap", { width: String(gw), height: String(gh), "aria-hidden": "true" });
    const ctx = c.getContext("2d");
    const data = ctx.createImageData(gw, gh);
    rows.forEach((row, y) => row.forEach((v, x) => {
      const o = 4 * (y * gw + x);
      data.data[o] = 8; data.data[o + 1] = 10; data.data[o + 2] = 14;
      // Lit: the cells of at least half the largest value (the "highlighted area" of the sentence); the rest dimmed.
      data.data[o + 3] = v >= 0.5 ? 0 : Math.round(255 * (0.62 + 0.2 * (1 - Math.max(0, v) / 0.5)));
    }));
    ctx.putImageData(data, 0, 0);
    wrap.append(c);
  }

  function explainFigure(label, key, rows) {
    const fig = h("figure", "sig-xfig");
    const wrap = h("div", "sig-xwrap");
    const img = h("img", "sig-ximg", { alt: label });
    wrap.append(img);
    requestPreview(key, (url) => { if (url) img.src = url; });
    lightMap(wrap, img, rows || []);
    fig.append(wrap, h("figcaption", "sig-xcap", { text: label }));
    return fig;
  }

  function drawExplanation(msg) {
    const d = msg.data || {};
    lb.classList.add("sig-lb-explaining");
    const pair = h("div", "sig-xpair");
    pair.append(explainFigure("Query", d.query_key, d.query_map), explainFigure(`#${d.rank}`, d.result_key, d.result_map));
    const sentence = h("div", "sig-xsentence", { text: msg.text || "" });
    const more = h("details", "sig-xdetails");
    more.append(h("summary", "", { text: "details" }));
    const pre = h("div", "sig-xfigures");
    for (const line of d.details || []) pre.append(h("div", "", { text: line }));
    more.append(pre);
    lbSide.append(pair, sentence, more);
  }

  function drawActions(i) {
    lbActions.replaceChildren();
    const search = h("button", "sig-btn sig-primary", { type: "button", "data-action": "search" });
    search.append(document.createTextNode("Search similar "), h("kbd", "", { text: "Enter" }));
    search.disabled = i < 0;
    search.addEventListener("click", () => searchWith(i));
    lbActions.append(search);
    for (const a of model.get("actions") || []) {
      if (i < 0 && !a.query) continue;
      const b = h("button", "sig-btn", { type: "button", "data-action": a.name, title: a.tooltip || "", text: a.label });
      b.addEventListener("click", () => {
        b.classList.add("sig-working");
        b.disabled = true;
        lb.focus({ preventScroll: true });  // a disabled button drops the focus: the keys stay with the lightbox
        lbSide.hidden = false;
        lbSide.replaceChildren(h("div", "sig-spinner sig-inline"), h("div", "sig-side-wait", { text: `${a.label}\u2026` }));
        model.send({ event: "action", name: a.name, index: i });
      });
      lbActions.append(b);
    }
    lbActions.append(h("span", "sig-keys", { text: "\u2190 \u2192 move \u00b7 Enter search \u00b7 Esc close" }));
  }

  function openLightbox(i) {
    if (mode() === "text") return;
    lb.hidden = false;
    document.documentElement.classList.add("sig-noscroll");
    showLightbox(i);
    lb.focus({ preventScroll: true });
    const at = Number(lb.dataset.index);
    if (model.get("lightbox") !== at) { model.set("lightbox", at); model.save_changes(); }
  }

  function closeLightbox(refocus) {
    if (lb.hidden) return;
    lb.hidden = true;
    document.documentElement.classList.remove("sig-noscroll");
    if (model.get("lightbox") !== -2) { model.set("lightbox", -2); model.save_changes(); }
    if (refocus) grid.focus({ preventScroll: true });
  }

  function moveLightbox(step) {
    const i = Number(lb.dataset.index) + step;
    const n = (model.get("results") || []).length;
    const lo = (model.get("query") || {}).key ? -1 : 0;
    if (i < lo || i >= n) return;
    showLightbox(i);
    model.set("lightbox", i);
    if (i >= 0) model.set("selected", i);
    model.save_changes();
  }

  function lightboxKey(ev) {
    if (ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const i = Number(lb.dataset.index);
    switch (ev.key) {
      case "ArrowRight": moveLightbox(1); break;
      case "ArrowLeft": moveLightbox(-1); break;
      case "Escape": closeLightbox(true); break;
      case "Enter":
        if (ev.target instanceof HTMLButtonElement && ev.target.dataset.action !== "search") return;
        if (i >= 0) searchWith(i); else closeLightbox(true);
        break;
      case "Tab": break; // keep the default focus move among the lightbox buttons
      default: return;
    }
    if (ev.key !== "Tab") ev.preventDefault();
    ev.stopPropagation();
  }

  // Keys are read on the window, before anything else (the capture phase): front ends bind the arrows, Enter and
  // Esc to their own commands (moving between cells), and some stop those keys before they reach the page's
  // elements. Only keys typed while the grid or the lightbox has the focus are taken.
  function typing(node) {
    return node instanceof HTMLInputElement || node instanceof HTMLTextAreaElement || node instanceof HTMLSelectElement
      || (node instanceof HTMLElement && node.isContentEditable);
  }

  function onKey(ev) {
    if ((ev.key === "p" || ev.key === "P") && !ev.altKey && !ev.ctrlKey && !ev.metaKey && !typing(ev.target)
        && (root.contains(ev.target) || lb.contains(ev.target) || ev.target === document.body)) {
      // The page's own P (Voilà: the body has the focus; notebooks: the app or its lightbox has it).
      setPresent(!model.get("present"));
      ev.preventDefault();
      ev.stopPropagation();
      return;
    }
    if (!lb.hidden && lb.contains(ev.target)) lightboxKey(ev);
    else if (ev.target === grid) gridKey(ev);
  }
  window.addEventListener("keydown", onKey, true);
  cleanups.push(() => window.removeEventListener("keydown", onKey, true));
  lb.addEventListener("click", (ev) => { if (ev.target === lb || ev.target === lbMain) closeLightbox(true); });
  lbClose.addEventListener("click", () => closeLightbox(true));
  lbPrev.addEventListener("click", () => moveLightbox(-1));
  lbNext.addEventListener("click", () => moveLightbox(1));
  qMedia.addEventListener("click", () => { if (mode() !== "text" && (model.get("query") || {}).key) openLightbox(-1); });

  // ================================================================== kernel messages
  model.on("msg:custom", (msg, buffers) => {
    if (msg.event === "preview") {
      const url = msg.ok && buffers && buffers.length ? blobUrl(buffers[0], msg.mime || "image/jpeg") : "";
      if (url) {
        previews.set(msg.key, url);
        if (previews.size > 40) { const [k, u] = previews.entries().next().value; URL.revokeObjectURL(u); previews.delete(k); }
      }
      for (const cb of waiting.get(msg.key) || []) cb(url);
      waiting.delete(msg.key);
    } else if (msg.event === "action_result") {
      if (lb.hidden || lb.dataset.index !== String(msg.index)) return;
      for (const b of lbActions.querySelectorAll(".sig-working")) { b.classList.remove("sig-working"); b.disabled = false; }
      lbSide.hidden = false;
      lbSide.replaceChildren();
      if (msg.title) lbSide.append(h("div", "sig-side-title", { text: msg.title }));
      if (msg.kind === "explain") {
        drawExplanation(msg);
      } else if (msg.kind === "png" && buffers && buffers.length) {
        const img = h("img", "sig-side-img", { alt: msg.title || "" });
        const u = blobUrl(buffers[0], "image/png");
        urls.add(u);
        img.src = u;
        lbSide.append(img);
      } else if (msg.kind === "html") {
        const box = h("div", "sig-side-html");
        box.innerHTML = msg.html || "";
        lbSide.append(box);
      } else {
        lbSide.append(h("div", msg.kind === "error" ? "sig-side-error" : "sig-side-text", { text: msg.text || "" }));
      }
    } else if (msg.event === "focus") {
      grid.focus({ preventScroll: true });
    }
  });

  // ================================================================== inputs
  randomBtn.addEventListener("click", () => model.send({ event: "random" }));
  function setPresent(on) {
    model.set("present", !!on);
    model.save_changes();
    drawPresent();
  }
  presentBtn.addEventListener("click", () => setPresent(!model.get("present")));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    model.send({ event: mode() === "text" ? "text" : "url", [mode() === "text" ? "text" : "url"]: input.value });
  });
  input.addEventListener("keydown", (ev) => { ev.stopPropagation(); });
  kRange.addEventListener("input", () => { kValue.textContent = kRange.value; });
  kRange.addEventListener("change", () => { model.set("k", Number(kRange.value)); model.save_changes(); });
  speedRange.addEventListener("input", () => { speedValue.textContent = speedRange.value; });
  speedRange.addEventListener("change", () => { model.set("speed", Number(speedRange.value)); model.save_changes(); });
  exactBox.addEventListener("change", () => { model.set("exact", exactBox.checked); model.save_changes(); });
  selfBox.addEventListener("change", () => { model.set("include_query", selfBox.checked); model.save_changes(); });
  bandSelect.addEventListener("change", () => { model.set("min_band", bandSelect.value); model.save_changes(); });
  let sizeTimer = null;
  sizeRange.addEventListener("input", () => {
    grid.style.setProperty("--sig-tile", sizeRange.value + "px");
    fitNames();
    clearTimeout(sizeTimer);
    sizeTimer = setTimeout(() => { model.set("tile", Number(sizeRange.value)); model.save_changes(); }, 200);
  });

  // ------------------------------------------------------------------ uploads: preview at once, sent in pieces
  // While an upload is on its way the query panel shows the local file; when the kernel is done with it (results:
  // a new query; a refusal: the previous query, unchanged) the panel shows the kernel's query again.
  let uploading = false;
  function restoreAfterUpload() {
    if (!uploading || model.get("state") === "busy") return;
    uploading = false;
    drawQuery();
    drawState();
  }

  async function upload(file) {
    const up = model.get("upload") || {};
    if (!file || !up.enabled) return;
    if (up.limit && file.size > up.limit) {
      model.send({ event: "upload_refused", name: file.name, size: file.size });
      return;
    }
    const token = Math.random().toString(36).slice(2) + Date.now().toString(36);
    const local = URL.createObjectURL(file);
    uploading = true;
    results.classList.add("sig-busy");
    queryPanel.classList.add("sig-busy");
    message.hidden = true;
    drawQuery(local);
    qName.dataset.name = file.name;
    qName.textContent = file.name;
    qName.title = file.name;
    qDetail.textContent = `uploading, ${fmtBytes(file.size)}`;
    qNote.textContent = "";
    queryPanel.hidden = false;
    model.send({ event: "upload_start", token, name: file.name, size: file.size, type: file.type || "" });
    for (let off = 0; off < file.size; off += CHUNK) {
      const buf = await file.slice(off, off + CHUNK).arrayBuffer();
      model.send({ event: "upload_chunk", token, offset: off }, undefined, [buf]);
    }
    model.send({ event: "upload_end", token });
  }
  uploadBtn.addEventListener("click", () => fileInput.click());
  fileInput.addEventListener("change", () => {
    const f = fileInput.files && fileInput.files[0];
    fileInput.value = "";
    upload(f);
  });
  for (const target of [queryPanel, results, toolbar]) {
    target.addEventListener("dragover", (ev) => {
      if (!(model.get("upload") || {}).enabled) return;
      ev.preventDefault();
      root.classList.add("sig-dragging");
    });
    target.addEventListener("dragleave", () => root.classList.remove("sig-dragging"));
    target.addEventListener("drop", (ev) => {
      root.classList.remove("sig-dragging");
      if (!(model.get("upload") || {}).enabled) return;
      ev.preventDefault();
      const f = ev.dataTransfer && ev.dataTransfer.files && ev.dataTransfer.files[0];
      if (f) upload(f);
    });
  }

  // ================================================================== wiring
  const on = (names, fn) => { for (const n of names.split(" ")) model.on("change:" + n, fn); };
  on("header", drawHeader);
  on("present", drawPresent);
  on("controls upload k exact speed speed_spec include_query min_band tile bands", drawControls);
  on("status", drawStatus);
  on("message", () => { drawMessage(); restoreAfterUpload(); });
  on("state", () => { drawState(); restoreAfterUpload(); });
  on("query", () => drawQuery());
  on("render_id", drawResults); // the kernel bumps it with every new set of results (one draw per update)
  on("empty", drawEmpty);
  on("bands bands_note", drawLegend);
  on("selected", () => markSelected(model.get("selected"), true));
  on("lightbox", () => {
    const i = model.get("lightbox");
    if (i === -2) closeLightbox(false);
    else if (lb.hidden) openLightbox(i);
    else if (Number(lb.dataset.index) !== i) showLightbox(i);
  });
  on("actions", () => { if (!lb.hidden) drawActions(Number(lb.dataset.index)); });

  const ro = new ResizeObserver(() => fitNames());
  ro.observe(grid);
  ro.observe(queryPanel);
  cleanups.push(() => ro.disconnect());

  drawHeader();
  drawPresent();
  drawControls();
  drawStatus();
  drawMessage();
  drawState();
  drawQuery();
  drawLegend();
  drawResults();
  root.dataset.ready = "1";
  model.send({ event: "ready" });

  return () => {
    clearInterval(modelTimer);
    urls.forEach((u) => URL.revokeObjectURL(u));
    previews.forEach((u) => URL.revokeObjectURL(u));
    if (queryUrl) URL.revokeObjectURL(queryUrl);
    if (lbThumbUrl) URL.revokeObjectURL(lbThumbUrl);
    document.documentElement.classList.remove("sig-noscroll");
    cleanups.forEach((f) => f());
  };
}

export default { render };
