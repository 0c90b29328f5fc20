"""The one model both the SQL DSL and the Python API compile to.

Objects are frozen dataclasses holding canonical values only (durations in µs,
upper-case SQL type names, expressions re-rendered from their tokens), so two
definitions mean the same thing exactly when they compare equal. References
between objects are by name (a view names its source and entities); binding
names to objects and checking them against each other is `resolve.py`'s job.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

from fscore.window_spec import AGG_KINDS, MAX_LAST_K, WindowSpec, duration, spec_from_dict

from fsapp.registry.errors import DefinitionError

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Aggregation spellings users reach for, mapped to the engine's names.
AGG_ALIASES = {"avg": "mean", "stddev": "stddev_samp", "variance": "var_samp", "var": "var_samp",
               "std": "stddev_samp"}
# Aggregations that read any type; the others need a numeric (or boolean) input.
ANY_TYPE_AGGS = frozenset({"count", "first", "last", "approx_count_distinct"})

# Common type spellings → DuckDB's canonical names (DuckDB confirms them in resolve).
TYPE_ALIASES = {
    "INT8": "BIGINT", "LONG": "BIGINT", "INT64": "BIGINT",
    "INT": "INTEGER", "INT4": "INTEGER", "INT32": "INTEGER", "SIGNED": "INTEGER",
    "INT2": "SMALLINT", "SHORT": "SMALLINT", "INT16": "SMALLINT", "INT1": "TINYINT",
    "FLOAT8": "DOUBLE", "DOUBLE PRECISION": "DOUBLE", "FLOAT64": "DOUBLE", "NUMERIC": "DOUBLE",
    "FLOAT4": "FLOAT", "REAL": "FLOAT", "FLOAT32": "FLOAT",
    "STRING": "VARCHAR", "TEXT": "VARCHAR", "CHAR": "VARCHAR", "BPCHAR": "VARCHAR",
    "BOOL": "BOOLEAN", "LOGICAL": "BOOLEAN",
    "DATETIME": "TIMESTAMP", "TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE",
}
INTEGER_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT",
                           "USMALLINT", "UINTEGER", "UBIGINT"})
FLOAT_TYPES = frozenset({"FLOAT", "DOUBLE"})
TIME_TYPES = frozenset({"TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "DATE", "TIMESTAMP_MS", "TIMESTAMP_NS",
                        "TIMESTAMP_S"})
STREAM_FORMATS = ("json", "arrow", "avro")
DEFAULT_MAX_FUTURE = 3600 * 1_000_000  # events more than this ahead of the engine clock are refused
RESERVED_PREFIXES = ("_fs_", "__fs")  # the engine's and the offline log's own columns
FILE_FORMATS = ("parquet", "csv")


_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


def canonical_type(text: str) -> str:
    # single spaces outside quotes; a type with parameters other than numbers
    # (STRUCT(a INTEGER), MAP(...), ENUM('lo', 'hi')) keeps them as written:
    # ENUM('lo', 'hi') upper-cased became ENUM('LO', 'HI'), and every push of 'lo' failed
    text, parts, pos = str(text).strip(), [], 0
    for m in _QUOTED.finditer(text):
        parts += [re.sub(r"\s+", " ", text[pos:m.start()]), m.group()]
        pos = m.end()
    parts.append(re.sub(r"\s+", " ", text[pos:]))
    t = "".join(parts)
    m = re.fullmatch(r"([A-Za-z_][A-Za-z_ ]*?)\s*\((.*)\)((?:\s*\[\s*\d*\s*\])*)", t, re.S)
    if m and not re.fullmatch(r"[\d\s,]*", m.group(2)):
        return m.group(1).upper() + "(" + m.group(2) + ")" + m.group(3).replace(" ", "")
    t = t.upper()
    m = re.fullmatch(r"(.*?)\s*(\[\s*\d*\s*\])?", t)
    base, suffix = m.group(1), (m.group(2) or "").replace(" ", "")
    return TYPE_ALIASES.get(base, base) + suffix


def is_decimal_type(t: str) -> bool:
    """DECIMAL or DECIMAL(w,s) — not a list or array of them ("DECIMAL(10,2)[]"
    started with DECIMAL too: taken as a number, every push then failed)."""
    return re.fullmatch(r"DECIMAL(\(\d+,\s*\d+\))?", t) is not None


# Stream column types the pushed batch (Arrow) and the offline event log
# (Parquet) hold in another form, exactly: UUID, JSON and ENUM as text, HUGEINT and
# UHUGEINT as DECIMAL(38,0). Views read them as declared, online
# (`runtime.batch_relation`) and offline (`OfflineStore._as_declared`) alike.
_READ_AS_DECLARED = ("UUID", "JSON", "ENUM", "HUGEINT", "UHUGEINT", "INT128", "UINT128")
# ... and types the log cannot hold as they are (a stream refuses them at apply)
_NOT_IN_LOG = {"INTERVAL": "send durations as BIGINT (e.g. microseconds) or VARCHAR",
               "BIT": "the log holds its bytes as BLOB, which views would read; declare VARCHAR (the text of its "
                      "bits, '0101') and cast it in the view (b::BIT)",
               "BIGNUM": "the log holds its bytes as BLOB, which views would read; declare HUGEINT, "
                         "DECIMAL(38,0) or VARCHAR",
               "VARINT": "the log holds its bytes as BLOB, which views would read; declare HUGEINT, "
                         "DECIMAL(38,0) or VARCHAR",
               "TIME WITH TIME ZONE": "the log holds it as TIME, without its offset; declare TIMESTAMPTZ or "
                                      "VARCHAR",
               "TIMETZ": "the log holds it as TIME, without its offset; declare TIMESTAMPTZ or VARCHAR",
               "UNION": "Parquet has no union type; declare a column for each member, or VARCHAR"}


def _has_type(t: str, name: str) -> bool:
    """Whether type `name` appears in DuckDB type text `t`, nested ones
    included (INTERVAL[], STRUCT(a BIT)) — not as a quoted value or name, nor
    as a STRUCT field's name (a word followed by a type)."""
    bare = _QUOTED.sub("''", t.upper())
    return re.search(rf"\b{name}\b(?!\s+(?!WITH\b)[A-Z_'])", bare) is not None


