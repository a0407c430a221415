// Charts drawn with SVG and canvas, no library: line charts, the gradient heatmap, the
// decision boundary, the network and a seq2seq run's cross-attention, in the TensorFlow Playground's colours. Each draws into
// a container carrying data-chart="..." (the browser tests find them by it) and records what
// it drew in data-* attributes.

const NS = "http://www.w3.org/2000/svg";
export const BLUE = "#0877bd";
export const ORANGE = "#f59322";
const PALETTE = [BLUE, ORANGE, "#15803d", "#9333ea", "#b91c1c", "#0f766e", "#a16207", "#475569"];

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

export function color(i) {
  return PALETTE[i % PALETTE.length];
}

// Class k of n: the Playground's orange and blue for two classes, the palette for more.
export function classColor(k, n) {
  return n <= 2 ? [ORANGE, BLUE][k] : color(k);
}

// About n round numbers spanning [lo, hi].
function ticks(lo, hi, n = 5) {
  if (!(hi > lo)) return [lo];
  const step0 = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
  return out;
}

// v written with as many decimals as a tick step of `step` needs.
function fmt(v, step = Math.abs(v)) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-4) return v.toExponential(1);
  const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(step || a))));
  return v.toFixed(decimals);
}

function legend(items) {
  const box = document.createElement("div");
  box.className = "legend";
  for (const { name, color: c, dashed } of items) {
    const key = document.createElement("span");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = dashed ? `repeating-linear-gradient(90deg, ${c} 0 3px, transparent 3px 5px)` : c;
    key.append(swatch, name);
    box.append(key);
  }
  return box;
}

// series: [{name, color, dashed, points: [[x, y], ...]}]; y <= 0 is left out on a log scale.
// empty: what the chart says while it has no points.
export function lineChart(container, { series, log = false, xLabel = "epoch", yLabel = "", yMin,
                                       yMax, empty = "no data yet" }) {
  const W = 480, H = 220, L = 48, R = 22, T = 10, B = 34;
  const shown = series.map((s) => ({
    ...s, points: s.points.filter(([, y]) => y !== null && Number.isFinite(y) && (!log || y > 0)),
  }));
  const all = shown.flatMap((s) => s.points);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
                             "aria-label": `${yLabel} by ${xLabel}` });
  container.dataset.points = String(all.length);
  if (!all.length) {
    chart.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, empty));
    container.replaceChildren(chart, legend(series));
    return;
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => (log ? Math.log10(p[1]) : p[1]));
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (yMin !== undefined && !log) y0 = Math.min(y0, yMin);
  if (yMax !== undefined && !log) y1 = Math.max(y1, yMax);
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const axis = svg("g", { class: "axis" });
  const xTicks = ticks(x0, x1);
  for (const v of xTicks) {
    axis.append(svg("line", { x1: px(v), x2: px(v), y1: H - B, y2: H - B + 4 }),
                svg("text", { x: px(v), y: H - B + 16, "text-anchor": "middle" },
                    fmt(v, xTicks[1] - xTicks[0])));
  }
  const yTicks = log ? ticks(Math.floor(y0), Math.ceil(y1)).filter((v) => Number.isInteger(v))
    : ticks(y0, y1);
  for (const v of yTicks) {
    if (v < y0 - 1e-9 || v > y1 + 1e-9) continue;
    axis.append(svg("line", { x1: L, x2: W - R, y1: py(v), y2: py(v), opacity: 0.5 }),
                svg("text", { x: L - 6, y: py(v) + 4, "text-anchor": "end" },
                    log ? `1e${v}` : fmt(v, yTicks[1] - yTicks[0])));
  }
  axis.append(svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, xLabel),
              svg("text", { x: 12, y: (T + H - B) / 2, transform: `rotate(-90 12 ${(T + H - B) / 2})`,
                            "text-anchor": "middle" }, yLabel + (log ? " (log)" : "")));
  chart.append(axis);
  for (const s of shown) {
    if (!s.points.length) continue;
    const d = s.points.map(([x, y], i) =>
      `${i ? "L" : "M"}${px(x).toFixed(1)},${py(log ? Math.log10(y) : y).toFixed(1)}`).join("");
    chart.append(svg("path", { d, fill: "none", stroke: s.color, "stroke-width": 1.8,
                               "stroke-dasharray": s.dashed ? "5 3" : "none" }));
  }
  container.replaceChildren(chart, legend(series));
}

