// The views: runs, one run (live), one data set, a new run (sweeps.js has the sweeps'). Each
// returns a function that stops what it started (streams, timers) when the view is left.
import { api, ApiError, el, navigate } from "./app.js";
import { follow } from "./sse.js";
import * as charts from "./charts.js";

export const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
// pending: a sweep's child held until the sweep may run one more (service/sweeps.py)
export const STATUSES = ["pending", "queued", "running", "cancelling", "succeeded", "failed",
                         "cancelled"];
export const POLL_MS = 2000;  // how often the lists and a sweep are read again

export function badge(status) {
  return el(`span.badge.${status}`, {}, status);
}

export function shortId(id) {
  return id.slice(0, 8);
}

// Every layer of a network in the engine's order: its `layers`, or an encoder-decoder
// network's encoder layers, then its decoder layers.
function layersOf(network) {
  return network.layers || [...network.encoder.layers, ...network.decoder.layers];
}

function describeStack(layers) {
  return layers.map((l) => (l.units ? `${l.units} ${l.activation || ""}`.trim()
    : l.filters ? `conv ${l.filters}` : l.type)).join(" → ");
}

function describeNetwork(network) {
  if (network.layers) return describeStack(network.layers);
  return `encoder ${describeStack(network.encoder.layers)} | decoder ${describeStack(network.decoder.layers)}`;
}

export function problemText(error) {
  if (!(error instanceof ApiError)) return String(error);
  const fields = (error.problem.errors || []).map((e) => `${e.path || "body"}: ${e.message}`);
  return [error.message, ...fields].join("\n");
}

export function card(title, chart, ...extra) {
  return el("section.card", { "aria-label": title }, el("h2", {}, title), ...extra, chart);
}

// ---- runs --------------------------------------------------------------------------------------

export function runsPage(main) {
  const params = new URLSearchParams(location.search);
  const status = el("select", { "aria-label": "status", onchange: () => list.refresh() },
                    el("option", { value: "" }, "any status"),
                    STATUSES.map((s) => el("option", { value: s }, s)));
  status.value = params.get("status") || "";
  const dataset = params.get("dataset_id");
  const sweep = params.get("sweep_id");  // a sweep's children (the sweep page links here)
  function path() {
    const query = new URLSearchParams({ limit: "50" });
    if (status.value) query.set("status", status.value);
    if (dataset) query.set("dataset_id", dataset);
    if (sweep) query.set("sweep_id", sweep);
    return `/v1/runs?${query}`;
  }
  const list = polledTable(["run", "status", "progress", "network", "data set", "sweep", "created"],
    path, (run) => el("tr", {},
      el("td", {}, el("a", { href: `/runs/${run.id}` }, shortId(run.id))),
      el("td", {}, badge(run.status)),
      el("td", {}, el("progress", { max: 1, value: run.progress }),
         ` ${run.epochs_completed}/${run.epochs_total}`),
      el("td", {}, describeNetwork(run.network)),
      el("td", {}, el("a", { href: `/datasets/${run.dataset_id}` }, shortId(run.dataset_id))),
      el("td", {}, run.sweep_id ? el("a", { href: `/sweeps/${run.sweep_id}` }, shortId(run.sweep_id))
        : ""),
      el("td", {}, new Date(run.created_at).toLocaleString())),
    "No runs yet: ", el("a", { href: "/new" }, "start one"), ".");
  main.replaceChildren(
    el("h1", {}, "Runs"),
    el("div.toolbar", {}, status,
       dataset ? el("span", {}, "data set ", el("a", { href: `/datasets/${dataset}` }, shortId(dataset)),
                    " ", el("a", { href: "/" }, "(all)")) : null,
       sweep ? el("span", {}, "sweep ", el("a", { href: `/sweeps/${sweep}` }, shortId(sweep)),
                  " ", el("a", { href: "/" }, "(all)")) : null,
       el("a", { href: "/new" }, el("button.primary", { type: "button", tabindex: -1 }, "New run"))),
    list.table);
  return list.stop;
}