def read_as_declared(t: str) -> bool:
    """Whether a stream column of DuckDB type `t` is held in another form by
    the pushed batch and the event log, and cast back for views to read."""
    return any(_has_type(t, name) for name in _READ_AS_DECLARED)


def not_in_log(t: str) -> str | None:
    """Why the offline event log cannot hold a stream column of DuckDB type
    `t` (and what to declare instead), or None."""
    for name, why in _NOT_IN_LOG.items():
        if _has_type(t, name):
            return f"{name}: {why}"
    return None


def is_numeric_type(t: str) -> bool:
    return t in INTEGER_TYPES or t in FLOAT_TYPES or t == "BOOLEAN" or is_decimal_type(t)


def online_kind(t: str) -> tuple[str, int] | None:
    """(fscore.schema kind, size) that holds a value of SQL type `t` online,
    or None when the online store cannot hold it."""
    if t in INTEGER_TYPES or t in TIME_TYPES:
        return ("int64", 0)  # times are held as µs since the epoch
    if t in FLOAT_TYPES or is_decimal_type(t):
        return ("float64", 0)
    if t == "BOOLEAN":
        return ("bool", 0)
    if t == "VARCHAR":
        return ("string", 0)
    m = re.fullmatch(r"(FLOAT|DOUBLE)\[(\d+)\]", t)
    if m and int(m.group(2)) > 0:  # float32 or float64 elements, as declared
        return ("vector" if m.group(1) == "FLOAT" else "vector64", int(m.group(2)))
    return None


