"""Lineage: topic/file → source → stream → feature view (version) → feature →
feature service, built from the live registry (plus the older view versions
that services still pin).

`lineage(store, name)` returns a JSON-ready graph of everything upstream and
downstream of one node, for the REST layer; `render_lineage` prints it as the
tree `fstore lineage NAME` shows.
"""
from __future__ import annotations

import re

from fsapp.registry.errors import NotFoundError
from fsapp.registry.model import FeatureRef
from fsapp.registry.store import Entry, RegistryStore

_LABELS = {"topic": "kafka topic", "file": "files", "source": "source", "stream": "stream", "entity": "entity",
           "feature_view": "feature view", "feature": "feature", "feature_service": "feature service",
           "request_source": "request source", "on_demand_view": "on-demand view", "model": "model"}


class _Graph:
    def __init__(self):
        self.nodes: dict[str, dict] = {}
        self.edges: set[tuple[str, str]] = set()

    def node(self, node_id: str, kind: str, name: str, version: int | None = None, **extra) -> str:
        self.nodes.setdefault(node_id, {"id": node_id, "kind": kind, "name": name, "version": version, **extra})
        return node_id

    def edge(self, a: str, b: str) -> None:
        self.edges.add((a, b))


def _obj_id(e: Entry) -> str:
    return f"{e.kind}:{e.name}@v{e.version}"


def build_graph(store: RegistryStore) -> tuple[_Graph, dict[str, Entry]]:
    snap = store.snapshot()
    g = _Graph()
    live = snap.entries
    views: dict[tuple[str, int], Entry] = {}

    def add_object(e: Entry) -> str:
        return g.node(_obj_id(e), e.kind, e.name, e.version, live=live.get(e.name) == e)

    def add_view(e: Entry) -> str:
        vid = add_object(e)
        d = e.spec["definition"]
        src = live.get(d["source"])
        if src is not None:
            g.edge(add_object(src), vid)
        for ent in d["entities"]:
            if ent in live:
                g.edge(add_object(live[ent]), vid)
        add_features(e, vid)
        return vid

    def add_features(e: Entry, vid: str) -> None:
        for fname, ftype in e.resolved["features"]:
            fid = g.node(f"feature:{e.name}@v{e.version}:{fname}", "feature", f"{e.name}:{fname}", e.version,
                         type=ftype)
            g.edge(vid, fid)
        views[(e.name, e.version)] = e

    def add_on_demand(e: Entry) -> str:
        """request source → on-demand view, input feature → on-demand view → its features."""
        oid = add_object(e)
        for src in e.spec["definition"]["sources"]:
            if src in live and live[src].kind == "request_source":
                g.edge(add_object(live[src]), oid)
        for text in e.resolved["inputs"]:
            ref = FeatureRef.parse(text)
            if (ref.view, ref.version) not in views:
                try:
                    add_view(store.get(ref.view, ref.version))
                except NotFoundError:
                    continue
            g.edge(f"feature:{ref.view}@v{ref.version}:{ref.feature}", oid)
        add_features(e, oid)
        return oid

    for e in live.values():
        if e.kind in ("source", "stream"):
            oid = add_object(e)
            d = e.spec["definition"]
            if d.get("path"):
                g.edge(g.node(f"file:{d['path']}", "file", d["path"], format=d.get("format")), oid)
            if d.get("topic"):
                g.edge(g.node(f"topic:{d['topic']}", "topic", d["topic"]), oid)
            if d.get("batch_source") and d["batch_source"] in live:
                g.edge(add_object(live[d["batch_source"]]), oid)
        elif e.kind in ("entity", "request_source"):
            add_object(e)
        elif e.kind == "feature_view":
            add_view(e)
    for e in live.values():
        if e.kind == "on_demand_view":
            add_on_demand(e)
    for e in live.values():
        if e.kind != "feature_service":
            continue
        sid = add_object(e)
        for text in e.resolved["features"]:
            ref = FeatureRef.parse(text)
            if (ref.view, ref.version) not in views:
                try:
                    old = store.get(ref.view, ref.version)
                    (add_on_demand if old.kind == "on_demand_view" else add_view)(old)
                except NotFoundError:
                    continue
            g.edge(f"feature:{ref.view}@v{ref.version}:{ref.feature}", sid)
    return g, live


