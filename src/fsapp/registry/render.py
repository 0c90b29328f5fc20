"""Model → SQL DSL text. `parse(to_sql(x)) == [x]` for every definition (the
round-trip property test holds us to it), so `fstore registry describe` can
show any stored version as the statement that would recreate it."""
from __future__ import annotations

from fscore.window_spec import WindowSpec

from fsapp.registry.model import (
    DEFAULT_MAX_FUTURE, Aggregation, Entity, FeatureService, FeatureView, FileSource, OnDemandView, RequestSource,
    Stream, format_duration,
)


def quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _options(pairs) -> str:
    items = [f"{k} = {v}" for k, v in pairs if v is not None]
    return f" WITH ({', '.join(items)})" if items else ""


def _columns(cols) -> str:
    return "(" + ", ".join(f"{c.name} {c.type}" for c in cols) + ")"


def window_sql(w: WindowSpec) -> str:
    if w.kind == "tumbling":
        return f"tumbling({quote(format_duration(w.size))})"
    if w.kind in ("sliding", "continuous"):
        return f"{w.kind}({quote(format_duration(w.size))}, {quote(format_duration(w.hop))})"
    if w.kind == "session":
        return f"session({quote(format_duration(w.gap))})"
    return "lifetime()"


def aggregation_sql(a: Aggregation) -> str:
    arg = "*" if a.column is None else a.column
    if a.function == "last_k":
        arg += f", {a.k}"
    return f"{a.function}({arg}) OVER {window_sql(a.window)} AS {a.name}"


def to_sql(obj, keys=()) -> str:
    """One CREATE statement (no trailing ';'). `keys`: join key columns to
    list first in a feature view's SELECT (resolve strips them, so the
    statement means the same with or without them)."""
    desc = quote(obj.description) if getattr(obj, "description", "") else None
    if isinstance(obj, Entity):
        return f"CREATE ENTITY {obj.name} {_columns(obj.join_keys)}{_options([('description', desc)])}"
    if isinstance(obj, Stream):
        opts = [("topic", obj.topic and quote(obj.topic)), ("timestamp", quote(obj.timestamp)),
                ("allowed_lateness", quote(format_duration(obj.allowed_lateness)) if obj.allowed_lateness else None),
                ("format", quote(obj.format) if obj.format != "json" else None),
                ("batch_source", obj.batch_source and quote(obj.batch_source)), ("description", desc),
                ("avro_schema", obj.avro_schema and quote(obj.avro_schema)),
                ("max_future", quote(format_duration(obj.max_future)) if obj.max_future != DEFAULT_MAX_FUTURE
                 else None)]
        return f"CREATE STREAM {obj.name} {_columns(obj.columns)}{_options(opts)}"
    if isinstance(obj, FileSource):
        opts = [("path", quote(obj.path)), ("format", quote(obj.format)), ("timestamp", quote(obj.timestamp)),
                ("created_timestamp", obj.created_timestamp and quote(obj.created_timestamp)),
                ("description", desc)]
        return f"CREATE SOURCE {obj.name} {_columns(obj.columns)}{_options(opts)}"
    if isinstance(obj, FeatureView):
        opts = [("ttl", quote(format_duration(obj.ttl)) if obj.ttl else None),
                ("entities", quote(", ".join(obj.entities)) if obj.entities else None),
                ("online", None if obj.online else "FALSE"), ("description", desc)]
        items = list(keys) + [p.expr if p.expr == p.name else f"{p.expr} AS {p.name}" for p in obj.features]
        items += [aggregation_sql(a) for a in obj.aggregations]
        where = f"\nWHERE {obj.filter}" if obj.filter else ""
        sep = ",\n       "
        return (f"CREATE FEATURE VIEW {obj.name}{_options(opts)} AS\nSELECT {sep.join(items)}\n"
                f"FROM {obj.source}{where}")
    if isinstance(obj, RequestSource):
        return f"CREATE REQUEST SOURCE {obj.name} {_columns(obj.columns)}{_options([('description', desc)])}"
    if isinstance(obj, OnDemandView):
        if obj.function is not None:  # no SQL form: the Python function is shown as a comment
            body = "\n".join("-- " + line for line in obj.function.splitlines())
            return (f"-- on-demand view {obj.name}: Python function {obj.function_name}, reads "
                    f"{', '.join(map(str, obj.inputs))}, returns {_columns(obj.outputs)}\n{body}")
        sep = ",\n       "
        items = sep.join(f"{p.expr} AS {p.name}" for p in obj.features)
        return (f"CREATE ON DEMAND FEATURE VIEW {obj.name}{_options([('description', desc)])} AS\n"
                f"SELECT {items}\nFROM {', '.join(obj.sources)}")
    if isinstance(obj, FeatureService):
        refs = ",\n    ".join(str(r) for r in obj.features)
        return f"CREATE FEATURE SERVICE {obj.name}{_options([('description', desc)])} AS (\n    {refs}\n)"
    raise TypeError(f"not a registry definition: {obj!r}")


def script_sql(objs) -> str:
    return "".join(to_sql(o) + ";\n\n" for o in objs)