def check_name(name, what: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DefinitionError(f"{what} name {name!r} must be an identifier: letters, digits, _ (not first digit)")
    return name


def format_duration(us: int) -> str:
    """Shortest exact spelling of a µs duration ('5m', '90s', '1500us')."""
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000),
                       ("ms", 1_000)):
        if us and us % size == 0:
            return f"{us // size}{unit}"
    return f"{us}us"


def _duration(value, what: str) -> int:
    try:
        us = duration(value)
    except ValueError as e:
        raise DefinitionError(f"{what}: {e}") from None
    if us < 0:
        raise DefinitionError(f"{what} must be >= 0, got {value!r}")
    return us


@dataclass(frozen=True)
class Column:
    name: str
    type: str

    def __post_init__(self):
        check_name(self.name, "column")
        object.__setattr__(self, "type", canonical_type(self.type))

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type}


def check_unreserved(columns, what: str) -> None:
    """No column name may start with a prefix fstore keeps for its own columns."""
    reserved = [c.name for c in columns if c.name.lower().startswith(RESERVED_PREFIXES)]
    if reserved:
        raise DefinitionError(f"{what}: column name(s) {', '.join(reserved)} start with a prefix "
                              f"fstore reserves ({', '.join(RESERVED_PREFIXES)}); rename them")


def columns_of(items, what: str) -> tuple[Column, ...]:
    """Columns from Column objects, (name, type) pairs or a {name: type} dict."""
    if isinstance(items, dict):
        items = list(items.items())
    out = tuple(c if isinstance(c, Column) else Column(*c) for c in items)
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DefinitionError(f"{what}: duplicate column(s) {', '.join(dup)}")
    return out


class Definition:
    """Mixin: kind tag and a plain-dict form for storage (JSON-safe)."""

    KIND = ""

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = _plain(v)
        return out


def _plain(v):
    if isinstance(v, WindowSpec):
        return v.to_dict()
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if hasattr(v, "to_dict"):
        return v.to_dict()
    return v


@dataclass(frozen=True)
class Entity(Definition):
    """A thing features describe, identified by its join key column(s)."""

    KIND = "entity"
    name: str
    join_keys: tuple[Column, ...]
    description: str = ""

    def __post_init__(self):
        check_name(self.name, "entity")
        object.__setattr__(self, "join_keys", columns_of(self.join_keys, f"entity {self.name}"))
        if not self.join_keys:
            raise DefinitionError(f"entity {self.name}: needs at least one join key column")


@dataclass(frozen=True)
class Stream(Definition):
    """Events pushed over REST and, when `topic` is set, read from Kafka."""

    KIND = "stream"
    name: str
    columns: tuple[Column, ...]
    timestamp: str
    topic: str | None = None
    allowed_lateness: int = 0
    format: str = "json"
    batch_source: str | None = None
    description: str = ""
    avro_schema: str | None = None  # .avsc path (relative to the repo) for format = 'avro'
    max_future: int = DEFAULT_MAX_FUTURE

    def __post_init__(self):
        check_name(self.name, "stream")
        object.__setattr__(self, "columns", columns_of(self.columns, f"stream {self.name}"))
        check_unreserved(self.columns, f"stream {self.name}")
        object.__setattr__(self, "allowed_lateness",
                           _duration(self.allowed_lateness, f"stream {self.name}: allowed_lateness"))
        object.__setattr__(self, "max_future", _duration(self.max_future, f"stream {self.name}: max_future"))
        if self.max_future <= 0:
            raise DefinitionError(f"stream {self.name}: max_future must be > 0 (how far ahead of the engine "
                                  "clock an event may be), e.g. '1h'")
        if self.format not in STREAM_FORMATS:
            raise DefinitionError(f"stream {self.name}: format {self.format!r} is not one of {', '.join(STREAM_FORMATS)}")
        if self.topic is not None and not self.topic:
            raise DefinitionError(f"stream {self.name}: topic must be non-empty (omit it for a push-only stream)")
        if (self.format == "avro") != bool(self.avro_schema):
            raise DefinitionError(f"stream {self.name}: format 'avro' and avro_schema go together, e.g. "
                                  "WITH (format = 'avro', avro_schema = 'schemas/events.avsc')")

    def to_dict(self) -> dict:
        out = super().to_dict()
        if out["max_future"] == DEFAULT_MAX_FUTURE:  # stored as before unless set: no new version of old streams
            del out["max_future"]
        return out


