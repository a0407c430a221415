// The dashboard's entry: the API key, the API client, and the router (one page, six views).
import { runsPage, runPage, datasetPage, newRunPage } from "./pages.js";
import { sweepsPage, sweepPage } from "./sweeps.js";

const KEY = "backprop-key";

// The key comes from the URL fragment (#key=..., never sent to a server), is kept for this
// browser session, and leaves the address bar at once.
function takeKeyFromFragment() {
  const found = new URLSearchParams(location.hash.slice(1)).get("key");
  if (found) {
    sessionStorage.setItem(KEY, found.trim());
    history.replaceState(null, "", location.pathname + location.search);
  }
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = answer.status === 204 ? null : await answer.json();
  if (answer.status === 401) {
    sessionStorage.removeItem(KEY);
    route();
  }
  if (!answer.ok) throw new ApiError(answer.status, data);
  return data;
}

export function authHeader() {
  return `Bearer ${sessionStorage.getItem(KEY)}`;
}

// el("div.card", {title: "x"}, child, ...): a small element builder (text children escape).
export function el(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag);
  if (classes.length) node.className = classes.join(" ");
  for (const [name, value] of Object.entries(attrs)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

export function navigate(path) {
  history.pushState(null, "", path);
  route();
}

let leave = null;  // what the current view must stop (its streams, timers) when left

function loginPage(main) {
  const input = el("input", { type: "password", id: "key", autocomplete: "off",
                              placeholder: "bp_...", "aria-label": "API key" });
  const form = el("form.card.login", {
    onsubmit: (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      route();
    },
  },
  el("h1", {}, "API key"),
  el("p.muted", {}, "Paste a key (backprop up prints one, and a link that logs in by itself)."),
  input, el("button.primary", { type: "submit" }, "Open the dashboard"));
  main.replaceChildren(form);
  input.focus();
}

export function route() {
  if (leave) leave();
  leave = null;
  const main = document.getElementById("main");
  const logout = document.getElementById("logout");
  logout.hidden = !sessionStorage.getItem(KEY);
  if (!sessionStorage.getItem(KEY)) return loginPage(main);
  const path = location.pathname;
  const id = "([0-9a-f-]{36})";
  let match;
  if ((match = path.match(new RegExp(`^/runs/${id}$`)))) leave = runPage(main, match[1]);
  else if ((match = path.match(new RegExp(`^/datasets/${id}$`)))) leave = datasetPage(main, match[1]);
  else if ((match = path.match(new RegExp(`^/sweeps/${id}$`)))) leave = sweepPage(main, match[1]);
  else if (path === "/sweeps") leave = sweepsPage(main);
  else if (path === "/new") leave = newRunPage(main);
  else leave = runsPage(main);
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a");
  if (link && link.origin === location.origin && !link.target && !event.ctrlKey &&
      !event.metaKey && link.pathname !== location.pathname) {
    event.preventDefault();
    navigate(link.pathname + link.search);
  }
});
window.addEventListener("popstate", route);
document.getElementById("logout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  route();
});
takeKeyFromFragment();
route();
