// robustsim web page: plain JavaScript over the JSON API (no build step, no external resources).
// Every number shown comes from one API response; its exact value is kept in a data-value attribute
// so that the browser test can check the page against the API.
"use strict";

const state = { files: {}, models: [], health: null, primary: null, baseline: null };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

// 4 significant digits, plain notation between 1e-4 and 1e6 (the test parses it back)
function fmt(x) {
  if (x === null || x === undefined) return "—";
  if (!isFinite(x)) return x > 0 ? "∞" : "−∞";
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e-4 && a < 1e6) return String(Number(x.toPrecision(4)));
  return x.toExponential(3);
}

function num(x, field, extra = {}) {
  return el("span", { class: "num", "data-field": field, "data-value": x === null || x === undefined ? "" : String(x), text: fmt(x), ...extra });
}

async function api(path, form) {
  const r = await fetch(path, form ? { method: "POST", body: form } : {});
  let body;
  try { body = await r.json(); } catch (e) { body = { error: `HTTP ${r.status}` }; }
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

function setStatus(id, text, cls = "") {
  const s = document.getElementById(id);
  s.textContent = text;
  s.className = "status " + cls;
}

// ------------------------------------------------------------------ tabs and drops
document.querySelectorAll("button.tab").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll("button.tab").forEach((t) => t.classList.toggle("active", t === b));
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== "view-" + b.dataset.tab; });
}));

function setupDrop(key) {
  const box = document.getElementById("drop-" + key);
  const input = document.getElementById("file-" + key);
  const img = box.querySelector("img");
  const take = (file) => {
    if (!file) return;
    state.files[key] = file;
    img.src = URL.createObjectURL(file);
    box.classList.add("filled");
    box.querySelector(".hint").textContent = file.name;
    updateButtons();
  };
  input.addEventListener("change", () => take(input.files[0]));
  box.addEventListener("dragover", (e) => { e.preventDefault(); box.classList.add("over"); });
  box.addEventListener("dragleave", () => box.classList.remove("over"));
  box.addEventListener("drop", (e) => { e.preventDefault(); box.classList.remove("over"); take(e.dataTransfer.files[0]); });
}
["ref", "x0", "x1", "query"].forEach(setupDrop);

function updateButtons() {
  const f = state.files;
  document.getElementById("btn-compare").disabled = !(f.ref && f.x0 && f.x1);
  document.getElementById("btn-search").disabled = !(f.query && state.health && state.health.index);
}

// ------------------------------------------------------------------ the radius against the image's scale
// A log axis from well below the radius to the l2 size of the whole image, with reference marks:
// one grey level changed everywhere, 8/255 changed everywhere (a common l-inf budget), the image itself.
function radiusBar(radius, scale, eps) {
  const W = 560, H = 70, pad = 14, padR = 44;  // room on the right for the last label
  const marks = [
    { v: scale.grey_level_l2, label: "1/255 everywhere" },
    { v: scale.linf_8_255_l2, label: "8/255 everywhere" },
    { v: scale.image_l2, label: "whole image" },
  ];
  const vals = [radius, eps, ...marks.map((m) => m.v)].filter((v) => v && v > 0 && isFinite(v));
  const lo = Math.pow(10, Math.floor(Math.log10(Math.min(...vals) / 2)));
  const hi = Math.pow(10, Math.ceil(Math.log10(Math.max(...vals) * 1.01)));
  const X = (v) => pad + (W - pad - padR) * (Math.log10(Math.max(v, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "radiusbar");
  svg.setAttribute("data-radius", String(radius));
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text) e.textContent = text;
    svg.append(e);
    return e;
  };
  add("rect", { x: pad, y: 22, width: W - pad - padR, height: 14, class: "axis" });
  if (radius > 0) add("rect", { x: pad, y: 22, width: Math.max(1, X(radius) - pad), height: 14, class: "radius" });
  for (let e = Math.log10(lo); e <= Math.log10(hi); e++) {
    add("line", { x1: X(10 ** e), x2: X(10 ** e), y1: 36, y2: 40, class: "tick" });
    add("text", { x: X(10 ** e), y: 50, class: "ticklabel" }, `1e${e}`);
  }
  marks.forEach((m, i) => {
    add("line", { x1: X(m.v), x2: X(m.v), y1: 18, y2: 40, class: "mark" });
    add("text", { x: X(m.v), y: i % 2 ? 64 : 14, class: "marklabel" }, m.label);
  });
  if (eps) {
    add("line", { x1: X(eps), x2: X(eps), y1: 16, y2: 42, class: "eps" });
    add("text", { x: X(eps), y: 64, class: "epslabel" }, `ε = ${fmt(eps)}`);
  }
  return svg;
}