// A colour scale from dark violet (low) to yellow (high), like viridis, t in [0, 1].
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
export function viridis(t) {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const [a, b] = [VIRIDIS[i], VIRIDIS[i + 1]];
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(",")})`;
}

// rows: labels (the layers, input first); columns: the epochs; values[r][c] a number or null
// (an epoch without statistics is drawn as a gap). Colour = the value on a linear scale.
export function heatmap(container, { rows, columns, values, title }) {
  const cell = 22, width = 420, top = 4;
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d");
  ctx.font = "11px system-ui, sans-serif";
  // room for the longest layer name (a seq2seq run's: decoder.transformer_decoder_2)
  const left = Math.max(78, Math.ceil(Math.max(0, ...rows.map((r) => ctx.measureText(r).width))) + 8);
  canvas.width = left + width;  // resets the context's state: the font is set again below
  canvas.height = top + rows.length * cell + 18;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${title}: layers by epochs`);
  const flat = values.flat().filter((v) => v !== null && Number.isFinite(v));
  const lo = flat.length ? Math.min(...flat) : 0;
  const hi = flat.length ? Math.max(...flat) : 1;
  const span = hi > lo ? hi - lo : 1;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7280";
  ctx.textBaseline = "middle";
  const n = columns.length;
  rows.forEach((label, r) => {
    const y = top + r * cell;
    ctx.fillText(label, 2, y + cell / 2);
    for (let c = 0; c < n; c++) {
      const v = values[r][c];
      if (v === null || !Number.isFinite(v)) continue;
      ctx.fillStyle = viridis((v - lo) / span);
      const x0 = left + Math.floor((c * width) / n);
      const x1 = left + Math.floor(((c + 1) * width) / n);
      ctx.fillRect(x0, y + 1, Math.max(1, x1 - x0), cell - 2);
    }
    ctx.fillStyle = "#6b7280";
  });
  if (n) {
    const y = top + rows.length * cell + 10;
    ctx.fillText(`epoch ${columns[0]}`, left, y);
    ctx.textAlign = "right";
    ctx.fillText(`${columns[n - 1]}`, left + width, y);
  }
  container.dataset.last = JSON.stringify(values.map((row) => row[n - 1] ?? null));
  container.dataset.columns = String(n);
  container.replaceChildren(canvas, viridisKey(`${title}: ${fmt(lo, 0.01)}`, fmt(hi, 0.01)));
}

// The colour scale of a viridis picture, from the label `low` to `high`.
function viridisKey(low, high) {
  const scale = document.createElement("canvas");
  scale.width = 200;
  scale.height = 10;
  const sctx = scale.getContext("2d");
  for (let i = 0; i < 200; i++) {
    sctx.fillStyle = viridis(i / 199);
    sctx.fillRect(i, 0, 1, 10);
  }
  const key = document.createElement("div");
  key.className = "legend";
  key.append(low, scale, high);
  return key;
}

// The Playground's colours: orange (0) through white (0.5) to blue (1).
function playground(t, alpha = 1) {
  const o = [245, 147, 34], w = [255, 255, 255], b = [8, 119, 189];
  const [a, c, f] = t < 0.5 ? [o, w, t * 2] : [w, b, (t - 0.5) * 2];
  return `rgba(${a.map((v, k) => Math.round(v + (c[k] - v) * f)).join(",")},${alpha})`;
}

