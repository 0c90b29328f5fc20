/* fstore web UI: the registry pages (views, streams and sources, entities,
   services), the version diff, the lookup form and the push form. Each page
   is a function (arg) → content, reading /api/v1/registry/* and friends. */
"use strict";

(() => {
  const fs = window.fstore;
  const { h, api, table, link } = fs;

  const list = async (kind) => (await api(`/api/v1/registry/${kind}`)).items;
  const enc = encodeURIComponent;

  const APPLY_HINT = () => fs.notice(
    "Definitions live in your repo's .sql and .py files. Write one (see docs/dsl.md), then run ",
    h("code", {}, "fstore apply --repo PATH"), " and reload this page: the server reads the registry as applied.");

  const windowText = (w) => {
    if (!w) return "";
    const d = fs.span;
    if (w.kind === "lifetime") return "lifetime";
    if (w.kind === "session") return `session (gap ${d(w.gap)})`;
    if (w.kind === "tumbling") return `tumbling ${d(w.size)}`;
    return `${w.kind} ${d(w.size)} every ${d(w.hop)}`;
  };

  const aggText = (a) => `${a.function}(${a.column ?? "*"}${a.function === "last_k" ? ", " + a.k : ""})`;

  // ---- feature views

  fs.pages.views = async (arg) => {
    if (arg) return viewPage(arg);
    const views = await list("feature_views");
    const ondemand = await list("on_demand_views");
    const out = [h("h1", {}, "Feature views")];
    if (!views.length && !ondemand.length) {
      out.push(h("p", { id: "views-empty" }, "No feature views yet."), APPLY_HINT());
      return out;
    }
    out.push(table("views-table", ["View", "Version", "Source", "Entities", "Features", "Windows", "TTL"],
      views.map((v) => {
        const d = v.definition;
        const windows = [...new Set(d.aggregations.map((a) => windowText(a.window)))];
        return [link(`#/views/${enc(v.name)}`, v.name), `v${v.version}`,
                link(`#/streams/${enc(d.source)}`, d.source), d.entities.join(", ") || v.resolved.entities?.join(", "),
                String(v.resolved.features.length), windows.join("; ") || "plain (no window)",
                d.ttl ? fs.span(d.ttl) : "—"];
      }), (i) => ({ "data-name": views[i].name })));
    if (ondemand.length) {
      out.push(h("h2", {}, "On-demand views"), table("ondemand-table", ["View", "Version", "Reads", "Features"],
        ondemand.map((v) => [link(`#/lineage/${enc(v.name)}`, v.name), `v${v.version}`,
                             [...(v.resolved.inputs || []),
                              ...(v.resolved.request || []).map(([c]) => `request column ${c}`)].join(", "),
                             v.resolved.features.map((f) => f[0]).join(", ")]),
        (i) => ({ "data-name": ondemand[i].name })));
    }
    return out;
  };

  const viewPage = async (arg) => {
    const [name, ver] = arg.split("@v");
    const v = await api(`/api/v1/registry/feature_view/${enc(name)}${ver ? `?version=${enc(ver)}` : ""}`);
    const latest = ver ? (await api(`/api/v1/registry/feature_view/${enc(name)}`)).version : v.version;
    const d = v.definition;
    const aggs = Object.fromEntries(d.aggregations.map((a) => [a.name, a]));
    const exprs = Object.fromEntries(d.features.map((p) => [p.name, p.expr]));
    const out = [
      h("h1", {}, `Feature view ${v.name} `, h("span.muted", {}, `v${v.version}${v.version < latest ? ` (latest v${latest})` : ""}`)),
      h("dl.facts", {},
        h("dt", {}, "Source"), h("dd", {}, link(`#/streams/${enc(d.source)}`, d.source)),
        h("dt", {}, "Keys"), h("dd", {}, v.resolved.keys.map(([k, t]) => `${k} ${t}`).join(", ")),
        h("dt", {}, "Entities"), h("dd", {}, (d.entities.length ? d.entities : v.resolved.entities || []).join(", ") || "—"),
        h("dt", {}, "TTL"), h("dd", { id: "view-ttl" }, fs.ttlText(d.ttl)),
        h("dt", {}, "Filter"), h("dd", {}, d.filter ? h("code", {}, d.filter) : "—"),
        h("dt", {}, "Online"), h("dd", {}, d.online ? "yes" : "no (offline only)"),
        h("dt", {}, "Applied"), h("dd", {}, `${v.applied_at} (apply #${v.apply_id})`),
        d.description ? [h("dt", {}, "Description"), h("dd", {}, d.description)] : null),
      h("p.row", {}, link(`#/lineage/${enc(`${v.name}@v${v.version}`)}`, "Lineage"), " · ",
        link(`#/lookup/${enc("view:" + v.name)}`, "Look up values")),
      h("h2", {}, "Features"),
      table("features-table", ["Feature", "Type", "Computed as", "Window"], v.resolved.features.map(([f, t]) => [
        f, t, aggs[f] ? h("code", {}, aggText(aggs[f])) : h("code", {}, exprs[f] ?? f),
        aggs[f] ? windowText(aggs[f].window) : "latest row"])),
      h("h2", {}, "Definition"), h("pre", { id: "view-sql" }, v.sql),
    ];
    out.push(h("h2", {}, "Versions"));
    if (latest < 2) {
      out.push(h("p.muted", {}, "Only one version so far. Each `fstore apply` that changes this view adds one; " +
                                 "you can then compare two versions here."));
      return out;
    }
    const options = (selected) => Array.from({ length: latest }, (_, i) => i + 1).map((n) =>
      h("option", { value: n, selected: n === selected }, `v${n}`));
    const from = h("select", { id: "diff-from", name: "from" }, options(Math.max(1, latest - 1)));
    const to = h("select", { id: "diff-to", name: "to" }, options(latest));
    const result = h("div", { id: "diff-result", "aria-live": "polite" });
    const form = h("form.row", { id: "diff-form", onsubmit: async (ev) => {
      ev.preventDefault();
      result.replaceChildren(h("p.muted", {}, "Loading…"));
      try {
        const [a, b] = await Promise.all([from.value, to.value].map((n) =>
          api(`/api/v1/registry/feature_view/${enc(v.name)}?version=${n}`)));
        result.replaceChildren(...diffView(a, b));
      } catch (e) {
        result.replaceChildren(fs.failure(e));
      }
    } }, h("label", {}, "From ", from), h("label", {}, "to ", to), h("button", { type: "submit" }, "Compare"));
    out.push(h("p", {}, h("span.muted", {}, `${latest} versions. `),
      ...Array.from({ length: latest }, (_, i) => [link(`#/views/${enc(v.name)}@v${i + 1}`, `v${i + 1}`), " "])),
      form, result);
    return out;
  };

  /** Line diff (longest common subsequence) of two versions' SQL. */
  const lineDiff = (a, b) => {
    const n = a.length, m = b.length;
    const lcs = Array.from({ length: n + 1 }, () => new Int32Array(m + 1));
    for (let i = n - 1; i >= 0; i--)
      for (let j = m - 1; j >= 0; j--)
        lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    const out = [];
    let i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && a[i] === b[j]) { out.push(["same", a[i]]); i++; j++; }
      else if (i < n && (j === m || lcs[i + 1][j] >= lcs[i][j + 1])) { out.push(["del", a[i]]); i++; }
      else { out.push(["add", b[j]]); j++; }
    }
    return out;
  };
  fs.lineDiff = lineDiff;

  const diffView = (a, b) => {
    const lines = lineDiff(a.sql.split("\n"), b.sql.split("\n"));
    const changed = lines.filter(([k]) => k !== "same").length;
    const mark = { same: "  ", add: "+ ", del: "- " };
    return [h("p", {}, `v${a.version} (${a.applied_at}) → v${b.version} (${b.applied_at}): `,
              changed ? `${changed} line(s) differ.` : "the same definition."),
            h("pre.diff", { id: "diff" }, lines.map(([k, text]) => h(`span.${k}`, {}, mark[k] + text)))];
  };

  // ---- streams and sources

  fs.pages.streams = async (arg) => {
    if (arg) return streamPage(arg);
    const [streams, sources, requests] = await Promise.all([list("streams"), list("sources"), list("request_sources")]);
    const out = [h("h1", {}, "Streams & sources")];
    if (!streams.length && !sources.length && !requests.length) {
      out.push(h("p", {}, "No streams or sources yet."), APPLY_HINT());
      return out;
    }
    out.push(h("h2", {}, "Streams"), streams.length ? table("streams-table",
      ["Stream", "Version", "Columns", "Event time", "Allowed lateness", "Kafka topic"], streams.map((s) => {
        const d = s.definition;
        return [link(`#/streams/${enc(s.name)}`, s.name), `v${s.version}`, d.columns.map((c) => c.name).join(", "),
                d.timestamp, d.allowed_lateness ? fs.span(d.allowed_lateness) : "0",
                d.topic || h("span.muted", {}, "none (push only)")];
      }), (i) => ({ "data-name": streams[i].name })) : h("p.muted", {}, "No streams."));
    out.push(h("h2", {}, "Batch sources"), sources.length ? table("sources-table",
      ["Source", "Version", "Path", "Format", "Event time"], sources.map((s) => {
        const d = s.definition;
        return [link(`#/lineage/${enc(s.name)}`, s.name), `v${s.version}`, h("code", {}, d.path), d.format, d.timestamp];
      }), (i) => ({ "data-name": sources[i].name })) : h("p.muted", {}, "No batch (file) sources."));
    if (requests.length) {
      out.push(h("h2", {}, "Request sources"), table("requests-table", ["Request source", "Columns"],
        requests.map((s) => [s.name, s.definition.columns.map((c) => `${c.name} ${c.type}`).join(", ")])));
    }
    return out;
  };

  const streamPage = async (name) => {
    let s;
    try {
      s = await api(`/api/v1/registry/stream/${enc(name)}`);
    } catch (e) {
      if (e.status !== 404) throw e;
      // a view's source may be a batch source
      const src = await api(`/api/v1/registry/source/${enc(name)}`);
      return [h("h1", {}, `Source ${src.name} `, h("span.muted", {}, `v${src.version}`)),
              h("pre", {}, src.sql), h("p", {}, link(`#/lineage/${enc(src.name)}`, "Lineage"))];
    }
    const d = s.definition;
    const out = [
      h("h1", {}, `Stream ${s.name} `, h("span.muted", {}, `v${s.version}`)),
      table("columns-table", ["Column", "Type"], d.columns.map((c) => [c.name, c.type])),
      h("dl.facts", {},
        h("dt", {}, "Event time"), h("dd", {}, d.timestamp),
        h("dt", {}, "Allowed lateness"), h("dd", {}, d.allowed_lateness ? fs.span(d.allowed_lateness) : "0 (events older than the newest are late)"),
        h("dt", {}, "Kafka topic"), h("dd", {}, d.topic || "none: events arrive by push")),
      h("p", {}, link(`#/lineage/${enc(s.name)}`, "Lineage")),
      h("h2", {}, "Definition"), h("pre", {}, s.sql),
      h("h2", {}, "Push events"),
    ];
    out.push(fs.can("write") ? pushForm(s) : h("p.notice", { id: "push-locked" },
      fs.keysRequired && !fs.key() ? "Pushing needs an API key with the write scope: paste one at the top."
        : "This API key can read, not write: pushing events needs a key with the write scope."));
    return out;
  };

  const exampleValue = (col, tsCol) => {
    if (col.name === tsCol) return new Date().toISOString();
    const t = col.type.toUpperCase();
    if (/INT/.test(t)) return 1;
    if (/DOUBLE|FLOAT|DECIMAL|REAL/.test(t)) return 1.5;
    if (/BOOL/.test(t)) return true;
    return "a";
  };

  const pushForm = (s) => {
    const d = s.definition;
    const example = [Object.fromEntries(d.columns.map((c) => [c.name, exampleValue(c, d.timestamp)]))];
    const text = h("textarea", { id: "push-rows", rows: 6, name: "rows", "aria-describedby": "push-help" });
    text.value = JSON.stringify(example, null, 1);
    const result = h("div", { id: "push-result", "aria-live": "polite" });
    return h("form.stack", { id: "push-form", onsubmit: async (ev) => {
      ev.preventDefault();
      let rows;
      try {
        rows = JSON.parse(text.value);
      } catch (e) {
        result.replaceChildren(h("div.error", { role: "alert" }, `The rows are not JSON: ${e.message}. ` +
          "Give an array of objects, one per event, e.g. the example the form started with."));
        return;
      }
      result.replaceChildren(h("p.muted", {}, "Pushing…"));
      try {
        const res = await api("/api/v1/push", { method: "POST", body: { stream: s.name, rows } });
        result.replaceChildren(h("div.success", { role: "status" },
          `Accepted ${res.accepted} event(s), ${res.late} late; durable at log position ${res.lsn}.`));
      } catch (e) {
        result.replaceChildren(fs.errorBox(e, "Push refused"));
      }
    } },
    h("label", {}, "Rows (a JSON array of events)", text),
    h("p.muted", { id: "push-help" }, `Columns: ${d.columns.map((c) => `${c.name} ${c.type}`).join(", ")}. ` +
      `${d.timestamp} is the event time (ISO-8601 or epoch).`),
    h("div", {}, h("button", { type: "submit", id: "push-submit" }, `Push to ${s.name}`)), result);
  };

  // ---- entities

  fs.pages.entities = async () => {
    const [entities, views] = await Promise.all([list("entities"), list("feature_views")]);
    const out = [h("h1", {}, "Entities")];
    if (!entities.length) {
      out.push(h("p", {}, "No entities yet."), APPLY_HINT());
      return out;
    }
    const usedBy = (name) => views.filter((v) => (v.definition.entities.length ? v.definition.entities
      : v.resolved.entities || []).includes(name));
    out.push(table("entities-table", ["Entity", "Version", "Join keys", "Used by views", "Description"],
      entities.map((e) => [link(`#/lineage/${enc(e.name)}`, e.name), `v${e.version}`,
        e.definition.join_keys.map((k) => `${k.name} ${k.type}`).join(", "),
        fs.append(h("span"), usedBy(e.name).map((v, i) => [i ? ", " : "", link(`#/views/${enc(v.name)}`, v.name)])),
        e.definition.description || ""]), (i) => ({ "data-name": entities[i].name })));
    return out;
  };

  // ---- feature services

  fs.pages.services = async (arg) => {
    const services = await list("feature_services");
    const out = [h("h1", {}, arg ? `Feature service ${arg}` : "Feature services")];
    if (arg) {
      const s = await api(`/api/v1/registry/feature_service/${enc(arg)}`);
      out.push(h("p", {}, `v${s.version}, applied ${s.applied_at}. `,
                 link(`#/lineage/${enc(s.name)}`, "Lineage"), " · ", link(`#/lookup/${enc("service:" + s.name)}`, "Look up values")),
               table("service-features", ["Pinned feature"], s.resolved.features.map((f) => [h("code", {}, f)])),
               h("h2", {}, "Definition"), h("pre", {}, s.sql));
      return out;
    }
    if (!services.length) {
      out.push(h("p", {}, "No feature services yet. A service pins the features a model reads, e.g. "),
               h("pre", {}, "CREATE FEATURE SERVICE fraud_v1 AS (user_txn:txn_count_1h, user_txn:amount_24h);"),
               APPLY_HINT());
      return out;
    }
    out.push(table("services-table", ["Service", "Version", "Features", "Applied"], services.map((s) => [
      link(`#/services/${enc(s.name)}`, s.name), `v${s.version}`, s.resolved.features.join(", "), s.applied_at]),
    (i) => ({ "data-name": services[i].name })));
    return out;
  };

  // ---- lookup

  /** An integer key as a JSON number when JavaScript holds it exactly;
      beyond 2^53 it goes as text (never a silently rounded key) and the
      API says whether it takes it. */
  const parseKey = (text, type) => {
    const t = text.trim();
    if (/INT/i.test(type) && /^-?\d+$/.test(t) && Number.isSafeInteger(Number(t))) return Number(t);
    if (/DOUBLE|FLOAT|REAL|DECIMAL/i.test(type) && t !== "" && Number.isFinite(Number(t))) return Number(t);
    if (/BOOL/i.test(type) && /^(true|false)$/i.test(t)) return t.toLowerCase() === "true";
    return t;
  };

  fs.pages.lookup = async (arg) => {
    const [views, ondemand, services] = await Promise.all([list("feature_views"), list("on_demand_views"),
                                                           list("feature_services")]);
    const out = [h("h1", {}, "Look up online values")];
    if (!views.length) {
      out.push(h("p", {}, "No feature views to read yet."), APPLY_HINT());
      return out;
    }
    // what each view needs beside the features: its entity keys and, for an on-demand view, request columns
    const needs = Object.fromEntries([...views, ...ondemand].map((v) => [v.name, {
      keys: v.resolved.keys || [], request: v.resolved.request || [] }]));
    const targets = [...views.map((v) => `view:${v.name}`), ...ondemand.map((v) => `view:${v.name}`),
                     ...services.map((s) => `service:${s.name}`)];
    const chosen = targets.includes(arg) ? arg : targets[0];
    const target = h("select", { id: "lookup-target", name: "target", onchange: () => fs.go(`#/lookup/${enc(target.value)}`) },
      targets.map((t) => h("option", { value: t, selected: t === chosen }, t.replace(":", " "))));
    const [kind, name] = chosen.split(/:(.*)/s);
    const viewsRead = kind === "view" ? [name]
      : services.find((s) => s.name === name).resolved.features.map((f) => f.split(/[@:]/)[0]);
    const fields = new Map(); // column -> [column, type, "key" | "request"]
    for (const v of viewsRead) {
      for (const [k, t] of (needs[v] || { keys: [] }).keys) fields.set(k, [k, t, "key"]);
      for (const [c, t] of (needs[v] || { request: [] }).request) if (!fields.has(c)) fields.set(c, [c, t, "request"]);
    }
    const keys = [...fields.values()];
    const inputs = keys.map(([k, t, role]) => h("input", { id: `key-${k}`, name: k, "data-key": k, "data-type": t,
      placeholder: role === "key" ? "e.g. 1, 2, 3" : "one value per key, in the same order", required: true }));
    const asOf = h("input", { id: "lookup-as-of", name: "as_of", placeholder: "now (or 2026-11-27T10:00:00Z)" });
    const result = h("div", { id: "lookup-result", "aria-live": "polite" });
    const form = h("form.stack", { id: "lookup-form", onsubmit: async (ev) => {
      ev.preventDefault();
      const entities = {};
      for (const input of inputs) {
        entities[input.dataset.key] = input.value.split(",").filter((x) => x.trim() !== "")
          .map((x) => parseKey(x, input.dataset.type));
      }
      const body = kind === "view" ? { features: [`${name}:*`], entities } : { feature_service: name, entities };
      if (asOf.value.trim()) body.as_of = /^-?\d+(\.\d+)?$/.test(asOf.value.trim()) ? Number(asOf.value) : asOf.value.trim();
      result.replaceChildren(h("p.muted", {}, "Reading…"));
      try {
        result.replaceChildren(...lookupTable(await api("/api/v1/features/online", { method: "POST", body }),
                                           keys.length));
      } catch (e) {
        result.replaceChildren(fs.errorBox(e, "Lookup refused"));
      }
    } },
    h("label", {}, "Read", target),
    keys.map(([k, t, role], i) => h("label", {}, role === "key" ? `${k} (${t}) — one or more, comma-separated`
      : `${k} (${t}, a request column of the on-demand features) — one per key, comma-separated`, inputs[i])),
    h("label", {}, "As of (optional: ISO-8601 or epoch; default now)", asOf),
    h("div", {}, h("button", { type: "submit", id: "lookup-submit" }, "Look up")));
    out.push(form, result);
    return out;
  };

  /** The Feast-shaped column-major answer as one row per entity key: each
      feature's value, status and event time. */
  const lookupTable = (doc, nKeys) => {
    const names = doc.metadata.feature_names;
    const cols = doc.results;
    const rows = cols.length ? cols[0].values.length : 0;
    const headers = [...names.slice(0, nKeys), ...names.slice(nKeys).map((f) => ({ text: f }))];
    const body = [];
    for (let r = 0; r < rows; r++) {
      const cells = names.map((f, c) => {
        if (c < nKeys) return { text: fs.json(cols[c].values[r]), attrs: { "data-key": f } };
        const status = cols[c].statuses[r];
        return { attrs: { "data-feature": f, "data-status": status }, node: h("div", {},
          h("div.value", {}, cols[c].values[r] === null ? "null" : fs.json(cols[c].values[r])),
          h(`div.status.status-${status}`, {}, status),
          // the API stamps a key it does not have with the epoch: no event, said as such
          h("div.muted.event-time", { "data-ts": cols[c].event_timestamps[r] ?? "" },
            !cols[c].event_timestamps[r] || cols[c].event_timestamps[r].startsWith("1970-01-01T00:00:00")
              ? "no event" : cols[c].event_timestamps[r])) };
      });
      body.push(cells);
    }
    return [h("p.muted", {}, `${rows} key(s) × ${names.length - nKeys} feature(s): value, status, event time.`),
            table("lookup-table", headers, body, (i) => ({ "data-row": i }))];
  };
})();
