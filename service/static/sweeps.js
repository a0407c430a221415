// The sweeps' views: the list, and one sweep (its metric against each parameter, the
// leaderboard with links to the children), read again every POLL_MS until it is settled.
import { api, ApiError, el, navigate } from "./app.js";
import { badge, card, FINISHED, POLL_MS, polledTable, problemText, shortId,
         STATUSES } from "./pages.js";
import * as charts from "./charts.js";

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
  const list = polledTable(["sweep", "status", "children", "parameters", "metric", "best",
                            "created"], () => "/v1/sweeps?limit=50", (s) => {
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
  }, "No sweeps yet: POST /v1/sweeps (the README has examples).");
  main.replaceChildren(
    el("h1", {}, "Sweeps"),
    el("p.muted", {}, "Grid and random searches (POST /v1/sweeps); each child is a run."),
    list.table);
  return list.stop;
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