// grid: GET .../boundary (values null: the points alone); points: [{x, y, cls (0..),
// validation}]. Two classes: orange and blue as the Playground; more: each class its colour,
// faded by its probability.
// A matrix of weights in [0, 1] with a label per row and per column: the cross-attention of
// a decoded output (rows: the target steps, columns: the source positions). Colour = the
// weight, 0 to 1. Records each row's largest column (data-argmax) and weighted mean column
// (data-centres).
export function attentionMap(container, { rows, columns, values, title }) {
  const cell = Math.max(14, Math.min(36, Math.floor(360 / Math.max(columns.length, rows.length))));
  const left = 44, top = 30;
  const canvas = document.createElement("canvas");
  canvas.width = left + columns.length * cell + 4;
  canvas.height = top + rows.length * cell + 4;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${title}: target step by source position`);
  const ctx = canvas.getContext("2d");
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7280";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  columns.forEach((label, c) => ctx.fillText(label, left + (c + 0.5) * cell, top - 10));
  rows.forEach((label, r) => {
    const y = top + r * cell;
    ctx.textAlign = "right";
    ctx.fillStyle = "#6b7280";
    ctx.fillText(label, left - 6, y + cell / 2);
    values[r].forEach((v, c) => {
      ctx.fillStyle = viridis(v);
      ctx.fillRect(left + c * cell, y, cell - 1, cell - 1);
    });
  });
  container.dataset.argmax = JSON.stringify(values.map((row) => row.indexOf(Math.max(...row))));
  // each row's weighted mean source position: falls row by row when the map is an anti-diagonal
  container.dataset.centres = JSON.stringify(values.map((row) =>
    row.reduce((sum, v, c) => sum + v * c, 0) / (row.reduce((sum, v) => sum + v, 0) || 1)));
  container.dataset.shape = JSON.stringify([rows.length, columns.length]);
  container.replaceChildren(canvas, viridisKey(`${title}: 0`, "1"));
}

export function boundary(container, grid, points) {
  const S = 300, n = grid.size;
  const canvas = document.createElement("canvas");
  canvas.width = S;
  canvas.height = S;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", "decision boundary with the data");
  const ctx = canvas.getContext("2d");
  // Probabilities on their own scale; a regression's outputs stretched over their range.
  const two = !grid.labels || (grid.classes && grid.classes.length <= 2);
  const flat = (grid.values || []).flat();
  const [vmin, vmax] = grid.labels ? [0, 1] : [Math.min(...flat), Math.max(...flat)];
  const classes = grid.classes ? grid.classes.length : 2;
  for (let j = 0; grid.values && j < n; j++) {
    for (let i = 0; i < n; i++) {
      const v = grid.values[j][i];
      ctx.fillStyle = two ? playground((v - vmin) / (vmax - vmin || 1), 0.85)
        : color(grid.labels[j][i]) + Math.round(40 + 150 * v).toString(16).padStart(2, "0");
      ctx.fillRect(Math.floor((i * S) / n), S - Math.ceil(((j + 1) * S) / n),
                   Math.ceil(S / n), Math.ceil(S / n));
    }
  }
  const [x0, x1] = grid.x, [y0, y1] = grid.y;
  for (const p of points) {
    const cx = ((p.x - x0) / (x1 - x0)) * S, cy = S - ((p.y - y0) / (y1 - y0)) * S;
    ctx.beginPath();
    ctx.arc(cx, cy, 3.2, 0, 2 * Math.PI);
    ctx.fillStyle = classColor(p.cls, classes);
    ctx.fill();
    ctx.lineWidth = p.validation ? 1.6 : 1;
    ctx.strokeStyle = p.validation ? "#111" : "#fff";
    ctx.stroke();
  }
  if (!grid.values) return container.replaceChildren(canvas);
  container.dataset.weights = `${grid.weights} ${grid.phase} ${grid.epoch}`;
  const note = legend([{ name: "train point (white ring)", color: "#cbd5e1" },
                       { name: "validation point (black ring)", color: "#111" }]);
  note.append(`weights: ${grid.weights}, ${grid.phase} epoch ${grid.epoch}`);
  container.replaceChildren(canvas, note);
}

// layers: [{units, activation}] with the inputs first; weights: [W (in x out) per dense
// layer]. Links: width by |w|, blue for w > 0 and orange for w < 0.
export function network(container, { sizes, labels, weights }) {
  const W = 480, H = 240, pad = 28;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "the network" });
  const x = (l) => pad + (l * (W - 2 * pad)) / Math.max(1, sizes.length - 1);
  const y = (l, u) => (H - 20) / 2 + (u - (sizes[l] - 1) / 2) * Math.min(34, (H - 40) / Math.max(...sizes));
  const big = Math.max(1e-12, ...weights.flat(2).map(Math.abs));
  let drawn = 0;
  weights.forEach((matrix, l) => {
    matrix.forEach((row, i) => row.forEach((w, j) => {
      chart.append(svg("line", { x1: x(l), y1: y(l, i), x2: x(l + 1), y2: y(l + 1, j),
                                 stroke: w > 0 ? BLUE : ORANGE, "stroke-opacity": 0.85,
                                 "stroke-width": (0.3 + 4 * Math.abs(w) / big).toFixed(2) }));
      drawn += 1;
    }));
  });
  sizes.forEach((n, l) => {
    for (let u = 0; u < n; u++) {
      chart.append(svg("circle", { cx: x(l), cy: y(l, u), r: 7, fill: "#fff", stroke: "#475569" }));
    }
    chart.append(svg("text", { x: x(l), y: H - 6, "text-anchor": "middle" }, labels[l]));
  });
  container.dataset.links = String(drawn);
  container.replaceChildren(chart, legend([{ name: "w > 0", color: BLUE },
                                           { name: "w < 0 (width: |w|)", color: ORANGE }]));
}

// A conv2d layer's filters W (F, C, kh, kw) as small grey images (channel 0).
export function filters(container, W) {
  const box = document.createElement("div");
  box.className = "images";
  for (const filter of W) {
    box.append(image(filter[0], 48));
  }
  container.replaceChildren(box);
}

// One 2-D array as a grey image of `size` pixels a side.
export function image(rows, size) {
  const h = rows.length, w = rows[0].length;
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  canvas.style.width = canvas.style.height = `${size}px`;
  const flat = rows.flat();
  const lo = Math.min(...flat), hi = Math.max(...flat);
  const ctx = canvas.getContext("2d");
  rows.forEach((row, r) => row.forEach((v, c) => {
    const g = Math.round(255 * ((v - lo) / (hi - lo || 1)));
    ctx.fillStyle = `rgb(${g},${g},${g})`;
    ctx.fillRect(c, r, 1, 1);
  }));
  return canvas;
}

// bars: [{name, value}]
export function bars(container, items, label) {
  const W = 480, H = 30 + 22 * items.length, L = 90;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  const top = Math.max(1, ...items.map((i) => i.value));
  items.forEach((item, k) => {
    const y = 6 + k * 22;
    chart.append(svg("text", { x: L - 6, y: y + 13, "text-anchor": "end" }, item.name),
                 svg("rect", { x: L, y, height: 16, width: ((W - L - 40) * item.value) / top,
                               fill: classColor(k, items.length) }),
                 svg("text", { x: L + 4 + ((W - L - 40) * item.value) / top, y: y + 13 },
                     String(item.value)));
  });
  container.replaceChildren(chart);
}

// A sweep's children by style: fill and ring (the page's legend uses the same, style.css).
const DOTS = { best: ["#15803d", "#15803d"], done: [BLUE, BLUE], stopped: ["#fff", ORANGE],
               running: ["#fff", BLUE], other: ["#fff", "#9ca3af"] };

// One parameter of a sweep against its metric. points: [{x, y, title, style (a DOTS key),
// onclick}];
// x numbers (on a log axis with `log`; ticks at `marks`, a grid's values, when given) or, with
// `categories`, one of them (a string). Points without a y are left out. data-points and
// data-scale record what was drawn.
export function scatter(container, { points, categories, marks, log = false, logY = false,
                                     xLabel, yLabel }) {
  // Category names that would overlap are turned, and the chart grows to hold them.
  const slot = categories ? (330 - 62) / categories.length : Infinity;
  const longest = categories ? Math.max(...categories.map((c) => c.length)) : 0;
  const turn = longest * 6 > slot;
  const extra = turn ? Math.min(90, Math.round(longest * 6 * 0.5)) : 0;
  const W = 330, H = 200 + extra, L = 48, R = 14, T = 10, B = 34 + extra;
  const shown = points.filter((p) => p.y !== null && Number.isFinite(p.y) && (!logY || p.y > 0)
    && (categories ? categories.includes(p.x) : Number.isFinite(p.x) && (!log || p.x > 0)));
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
                             "aria-label": `${yLabel} by ${xLabel}` });
  container.dataset.points = String(shown.length);
  container.dataset.scale = categories ? "category" : log ? "log" : "linear";
  if (!shown.length) {
    chart.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no finished child yet"));
    container.replaceChildren(chart);
    return;
  }
  const fx = (x) => (categories ? categories.indexOf(x) : log ? Math.log10(x) : x);
  const fy = (y) => (logY ? Math.log10(y) : y);
  const xs = categories ? [-0.5, categories.length - 0.5]
    : [...shown.map((p) => fx(p.x)), ...(marks || []).map(fx)];  // a grid's axis stays put
  const ys = shown.map((p) => fy(p.y));
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (!categories) {  // a margin, so no point sits on the frame
    const pad = x1 > x0 ? (x1 - x0) * 0.06 : 0.5;
    [x0, x1] = [x0 - pad, x1 + pad];
  }
  const padY = y1 > y0 ? (y1 - y0) * 0.08 : 0.5;
  [y0, y1] = [y0 - padY, y1 + padY];
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const axis = svg("g", { class: "axis" });
  const xTicks = categories ? categories.map((_, i) => i) : marks ? marks.map(fx)
    : log ? decades(x0, x1) : ticks(x0, x1, 4);
  for (const [k, v] of xTicks.entries()) {
    if (v < x0 - 1e-9 || v > x1 + 1e-9) continue;
    const text = categories ? categories[v] : marks ? fmt(marks[k])
      : log ? fmt(10 ** v) : fmt(v, xTicks[1] - xTicks[0]);
    axis.append(svg("line", { x1: px(v), x2: px(v), y1: H - B, y2: H - B + 4 }), turn
      ? svg("text", { x: px(v), y: H - B + 14, "text-anchor": "end",
                      transform: `rotate(-30 ${px(v)} ${H - B + 14})` }, text)
      : svg("text", { x: px(v), y: H - B + 16, "text-anchor": "middle" }, text));
  }
  const yTicks = logY ? decades(y0, y1) : ticks(y0, y1, 4);
  for (const v of yTicks) {
    if (v < y0 - 1e-9 || v > y1 + 1e-9) continue;
    axis.append(svg("line", { x1: L, x2: W - R, y1: py(v), y2: py(v), opacity: 0.5 }),
                svg("text", { x: L - 6, y: py(v) + 4, "text-anchor": "end" },
                    logY ? fmt(10 ** v) : fmt(v, yTicks[1] - yTicks[0])));
  }
  axis.append(svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" },
                  xLabel + (log ? " (log)" : "")),
              svg("text", { x: 12, y: (T + H - B) / 2, transform: `rotate(-90 12 ${(T + H - B) / 2})`,
                            "text-anchor": "middle" }, yLabel + (logY ? " (log)" : "")));
  chart.append(axis);
  // the best last, so it is drawn on top of its neighbours
  const order = (p) => (p.style === "best" ? 1 : 0);
  for (const p of [...shown].sort((a, b) => order(a) - order(b))) {
    const [fill, ring] = DOTS[p.style] || DOTS.other;
    const dot = svg("circle", { cx: px(fx(p.x)).toFixed(1), cy: py(fy(p.y)).toFixed(1),
                                r: p.style === "best" ? 6 : 4.5, "stroke-width": 1.8, fill,
                                "fill-opacity": 0.8, stroke: ring, "data-style": p.style,
                                cursor: p.onclick ? "pointer" : "default" },
                        svg("title", {}, p.title));
    if (p.onclick) dot.addEventListener("click", p.onclick);
    chart.append(dot);
  }
  container.replaceChildren(chart);
}

// The integer powers of ten within [lo, hi] (logs), or lo and hi when no power is inside.
function decades(lo, hi) {
  const out = [];
  for (let v = Math.ceil(lo - 1e-9); v <= hi + 1e-9; v++) out.push(v);
  return out.length >= 2 ? out : [lo + (hi - lo) * 0.1, lo + (hi - lo) * 0.9];
}
