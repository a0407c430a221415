// The views: runs, one run (live), one data set, a new run, sweeps and one sweep (live). Each
// returns a function that stops what it started (streams, timers) when the view is left.
import { api, ApiError, el, navigate } from "./app.js";
import { follow } from "./sse.js";
import * as charts from "./charts.js";

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
// pending: a sweep's child held until the sweep may run one more (service/sweeps.py)
const STATUSES = ["pending", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
const POLL_MS = 2000;

function badge(status) {
  return el(`span.badge.${status}`, {}, status);
}

function shortId(id) {
  return id.slice(0, 8);
}

function describeNetwork(network) {
  return network.layers.map((l) => (l.units ? `${l.units} ${l.activation || ""}`.trim()
    : l.filters ? `conv ${l.filters}` : l.type)).join(" → ");
}

function problemText(error) {
  if (!(error instanceof ApiError)) return String(error);
  const fields = (error.problem.errors || []).map((e) => `${e.path || "body"}: ${e.message}`);
  return [error.message, ...fields].join("\n");
}

function card(title, chart, ...extra) {
  return el("section.card", { "aria-label": title }, el("h2", {}, title), ...extra, chart);
}

// ---- runs --------------------------------------------------------------------------------------

export function runsPage(main) {
  const params = new URLSearchParams(location.search);
  const status = el("select", { "aria-label": "status", onchange: refresh },
                    el("option", { value: "" }, "any status"),
                    STATUSES.map((s) => el("option", { value: s }, s)));
  status.value = params.get("status") || "";
  const dataset = params.get("dataset_id");
  const sweep = params.get("sweep_id");
  const body = el("tbody");
  main.replaceChildren(
    el("h1", {}, "Runs"),
    el("div.toolbar", {}, status,
       dataset ? el("span", {}, "data set ", el("a", { href: `/datasets/${dataset}` }, shortId(dataset)),
                    " ", el("a", { href: "/" }, "(all)")) : null,
       sweep ? el("span", {}, "sweep ", el("a", { href: `/sweeps/${sweep}` }, shortId(sweep)),
                  " ", el("a", { href: "/" }, "(all)")) : null,
       el("a", { href: "/new" }, el("button.primary", { type: "button", tabindex: -1 }, "New run"))),
    el("table", {}, el("thead", {}, el("tr", {}, ["run", "status", "progress", "network",
                                                   "data set", "sweep", "created"].map((h) => el("th", {}, h)))),
       body));
  let timer;
  async function refresh() {
    clearTimeout(timer);
    const query = new URLSearchParams({ limit: "50" });
    if (status.value) query.set("status", status.value);
    if (dataset) query.set("dataset_id", dataset);
    if (sweep) query.set("sweep_id", sweep);
    try {
      const page = await api(`/v1/runs?${query}`);
      body.replaceChildren(...page.items.map((run) => el("tr", {},
        el("td", {}, el("a", { href: `/runs/${run.id}` }, shortId(run.id))),
        el("td", {}, badge(run.status)),
        el("td", {}, el("progress", { max: 1, value: run.progress }),
           ` ${run.epochs_completed}/${run.epochs_total}`),
        el("td", {}, describeNetwork(run.network)),
        el("td", {}, el("a", { href: `/datasets/${run.dataset_id}` }, shortId(run.dataset_id))),
        el("td", {}, run.sweep_id ? el("a", { href: `/sweeps/${run.sweep_id}` }, shortId(run.sweep_id))
          : ""),
        el("td", {}, new Date(run.created_at).toLocaleString()))));
      if (!page.items.length) {
        body.replaceChildren(el("tr", {}, el("td", { colspan: 7 }, "No runs yet: ",
                                               el("a", { href: "/new" }, "start one"), ".")));
      }
    } catch (error) {
      body.replaceChildren(el("tr", {}, el("td.errors", { colspan: 7 }, problemText(error))));
    }
    timer = setTimeout(refresh, POLL_MS);
  }
  refresh();
  return () => clearTimeout(timer);
}

// ---- one run -----------------------------------------------------------------------------------

export function runPage(main, runId) {
  const state = { run: null, dataset: null, train: [], pretrain: [], samples: null };
  const header = el("div");
  const log = el("input", { type: "checkbox", id: "log", onchange: () => draw() });
  const box = {
    loss: el("div", { "data-chart": "loss" }),
    accuracy: el("div", { "data-chart": "accuracy" }),
    gradients: el("div", { "data-chart": "gradients" }),
    weights: el("div", { "data-chart": "weights" }),
    activations: el("div", { "data-chart": "activations" }),
    boundary: el("div", { "data-chart": "boundary" }, el("p.muted", {}, "waiting for weights…")),
    network: el("div", { "data-chart": "network" }, el("p.muted", {}, "waiting for weights…")),
    time: el("div", { "data-chart": "time" }),
    filters: el("div", { "data-chart": "filters" }),
    pretrain: el("div", { "data-chart": "pretrain" }),
  };
  const cards = {
    boundary: card("Decision boundary", box.boundary),
    network: card("Network", box.network),
    time: card("Gradient norm through time (last epoch)", box.time),
    filters: card("Filters", box.filters),
    pretrain: card("Pretraining: reconstruction loss per layer", box.pretrain),
  };
  Object.values(cards).forEach((c) => { c.hidden = true; });
  main.replaceChildren(header, el("div.grid", {},
    card("Loss", box.loss, el("label.inline", { for: "log" }, log, "log scale")),
    card("Accuracy", box.accuracy),
    cards.boundary, cards.network,
    el("section.card.wide", { "aria-label": "gradients" },
       el("h2", {}, "Gradient by layer and epoch: log10 mean |dL/dW|"), box.gradients),
    card("Weight norms ||W||", box.weights),
    card("Activations: saturated (sigmoid, tanh) or dead (ReLU) fraction", box.activations),
    cards.pretrain, cards.time, cards.filters));

  let pending = false;
  let stopped = false;
  function schedule() {
    if (pending || stopped) return;
    pending = true;
    setTimeout(() => requestAnimationFrame(() => { pending = false; draw(); }), 200);
  }

  function drawHeader() {
    const run = state.run;
    if (!run) return;
    const cancel = el("button", {
      type: "button", disabled: FINISHED.has(run.status) || run.status === "cancelling",
      onclick: () => api(`/v1/runs/${run.id}/cancel`, { method: "POST" }).catch(() => {}),
    }, "Cancel");
    header.replaceChildren(
      el("h1", {}, `Run ${shortId(run.id)} `, badge(run.status)),
      el("div.facts", {},
         el("span", {}, el("b", {}, `${run.epochs_completed}/${run.epochs_total}`), " epochs ",
            el("progress", { max: 1, value: run.progress })),
         el("span", {}, "network ", el("b", {}, describeNetwork(run.network))),
         el("span", {}, "loss ", el("b", {}, run.training.loss), ", ",
            el("b", {}, `${run.training.optimizer.type} ${run.training.optimizer.learning_rate ?? ""}`),
            `, batch ${run.training.batch_size ?? "all"}`),
         el("span", {}, "data ", el("a", { href: `/datasets/${run.dataset_id}` }, shortId(run.dataset_id))),
         run.error ? el("span.errors", {}, `${run.error.code}: ${run.error.message}`) : null,
         cancel));
  }

  function series(rows, field, name, c, dashed) {
    return { name, color: c, dashed, points: rows.map((r) => [r.epoch, r[field]]) };
  }

  // Layers with statistics, and each one's rows in epoch order.
  function byLayer() {
    const layers = new Map();
    for (const row of state.train) {
      for (const s of row.layer_stats || []) {
        if (!layers.has(s.layer)) layers.set(s.layer, { name: s.name, rows: [] });
        layers.get(s.layer).rows.push(s);
      }
    }
    return [...layers.entries()].sort((a, b) => a[0] - b[0]);
  }

  function draw() {
    drawHeader();
    const rows = state.train;
    charts.lineChart(box.loss, { log: log.checked, yLabel: "loss", series: [
      series(rows, "train_loss", "train", charts.BLUE), series(rows, "val_loss", "validation", charts.ORANGE, true)] });
    charts.lineChart(box.accuracy, { yLabel: "accuracy", yMin: 0, yMax: 1, series: [
      series(rows, "train_accuracy", "train", charts.BLUE),
      series(rows, "val_accuracy", "validation", charts.ORANGE, true)] });
    const layers = byLayer();
    const epochs = rows.filter((r) => (r.layer_stats || []).length).map((r) => r.epoch);
    const step = Math.max(1, Math.ceil(epochs.length / 400));
    const columns = epochs.filter((_, i) => i % step === 0 || i === epochs.length - 1);
    charts.heatmap(box.gradients, {
      title: "log10 mean |dL/dW|",
      rows: layers.map(([, l]) => l.name),
      columns,
      values: layers.map(([, l]) => {
        const at = new Map(l.rows.map((s) => [s.epoch, s.grad_mean_abs]));
        return columns.map((e) => (at.get(e) > 0 ? Math.log10(at.get(e)) : null));
      }),
    });
    charts.lineChart(box.weights, { yLabel: "||W||", series: layers.map(([, l], k) => ({
      name: l.name, color: charts.color(k), points: l.rows.map((s) => [s.epoch, s.weight_norm]) })) });
    charts.lineChart(box.activations, { yLabel: "fraction", yMin: 0, yMax: 1, series: layers.map(([, l], k) => {
      const field = l.rows.some((s) => s.act_dead_fraction !== null) ? "act_dead_fraction"
        : "act_saturated_fraction";
      return { name: `${l.name} ${field === "act_dead_fraction" ? "dead" : "saturated"}`,
               color: charts.color(k), points: l.rows.map((s) => [s.epoch, s[field]]) };
    }) });
    if (state.pretrain.length) {
      cards.pretrain.hidden = false;
      const per = new Map();
      for (const r of state.pretrain) {
        if (!per.has(r.layer)) per.set(r.layer, []);
        per.get(r.layer).push(r);
      }
      charts.lineChart(box.pretrain, { log: true, yLabel: "reconstruction loss",
        xLabel: "pretraining epoch", series: [...per.entries()].map(([layer, rs], k) => ({
          name: `layer ${layer}`, color: charts.color(k), points: rs.map((r) => [r.epoch, r.train_loss]) })) });
    }
    const recurrent = layers.filter(([, l]) => l.rows.at(-1)?.grad_norm_by_time);
    if (recurrent.length) {
      cards.time.hidden = false;
      charts.lineChart(box.time, { log: true, xLabel: "time step t", yLabel: "||dL/dh_t||",
        series: recurrent.map(([, l], k) => ({ name: l.name, color: charts.color(k),
          points: l.rows.at(-1).grad_norm_by_time.map((v, t) => [t + 1, v]) })) });
    }
  }

  function onEvents(events) {
    for (const { event, data } of events) {
      if (event === "status") state.run = data;
      else if (event === "epoch") state[data.phase].push(data);
      else if (event === "rewind") {
        // drop what the resumed run trains again: rows after the one kept
        if (data.phase === "pretrain") state.train = [];
        state[data.phase] = state[data.phase].filter((r) => r.epoch <= data.epoch);
      }
    }
    schedule();
  }

  let timer;
  async function refreshWeights() {
    clearTimeout(timer);
    const run = state.run;
    if (!run || stopped) return;
    const dense = run.network.layers.every((l) => l.type === "dense");
    try {
      if (state.dataset?.input_shape.length === 1 && state.dataset.input_shape[0] === 2) {
        cards.boundary.hidden = false;
        if (!state.samples) {
          const page = await api(`/v1/datasets/${run.dataset_id}/samples?limit=1000`);
          const classes = state.dataset.classes || [];
          state.samples = page.items.map((s) => ({ x: s.input[0], y: s.input[1], index: s.index,
                                                   cls: Math.max(0, classes.indexOf(s.target)) }));
        }
        const grid = await api(`/v1/runs/${run.id}/boundary?size=50`);
        const validation = new Set(grid.validation);
        charts.boundary(box.boundary, grid, state.samples.map((p) => ({ ...p, validation: validation.has(p.index) })));
      }
      if (dense || run.network.layers.some((l) => l.type === "conv2d")) {
        const weights = await api(`/v1/runs/${run.id}/weights?which=latest`);
        if (dense) {
          cards.network.hidden = false;
          const matrices = weights.layers.map((l) => l.W);
          charts.network(box.network, {
            sizes: [matrices[0].length, ...matrices.map((m) => m[0].length)],
            labels: ["inputs", ...run.network.layers.map((l) => `${l.units} ${l.activation}`)],
            weights: matrices });
        }
        const conv = weights.layers.find((l, i) => run.network.layers[i].type === "conv2d");
        if (conv) {
          cards.filters.hidden = false;
          charts.filters(box.filters, conv.W);
        }
      }
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) console.warn(error);
    }
    if (!FINISHED.has(state.run.status)) timer = setTimeout(refreshWeights, 3000);
  }

  const stopStream = follow(`/v1/runs/${runId}/events?include=layer_stats&max_points=400`,
                            onEvents, { onEnd: () => { refreshWeights(); schedule(); } });
  (async () => {
    try {
      state.run = await api(`/v1/runs/${runId}`);
      state.dataset = await api(`/v1/datasets/${state.run.dataset_id}`);
      drawHeader();
      refreshWeights();
    } catch (error) {
      header.replaceChildren(el("p.errors", {}, problemText(error)));
    }
  })();
  return () => { stopped = true; stopStream(); clearTimeout(timer); };
}

