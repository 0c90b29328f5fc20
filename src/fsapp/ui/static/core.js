/* fstore web UI, core: the API client (the key travels as the API's own
   Authorization header), DOM helpers and the hash router. Every page reads
   only the public REST API; nothing here talks to another origin. */
"use strict";

const fs = (window.fstore = {});

fs.KEY_STORE = "fstore.apiKey";

fs.key = () => sessionStorage.getItem(fs.KEY_STORE) || "";

/** An error the API answered: its JSON {title, description} and status. */
class ApiError extends Error {
  constructor(status, title, description) {
    super(description ? `${title}: ${description}` : title);
    this.status = status;
    this.title = title;
    this.description = description;
  }
}
fs.ApiError = ApiError;

/** fetch a JSON endpoint of this server; throws ApiError with the server's
    own message on any non-2xx (so a page can show what to fix). */
fs.api = async (path, { method = "GET", body } = {}) => {
  const headers = { Accept: "application/json" };
  const key = fs.key();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                               cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "The server did not answer",
      "check that `fstore serve` is still running and reachable at " + location.host);
  }
  const text = await resp.text();
  let doc = null;
  try { doc = text ? JSON.parse(text) : null; } catch (e) { doc = null; }
  if (!resp.ok) {
    if (doc && doc.title) throw new ApiError(resp.status, doc.title, doc.description || "");
    throw new ApiError(resp.status, `HTTP ${resp.status}`, text.slice(0, 300));
  }
  return doc;
};

/** h("tag.class", {attr: v, onclick: fn}, children...): one element. */
fs.h = (spec, attrs, ...children) => {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag);
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  fs.append(el, children);
  return el;
};

fs.append = (el, children) => {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
};

/** A table: headers and rows of cells (a cell: a Node, text, or
    {node|text, cls, attrs}). rowAttrs(i) gives each <tr>'s attributes. */
fs.table = (id, headers, rows, rowAttrs) => {
  const h = fs.h;
  const head = h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col", class: t.cls }, t.text ?? t))));
  const body = h("tbody", {}, rows.map((cells, i) => h("tr", rowAttrs ? rowAttrs(i) : {}, cells.map((c) => {
    if (c && typeof c === "object" && !(c instanceof Node)) {
      return h("td", { class: c.cls, ...(c.attrs || {}) }, c.node ?? c.text ?? "");
    }
    return h("td", {}, c ?? "");
  }))));
  return h("div.scroll", {}, h("table", { id }, head, body));
};

fs.errorBox = (err, what) => fs.h("div.error", { role: "alert" },
  what ? h2text(what) : null, err instanceof ApiError ? err.message : String(err));
const h2text = (what) => fs.h("strong", {}, what + " — ");

fs.notice = (...children) => fs.h("div.notice", {}, ...children);

fs.link = (href, text) => fs.h("a", { href }, text);

/** "1.2 s", "3 min", "2.1 h", "4 d" */
fs.duration = (seconds) => {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 90) return `${seconds.toFixed(1)} s`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(1)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
};

/** A definition's duration (µs, as the registry stores them) in the largest
    unit that divides it: "30 d", "1 h", "5 min", "90 s", "250 ms". */
fs.span = (us) => {
  for (const [unit, size] of [["d", 86400e6], ["h", 3600e6], ["min", 60e6], ["s", 1e6], ["ms", 1e3]]) {
    if (us >= size && us % size === 0) return `${us / size} ${unit}`;
  }
  return `${us} µs`;
};

fs.ttlText = (us) => (us ? fs.span(us) : "none (values never expire)");

fs.json = (v) => (typeof v === "string" ? v : JSON.stringify(v));

// ---- the key and what it may do

fs.scopes = [];
fs.keysRequired = false;

fs.refreshScopes = async () => {
  const out = document.getElementById("key-scopes");
  try {
    const who = await fs.api("/api/v1/whoami");
    fs.scopes = who.scopes;
    fs.keysRequired = who.keys_required;
    if (!who.keys_required) out.textContent = "open server: no key needed";
    else if (!fs.key()) out.textContent = "this server needs a key";
    else out.textContent = `key scopes: ${who.scopes.join(", ")}`;
  } catch (e) {
    fs.scopes = [];
    out.textContent = e.status === 401 ? "key not accepted" : "";
  }
};

fs.can = (scope) => fs.scopes.includes(scope);

/** What to show instead of a page when a read failed. */
fs.failure = (err, what) => {
  if (err instanceof ApiError && err.status === 401) {
    return fs.h("div.error", { role: "alert" }, `${err.message}. Paste an API key with the read scope in the `,
      fs.h("a", { href: "#api-key" }, "API key field"), " at the top and press “Use key”.");
  }
  if (err instanceof ApiError && err.status === 403) {
    return fs.h("div.error", { role: "alert" }, `${err.message}. Use a key with the read scope.`);
  }
  return fs.errorBox(err, what);
};

// ---- router: "#/page/arg" → fs.pages[page](main, arg)

fs.pages = {};
fs.leaveHooks = [];

fs.route = async () => {
  for (const stop of fs.leaveHooks.splice(0)) stop();
  const hash = location.hash;
  const [page = "live", ...rest] = hash.replace(/^#\/?/, "").split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : "";
  const render = fs.pages[page] || fs.pages.live;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === (fs.pages[page] ? page : "live")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  main.replaceChildren(fs.h("p.muted", { id: "loading" }, "Loading…"));
  const token = (fs.routeToken = {});
  try {
    // no key yet on a server that needs one: say so instead of asking for data that would be refused
    const content = fs.keysRequired && !fs.key() ? keyPrompt() : await render(arg);
    if (fs.routeToken !== token) return; // the user moved on meanwhile
    main.replaceChildren(...[content].flat());
  } catch (e) {
    if (fs.routeToken !== token) return;
    main.replaceChildren(fs.failure(e));
  }
  main.dataset.page = fs.pages[page] ? page : "live";
  main.dataset.route = hash; // tests wait for this: the page for this hash is drawn
  document.title = `fstore — ${(document.querySelector("#nav a[aria-current]") || {}).textContent || "UI"}`;
};

const keyPrompt = () => [
  fs.h("h1", {}, "An API key is needed"),
  fs.notice("This server checks API keys. Paste yours in the ", fs.h("a", { href: "#api-key" }, "API key field"),
    " at the top and press “Use key”. A key with the read scope shows everything here; pushing events needs the " +
    "write scope. Keys are listed in the server's keys file (auth.api_keys_file in fstore.yaml, see docs/api.md). " +
    "The key stays in this browser tab only."),
];

fs.go = (hash) => {
  if (location.hash === hash) fs.route();
  else location.hash = hash;
};
