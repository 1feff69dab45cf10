// The controller's status page: plain JavaScript, no libraries, nothing fetched but the
// controller's own API (air-gapped clusters). Every string from the API goes in as text, never
// as HTML. The token lives in sessionStorage and travels as a Bearer header only.
"use strict";

const TOKEN_KEY = "warp-view-token";
const REFRESH_MS = 3000;
const SVG = "http://www.w3.org/2000/svg";
const state = {
  movies: new Map(), // task id -> movie row
  finished: [],      // finished_unix_ms of completed tasks (throughput)
  seen: new Set(),
  offset: 0,         // completed tasks read so far
  refreshes: 0,
  sortKey: "order",
  sortDir: 1,
  selected: null,
  timer: null,
  session: undefined, // SessionInfo from /api/session; null: this controller serves none
  thresholds: {},     // the selection's thresholds (SelectionThresholds' field names)
  pictures: { id: null, urls: [] },
};

// The thresholds, as in common/src/preprocessing.rs (SelectionThresholds): a movie passes
// when every one that is set holds; exactly at a threshold passes.
const THRESHOLDS = ["max_resolution_A", "min_defocus_um", "max_defocus_um", "max_astigmatism_um", "max_motion_A"];

const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = String(text);
  return e;
}

async function request(path, options) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token }, cache: "no-store", ...(options || {}) });
  if (r.status === 401 || r.status === 403) {
    const body = await r.json().catch(() => ({}));
    throw { auth: true, message: body.error || "the token was refused" };
  }
  return r;
}

async function api(path) {
  const r = await request(path);
  if (!r.ok) throw { message: path + ": HTTP " + r.status };
  return r.json();
}

// The session, or null when the controller serves none (404).
async function fetchSession() {
  const r = await request("/api/session");
  if (r.status === 404) return null;
  if (!r.ok) throw { message: "/api/session: HTTP " + r.status };
  return r.json();
}

function showLogin(message) {
  clearTimeout(state.timer);
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

function fmt(x, digits) {
  return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);
}

function ago(ms) {
  if (ms < 1000) return ms + " ms ago";
  if (ms < 120000) return Math.round(ms / 1000) + " s ago";
  return Math.round(ms / 60000) + " min ago";
}

// --- movies from task results -----------------------------------------------------------------

// A preprocess task's results hold a CTF result (`defocus_u_um`, ...) and a motion result
// (`shifts_px`, `shifts_A`): common/src/preprocessing.rs, CtfResult and MovementResult.
function movieOf(task) {
  const results = (task.result && task.result.results) || [];
  const ctf = results.find((r) => r && typeof r === "object" && typeof r.defocus_u_um === "number");
  if (!ctf) return null;
  const motion = results.find((r) => r && typeof r === "object" && Array.isArray(r.shifts_px));
  // The trajectory's length in Å (total_motion in common/src/preprocessing.rs).
  let total = null;
  if (motion && Array.isArray(motion.shifts_A) && motion.shifts_A.length) {
    const s = motion.shifts_A;
    total = 0;
    for (let i = 1; i < s.length; i++) total += Math.hypot(s[i][0] - s[i - 1][0], s[i][1] - s[i - 1][1]);
  }
  return {
    id: task.id,
    name: task.label || task.id,
    created: task.created_unix_ms,
    du: ctf.defocus_u_um,
    dv: ctf.defocus_v_um,
    astig: Math.abs(ctf.defocus_u_um - ctf.defocus_v_um),
    mean: (ctf.defocus_u_um + ctf.defocus_v_um) / 2,
    angle: ctf.astig_angle_deg,
    res: ctf.fit_resolution_A,
    motion: total,
    shifts: motion ? motion.shifts_px : [],
    angpix: ctf.angpix,
    score: ctf.score,
  };
}

// Which thresholds movie `m` fails (SelectionThresholds::failures).
function failures(m) {
  const t = state.thresholds, out = [];
  if (t.max_resolution_A !== undefined && m.res > t.max_resolution_A) out.push("resolution");
  if ((t.min_defocus_um !== undefined && m.mean < t.min_defocus_um) || (t.max_defocus_um !== undefined && m.mean > t.max_defocus_um)) out.push("defocus");
  if (t.max_astigmatism_um !== undefined && m.astig > t.max_astigmatism_um) out.push("astigmatism");
  if (t.max_motion_A !== undefined && m.motion !== null && m.motion > t.max_motion_A) out.push("motion");
  return out;
}