@dataclass(frozen=True)
class FileSource(Definition):
    """A batch of rows in Parquet or CSV files (a path or glob)."""

    KIND = "source"
    name: str
    columns: tuple[Column, ...]
    timestamp: str
    path: str
    format: str = "parquet"
    created_timestamp: str | None = None
    description: str = ""

    def __post_init__(self):
        check_name(self.name, "source")
        object.__setattr__(self, "columns", columns_of(self.columns, f"source {self.name}"))
        if self.format not in FILE_FORMATS:
            raise DefinitionError(f"source {self.name}: format {self.format!r} is not one of {', '.join(FILE_FORMATS)}")
        if not self.path:
            raise DefinitionError(f"source {self.name}: needs a path (file or glob)")


@dataclass(frozen=True)
class Projection:
    """A plain feature: a DuckDB scalar expression over one source row."""

    name: str
    expr: str

    def __post_init__(self):
        check_name(self.name, "feature")
        from fsapp.registry.dsl import canonical_expr
        object.__setattr__(self, "expr", canonical_expr(self.expr, f"feature {self.name}"))

    def to_dict(self) -> dict:
        return {"name": self.name, "expr": self.expr}


@dataclass(frozen=True)
class Aggregation:
    """A windowed feature: `function(column) OVER window`. `column` is a DuckDB
    scalar expression (usually a bare column name); None only for count(*)."""

    name: str
    function: str
    column: str | None
    window: WindowSpec
    k: int = 0

    def __post_init__(self):
        check_name(self.name, "feature")
        fn = AGG_ALIASES.get(self.function.lower(), self.function.lower())
        if fn not in AGG_KINDS:
            raise DefinitionError(f"feature {self.name}: unknown aggregation {self.function!r}; "
                                  f"use one of {', '.join(AGG_KINDS)}")
        object.__setattr__(self, "function", fn)
        if self.column is None:
            if fn != "count":
                raise DefinitionError(f"feature {self.name}: {fn} needs a column, e.g. {fn}(amount)")
        else:
            from fsapp.registry.dsl import canonical_expr
            expr = canonical_expr(self.column, f"feature {self.name}")
            object.__setattr__(self, "column", None if expr == "*" and fn == "count" else expr)
        if fn == "last_k" and not 1 <= self.k <= MAX_LAST_K:
            raise DefinitionError(f"feature {self.name}: last_k needs 1 <= k <= {MAX_LAST_K}, "
                                  f"e.g. last_k(amount, 5); got k={self.k}")
        if fn != "last_k" and self.k:
            raise DefinitionError(f"feature {self.name}: only last_k takes k, not {fn}")
        if not isinstance(self.window, WindowSpec):
            raise DefinitionError(f"feature {self.name}: window must be tumbling(..), sliding(..), "
                                  f"continuous(..), session(..) or lifetime(), got {self.window!r}")

    def to_dict(self) -> dict:
        return {"name": self.name, "function": self.function, "column": self.column,
                "window": self.window.to_dict(), "k": self.k}

    @classmethod
    def from_dict(cls, d: dict) -> "Aggregation":
        return cls(d["name"], d["function"], d["column"], spec_from_dict(d["window"]), d.get("k", 0))