// ---- one data set ------------------------------------------------------------------------------

export function datasetPage(main, datasetId) {
  (async () => {
    try {
      const d = await api(`/v1/datasets/${datasetId}`);
      const page = await api(`/v1/datasets/${datasetId}/samples?limit=1000`);
      const classes = d.classes || [];
      const counts = classes.map((c) => ({ name: String(c), value: 0 }));
      for (const s of page.items) {
        const k = classes.indexOf(s.target);
        if (k >= 0) counts[k].value += 1;
      }
      const view = el("div", { "data-chart": "data" });
      if (d.input_shape.length === 1 && d.input_shape[0] === 2) {
        const xs = page.items.map((s) => s.input[0]), ys = page.items.map((s) => s.input[1]);
        const pad = (v) => [Math.min(...v) - (Math.max(...v) - Math.min(...v)) * 0.05,
                            Math.max(...v) + (Math.max(...v) - Math.min(...v)) * 0.05];
        charts.boundary(view, { size: 1, values: null, x: pad(xs), y: pad(ys),
                                classes: d.classes }, page.items.map((s) => ({
          x: s.input[0], y: s.input[1], cls: Math.max(0, classes.indexOf(s.target)) })));
      } else if (d.input_shape.length === 2) {
        view.className = "images";
        view.replaceChildren(...page.items.slice(0, 60).map((s) => {
          const img = charts.image(s.input, 48);
          img.title = `#${s.index}: ${s.target}`;
          return img;
        }));
      } else {
        view.append(el("p.muted", {}, `samples of shape [${d.input_shape}]: no picture`));
      }
      const countBox = el("div", { "data-chart": "classes" });
      main.replaceChildren(
        el("h1", {}, `Data set ${d.name}`),
        el("div.facts", {}, el("span", {}, el("b", {}, d.n_samples), " samples"),
           el("span", {}, "shape ", el("b", {}, `[${d.input_shape}]`)),
           el("span", {}, el("b", {}, d.task)),
           el("a", { href: `/?dataset_id=${d.id}` }, "its runs")),
        el("div.grid", {}, card(`The first ${page.items.length} samples`, view),
           classes.length ? card(`Classes in the first ${page.items.length} samples`, countBox) : null));
      if (classes.length) charts.bars(countBox, counts, "class counts");
    } catch (error) {
      main.replaceChildren(el("p.errors", {}, problemText(error)));
    }
  })();
  return () => {};
}