function readThresholds() {
  const t = {};
  for (const k of THRESHOLDS) {
    const v = $("t-" + k).value.trim();
    if (v !== "" && Number.isFinite(Number(v)) && Number(v) >= 0) t[k] = Number(v);
  }
  state.thresholds = t;
}

async function fetchTasks() {
  // Completed tasks in the controller's order; new ones arrive at the end. A full pass every
  // tenth refresh picks up what an eviction (--keep-finished) shifted.
  if (state.refreshes++ % 10 === 0) state.offset = 0;
  for (;;) {
    const page = await api("/api/workers/tasks?state=completed&limit=500&offset=" + state.offset);
    for (const t of page) {
      if (state.seen.has(t.id)) continue;
      state.seen.add(t.id);
      if (t.finished_unix_ms) state.finished.push(t.finished_unix_ms);
      const m = movieOf(t);
      if (m) state.movies.set(t.id, m);
    }
    state.offset += page.length;
    if (page.length < 500) break;
  }
  const sorted = [...state.movies.values()].sort((a, b) => a.created - b.created || (a.name < b.name ? -1 : 1));
  sorted.forEach((m, i) => (m.order = i + 1));
}

// --- drawing ----------------------------------------------------------------------------------

function clear(svg) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
}

// A scatter plot of series [{values, colour, label, names}] against acquisition order; `pass`
// (per point) draws the movies outside the selection hollow, `limits` are dashed threshold lines.
function scatter(svg, title, unit, series, pass, limits) {
  limits = (limits || []).filter((l) => l.value !== undefined);
  clear(svg);
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  const L = 56, R = 10, T = 22, B = 24;
  svg.appendChild(el("svg:text", { x: L, y: 14, "font-size": 12 }, title + " (" + unit + ")"));
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && Number.isFinite(v)));
  const n = Math.max(...series.map((s) => s.values.length), 0);
  if (all.length) all.push(...limits.map((l) => l.value));
  if (!all.length) {
    svg.appendChild(el("svg:text", { x: L, y: H / 2, "font-size": 12, fill: "#888" }, "no movies yet"));
    return;
  }
  let lo = Math.min(...all), hi = Math.max(...all);
  if (hi === lo) { hi += 1; lo -= 1; }
  const pad = (hi - lo) * 0.05;
  lo -= pad; hi += pad;
  const x = (i) => L + 8 + (n <= 1 ? (W - L - R - 16) / 2 : (i * (W - L - R - 16)) / (n - 1));
  const y = (v) => T + ((hi - v) * (H - T - B)) / (hi - lo);
  svg.appendChild(el("svg:line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" }));
  svg.appendChild(el("svg:line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" }));
  for (const v of [lo + pad, (lo + hi) / 2, hi - pad]) {
    svg.appendChild(el("svg:text", { x: L - 4, y: y(v) + 4, "font-size": 10, "text-anchor": "end" }, fmt(v, 2)));
    svg.appendChild(el("svg:line", { x1: L, y1: y(v), x2: W - R, y2: y(v), stroke: "#eee" }));
  }
  svg.appendChild(el("svg:text", { x: W - R, y: H - 6, "font-size": 10, "text-anchor": "end" }, "movie 1 … " + n));
  for (const l of limits) {
    svg.appendChild(el("svg:line", { x1: L, y1: y(l.value), x2: W - R, y2: y(l.value), stroke: "#b00", "stroke-dasharray": "5 3", class: "limit" }));
    svg.appendChild(el("svg:text", { x: L + 4, y: y(l.value) - 3, "font-size": 10, fill: "#b00" }, l.label + " " + fmt(l.value, 2)));
  }
  series.forEach((s, k) => {
    svg.appendChild(el("svg:text", { x: W - R - 90 * (series.length - k), y: 14, "font-size": 11, fill: s.colour }, "● " + s.label));
    s.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) return;
      const out = pass && !pass[i];
      const c = el("svg:circle", out
        ? { cx: x(i), cy: y(v), r: 3, fill: "none", stroke: s.colour, class: "point rejected" }
        : { cx: x(i), cy: y(v), r: 3, fill: s.colour, class: "point" });
      c.appendChild(el("svg:title", {}, s.names[i] + ": " + fmt(v, 3) + " " + unit));
      svg.appendChild(c);
    });
  });
}