@dataclass(frozen=True)
class FeatureView(Definition):
    """Plain (rows kept as they are, served within `ttl`) when it has no
    aggregations; aggregated (windows over a stream) otherwise. `entities` may
    be empty: resolve infers them from the selected join keys."""

    KIND = "feature_view"
    name: str
    source: str
    entities: tuple[str, ...] = ()
    features: tuple[Projection, ...] = ()
    aggregations: tuple[Aggregation, ...] = ()
    filter: str | None = None
    ttl: int = 0
    online: bool = True
    description: str = ""

    def __post_init__(self):
        check_name(self.name, "feature view")
        check_name(self.source, f"feature view {self.name}: source")
        object.__setattr__(self, "entities", tuple(check_name(e, "entity") for e in self.entities))
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "aggregations", tuple(self.aggregations))
        object.__setattr__(self, "ttl", _duration(self.ttl, f"feature view {self.name}: ttl"))
        if not isinstance(self.online, bool):  # a truthy 'false' must not mean True
            raise DefinitionError(f"feature view {self.name}: online is True or False, got {self.online!r}")
        if self.filter is not None:
            from fsapp.registry.dsl import canonical_expr
            object.__setattr__(self, "filter", canonical_expr(self.filter, f"feature view {self.name}: filter"))
        if not self.features and not self.aggregations:
            raise DefinitionError(f"feature view {self.name}: needs at least one feature or aggregation")
        names = [f.name for f in self.features] + [a.name for a in self.aggregations]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DefinitionError(f"feature view {self.name}: duplicate feature name(s) {', '.join(dup)}")

    @property
    def is_aggregated(self) -> bool:
        return bool(self.aggregations)


@dataclass(frozen=True, order=True)
class FeatureRef:
    """`view:feature` (latest version), `view@vN:feature` (pinned), or
    `view:*` (every feature of the view)."""

    view: str
    feature: str
    version: int | None = None

    def __post_init__(self):
        check_name(self.view, "feature view")
        if self.feature != "*":
            check_name(self.feature, "feature")
        if self.version is not None and (not isinstance(self.version, int) or self.version < 1):
            raise DefinitionError(f"feature reference {self.view}: version must be >= 1, got {self.version!r}")

    @classmethod
    def parse(cls, text: str) -> "FeatureRef":
        m = re.fullmatch(r"\s*([A-Za-z_]\w*)(?:@v(\d+))?(?::([A-Za-z_]\w*|\*))?\s*", str(text))
        if not m:
            raise DefinitionError(f"bad feature reference {text!r}: write view:feature, view@v2:feature or view:*")
        return cls(m.group(1), m.group(3) or "*", int(m.group(2)) if m.group(2) else None)

    def __str__(self) -> str:
        return f"{self.view}{'' if self.version is None else f'@v{self.version}'}:{self.feature}"

    def to_dict(self) -> str:
        return str(self)


@dataclass(frozen=True)
class FeatureService(Definition):
    """A named set of features one model reads."""

    KIND = "feature_service"
    name: str
    features: tuple[FeatureRef, ...]
    description: str = ""

    def __post_init__(self):
        check_name(self.name, "feature service")
        refs = tuple(r if isinstance(r, FeatureRef) else FeatureRef.parse(r) for r in self.features)
        if not refs:
            raise DefinitionError(f"feature service {self.name}: needs at least one feature")
        seen = [str(r) for r in refs]
        dup = sorted({r for r in seen if seen.count(r) > 1})
        if dup:
            raise DefinitionError(f"feature service {self.name}: feature(s) listed twice: {', '.join(dup)}")
        object.__setattr__(self, "features", refs)


@dataclass(frozen=True)
class RequestSource(Definition):
    """Columns known only at request time (the transaction being scored):
    given beside the entity keys in an online read, and as columns of the
    entity_df (the label rows) in a training set."""

    KIND = "request_source"
    name: str
    columns: tuple[Column, ...]
    description: str = ""

    def __post_init__(self):
        check_name(self.name, "request source")
        object.__setattr__(self, "columns", columns_of(self.columns, f"request source {self.name}"))
        if not self.columns:
            raise DefinitionError(f"request source {self.name}: needs at least one column")
        check_unreserved(self.columns, f"request source {self.name}")