// ---- sweeps ------------------------------------------------------------------------------------

// A parameter's value as a short label: a number, a word, or a list of layers ("6 × 4 relu
// → 1 sigmoid", when a sweep varies the depth by listing whole networks).
function valueLabel(v) {
  if (typeof v === "number") return String(Number(v.toPrecision(4)));
  if (typeof v === "string" || typeof v === "boolean") return String(v);
  if (Array.isArray(v) && v.every((l) => l && typeof l === "object" && l.type)) {
    const parts = [];
    for (const layer of v) {
      const name = layer.units ? `${layer.units} ${layer.activation || ""}`.trim() : layer.type;
      const last = parts.at(-1);
      if (last && last.name === name) last.n += 1;
      else parts.push({ name, n: 1 });
    }
    return parts.map((p) => (p.n > 1 ? `${p.n} × ${p.name}` : p.name)).join(" → ");
  }
  return JSON.stringify(v);
}

function metricText(v) {
  return v === null || v === undefined ? "–" : String(Number(v.toPrecision(4)));
}

// How to draw a parameter on an axis, from what the sweep asked: numbers on a log axis when
// they spread over a decade or more (learning rates) or are drawn log-uniformly, on a linear
// one otherwise, with a grid's values as the ticks; anything else as categories in the
// order given. `label` names a value (in the leaderboard too).
function axisOf(spec) {
  const label = labeller(spec);
  const listed = Array.isArray(spec) ? spec : spec.choice;
  if (!listed) {  // a distribution: uniform, log_uniform or int_uniform over [low, high]
    return { log: "log_uniform" in spec, numeric: true, label };
  }
  if (listed.every((v) => typeof v === "number")) {
    const marks = [...new Set(listed)].sort((a, b) => a - b);
    const log = marks[0] > 0 && marks.at(-1) / marks[0] >= 10;
    return { log, numeric: true, marks: marks.length <= 8 ? marks : undefined, label };
  }
  return { numeric: false, categories: [...new Set(listed.map(label))], label };
}