function drawThroughput(now) {
  const svg = $("throughput");
  clear(svg);
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  const bins = new Array(60).fill(0);
  for (const t of state.finished) {
    const m = Math.floor((now - t) / 60000);
    if (m >= 0 && m < 60) bins[59 - m] += 1;
  }
  const top = Math.max(1, ...bins);
  const bw = (W - 50) / 60;
  bins.forEach((c, i) => {
    const h = (c * (H - 30)) / top;
    const r = el("svg:rect", { x: 40 + i * bw, y: H - 15 - h, width: Math.max(1, bw - 1), height: h, fill: "#4a7fd4", class: "bar" });
    r.appendChild(el("svg:title", {}, c + " tasks, " + (59 - i) + " min ago"));
    svg.appendChild(r);
  });
  svg.appendChild(el("svg:text", { x: 36, y: 14, "font-size": 10, "text-anchor": "end" }, top));
  svg.appendChild(el("svg:text", { x: 40, y: H - 2, "font-size": 10 }, "60 min ago"));
  svg.appendChild(el("svg:text", { x: W - 10, y: H - 2, "font-size": 10, "text-anchor": "end" }, "now"));
}

function drawWorkers(workers, status) {
  const body = $("workers").tBodies[0];
  body.replaceChildren();
  for (const w of workers) {
    const gpu = w.capabilities && w.capabilities.gpu;
    const tr = el("tr", { "data-worker": w.id });
    tr.append(
      el("td", {}, w.hostname),
      el("td", {}, w.device),
      el("td", {}, gpu ? gpu.name : "CPU"),
      el("td", {}, gpu ? (gpu.memory_mb / 1024).toFixed(1) + " GiB" : "–"),
      el("td", { class: "state-" + w.state }, w.state),
      el("td", {}, w.current_task || "–"),
      el("td", {}, ago(w.last_heartbeat_ms_ago)),
      el("td", {}, w.tasks_completed + " / " + w.tasks_failed),
    );
    body.appendChild(tr);
  }
  const p = status.provisioning;
  $("provisioning").textContent = p
    ? "provisioning (" + p.mode + "): " + p.jobs.length + " job(s) now, " + p.submitted_total + " submitted, at most " + p.max_workers + " workers" + (p.last_error ? "; last error: " + p.last_error : "")
    : "";
  const t = status.tasks;
  $("summary").textContent =
    "v" + status.version + " · " + workers.length + " worker(s) · queue " + status.queue_length +
    " · running " + (t.running + t.assigned) + " · completed " + t.completed + " · failed " + t.failed;
}

const KEYS = ["order", "name", "du", "dv", "astig", "angle", "res", "motion", "pass"];
const DIGITS = { du: 3, dv: 3, astig: 3, angle: 1, res: 2, motion: 2 };