@dataclass(frozen=True)
class OnDemandView(Definition):
    """Features computed at read time from request columns and other views'
    features, the same online and offline. `sources`: the request sources
    and feature views it reads (SQL: its FROM list). SQL form: `features`,
    DuckDB expressions over request columns (bare names) and features
    (`view.feature`). Python form: `function` (the source of a function
    `function_name(df) -> df` over pandas), reading `inputs` ('view:feature')
    and the request sources' columns, returning `outputs`."""

    KIND = "on_demand_view"
    name: str
    sources: tuple[str, ...]
    features: tuple[Projection, ...] = ()
    function: str | None = None
    function_name: str | None = None
    inputs: tuple[FeatureRef, ...] = ()
    outputs: tuple[Column, ...] = ()
    description: str = ""

    def __post_init__(self):
        check_name(self.name, "on-demand feature view")
        object.__setattr__(self, "sources", tuple(check_name(s, f"on-demand view {self.name}: source")
                                                  for s in self.sources))
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "inputs", tuple(r if isinstance(r, FeatureRef) else FeatureRef.parse(r)
                                                 for r in self.inputs))
        object.__setattr__(self, "outputs", columns_of(self.outputs, f"on-demand view {self.name}: outputs"))
        if not self.sources:
            raise DefinitionError(f"on-demand view {self.name}: needs at least one source (a request source or "
                                  "a feature view) to read")
        if (self.function is None) == (not self.features):
            raise DefinitionError(f"on-demand view {self.name}: give SQL features or a Python function, one of them")
        if self.function is not None:
            if not self.function_name or not self.outputs:
                raise DefinitionError(f"on-demand view {self.name}: a Python function needs its name and its "
                                      "outputs (schema=[Field('ratio', Float64)])")
            if any(r.feature == "*" or r.version is not None for r in self.inputs):
                raise DefinitionError(f"on-demand view {self.name}: inputs name single features of the latest "
                                      "version, like user_txn:avg_amount_1d")
        names = [f.name for f in self.features] + [c.name for c in self.outputs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DefinitionError(f"on-demand view {self.name}: duplicate feature name(s) {', '.join(dup)}")


KINDS = {c.KIND: c for c in (Entity, Stream, FileSource, RequestSource, FeatureView, OnDemandView, FeatureService)}
# The order in which definitions depend on each other (apply and plan print in it).
KIND_ORDER = ("entity", "source", "stream", "request_source", "feature_view", "on_demand_view", "feature_service")


def from_dict(kind: str, d: dict) -> Definition:
    """Inverse of `Definition.to_dict`."""
    d = dict(d)
    if kind in ("entity",):
        d["join_keys"] = [Column(**c) for c in d["join_keys"]]
    elif kind in ("stream", "source", "request_source"):
        d["columns"] = [Column(**c) for c in d["columns"]]
    elif kind == "on_demand_view":
        d["features"] = [Projection(**p) for p in d["features"]]
        d["outputs"] = [Column(**c) for c in d["outputs"]]
        d["inputs"] = [FeatureRef.parse(r) for r in d["inputs"]]
        d["sources"] = tuple(d["sources"])
    elif kind == "feature_view":
        d["features"] = [Projection(**p) for p in d["features"]]
        d["aggregations"] = [Aggregation.from_dict(a) for a in d["aggregations"]]
        d["entities"] = tuple(d["entities"])
    elif kind == "feature_service":
        d["features"] = [FeatureRef.parse(r) for r in d["features"]]
    try:
        cls = KINDS[kind]
    except KeyError:
        raise DefinitionError(f"unknown definition kind {kind!r}") from None
    return cls(**d)


def kind_label(kind: str) -> str:
    return {"feature_view": "feature view", "feature_service": "feature service", "request_source": "request source",
            "on_demand_view": "on-demand view"}.get(kind, kind)


__all__ = ["Column", "Entity", "Stream", "FileSource", "RequestSource", "OnDemandView", "Projection", "Aggregation",
           "FeatureView",
           "FeatureRef", "FeatureService", "Definition", "from_dict", "KINDS", "KIND_ORDER",
           "canonical_type", "online_kind", "format_duration"]