// Each value's label for a parameter: valueLabel's, but networks that all end in the same
// output layer are named by their hidden layers alone (the part that differs).
function labeller(spec) {
  const listed = Array.isArray(spec) ? spec : spec.choice || [];
  const networks = listed.length && listed.every((v) => Array.isArray(v) && v.length > 1 &&
                                                   v.every((l) => l && typeof l === "object"));
  const same = networks && new Set(listed.map((v) => JSON.stringify(v.at(-1)))).size === 1;
  return same ? (v) => (Array.isArray(v) ? valueLabel(v.slice(0, -1)) : valueLabel(v)) : valueLabel;
}

// A child's place in the pictures: the best (green ring), succeeded (blue), stopped early by
// ASHA (orange ring), still running (blue ring), else (grey ring).
function childStyle(item, sweep) {
  if (item.run_id === sweep.best_run_id) return "best";
  if (item.status === "succeeded") return "done";
  if (item.error?.code === "stopped_early") return "stopped";
  return FINISHED.has(item.status) ? "other" : "running";
}

export function sweepsPage(main) {
  const body = el("tbody");
  main.replaceChildren(
    el("h1", {}, "Sweeps"),
    el("p.muted", {}, "Grid and random searches (POST /v1/sweeps); each child is a run."),
    el("table", {}, el("thead", {}, el("tr", {}, ["sweep", "status", "children", "parameters",
                                                   "metric", "best", "created"].map((h) => el("th", {}, h)))),
       body));
  let timer;
  async function refresh() {
    clearTimeout(timer);
    try {
      const page = await api("/v1/sweeps?limit=50");
      body.replaceChildren(...page.items.map((s) => {
        const done = ["succeeded", "failed", "cancelled"].reduce((n, k) => n + s.counts[k], 0);
        return el("tr", {},
          el("td", {}, el("a", { href: `/sweeps/${s.id}` }, s.name || shortId(s.id))),
          el("td", {}, badge(s.status)),
          el("td", {}, el("progress", { max: s.runs_total, value: done }), ` ${done}/${s.runs_total}`),
          el("td", {}, `${s.method}: ${Object.keys(s.parameters).join(", ")}`),
          el("td", {}, `${s.metric} (${s.goal})`),
          el("td", {}, s.best_run_id ? el("a", { href: `/runs/${s.best_run_id}` },
                                          metricText(s.best_metric)) : "–"),
          el("td", {}, new Date(s.created_at).toLocaleString()));
      }));
      if (!page.items.length) {
        body.replaceChildren(el("tr", {}, el("td", { colspan: 7 },
          "No sweeps yet: POST /v1/sweeps (the README has examples).")));
      }
    } catch (error) {
      body.replaceChildren(el("tr", {}, el("td.errors", { colspan: 7 }, problemText(error))));
    }
    timer = setTimeout(refresh, POLL_MS);
  }
  refresh();
  return () => clearTimeout(timer);
}