def _find_root(g: _Graph, live: dict[str, Entry], name: str) -> str:
    m = re.fullmatch(r"([A-Za-z_]\w*)(?:@v(\d+))?(?::([A-Za-z_]\w*))?", name.strip())
    if not m:
        if name in g.nodes:
            return name
        raise NotFoundError(f"cannot read {name!r}: give a name, name@vN, view:feature or view@vN:feature")
    obj, version, feature = m.group(1), m.group(2), m.group(3)
    if version is None:
        if obj not in live:
            raise NotFoundError(f"the registry has no live definition named {obj!r}")
        version = live[obj].version
    version = int(version)
    if feature:
        node_id = f"feature:{obj}@v{version}:{feature}"
    else:
        node_id = next((n for n in g.nodes if re.fullmatch(rf"[a-z_]+:{re.escape(obj)}@v{version}", n)), "")
    if node_id not in g.nodes:
        raise NotFoundError(f"no lineage for {name!r}: not in the live registry (or no such feature/version)")
    return node_id


def lineage(store: RegistryStore, name: str) -> dict:
    """{"root": id, "nodes": [...], "edges": [[from, to], ...]}: the node for
    `name` (name, name@vN, view:feature, view@vN:feature) with everything it
    is made of and everything made from it."""
    g, live = build_graph(store)
    root = _find_root(g, live, name)
    keep = {root}
    for forward in (True, False):
        frontier = [root]
        while frontier:
            cur = frontier.pop()
            for a, b in g.edges:
                nxt = b if forward and a == cur else a if not forward and b == cur else None
                if nxt is not None and nxt not in keep:
                    keep.add(nxt)
                    frontier.append(nxt)
    edges = sorted((a, b) for a, b in g.edges if a in keep and b in keep)
    upstream = _reach(root, edges, forward=False)
    nodes = [dict(g.nodes[n], upstream=n in upstream) for n in sorted(keep)]
    return {"root": root, "nodes": nodes, "edges": [list(e) for e in edges]}


def with_models(graph: dict, models: list[dict]) -> dict:
    """`graph` (from `lineage`) with the models that read it: each model
    (`{"model_id", "name", "model_uri", "feature_service", "features":
    ["view@vN:feature", ...]}`, e.g. from fsapp.integrations.mlflow.logged_models)
    becomes a node `model:<model_id>` below the features it reads, when one
    of them is the queried node or made from it (a model that reads a
    feature a service is made of is not "used by" that service, unless it
    was logged with that service: then it hangs below the service too)."""
    nodes = {n["id"]: n for n in graph["nodes"]}
    below = {i for i, n in nodes.items() if not n.get("upstream")}  # the root and what is made from it
    services = {n["name"]: i for i, n in nodes.items() if n["kind"] == "feature_service" and i in below}
    edges = [tuple(e) for e in graph["edges"]]
    added = []
    for m in models:
        links = [f"feature:{ref}" for ref in m.get("features", ()) if f"feature:{ref}" in below]
        if m.get("feature_service") in services:
            links.append(services[m["feature_service"]])
        if not links:
            continue
        mid = f"model:{m['model_id']}"
        added.append({"id": mid, "kind": "model", "name": m.get("name") or m["model_id"], "version": None,
                      "uri": m.get("model_uri"), "run_id": m.get("run_id"), "upstream": False})
        edges += [(link, mid) for link in links]
    return {**graph, "nodes": graph["nodes"] + added, "edges": [list(e) for e in sorted(set(edges))]}


def _reach(root: str, edges, forward: bool) -> set[str]:
    seen, frontier = set(), [root]
    while frontier:
        cur = frontier.pop()
        for a, b in edges:
            nxt = b if forward and a == cur else a if not forward and b == cur else None
            if nxt and nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def _label(n: dict) -> str:
    text = f"{_LABELS.get(n['kind'], n['kind'])} {n['name']}"
    if n["kind"] == "feature":
        text += f" (v{n['version']}, {n['type']})"
    elif n["kind"] == "model":
        text += f" ({n['uri']})" if n.get("uri") else ""
    elif n["version"] is not None:
        text += f" v{n['version']}" + ("" if n.get("live", True) else " (old version)")
    return text


def render_lineage(graph: dict) -> str:
    """The queried node, then what it is made of (walking up) and what uses
    it (walking down), as trees; a node met twice is printed once in full."""
    nodes = {n["id"]: n for n in graph["nodes"]}
    up: dict[str, list[str]] = {}
    down: dict[str, list[str]] = {}
    for a, b in graph["edges"]:
        down.setdefault(a, []).append(b)
        up.setdefault(b, []).append(a)
    root = graph["root"]
    lines = [_label(nodes[root])]

    def walk(links, node_id: str, prefix: str, seen: set) -> None:
        kids = sorted(links.get(node_id, []))
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            again = kid in seen and links.get(kid)
            lines.append(prefix + ("└── " if last else "├── ") + _label(nodes[kid]) + (" (see above)" if again else ""))
            if not again:
                seen.add(kid)
                walk(links, kid, prefix + ("    " if last else "│   "), seen)

    for title, links in (("made of:", up), ("used by:", down)):
        if links.get(root):
            lines.append(title)
            walk(links, root, "  ", set())
    return "\n".join(lines)