function drawMovies() {
  const movies = [...state.movies.values()];
  $("movie-count").textContent = movies.length ? "(" + movies.length + ")" : "";
  for (const m of movies) {
    m.failed = failures(m);
    m.pass = m.failed.length ? "no (" + m.failed.join(", ") + ")" : "yes";
  }
  const passing = movies.filter((m) => !m.failed.length).length;
  $("selection-count").textContent = passing + " of " + movies.length + " pass";
  $("selection-count").dataset.selected = String(passing);
  const byOrder = [...movies].sort((a, b) => a.order - b.order);
  const names = byOrder.map((m) => m.name);
  const pass = byOrder.map((m) => !m.failed.length);
  const t = state.thresholds;
  scatter($("plot-defocus"), "Defocus", "µm", [
    { label: "U", colour: "#1f6fd4", values: byOrder.map((m) => m.du), names },
    { label: "V", colour: "#d4631f", values: byOrder.map((m) => m.dv), names },
  ], pass, [{ label: "mean ≥", value: t.min_defocus_um }, { label: "mean ≤", value: t.max_defocus_um }]);
  scatter($("plot-astig"), "Astigmatism |U − V|", "µm", [{ label: "astig.", colour: "#7a3fd4", values: byOrder.map((m) => m.astig), names }], pass, [{ label: "≤", value: t.max_astigmatism_um }]);
  scatter($("plot-resolution"), "CTF fit resolution", "Å", [{ label: "res.", colour: "#2a9d4a", values: byOrder.map((m) => m.res), names }], pass, [{ label: "≤", value: t.max_resolution_A }]);
  scatter($("plot-motion"), "Total motion", "Å", [{ label: "motion", colour: "#c0392b", values: byOrder.map((m) => m.motion), names }], pass, [{ label: "≤", value: t.max_motion_A }]);

  const k = state.sortKey, dir = state.sortDir;
  movies.sort((a, b) => {
    const x = a[k], y = b[k];
    if (x === y) return a.order - b.order;
    if (x === null) return 1;
    if (y === null) return -1;
    return (x < y ? -1 : 1) * dir;
  });
  const body = $("movies").tBodies[0];
  body.replaceChildren();
  for (const m of movies) {
    const tr = el("tr", { "data-id": m.id });
    if (state.selected === m.id) tr.classList.add("selected");
    if (m.failed.length) tr.classList.add("rejected");
    for (const key of KEYS) tr.appendChild(el("td", {}, key in DIGITS ? fmt(m[key], DIGITS[key]) : m[key]));
    tr.addEventListener("click", () => { state.selected = m.id; drawDetail(); drawMovies(); });
    body.appendChild(tr);
  }
  for (const th of $("movies").tHead.rows[0].cells) {
    th.classList.toggle("sorted-asc", th.dataset.key === k && dir > 0);
    th.classList.toggle("sorted-desc", th.dataset.key === k && dir < 0);
  }
}

function drawDetail() {
  const box = $("detail");
  const m = state.movies.get(state.selected);
  if (!m) { box.hidden = true; return; }
  box.hidden = false;
  box.replaceChildren(el("h3", {}, m.name));
  const dl = el("dl");
  const rows = [
    ["defocus U / V", fmt(m.du, 4) + " / " + fmt(m.dv, 4) + " µm"],
    ["astigmatism", fmt(m.astig, 4) + " µm at " + fmt(m.angle, 1) + "°"],
    ["CTF fit resolution", fmt(m.res, 2) + " Å (score " + fmt(m.score, 3) + ")"],
    ["pixel size", fmt(m.angpix, 3) + " Å"],
    ["total motion", fmt(m.motion, 2) + " Å over " + m.shifts.length + " frames"],
    ["task", m.id],
  ];
  for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", {}, v));
  box.appendChild(dl);
  // The trajectory, frame by frame, in pixels (first frame at the origin).
  const svg = el("svg:svg", { width: 240, height: 240, id: "trajectory", role: "img", "aria-label": "motion trajectory" });
  if (m.shifts.length) {
    const xs = m.shifts.map((s) => s[0] - m.shifts[0][0]), ys = m.shifts.map((s) => s[1] - m.shifts[0][1]);
    const span = Math.max(1, ...xs.map(Math.abs), ...ys.map(Math.abs));
    const sc = 100 / span;
    const pts = xs.map((x, i) => (120 + x * sc).toFixed(1) + "," + (120 + ys[i] * sc).toFixed(1)).join(" ");
    svg.appendChild(el("svg:polyline", { points: pts, fill: "none", stroke: "#c0392b", "stroke-width": 1.5 }));
    svg.appendChild(el("svg:circle", { cx: 120, cy: 120, r: 3, fill: "#222" }));
    svg.appendChild(el("svg:text", { x: 4, y: 236, "font-size": 10 }, "±" + fmt(span, 1) + " px"));
  }
  box.appendChild(svg);
  if (state.session) box.appendChild(pictures(m));
}