const BOARD_PAGE = 10;  // leaderboard rows a page

export function sweepPage(main, sweepId) {
  const header = el("div");
  const pictures = el("div.grid.sweep");
  const key = el("div.legend");
  const rows = el("tbody");
  const head = el("thead");
  const pager = el("div.toolbar");
  main.replaceChildren(header, pictures, key, el("section.card.wide.board", { "aria-label": "leaderboard" },
    el("h2", {}, "Leaderboard"), el("table", {}, head, rows), pager));
  const cursors = [null];  // the cursor of each leaderboard page seen, the first page's null
  let at = 0;  // the page shown
  let timer;
  let stopped = false;
  let sweep = null;
  let latest = 0;  // a refresh's number: only the latest draws and polls again

  function drawHeader() {
    const c = sweep.counts;
    const done = c.succeeded + c.failed + c.cancelled;
    const cancel = el("button", {
      type: "button", disabled: FINISHED.has(sweep.status) || sweep.cancel_requested,
      onclick: () => api(`/v1/sweeps/${sweep.id}/cancel`, { method: "POST" }).then(refresh)
        .catch(() => {}),
    }, "Cancel sweep");
    const es = sweep.early_stopping;
    header.replaceChildren(
      el("h1", {}, `Sweep ${sweep.name || shortId(sweep.id)} `, badge(sweep.status)),
      el("div.facts", {},
         el("span", {}, el("b", {}, `${done}/${sweep.runs_total}`), " children finished ",
            el("progress", { max: sweep.runs_total, value: done })),
         el("span.counts", { "data-stopped": c.stopped_early }, STATUSES.filter((s) => c[s]).map((s) => el("span", {},
           el("b", {}, c[s]), " ", s, " ")),
            c.stopped_early ? el("span", {}, "(", el("b", {}, c.stopped_early), " stopped early)") : null),
         el("span", {}, el("b", {}, sweep.method), `, ${sweep.max_concurrent} at a time`),
         el("span", {}, "metric ", el("b", {}, sweep.metric), ` (${sweep.goal})`),
         es ? el("span", {}, "ASHA from epoch ", el("b", {}, es.min_epochs), ", keeps 1/",
                 el("b", {}, es.reduction_factor)) : null,
         el("span", {}, "best ", sweep.best_run_id
           ? el("a", { href: `/runs/${sweep.best_run_id}`, "data-best": sweep.best_run_id },
                `${shortId(sweep.best_run_id)}: ${metricText(sweep.best_metric)}`)
           : el("b", {}, "none yet")),
         el("span", {}, "data ", el("a", { href: `/datasets/${sweep.dataset_id}` }, shortId(sweep.dataset_id))),
         el("a", { href: `/?sweep_id=${sweep.id}` }, "its runs"),
         cancel));
  }

  function drawPictures(items) {
    const names = Object.keys(sweep.parameters);
    const loss = sweep.metric.endsWith("loss");
    const ys = items.map((i) => i.metric).filter((v) => v !== null && v > 0);
    const logY = loss && ys.length > 1 && Math.max(...ys) / Math.min(...ys) >= 30;
    if (pictures.children.length !== names.length) {
      pictures.replaceChildren(...names.map((name) => card(`${sweep.metric} by ${name}`,
        el("div", { "data-chart": "parameter", "data-parameter": name }))));
    }
    const axes = names.map((name) => axisOf(sweep.parameters[name]));
    names.forEach((name, k) => {
      const axis = axes[k];
      charts.scatter(pictures.children[k].querySelector("[data-chart]"), {
        xLabel: name.split(".").at(-1), yLabel: sweep.metric, logY, log: axis.log,
        marks: axis.marks, categories: axis.categories,
        points: items.map((item) => {
          const value = item.parameters[name];
          const style = childStyle(item, sweep);
          return {
            x: axis.numeric ? value : axis.label(value), y: item.metric, style,
            title: `#${item.rank} ${shortId(item.run_id)} (${item.status}): ` +
              `${names.map((n, j) => `${n} = ${axes[j].label(item.parameters[n])}`).join(", ")}; ` +
              `${sweep.metric} ${metricText(item.metric)}`,
            onclick: () => navigate(`/runs/${item.run_id}`),
          };
        }),
      });
    });
    key.replaceChildren(...[["best", "best"], ["done", "succeeded"], ["stopped", "stopped early (ASHA)"],
      ["running", "running: its metric so far"], ["other", "failed or cancelled"]].map(([style, text]) =>
      el("span", {}, el(`span.dot.${style}`), text)));
  }

  function drawBoard(page) {
    const names = Object.keys(sweep.parameters);
    const labels = names.map((name) => axisOf(sweep.parameters[name]).label);
    head.replaceChildren(el("tr", {}, ["#", "run", "status", ...names, sweep.metric, "epochs"].map(
      (h) => el("th", {}, h))));
    rows.replaceChildren(...page.items.map((item) => el("tr", { "data-run": item.run_id },
      el("td", {}, item.rank),
      el("td", {}, el("a", { href: `/runs/${item.run_id}` }, shortId(item.run_id))),
      el("td", {}, badge(item.status), item.error?.code === "stopped_early"
        ? el("span.muted", { title: item.error.message }, " stopped early") : null),
      names.map((n, j) => el("td", {}, labels[j](item.parameters[n]))),
      el("td", {}, el("b", {}, metricText(item.metric))),
      el("td", {}, item.epochs_completed))));
    if (page.next_cursor) cursors[at + 1] = page.next_cursor;
    pager.replaceChildren(
      el("button", { type: "button", disabled: at === 0, onclick: () => { at -= 1; refresh(); } },
         "Previous"),
      el("span.muted", {}, `page ${at + 1} of ${Math.max(1, Math.ceil(sweep.runs_total / BOARD_PAGE))}`),
      el("button", { type: "button", disabled: !page.next_cursor,
                     onclick: () => { at += 1; refresh(); } }, "Next"));
  }

  // Every child (for the pictures): the leaderboard's pages, followed to the end.
  async function everyChild() {
    const items = [];
    let cursor = null;
    do {
      const page = await api(`/v1/sweeps/${sweepId}/leaderboard?limit=100` +
                             (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""));
      items.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor);
    return items;
  }

  async function refresh() {
    clearTimeout(timer);
    const mine = ++latest;
    try {
      const now = await api(`/v1/sweeps/${sweepId}`);
      const cursor = cursors[at];
      const [items, page] = await Promise.all([everyChild(), api(
        `/v1/sweeps/${sweepId}/leaderboard?limit=${BOARD_PAGE}` +
        (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""))]);
      if (stopped || mine !== latest) return;
      sweep = now;
      drawHeader();
      drawPictures(items);
      drawBoard(page);
    } catch (error) {
      if (stopped || mine !== latest) return;
      if (error instanceof ApiError && error.status === 422 && at > 0) {
        at = 0;  // the page's cursor names a run that is gone: back to the first page
      } else header.replaceChildren(el("p.errors", {}, problemText(error)));
    }
    // live until the sweep is settled: its status derives from its children's rows
    if (!stopped && !(sweep && FINISHED.has(sweep.status))) timer = setTimeout(refresh, POLL_MS);
  }
  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

// ---- a new run ---------------------------------------------------------------------------------

// The chapter's two demos and their variants (TensorFlow Playground settings).
const PRESETS = {
  "XOR · 1 × 4 sigmoid": { kind: "xor", noise: 0, hidden: 1, units: 4, activation: "sigmoid",
                           lr: 0.5, epochs: 300, pretrain: 0 },
  "XOR · 1 × 4 ReLU": { kind: "xor", noise: 0, hidden: 1, units: 4, activation: "relu",
                        lr: 0.1, epochs: 300, pretrain: 0 },
  "Gaussian 30 · 6 × 4 sigmoid": { kind: "gaussian", noise: 30, hidden: 6, units: 4,
                                   activation: "sigmoid", lr: 0.1, epochs: 50, pretrain: 0 },
  "Gaussian 30 · 6 × 4 ReLU": { kind: "gaussian", noise: 30, hidden: 6, units: 4,
                                activation: "relu", lr: 0.1, epochs: 50, pretrain: 0 },
  "Gaussian 30 · 6 × 4 sigmoid, pretrained": { kind: "gaussian", noise: 30, hidden: 6, units: 4,
                                               activation: "sigmoid", lr: 0.1, epochs: 50, pretrain: 5 },
};

export function newRunPage(main) {
  const fields = {};
  function field(label, name, path, input) {
    input.id = `f-${name}`;
    input.name = name;
    input.dataset.path = path;
    fields[name] = input;
    const error = el("span.field-error", { id: `e-${name}`, role: "alert" });
    input.setAttribute("aria-describedby", error.id);
    return el("label", { for: input.id }, label, input, error);
  }
  const number = (attrs) => el("input", { type: "number", ...attrs });
  const select = (options) => el("select", {}, options.map((o) => el("option", { value: o }, o)));
  const general = el("pre.errors", { role: "alert" });
  const submit = el("button.primary", { type: "submit" }, "Train");
  const form = el("form.run", { novalidate: true, onsubmit: (e) => { e.preventDefault(); start(); } },
    el("fieldset", {}, el("legend", {}, "Data (a generator)"),
       field("kind", "kind", "generator.kind", select(["xor", "gaussian", "circle", "spiral"])),
       field("noise (0 to 50)", "noise", "generator.noise", number({ step: "any" })),
       field("samples", "n_samples", "generator.n_samples", number({ value: 500 })),
       field("seed", "data_seed", "generator.seed", number({ value: 1 }))),
    el("fieldset", {}, el("legend", {}, "Network"),
       field("hidden layers", "hidden", "network.layers", number({ min: 0 })),
       field("units per layer", "units", "network.layers[0].units", number({ min: 1 })),
       field("activation", "activation", "network.layers[0].activation",
             select(["sigmoid", "tanh", "relu", "linear"]))),
    el("fieldset", {}, el("legend", {}, "Training"),
       field("loss", "loss", "training.loss", select(["squared_error", "cross_entropy"])),
       field("optimizer", "optimizer", "training.optimizer.type", select(["sgd", "adam"])),
       field("learning rate", "lr", "training.optimizer.learning_rate", number({ step: "any" })),
       field("batch size", "batch_size", "training.batch_size", number({ value: 1 })),
       field("epochs", "epochs", "training.epochs", number({})),
       field("validation fraction", "validation", "training.validation_fraction",
             number({ step: "any", value: 0.2 })),
       field("pretraining epochs per layer (0: none)", "pretrain", "training.pretrain.epochs",
             number({ value: 0 }))),
    el("div", {}, submit, general));

  function apply(p) {
    fields.kind.value = p.kind; fields.noise.value = p.noise; fields.hidden.value = p.hidden;
    fields.units.value = p.units; fields.activation.value = p.activation; fields.lr.value = p.lr;
    fields.epochs.value = p.epochs; fields.pretrain.value = p.pretrain;
    fields.loss.value = "squared_error"; fields.optimizer.value = "sgd";
  }
  const presets = el("div.presets", { role: "group", "aria-label": "demos" },
    Object.entries(PRESETS).map(([name, p]) => el("button", { type: "button",
                                                              onclick: () => apply(p) }, name)));
  apply(PRESETS["XOR · 1 × 4 sigmoid"]);
  main.replaceChildren(el("h1", {}, "New run"),
                       el("p.muted", {}, "The chapter's demos, ready to train:"), presets, form);

  const num = (name) => (fields[name].value === "" ? null : Number(fields[name].value));

  function showErrors(error, prefix = "") {
    const unplaced = [];
    for (const e of error.problem.errors || []) {
      const path = prefix + e.path;
      // network.layers[3].units belongs to the units field, whichever hidden layer it is
      const general = path.replace(/^network\.layers\[\d+\]\./, "network.layers[0].");
      const input = Object.values(fields).find((f) => f.dataset.path === general)
        || Object.values(fields).find((f) => f.dataset.path === path.replace(/\[\d+\]$/, ""));
      if (input) {
        input.setAttribute("aria-invalid", "true");
        document.getElementById(`e-${input.name}`).textContent = e.message;
      } else unplaced.push(`${path || "body"}: ${e.message}`);
    }
    general.textContent = unplaced.length || !error.problem.errors ? [error.message, ...unplaced].join("\n") : "";
    const first = form.querySelector('[aria-invalid="true"]');
    if (first) first.focus();
  }

  async function start() {
    for (const f of Object.values(fields)) {
      f.removeAttribute("aria-invalid");
      document.getElementById(`e-${f.name}`).textContent = "";
    }
    general.textContent = "";
    submit.disabled = true;
    try {
      let dataset;
      try {
        dataset = await api("/v1/datasets", { method: "POST", body: {
          name: `${fields.kind.value} noise ${fields.noise.value}`, generator: {
            kind: fields.kind.value, noise: num("noise"), n_samples: num("n_samples"),
            seed: num("data_seed") } } });
      } catch (error) {
        if (error instanceof ApiError) return showErrors(error);
        throw error;
      }
      const hidden = Array.from({ length: num("hidden") ?? 0 }, () => ({
        type: "dense", units: num("units"), activation: fields.activation.value }));
      const classes = (dataset.classes || []).length;
      const output = classes > 2 ? { type: "dense", units: classes, activation: "softmax" }
        : { type: "dense", units: 1, activation: "sigmoid" };
      const training = { loss: classes > 2 ? "cross_entropy" : fields.loss.value,
        optimizer: { type: fields.optimizer.value, learning_rate: num("lr") },
        batch_size: num("batch_size"), epochs: num("epochs"), seed: 1,
        validation_fraction: num("validation") };
      if (num("pretrain")) training.pretrain = { epochs: num("pretrain") };
      try {
        const run = await api("/v1/runs", { method: "POST", body: {
          dataset_id: dataset.id, network: { layers: [...hidden, output] }, training } });
        navigate(`/runs/${run.id}`);
      } catch (error) {
        if (error instanceof ApiError) return showErrors(error);
        throw error;
      }
    } catch (error) {
      general.textContent = String(error);
    } finally {
      submit.disabled = false;
    }
  }
  return () => {};
}
