"""Diff the repo's definitions against the registry: what `apply` would do.

A definition whose stored spec (definition + what resolve derived) is
unchanged keeps its version; any other change gets the next version. Changes
that break readers of the old version (a key, type, window or function
changed, a column or feature removed, a definition removed) are flagged
incompatible: `apply` asks for --allow-incompatible before making them.

Feature services are pinned here: each reference is stored fully resolved
(`view@vN:feature`, `*` expanded), so a model keeps reading exactly the
versions it was applied with, and a view's new version shows up as a change of
the services that follow it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fsapp.registry.errors import DefinitionError
from fsapp.registry.model import KIND_ORDER, FeatureRef, kind_label
from fsapp.registry.render import window_sql
from fsapp.registry.resolve import Resolved
from fsapp.registry.store import Snapshot, canonical_json
from fscore.window_spec import spec_from_dict


@dataclass
class Change:
    action: str  # add, change, remove, unchanged
    kind: str
    name: str
    old_version: int | None
    new_version: int | None
    new_spec: dict | None
    details: list[str] = field(default_factory=list)
    incompatible: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"action": self.action, "kind": self.kind, "name": self.name, "old_version": self.old_version,
                "new_version": self.new_version, "details": self.details, "incompatible": self.incompatible}


@dataclass
class Plan:
    base_apply_id: int
    changes: list[Change]

    @property
    def pending(self) -> list[Change]:
        return [c for c in self.changes if c.action != "unchanged"]

    @property
    def incompatible(self) -> list[Change]:
        return [c for c in self.changes if c.incompatible]

    def versions(self) -> dict[str, int]:
        """name → version each live definition has once the plan is applied."""
        return {c.name: c.new_version for c in self.changes if c.action != "remove"}

    def summary(self) -> str:
        n = {a: sum(c.action == a for c in self.changes) for a in ("add", "change", "remove", "unchanged")}
        text = f"{n['add']} to add, {n['change']} to change, {n['remove']} to remove, {n['unchanged']} unchanged"
        return text + (f"; {len(self.incompatible)} incompatible" if self.incompatible else "")

    def render(self) -> str:
        marks = {"add": "+", "change": "~", "remove": "-", "unchanged": "="}
        lines = []
        for c in self.pending:
            label = f"{marks[c.action]} {kind_label(c.kind)} {c.name}"
            if c.action == "add":
                label += f" (v{c.new_version})"
            elif c.action == "change":
                label += f" v{c.old_version} -> v{c.new_version}"
            else:
                label += f" (was v{c.old_version})"
            lines.append(label + ("   [INCOMPATIBLE]" if c.incompatible else ""))
            lines += [f"    ! {d}" for d in c.incompatible] + [f"    . {d}" for d in c.details]
        if not self.pending:
            lines.append("No changes: the registry matches the repo.")
        lines.append(self.summary() + ".")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"base_apply_id": self.base_apply_id, "summary": self.summary(),
                "changes": [c.to_dict() for c in self.changes]}


def make_plan(resolved: dict[str, Resolved], snapshot: Snapshot, max_versions: dict[str, int], lookup) -> Plan:
    """`lookup(name, version)` returns a stored Entry or None (for pinned
    references to versions the repo no longer defines)."""
    changes: dict[str, Change] = {}
    for r in sorted(resolved.values(), key=lambda r: (KIND_ORDER.index(r.kind), r.name)):
        spec = (pin_service(r, changes, resolved, lookup) if r.kind == "feature_service"
                else pin_on_demand(r, changes) if r.kind == "on_demand_view" else r.spec())
        old = snapshot.get(r.name)
        if old is not None and old.kind == r.kind and canonical_json(old.spec) == canonical_json(spec):
            changes[r.name] = Change("unchanged", r.kind, r.name, old.version, old.version, spec)
            continue
        ch = Change("add" if old is None else "change", r.kind, r.name, old and old.version,
                    max_versions.get(r.name, 0) + 1, spec)
        if old is not None:
            if old.kind != r.kind:
                ch.incompatible.append(f"was a {kind_label(old.kind)}, now a {kind_label(r.kind)}")
            else:
                diff_spec(r.kind, old.spec, spec, ch)
        changes[r.name] = ch
    for name, old in snapshot.entries.items():
        if name not in changes:
            changes[name] = Change("remove", old.kind, name, old.version, None, None,
                                   incompatible=[f"removed: readers of {name} break (v{old.version} stays readable "
                                                 f"as {name}@v{old.version})"])
    ordered = sorted(changes.values(), key=lambda c: (KIND_ORDER.index(c.kind), c.name))
    return Plan(snapshot.apply_id, ordered)


def pin_service(r: Resolved, changes: dict[str, Change], resolved: dict, lookup) -> dict:
    pinned, problems = [], []
    for ref in r.definition.features:
        planned = changes.get(ref.view)
        if planned is not None and planned.kind in ("feature_view", "on_demand_view") \
                and ref.version in (None, planned.new_version):
            version, view_res = planned.new_version, planned.new_spec["resolved"]
        elif ref.version is None:
            continue  # resolve() already reported the missing view
        else:
            entry = lookup(ref.view, ref.version)
            if entry is None or entry.kind not in ("feature_view", "on_demand_view"):
                problems.append(f"feature service {r.name}: {ref}: the registry has no feature view "
                                f"{ref.view} version {ref.version}")
                continue
            version, view_res = ref.version, entry.resolved
        names = [f[0] for f in view_res["features"]]
        if ref.feature != "*" and ref.feature not in names:
            problems.append(f"feature service {r.name}: {ref}: {ref.view} v{version} has no feature "
                            f"{ref.feature!r} (it has: {', '.join(names)})")
            continue
        for feat in names if ref.feature == "*" else [ref.feature]:
            text = str(FeatureRef(ref.view, feat, version))
            if text not in pinned:
                pinned.append(text)
    if problems:
        raise DefinitionError(problems)
    return {"definition": r.definition.to_dict(), "resolved": {"features": pinned}}


def pin_on_demand(r: Resolved, changes: dict[str, Change]) -> dict:
    """An on-demand view reads the versions of its source views applied with
    it: each input 'view:feature' is stored as 'view@vN:feature'."""
    pinned = []
    for text in r.resolved["inputs"]:
        ref = FeatureRef.parse(text)
        pinned.append(str(FeatureRef(ref.view, ref.feature, changes[ref.view].new_version)))
    return {"definition": r.definition.to_dict(), "resolved": {**r.resolved, "inputs": pinned}}


def _cols(pairs) -> dict:
    return {n: t for n, t in pairs}


def diff_spec(kind: str, old: dict, new: dict, ch: Change) -> None:
    od, nd, orr, nr = old["definition"], new["definition"], old["resolved"], new["resolved"]
    if kind == "entity":
        if orr["join_keys"] != nr["join_keys"]:
            ch.incompatible.append(f"join keys {_fmt(orr['join_keys'])} -> {_fmt(nr['join_keys'])}")
    elif kind in ("stream", "source"):
        _diff_columns(_cols(orr["columns"]), _cols(nr["columns"]), "column", ch)
        if od["timestamp"] != nd["timestamp"]:
            ch.incompatible.append(f"timestamp column {od['timestamp']} -> {nd['timestamp']}")
        for key in ("topic", "allowed_lateness", "format", "batch_source", "path", "created_timestamp"):
            if key in od and od.get(key) != nd.get(key):
                ch.details.append(f"{key}: {od.get(key)!r} -> {nd.get(key)!r}")
    elif kind == "feature_view":
        if orr["keys"] != nr["keys"]:
            ch.incompatible.append(f"entity keys {_fmt(orr['keys'])} -> {_fmt(nr['keys'])}")
        if od["source"] != nd["source"]:
            ch.incompatible.append(f"source {od['source']} -> {nd['source']}")
        _diff_columns(_cols(orr["features"]), _cols(nr["features"]), "feature", ch)
        old_aggs = {a["name"]: a for a in od["aggregations"]}
        for a in nd["aggregations"]:
            b = old_aggs.get(a["name"])
            if b is None:
                continue
            if a["window"] != b["window"]:
                ch.incompatible.append(f"window of {a['name']}: {window_sql(spec_from_dict(b['window']))} -> "
                                       f"{window_sql(spec_from_dict(a['window']))}")
            if (a["function"], a["k"]) != (b["function"], b["k"]):
                ch.incompatible.append(f"aggregation of {a['name']}: {b['function']} -> {a['function']}")
            if a["column"] != b["column"]:
                ch.details.append(f"input of {a['name']}: {b['column']} -> {a['column']} (values change; backfill)")
        old_feats = {p["name"]: p["expr"] for p in od["features"]}
        for p in nd["features"]:
            if p["name"] in old_feats and old_feats[p["name"]] != p["expr"]:
                ch.details.append(f"expression of {p['name']}: {old_feats[p['name']]} -> {p['expr']}")
        for key in ("filter", "ttl", "online"):
            if od[key] != nd[key]:
                ch.details.append(f"{key}: {od[key]!r} -> {nd[key]!r}")
    elif kind == "request_source":
        _diff_columns(_cols(orr["columns"]), _cols(nr["columns"]), "column", ch)
    elif kind == "on_demand_view":
        _diff_columns(_cols(orr["features"]), _cols(nr["features"]), "feature", ch)
        old_feats = {p["name"]: p["expr"] for p in od["features"]}
        for p in nd["features"]:
            if p["name"] in old_feats and old_feats[p["name"]] != p["expr"]:
                ch.details.append(f"expression of {p['name']}: {old_feats[p['name']]} -> {p['expr']}")
        if od.get("function") != nd.get("function"):
            ch.details.append(f"function {nd.get('function_name')} changed")
        ch.details += [f"reads {f}" for f in nr["inputs"] if f not in orr["inputs"]]
        ch.details += [f"no longer reads {f}" for f in orr["inputs"] if f not in nr["inputs"]]
    elif kind == "feature_service":
        before, after = orr["features"], nr["features"]
        ch.details += [f"adds {f}" for f in after if f not in before]
        ch.details += [f"drops {f}" for f in before if f not in after]
    if od.get("description") != nd.get("description"):
        ch.details.append("description changed")
    if not ch.details and not ch.incompatible:
        ch.details.append("definition changed")


def _diff_columns(old: dict, new: dict, what: str, ch: Change) -> None:
    for name, typ in old.items():
        if name not in new:
            ch.incompatible.append(f"{what} {name} removed")
        elif new[name] != typ:
            ch.incompatible.append(f"{what} {name}: type {typ} -> {new[name]}")
    ch.details += [f"{what} {n} {t} added" for n, t in new.items() if n not in old]


def _fmt(pairs) -> str:
    return "(" + ", ".join(f"{n} {t}" for n, t in pairs) + ")"
