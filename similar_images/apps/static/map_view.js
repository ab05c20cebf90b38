// The collection map (similar_images.apps.map_view.MapView), an anywidget ES module.
//
//   kernel -> page   traits: points [{id, x, y, src}], results [{id, score, src}], selected, title, note
//   page -> kernel   trait set here: selected (the id of the photo clicked on the map or in the results)
//
// Every photo is a small thumbnail at its place on the map (x, y in [0, 1]); hovering one enlarges it; a click
// searches with it. The results are drawn below and outlined on the map.

function h(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function render({ model, el }) {
  const root = h("div", "simap");
  const title = h("div", "simap-title");
  const plane = h("div", "simap-plane");
  const note = h("div", "simap-note");
  const row = h("div", "simap-results");
  root.append(title, plane, note, row);
  el.appendChild(root);
  let tiles = new Map();

  function choose(id) {
    model.set("selected", id);
    model.save_changes();
  }

  function drawPoints() {
    plane.replaceChildren();
    tiles = new Map();
    for (const p of model.get("points")) {
      const img = h("img", "simap-pt");
      img.src = p.src;
      img.alt = String(p.id);
      img.dataset.id = String(p.id);
      img.style.left = `${(p.x * 96 + 2).toFixed(3)}%`;
      img.style.top = `${((1 - p.y) * 96 + 2).toFixed(3)}%`;
      img.addEventListener("click", () => choose(p.id));
      plane.appendChild(img);
      tiles.set(p.id, img);
    }
    drawMarks();
  }

  function drawMarks() {
    const sel = model.get("selected");
    const hits = new Set(model.get("results").map((r) => r.id));
    for (const [id, img] of tiles) {
      img.classList.toggle("simap-query", id === sel);
      img.classList.toggle("simap-hit", hits.has(id));
    }
  }

  function drawResults() {
    row.replaceChildren();
    for (const r of model.get("results")) {
      const card = h("div", "simap-card");
      const img = h("img");
      img.src = r.src;
      img.alt = String(r.id);
      img.addEventListener("click", () => choose(r.id));
      card.append(img, h("div", "simap-score", r.score.toFixed(3)));
      row.appendChild(card);
    }
    drawMarks();
  }

  title.textContent = model.get("title");
  note.textContent = model.get("note");
  drawPoints();
  drawResults();
  model.on("change:points", drawPoints);
  model.on("change:results", drawResults);
  model.on("change:selected", drawMarks);
  model.on("change:title", () => { title.textContent = model.get("title"); });
  model.on("change:note", () => { note.textContent = model.get("note"); });
}

export default { render };