// The thumbnail and the power spectrum (fitted CTF zeros drawn on its right half), fetched
// with the token and shown from blob: URLs (an <img src> could not send the header).
function pictures(m) {
  const box = el("div", { class: "pictures" });
  const kinds = [["thumbnail", "average (thumbnail)"], ["spectrum", "power spectrum; right half: the fitted CTF's zeros to the fit resolution"]];
  if (state.pictures.id !== m.id) {
    state.pictures.urls.forEach((u) => u && URL.revokeObjectURL(u));
    state.pictures = { id: m.id, urls: kinds.map(() => undefined) };
    kinds.forEach(([kind], i) => {
      request("/api/session/movies/" + encodeURIComponent(m.name) + "/" + kind)
        .then((r) => (r.ok ? r.blob() : null))
        .then((b) => {
          if (state.pictures.id !== m.id) return;
          state.pictures.urls[i] = b ? URL.createObjectURL(b) : null;
          drawDetail();
        })
        .catch(() => {});
    });
  }
  kinds.forEach(([kind, caption], i) => {
    const url = state.pictures.urls[i];
    const fig = el("figure");
    if (url) fig.appendChild(el("img", { src: url, alt: kind + " of " + m.name, id: "picture-" + kind }));
    else fig.appendChild(el("p", { class: "hint" }, url === null ? "no " + kind + " (not written yet)" : "loading " + kind + " …"));
    fig.appendChild(el("figcaption", {}, caption));
    box.appendChild(fig);
  });
  return box;
}

async function exportSelection() {
  readThresholds();
  const admin = $("admin-token").value.trim();
  const headers = { "Content-Type": "application/json" };
  if (admin) headers.Authorization = "Bearer " + admin;
  $("export-result").textContent = "exporting …";
  try {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const r = await fetch("/api/session/selection", {
      method: "POST",
      headers: { Authorization: "Bearer " + token, ...headers },
      body: JSON.stringify(state.thresholds),
      cache: "no-store",
    });
    const body = await r.json().catch(() => ({}));
    if (r.status === 401 || r.status === 403) {
      $("admin-label").hidden = false;
      $("export-result").textContent = "export needs the admin token: enter it and export again";
      return;
    }
    if (!r.ok) {
      $("export-result").textContent = "export failed: " + (body.error || "HTTP " + r.status);
      return;
    }
    $("export-result").textContent = "wrote " + body.star + ": " + body.selected + " of " + body.total + " movies";
    $("export-result").dataset.selected = String(body.selected);
  } catch (e) {
    $("export-result").textContent = "export failed: " + ((e && e.message) || e);
  }
}

async function refresh() {
  try {
    const [status, workers] = await Promise.all([api("/api/workers/status"), api("/api/workers/active")]);
    if (state.session === undefined) {
      state.session = await fetchSession();
      if (state.session) {
        for (const k of THRESHOLDS) {
          const v = state.session.thresholds[k];
          if (v !== undefined && v !== null) $("t-" + k).value = String(v);
        }
        readThresholds();
      }
    }
    $("selection").hidden = !state.session;
    await fetchTasks();
    drawWorkers(workers, status);
    drawThroughput(Date.now());
    drawMovies();
    if (state.selected) drawDetail();
    $("main").hidden = false;
    $("login").hidden = true;
    $("logout").hidden = false;
    document.body.dataset.refreshed = String(Date.now());
  } catch (e) {
    if (e && e.auth) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(e.message);
      return;
    }
    $("summary").textContent = "cannot reach the controller: " + ((e && e.message) || e) + " (retrying)";
  }
  state.timer = setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    $("token").value = "";
    refresh();
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showLogin(""); });
  for (const k of THRESHOLDS) $("t-" + k).addEventListener("input", () => { readThresholds(); drawMovies(); });
  $("selection").addEventListener("submit", (ev) => { ev.preventDefault(); exportSelection(); });
  for (const th of $("movies").tHead.rows[0].cells) {
    th.addEventListener("click", () => {
      state.sortDir = state.sortKey === th.dataset.key ? -state.sortDir : 1;
      state.sortKey = th.dataset.key;
      drawMovies();
    });
  }
  if (sessionStorage.getItem(TOKEN_KEY)) refresh();
  else showLogin("");
});
