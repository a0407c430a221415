// The sweeps' views: the list, and one sweep (its metric against each parameter, the
// leaderboard with links to the children), refreshed every 2 s until it is settled.
import { api, el } from "./app.js";
import { badge, card, FINISHED, problemText, shortId } from "./pages.js";
import * as charts from "./charts.js";

function countsText(counts) {
  return Object.entries(counts).filter(([, n]) => n).map(([s, n]) => `${n} ${s}`).join(", ");
}

export function sweepsPage(main) {
  const body = el("tbody");
  main.replaceChildren(el("h1", {}, "Sweeps"), el("table", {},
    el("thead", {}, el("tr", {}, ["sweep", "name", "status", "children", "best", "created"]
      .map((h) => el("th", {}, h)))), body));
  let timer;
  async function refresh() {
    try {
      const page = await api("/v1/sweeps?limit=50");
      body.replaceChildren(...page.items.map((s) => el("tr", {},
        el("td", {}, el("a", { href: `/sweeps/${s.id}` }, shortId(s.id))),
        el("td", {}, s.name || ""), el("td", {}, badge(s.status)),
        el("td", {}, countsText(s.counts)),
        el("td", {}, s.best_run_id ? el("a", { href: `/runs/${s.best_run_id}` },
                                         `${shortId(s.best_run_id)} (${s.metric} ${s.best_metric})`) : ""),
        el("td", {}, new Date(s.created_at).toLocaleString()))));
      if (!page.items.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 6 }, "No sweeps yet.")));
    } catch (error) {
      body.replaceChildren(el("tr", {}, el("td.errors", { colspan: 6 }, problemText(error))));
    }
    timer = setTimeout(refresh, 2000);
  }
  refresh();
  return () => clearTimeout(timer);
}

export function sweepPage(main, sweepId) {
  const header = el("div");
  const plots = el("div.grid");
  const board = el("tbody");
  main.replaceChildren(header, plots, el("section.card.wide", { "aria-label": "leaderboard" },
    el("h2", {}, "Leaderboard"), el("table", {}, el("thead", {}, el("tr", {},
      ["rank", "run", "status", "parameters", "metric", "epochs"].map((h) => el("th", {}, h)))),
    board)));
  let timer;
  async function refresh() {
    try {
      const sweep = await api(`/v1/sweeps/${sweepId}`);
      const rows = [];
      let cursor = "";
      do {  // every child: a sweep has at most 1000
        const page = await api(`/v1/sweeps/${sweepId}/leaderboard?limit=1000&cursor=${cursor}`);
        rows.push(...page.items);
        cursor = page.next_cursor;
      } while (cursor);
      draw(sweep, rows);
      if (!FINISHED.has(sweep.status)) timer = setTimeout(refresh, 2000);
    } catch (error) {
      header.replaceChildren(el("p.errors", {}, problemText(error)));
    }
  }
  function draw(sweep, rows) {
    const cancel = el("button", { type: "button", disabled: FINISHED.has(sweep.status) ||
                                  sweep.cancel_requested,
                                  onclick: () => api(`/v1/sweeps/${sweepId}/cancel`, { method: "POST" })
                                    .then(refresh).catch(() => {}) }, "Cancel sweep");
    header.replaceChildren(el("h1", {}, `Sweep ${sweep.name || shortId(sweep.id)} `, badge(sweep.status)),
      el("p.muted", {}, `${sweep.method}, ${sweep.runs_total} children, ${sweep.max_concurrent} at a time; `,
         `${sweep.goal} ${sweep.metric}: ${countsText(sweep.counts)}`),
      el("div.toolbar", {}, sweep.best_run_id ? el("span", {}, "best: ",
         el("a", { href: `/runs/${sweep.best_run_id}` }, shortId(sweep.best_run_id)),
         ` (${sweep.best_metric})`) : null,
         el("a", { href: `/?sweep_id=${sweep.id}` }, "children"), cancel));
    plots.replaceChildren(...Object.keys(sweep.parameters).map((name, i) => {
      const box = el("div", { "data-chart": "sweep-parameter", "data-parameter": name });
      const scored = rows.filter((r) => r.metric !== null);
      if (scored.every((r) => typeof r.parameters[name] === "number")) {
        charts.lineChart(box, { xLabel: name, yLabel: sweep.metric, series: [{
          name: `${sweep.metric} by ${name}`, color: charts.color(i), markers: true,
          points: scored.map((r) => [r.parameters[name], r.metric]) }] });
      } else {
        const label = (v) => JSON.stringify(v).slice(0, 14);
        charts.bars(box, scored.map((r) => ({ name: label(r.parameters[name]),
                                              value: Number(r.metric.toPrecision(4)) })),
                    `${sweep.metric} by ${name}`);
      }
      return card(`${sweep.metric} by ${name}`, box);
    }));
    board.replaceChildren(...rows.map((r) => el("tr", {},
      el("td", {}, String(r.rank)),
      el("td", {}, el("a", { href: `/runs/${r.run_id}` }, shortId(r.run_id))),
      el("td", {}, badge(r.status), r.error ? ` ${r.error.code}` : ""),
      el("td", {}, Object.entries(r.parameters).map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join(", ")),
      el("td", {}, r.metric === null ? "" : String(r.metric)),
      el("td", {}, String(r.epochs_completed)))));
  }
  refresh();
  return () => clearTimeout(timer);
}