// A table of a list read again every POLL_MS: `path()` the list's page to read, `row(item)`
// an item's row, `empty` what an empty list says. Its table, refresh, and what stops it.
export function polledTable(headers, path, row, ...empty) {
  const body = el("tbody");
  const table = el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
                   body);
  let timer;
  async function refresh() {
    clearTimeout(timer);
    try {
      const page = await api(path());
      body.replaceChildren(...page.items.map(row));
      if (!page.items.length) {
        body.replaceChildren(el("tr", {}, el("td", { colspan: headers.length }, ...empty)));
      }
    } catch (error) {
      body.replaceChildren(el("tr", {}, el("td.errors", { colspan: headers.length },
                                           problemText(error))));
    }
    timer = setTimeout(refresh, POLL_MS);
  }
  refresh();
  return { table, refresh, stop: () => clearTimeout(timer) };
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
    attention: el("div", { "data-chart": "attention" }, el("p.muted", {}, "waiting for the final weights…")),
  };
  const cards = {
    boundary: card("Decision boundary", box.boundary),
    network: card("Network", box.network),
    time: card("Gradient norm through time (last epoch)", box.time),
    filters: card("Filters", box.filters),
    pretrain: card("Pretraining: reconstruction loss per layer", box.pretrain),
    attention: card("Cross-attention of a decoded example (last decoder block, mean of its heads)",
                    box.attention),
  };
  Object.values(cards).forEach((c) => { c.hidden = true; });
  main.replaceChildren(header, el("div.grid", {},
    card("Loss", box.loss, el("label.inline", { for: "log" }, log, "log scale")),
    card("Accuracy", box.accuracy),
    cards.boundary, cards.network, cards.attention,
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
    const exact = rows.some((r) => r.train_exact_match !== null && r.train_exact_match !== undefined);
    charts.lineChart(box.accuracy, { yLabel: "accuracy", yMin: 0, yMax: 1, series: [
      series(rows, "train_accuracy", exact ? "train tokens" : "train", charts.BLUE),
      series(rows, "val_accuracy", exact ? "validation tokens" : "validation", charts.ORANGE, true),
      ...(exact ? [series(rows, "train_exact_match", "train sequences", charts.color(2)),
                   series(rows, "val_exact_match", "validation sequences", charts.color(3), true)]
        : [])] });
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
    // Only layers with a sigmoid, tanh or ReLU have these figures (not embeddings or
    // attention blocks); a network with none says so rather than "no data yet" forever.
    const acts = layers.map(([, l], k) => {
      const field = l.rows.some((s) => s.act_dead_fraction !== null) ? "act_dead_fraction"
        : "act_saturated_fraction";
      return { name: `${l.name} ${field === "act_dead_fraction" ? "dead" : "saturated"}`,
               color: charts.color(k), points: l.rows.map((s) => [s.epoch, s[field]]) };
    }).filter((a) => a.points.some(([, y]) => y !== null && y !== undefined));
    charts.lineChart(box.activations, { yLabel: "fraction", yMin: 0, yMax: 1, series: acts,
      empty: layers.length && !acts.length ? "no sigmoid, tanh or ReLU layer" : "no data yet" });
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
    const layers = layersOf(run.network);
    const dense = layers.every((l) => l.type === "dense");
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
      if (run.network.encoder && run.status === "succeeded") await drawAttention(run);
      if (dense || layers.some((l) => l.type === "conv2d")) {
        const weights = await api(`/v1/runs/${run.id}/weights?which=latest`);
        if (dense) {
          cards.network.hidden = false;
          const matrices = weights.layers.map((l) => l.W);
          charts.network(box.network, {
            sizes: [matrices[0].length, ...matrices.map((m) => m[0].length)],
            labels: ["inputs", ...layers.map((l) => `${l.units} ${l.activation}`)],
            weights: matrices });
        }
        const conv = weights.layers.find((l, i) => layers[i].type === "conv2d");
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

  // A seq2seq run's first data set sample decoded with its final weights: the last decoder
  // block's cross-attention, averaged over its heads (target step x source position).
  async function drawAttention(run) {
    cards.attention.hidden = false;
    if (box.attention.dataset.argmax) return;
    const sample = (await api(`/v1/datasets/${run.dataset_id}/samples?limit=1`)).items[0];
    const source = sample.input.filter((v) => v !== 0);
    const answer = await api(`/v1/runs/${run.id}/predict`, { method: "POST",
      body: { inputs: [source], attention: true } });
    const heads = answer.attention[0].at(-1);          // (head, target step, source position)
    const values = heads[0].map((row, t) => row.map((_, s) =>
      heads.reduce((sum, h) => sum + h[t][s], 0) / heads.length));
    const output = answer.outputs[0];
    charts.attentionMap(box.attention, { title: "attention weight",
      rows: values.map((_, t) => (t < output.length ? String(output[t]) : "EOS")),
      columns: source.map(String), values });
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