// ------------------------------------------------------------------ compare
function compareMetrics() {
  const names = [state.primary];
  if (state.baseline && state.baseline !== state.primary) names.push(state.baseline);
  return names;
}

document.getElementById("btn-compare").addEventListener("click", async () => {
  const out = document.getElementById("compare-results");
  out.replaceChildren();
  setStatus("compare-status", "computing…", "busy");
  try {
    const rows = [];
    for (const name of compareMetrics()) {
      const fd = new FormData();
      fd.append("ref", state.files.ref);
      fd.append("x0", state.files.x0);
      fd.append("x1", state.files.x1);
      fd.append("metric", name);
      rows.push(await api("/api/compare", fd));
    }
    renderCompare(rows);
    document.getElementById("attack-panel").hidden = false;
    setStatus("compare-status", "done", "ok");
  } catch (e) {
    setStatus("compare-status", e.message, "error");
  }
});

function decisionText(closer) {
  return closer === "x0" ? "A is closer" : closer === "x1" ? "B is closer" : "tie";
}

function renderCompare(rows) {
  const out = document.getElementById("compare-results");
  const table = el("table", { class: "numbers", id: "compare-table" },
    el("tr", {}, ...["metric", "d(ref, A)", "d(ref, B)", "decision", "certified radius (l2)"].map((h) => el("th", { text: h }))));
  for (const r of rows) {
    const c = r.certificate;
    table.append(el("tr", { "data-metric": r.metric },
      el("td", {}, el("b", { text: r.metric }), r.certified ? el("span", { class: "badge cert", text: "certified" }) : el("span", { class: "badge", text: "not robust" })),
      el("td", {}, num(r.d0, "d0")),
      el("td", {}, num(r.d1, "d1")),
      el("td", {}, el("span", { class: "decision", "data-field": "closer", "data-value": r.closer, text: decisionText(r.closer) })),
      el("td", {}, c ? num(c.radius, "radius") : el("span", { class: "muted", text: "no certificate" }))));
  }
  out.append(table);
  for (const r of rows) {
    if (r.certificate) {
      const c = r.certificate;
      out.append(el("div", { class: "scale", "data-metric": r.metric },
        el("p", {}, `${r.metric}: no perturbation of the reference with l2 norm below `, num(c.radius, "radius-text"),
          ` can change "${decisionText(c.closer)}" — that is `, num(c.scale.rms_per_pixel * 255, "rms-grey"),
          ` grey levels (of 255) spread evenly over all ${c.scale.values.toLocaleString()} values of the ${c.scale.width}×${c.scale.height} image.`),
        radiusBar(c.radius, c.scale, null)));
    }
    if (r.spatial_map) {
      out.append(el("div", { class: "maps", "data-metric": r.metric },
        el("p", { text: `${r.metric} spatial distance maps (brighter = more different):` }),
        el("figure", {}, el("img", { src: r.spatial_map.x0.image, alt: "map A" }), el("figcaption", {}, "ref vs A, max ", num(r.spatial_map.x0.max, "map0-max"))),
        el("figure", {}, el("img", { src: r.spatial_map.x1.image, alt: "map B" }), el("figcaption", {}, "ref vs B, max ", num(r.spatial_map.x1.max, "map1-max")))));
    }
  }
  if (!rows.some((r) => r.spatial_map)) out.append(el("p", { class: "muted", text: "No loaded metric has a spatial map (LPIPS has one)." }));
}

// ------------------------------------------------------------------ attack
document.getElementById("btn-attack").addEventListener("click", async () => {
  const out = document.getElementById("attack-results");
  out.replaceChildren();
  setStatus("attack-status", "attacking (APGD)…", "busy");
  const fd = new FormData();
  fd.append("ref", state.files.ref);
  fd.append("x0", state.files.x0);
  fd.append("x1", state.files.x1);
  fd.append("eps", document.getElementById("attack-eps").value);
  fd.append("steps", document.getElementById("attack-steps").value);
  fd.append("metrics", compareMetrics().join(","));
  try {
    const res = await api("/api/attack", fd);
    renderAttack(res);
    setStatus("attack-status", "done", "ok");
  } catch (e) {
    setStatus("attack-status", e.message, "error");
  }
});

