/* fstore web UI: the lineage page. Draws GET /api/v1/lineage/{name} as
   layered SVG, left (topics, files) to right (features, services): each
   node in the column of its longest path from a node with no inputs, then
   a few barycentre sweeps to untangle the columns. Every node and edge of
   the answer is drawn, and only those (tests compare them). */
"use strict";

(() => {
  const fs = window.fstore;
  const { h, api } = fs;
  const SVG = "http://www.w3.org/2000/svg";
  const KIND_LABEL = { topic: "Kafka topic", file: "files", source: "source", stream: "stream", entity: "entity",
                       feature_view: "feature view", feature: "feature", feature_service: "feature service",
                       request_source: "request source", on_demand_view: "on-demand view", model: "MLflow model" };
  const BOX_H = 40, GAP_Y = 16, GAP_X = 70, PAD = 16;

  const s = (tag, attrs, ...children) => {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) el.setAttribute(k, v);
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  };

  const nodeLabel = (n) => (n.kind === "feature" ? n.name.split(":").slice(1).join(":") : n.name) +
    (n.version !== null && n.version !== undefined && n.kind !== "feature" ? ` v${n.version}` : "");

  /** The lineage query that re-roots the graph on a node (null: none, e.g. a topic). */
  const queryOf = (n) => {
    if (n.kind === "topic" || n.kind === "file" || n.kind === "model") return null; // models live in MLflow
    if (n.kind === "feature") {
      const [view, feature] = [n.name.split(":")[0], n.name.split(":").slice(1).join(":")];
      return `${view}@v${n.version}:${feature}`;
    }
    return `${n.name}@v${n.version}`;
  };

  /** {id: column} and the columns' node ids in drawing order. */
  const layout = (nodes, edges) => {
    const ins = new Map(nodes.map((n) => [n.id, []]));
    const outs = new Map(nodes.map((n) => [n.id, []]));
    for (const [a, b] of edges) { outs.get(a).push(b); ins.get(b).push(a); }
    const col = new Map(nodes.map((n) => [n.id, 0]));
    // longest path; at most |nodes| rounds, so a cycle cannot hang the page
    for (let round = 0; round < nodes.length; round++) {
      let moved = false;
      for (const [a, b] of edges) {
        if (col.get(b) < col.get(a) + 1) { col.set(b, col.get(a) + 1); moved = true; }
      }
      if (!moved) break;
    }
    const ncols = Math.max(0, ...col.values()) + 1;
    const columns = Array.from({ length: ncols }, () => []);
    const byKind = (a, b) => (a.kind + a.name).localeCompare(b.kind + b.name);
    for (const n of [...nodes].sort(byKind)) columns[col.get(n.id)].push(n.id);
    const pos = new Map();
    const index = () => columns.forEach((c) => c.forEach((id, i) => pos.set(id, i)));
    index();
    const centre = (ids) => (ids.length ? ids.reduce((t, id) => t + pos.get(id), 0) / ids.length : null);
    for (let sweep = 0; sweep < 4; sweep++) {
      const order = sweep % 2 === 0 ? columns.slice(1) : columns.slice(0, -1).reverse();
      for (const c of order) {
        const key = new Map(c.map((id) => [id, centre(sweep % 2 === 0 ? ins.get(id) : outs.get(id)) ?? pos.get(id)]));
        c.sort((a, b) => key.get(a) - key.get(b));
        c.forEach((id, i) => pos.set(id, i));
      }
    }
    return { col, columns };
  };

  fs.drawLineage = (graph) => {
    const nodes = graph.nodes, edges = graph.edges;
    const byId = new Map(nodes.map((n) => [n.id, n]));
    const { col, columns } = layout(nodes, edges);
    const width = (n) => Math.min(300, Math.max(110, 7 * Math.max(nodeLabel(n).length, (KIND_LABEL[n.kind] || n.kind).length) + 20));
    const colWidth = columns.map((c) => Math.max(0, ...c.map((id) => width(byId.get(id)))));
    const colX = [];
    colWidth.reduce((x, w, i) => { colX[i] = x; return x + w + GAP_X; }, PAD);
    const tallest = Math.max(1, ...columns.map((c) => c.length));
    const totalH = PAD * 2 + tallest * (BOX_H + GAP_Y) - GAP_Y;
    const place = new Map();
    columns.forEach((c, i) => {
      const top = (totalH - (c.length * (BOX_H + GAP_Y) - GAP_Y)) / 2;
      c.forEach((id, j) => place.set(id, { x: colX[i], y: top + j * (BOX_H + GAP_Y), w: width(byId.get(id)) }));
    });
    const totalW = colX.length ? colX[colX.length - 1] + colWidth[colWidth.length - 1] + PAD : 2 * PAD;
    const svg = s("svg", { id: "lineage-graph", width: totalW, height: totalH, viewBox: `0 0 ${totalW} ${totalH}`,
                           "aria-labelledby": "lineage-title" }, // not role=img: that would hide the links inside
      s("title", { id: "lineage-title" }, `Lineage of ${graph.root}: ${nodes.length} nodes, ${edges.length} edges`),
      s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 8 8", refX: 8, refY: 4, markerWidth: 7, markerHeight: 7,
                                   orient: "auto" }, s("path", { d: "M0,0 L8,4 L0,8 z", fill: "#8a94a3" }))));
    for (const [a, b] of edges) {
      const p = place.get(a), q = place.get(b);
      const x1 = p.x + p.w, y1 = p.y + BOX_H / 2, x2 = q.x, y2 = q.y + BOX_H / 2, mid = (x1 + x2) / 2;
      svg.append(s("path", { class: "edge", "data-from": a, "data-to": b, "marker-end": "url(#arrow)",
                             d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}` }));
    }
    for (const n of nodes) {
      const p = place.get(n.id);
      const classes = ["node", `k-${n.kind}`, n.id === graph.root ? "root" : "", n.live === false ? "old" : ""];
      const g = s("g", { class: classes.filter(Boolean).join(" "), "data-id": n.id, "data-column": col.get(n.id),
                         transform: `translate(${p.x},${p.y})` },
        s("rect", { width: p.w, height: BOX_H }),
        s("text", { class: "kind", x: 8, y: 14 }, KIND_LABEL[n.kind] || n.kind),
        s("text", { x: 8, y: 31 }, nodeLabel(n) + (n.live === false ? " (old)" : "")),
        s("title", {}, n.id + (n.type ? ` (${n.type})` : "")));
      const q = queryOf(n);
      svg.append(q ? s("a", { href: `#/lineage/${encodeURIComponent(q)}`, "aria-label": `${KIND_LABEL[n.kind] || n.kind} ${n.name}` }, g) : g);
    }
    return svg;
  };

  fs.pages.lineage = async (arg) => {
    const out = [h("h1", {}, "Lineage")];
    const kinds = ["feature_views", "on_demand_views", "feature_services", "streams", "sources", "entities"];
    const lists = await Promise.all(kinds.map((k) => api(`/api/v1/registry/${k}`)));
    const names = lists.flatMap((l) => l.items.map((e) => e.name));
    const input = h("input", { id: "lineage-name", name: "name", list: "lineage-names", value: arg || "",
                               placeholder: "user_txn, user_txn:txn_count_1h, fraud_v1…" });
    out.push(h("form.row", { id: "lineage-form", onsubmit: (ev) => {
      ev.preventDefault();
      if (input.value.trim()) fs.go(`#/lineage/${encodeURIComponent(input.value.trim())}`);
    } }, h("label", {}, "Definition or view:feature ", input), h("button", { type: "submit" }, "Show"),
    h("datalist", { id: "lineage-names" }, names.map((n) => h("option", { value: n })))));
    if (!names.length) {
      out.push(fs.notice("The registry is empty: nothing to draw yet. Apply definitions with ",
                         h("code", {}, "fstore apply --repo PATH"), " and reload."));
      return out;
    }
    const name = arg || (lists[0].items[0] || lists.find((l) => l.items.length).items[0]).name;
    input.value = name;
    let graph;
    try {
      graph = await api(`/api/v1/lineage/${encodeURIComponent(name)}`);
    } catch (e) {
      out.push(fs.failure(e));
      return out;
    }
    out.push(h("p.muted", {}, `What ${graph.root} is made of (left) and what is made from it (right). ` +
                              "Select a box to follow its lineage; dashed boxes are older versions a service still pins."),
             h("div", { id: "lineage-wrap" }, fs.drawLineage(graph)),
             h("details", {}, h("summary", {}, `The ${graph.edges.length} edges as text`),
               h("ul", { id: "lineage-edges" }, graph.edges.map(([a, b]) => h("li", {}, `${a} → ${b}`)))));
    return out;
  };
})();