function renderAttack(res) {
  const out = document.getElementById("attack-results");
  for (const r of res.results) {
    let verdict;
    if (r.changed) verdict = el("div", { class: "verdict bad", "data-field": "changed", "data-value": "true", text: "decision CHANGED" });
    else verdict = el("div", { class: "verdict good", "data-field": "changed", "data-value": "false", text: "decision unchanged" });
    const cert = r.certified
      ? el("p", {}, "certified radius ", num(r.certified_radius, "certified_radius"),
        el("br"), r.certified_at_eps ? el("span", { class: "badge cert", text: "radius > ε: proven to hold at this ε" })
          : el("span", { class: "badge", text: "radius ≤ ε: no proof at this ε" }))
      : el("p", { class: "muted", text: "no certificate: nothing proves the decision at any ε" });
    const card = el("div", { class: "card", "data-metric": r.metric },
      el("h3", {}, r.metric, r.certified ? el("span", { class: "badge cert", text: "certified" }) : el("span", { class: "badge", text: "not robust" })),
      el("img", { src: r.image, alt: `adversarial reference for ${r.metric}`, class: "adv" }),
      verdict,
      el("p", {}, `clean: ${decisionText(r.clean.closer)} (`, num(r.clean.d0, "clean-d0"), " vs ", num(r.clean.d1, "clean-d1"), ")"),
      el("p", {}, `attacked: ${decisionText(r.adversarial.closer)} (`, num(r.adversarial.d0, "adv-d0"), " vs ", num(r.adversarial.d1, "adv-d1"), ")"),
      el("p", {}, "perturbation l2 ", num(r.perturbation_l2, "perturbation_l2"), " (ε ", num(res.eps, "eps"), ")"),
      cert);
    if (r.certified) card.append(radiusBar(r.certified_radius, res.scale, res.eps));
    out.append(card);
  }
}

// ------------------------------------------------------------------ search
document.getElementById("btn-search").addEventListener("click", async () => {
  const out = document.getElementById("search-results");
  out.replaceChildren();
  setStatus("search-status", "searching…", "busy");
  const fd = new FormData();
  fd.append("query", state.files.query);
  fd.append("k", document.getElementById("search-k").value);
  const tau = document.getElementById("search-tau").value;
  if (tau !== "") fd.append("tau", tau);
  try {
    renderSearch(await api("/api/search", fd));
    setStatus("search-status", "done", "ok");
  } catch (e) {
    setStatus("search-status", e.message, "error");
  }
});

function renderSearch(res) {
  const out = document.getElementById("search-results");
  if (res.top1_radius !== null && res.top1_radius !== undefined) {
    out.append(el("div", { class: "scale", id: "top1" },
      el("p", {}, "Top-1 answer ", el("b", { text: res.neighbours[0].name }), " is certified: no perturbation of the query below l2 ",
        num(res.top1_radius, "top1_radius"), " can make another stored image the nearest."),
      radiusBar(res.top1_radius, res.scale, null)));
  }
  const grid = el("div", { class: "grid", id: "neighbours" });
  res.neighbours.forEach((n, i) => {
    const dup = n.duplicate === null || n.duplicate === undefined ? null
      : el("div", { class: "verdict " + (n.duplicate ? "bad" : "good"), "data-field": "duplicate", "data-value": String(n.duplicate),
        text: n.duplicate ? `near-duplicate (d ≤ ${fmt(res.tau)})` : `distinct (d > ${fmt(res.tau)})` });
    grid.append(el("div", { class: "card", "data-row": String(n.row), "data-rank": String(i) },
      el("img", { src: n.thumb, alt: n.name, class: "thumb" }),
      el("p", { class: "name", text: `${i + 1}. ${n.name}` }),
      el("p", {}, "d = ", num(n.distance, "distance")),
      dup,
      n.duplicate_radius !== null && n.duplicate_radius !== undefined
        ? el("p", {}, "decision certified to l2 ", num(n.duplicate_radius, "duplicate_radius")) : null));
  });
  out.append(grid);
}

// ------------------------------------------------------------------ start
(async () => {
  try {
    const h = await api("/api/health");
    state.health = h;
    state.primary = h.metric;
    state.baseline = h.baseline;
    document.getElementById("server").textContent =
      `metric ${h.metric}` + (h.baseline ? ` · baseline ${h.baseline}` : "") +
      (h.index ? ` · index of ${h.index.count} images` : " · no index loaded");
    document.getElementById("index-info").textContent = h.index
      ? `${h.index.count} images, ${h.index.kind} index, ${h.index.metric}` : "No index loaded: start the server with --index.";
    updateButtons();
  } catch (e) {
    document.getElementById("server").textContent = "server unreachable: " + e.message;
  }
})();
