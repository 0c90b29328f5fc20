"""The SQL DSL: a hand-written recursive-descent parser over a small lexer.

The grammar is in docs/dsl.md. Row-level expressions (projections, filters,
aggregation inputs) are not parsed here beyond balancing brackets: they are
DuckDB SQL, kept as token text and checked by DuckDB itself in resolve.py, so
anything DuckDB accepts works and we never drift from its grammar.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from fscore.window_spec import AGG_KINDS, WINDOW_KINDS, continuous, lifetime, session, sliding, tumbling

from fsapp.registry.errors import DefinitionError, DslSyntaxError
from fsapp.registry.model import (
    AGG_ALIASES, DEFAULT_MAX_FUTURE, Aggregation, Entity, FeatureRef, FeatureService, FeatureView, FileSource,
    OnDemandView, Projection, RequestSource, Stream,
)

_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+|--[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^']|'')*')
  | (?P<qident>"(?:[^"]|"")*")
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<op>->>|::|<=|>=|<>|!=|==|\|\||->|\*\*|//|<<|>>|!~~|~~|\^@|[-+*/%<>=!~^&|()\[\]{},;:.@?$])
""", re.VERBOSE | re.DOTALL)


@dataclass(frozen=True)
class Token:
    kind: str  # ident, qident, string, number, op, eof
    text: str
    line: int
    col: int

    def is_kw(self, *words: str) -> bool:
        return self.kind == "ident" and self.text.upper() in words

    def is_op(self, *ops: str) -> bool:
        return self.kind == "op" and self.text in ops

    def describe(self) -> str:
        return "end of input" if self.kind == "eof" else repr(self.text)


def tokenize(text: str, source: str = "<sql>") -> list[Token]:
    out, pos, line, line_start = [], 0, 1, 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            col = pos - line_start + 1
            if text[pos] in "'\"" or text.startswith("/*", pos):
                raise DslSyntaxError(f"unterminated {'comment' if text[pos] == '/' else 'quoted text'}",
                                     line, col, source)
            raise DslSyntaxError(f"unexpected character {text[pos]!r}", line, col, source)
        kind, tok = m.lastgroup, m.group()
        if kind != "ws":
            out.append(Token(kind, tok, line, pos - line_start + 1))
        newlines = tok.count("\n")
        if newlines:
            line += newlines
            line_start = pos + tok.rindex("\n") + 1
        pos = m.end()
    out.append(Token("eof", "", line, pos - line_start + 1))
    return out


def render_tokens(tokens) -> str:
    """Canonical text of an expression: one space between tokens except inside
    brackets, before commas, around '.' and '::', and between a function name
    and its '(' — so 'sum( a+b )' and 'sum(a + b)' store the same text."""
    parts, prev = [], None
    for t in tokens:
        if prev is not None:
            tight = (prev.is_op("(", "[", ".", "::") or t.is_op(")", "]", ",", ".", "::")
                     or (t.is_op("(", "[") and (prev.kind in ("ident", "qident") or prev.is_op(")", "]"))))
            if not tight:
                parts.append(" ")
        parts.append(t.text)
        prev = t
    return "".join(parts)


def canonical_expr(text: str, what: str = "expression") -> str:
    """Canonical text of one DuckDB scalar expression written in Python; it must
    be a single expression with balanced brackets (no ';' smuggling a second
    statement into DuckDB)."""
    if not isinstance(text, str) or not text.strip():
        raise DefinitionError(f"{what}: expression must be a non-empty string, got {text!r}")
    try:
        toks = tokenize(text, what)[:-1]
    except DslSyntaxError as e:
        raise DefinitionError(f"{what}: {e.message} in {text!r}") from None
    depth = 0
    for t in toks:
        if t.is_op(";"):
            raise DefinitionError(f"{what}: ';' is not allowed in an expression: {text!r}")
        depth += t.is_op("(", "[") - t.is_op(")", "]")
        if depth < 0:
            raise DefinitionError(f"{what}: unbalanced ')' in {text!r}")
    if depth:
        raise DefinitionError(f"{what}: unclosed '(' in {text!r}")
    return render_tokens(toks)


STREAM_OPTIONS = ("topic", "timestamp", "allowed_lateness", "format", "batch_source", "description", "avro_schema",
                  "max_future")
SOURCE_OPTIONS = ("path", "format", "timestamp", "created_timestamp", "description")
VIEW_OPTIONS = ("ttl", "entities", "online", "description")
NAMED_OPTIONS = ("description",)
BOOL_OPTIONS = ("online",)
_WINDOWS = {"tumbling": (tumbling, 1), "sliding": (sliding, 2), "continuous": (continuous, 2),
            "session": (session, 1), "lifetime": (lifetime, 0)}


class Parser:
    def __init__(self, text: str, source: str = "<sql>"):
        self.source = source
        self.toks = tokenize(text, source)
        self.i = 0

    # ---- token helpers ----
    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def advance(self) -> Token:
        t = self.toks[self.i]
        if t.kind != "eof":
            self.i += 1
        return t

    def error(self, expected: str, tok: Token | None = None) -> DslSyntaxError:
        tok = tok or self.tok
        return DslSyntaxError(f"expected {expected}, found {tok.describe()}", tok.line, tok.col, self.source)

    def expect_kw(self, *words: str) -> Token:
        if not self.tok.is_kw(*words):
            raise self.error(" or ".join(words))
        return self.advance()

    def expect_op(self, op: str) -> Token:
        if not self.tok.is_op(op):
            raise self.error(f"'{op}'")
        return self.advance()

    def name(self, what: str) -> str:
        if self.tok.kind != "ident":
            raise self.error(f"{what} (an identifier)")
        return self.advance().text

    def accept_op(self, op: str) -> bool:
        if self.tok.is_op(op):
            self.advance()
            return True
        return False

    # ---- script ----
    def parse_script(self) -> list[tuple[object, int]]:
        out = []
        while True:
            while self.accept_op(";"):
                pass
            if self.tok.kind == "eof":
                return out
            start = self.tok
            try:
                obj = self.statement()
            except DefinitionError as e:
                raise DefinitionError(f"{self.source}:{start.line}:{start.col}: {'; '.join(e.problems)}") from None
            out.append((obj, start.line))
            if self.tok.kind != "eof" and not self.tok.is_op(";"):
                raise self.error("';' or the end of the statement")

    def statement(self):
        self.expect_kw("CREATE")
        if self.tok.is_kw("ENTITY"):
            self.advance()
            return self.entity()
        if self.tok.is_kw("STREAM"):
            self.advance()
            return self.stream()
        if self.tok.is_kw("SOURCE"):
            self.advance()
            return self.file_source()
        if self.tok.is_kw("REQUEST"):
            self.advance()
            self.expect_kw("SOURCE")
            return self.request_source()
        if self.tok.is_kw("ON"):
            self.advance()
            self.expect_kw("DEMAND")
            self.expect_kw("FEATURE")
            self.expect_kw("VIEW")
            return self.on_demand_view()
        if self.tok.is_kw("FEATURE"):
            self.advance()
            if self.tok.is_kw("VIEW"):
                self.advance()
                return self.view()
            if self.tok.is_kw("SERVICE"):
                self.advance()
                return self.service()
            raise self.error("VIEW or SERVICE after CREATE FEATURE")
        raise self.error("ENTITY, STREAM, SOURCE, REQUEST SOURCE, FEATURE VIEW, ON DEMAND FEATURE VIEW or "
                         "FEATURE SERVICE after CREATE")

    # ---- pieces ----
    def column_defs(self) -> list[tuple[str, str]]:
        self.expect_op("(")
        cols = []
        while True:
            name = self.name("a column name")
            if not self.tok.kind == "ident":
                raise self.error(f"a type for column {name} (e.g. BIGINT, DOUBLE, VARCHAR, TIMESTAMP)")
            words = [self.advance().text]
            while self.tok.kind == "ident":
                words.append(self.advance().text)
            type_text = " ".join(words)
            if self.tok.is_op("("):
                type_text += self.type_parameters(name)
            while self.accept_op("["):
                size = self.advance().text if self.tok.kind == "number" else ""
                self.expect_op("]")
                type_text += f"[{size}]"
            cols.append((name, type_text))
            if self.accept_op(")"):
                return cols
            if not self.accept_op(","):
                raise self.error("',' or ')' after a column definition")

    def type_parameters(self, column: str) -> str:
        """A type's parenthesised part: numbers as `(10,2)` (DECIMAL, as
        stored before), anything else — STRUCT(a INTEGER, b VARCHAR),
        MAP(VARCHAR, DOUBLE), ENUM('a', 'b') — as its canonical text, for
        DuckDB to judge at apply."""
        toks, depth = [], 0
        while True:
            t = self.tok
            if t.kind == "eof" or t.is_op(";"):
                raise self.error(f"')' closing the type of column {column}")
            self.advance()
            toks.append(t)
            depth += t.is_op("(") - t.is_op(")")
            if depth == 0:
                break
        inner = toks[1:-1]
        if inner and all(t.kind == "number" if i % 2 == 0 else t.is_op(",") for i, t in enumerate(inner)) \
                and len(inner) % 2 == 1:
            return "(" + ",".join(t.text for t in inner[::2]) + ")"
        if not inner:
            raise self.error(f"a type parameter in the type of column {column}")
        return render_tokens(toks)

    def number_token(self, what: str) -> Token:
        if self.tok.kind != "number":
            raise self.error(what)
        return self.advance()

    def options(self, allowed: tuple[str, ...], statement: str) -> dict:
        """WITH (key = value, ...) → {key: python value}."""
        self.expect_op("(")
        opts = {}
        while True:
            key_tok = self.tok
            key = self.name("an option name").lower()
            if key not in allowed:
                raise DslSyntaxError(f"unknown option {key!r} for {statement}; options are {', '.join(allowed)}",
                                     key_tok.line, key_tok.col, self.source)
            if key in opts:
                raise DslSyntaxError(f"option {key!r} given twice", key_tok.line, key_tok.col, self.source)
            self.expect_op("=")
            value_tok = self.tok
            opts[key] = self.literal()
            if key in BOOL_OPTIONS:
                # ('false' was read as a non-empty string, i.e. TRUE)
                value = opts[key]
                if isinstance(value, str) and value.lower() in ("true", "false"):
                    value = value.lower() == "true"
                if not isinstance(value, bool):
                    raise DslSyntaxError(f"option {key} takes TRUE or FALSE, got {value_tok.text}",
                                         value_tok.line, value_tok.col, self.source)
                opts[key] = value
            if self.accept_op(")"):
                return opts
            if not self.accept_op(","):
                raise self.error("',' or ')' in the WITH options")

    def literal(self):
        t = self.tok
        if t.kind == "string":
            self.advance()
            return t.text[1:-1].replace("''", "'")
        if t.kind == "number":
            self.advance()
            return float(t.text) if re.search(r"[.eE]", t.text) else int(t.text)
        if t.is_kw("TRUE", "FALSE"):
            self.advance()
            return t.text.upper() == "TRUE"
        if t.is_kw("NULL"):
            self.advance()
            return None
        if t.kind == "ident":
            self.advance()
            return t.text
        raise self.error("a value ('text', a number, TRUE/FALSE or a name)")

    def maybe_options(self, allowed, statement) -> dict:
        if self.tok.is_kw("WITH"):
            self.advance()
            return self.options(allowed, statement)
        return {}

    def required(self, opts: dict, key: str, statement: str, example: str, at: Token):
        if opts.get(key) is None:
            raise DslSyntaxError(f"{statement} needs option {key}, e.g. WITH ({example})", at.line, at.col,
                                 self.source)
        return str(opts[key])

    # ---- statements ----
    def entity(self) -> Entity:
        name = self.name("an entity name")
        cols = self.column_defs()
        opts = self.maybe_options(NAMED_OPTIONS, "CREATE ENTITY")
        return Entity(name, cols, description=opts.get("description") or "")

    def stream(self) -> Stream:
        name = self.name("a stream name")
        cols = self.column_defs()
        with_tok = self.tok
        if not self.tok.is_kw("WITH"):
            raise self.error("WITH (timestamp = '...', ...) after the stream's columns")
        opts = self.maybe_options(STREAM_OPTIONS, "CREATE STREAM")
        ts = self.required(opts, "timestamp", f"stream {name}", "timestamp = 'ts'", with_tok)
        return Stream(name, cols, ts, topic=opts.get("topic"),
                      allowed_lateness=opts.get("allowed_lateness") or 0, format=opts.get("format") or "json",
                      batch_source=opts.get("batch_source"), description=opts.get("description") or "",
                      avro_schema=opts.get("avro_schema"), max_future=opts.get("max_future") or DEFAULT_MAX_FUTURE)

    def file_source(self) -> FileSource:
        name = self.name("a source name")
        cols = self.column_defs()
        with_tok = self.tok
        if not self.tok.is_kw("WITH"):
            raise self.error("WITH (path = '...', timestamp = '...') after the source's columns")
        opts = self.maybe_options(SOURCE_OPTIONS, "CREATE SOURCE")
        path = self.required(opts, "path", f"source {name}", "path = 'data/users.parquet'", with_tok)
        ts = self.required(opts, "timestamp", f"source {name}", "timestamp = 'updated_at'", with_tok)
        return FileSource(name, cols, ts, path, format=opts.get("format") or infer_format(path),
                          created_timestamp=opts.get("created_timestamp"),
                          description=opts.get("description") or "")

    def request_source(self) -> RequestSource:
        name = self.name("a request source name")
        cols = self.column_defs()
        opts = self.maybe_options(NAMED_OPTIONS, "CREATE REQUEST SOURCE")
        return RequestSource(name, cols, description=opts.get("description") or "")

    def on_demand_view(self) -> OnDemandView:
        """CREATE ON DEMAND FEATURE VIEW name [WITH (...)] AS SELECT expr AS
        feature, ... FROM request_source, view, ... [WITH (...)]: every item
        needs a name; features of a view are written view.feature."""
        name = self.name("an on-demand feature view name")
        opts = self.maybe_options(NAMED_OPTIONS, "CREATE ON DEMAND FEATURE VIEW")
        self.expect_kw("AS")
        self.expect_kw("SELECT")
        features = []
        while True:
            start = self.tok
            toks = self.scan_expr(stop_kws=("FROM", "AS"), stop_ops=(",",))
            if not toks:
                raise self.error("an expression in the SELECT list")
            alias = self.alias()
            if alias is None:
                raise DslSyntaxError(f"on-demand feature {render_tokens(toks)!r} needs a name: add AS <name>",
                                     start.line, start.col, self.source)
            features.append(Projection(alias, render_tokens(toks)))
            if not self.accept_op(","):
                break
        self.expect_kw("FROM")
        sources = [self.name("a request source or feature view after FROM")]
        while self.accept_op(","):
            sources.append(self.name("a request source or feature view after ','"))
        if self.tok.is_kw("WITH"):
            if opts:
                raise self.error("';' (WITH options go either before AS or at the end, not both)")
            self.advance()
            opts = self.options(NAMED_OPTIONS, "CREATE ON DEMAND FEATURE VIEW")
        return OnDemandView(name, tuple(sources), features=tuple(features), description=opts.get("description") or "")

    def view(self) -> FeatureView:
        name = self.name("a feature view name")
        opts = self.maybe_options(VIEW_OPTIONS, "CREATE FEATURE VIEW")
        self.expect_kw("AS")
        self.expect_kw("SELECT")
        features, aggs = [], []
        while True:
            item = self.select_item()
            (aggs if isinstance(item, Aggregation) else features).append(item)
            if not self.accept_op(","):
                break
        self.expect_kw("FROM")
        source = self.name("the source or stream name after FROM")
        where = None
        if self.tok.is_kw("WHERE"):
            self.advance()
            toks = self.scan_expr(stop_kws=("WITH",))
            if not toks:
                raise self.error("a filter expression after WHERE")
            where = render_tokens(toks)
        if self.tok.is_kw("WITH"):
            if opts:
                raise self.error("';' (WITH options go either before AS or at the end, not both)")
            self.advance()
            opts = self.options(VIEW_OPTIONS, "CREATE FEATURE VIEW")
        entities = opts.get("entities") or ()
        if isinstance(entities, str):
            entities = tuple(e.strip() for e in entities.split(",") if e.strip())
        return FeatureView(name, source, entities=entities, features=tuple(features), aggregations=tuple(aggs),
                           filter=where, ttl=opts.get("ttl") or 0,
                           online=opts.get("online", True),
                           description=opts.get("description") or "")

    def scan_expr(self, stop_kws=(), stop_ops=()) -> list[Token]:
        """Tokens of one expression, up to a depth-0 stop word/op, ';' or EOF."""
        toks, depth, opener = [], 0, None
        while True:
            t = self.tok
            if t.kind == "eof":
                if depth:
                    raise DslSyntaxError("unclosed '(' in expression", opener.line, opener.col, self.source)
                return toks
            if depth == 0 and (t.is_op(";", *stop_ops) or t.is_kw(*stop_kws)):
                return toks
            if t.is_op("(", "["):
                depth += 1
                opener = opener if depth > 1 else t
            elif t.is_op(")", "]"):
                if depth == 0:
                    raise self.error("an expression (unbalanced ')')")
                depth -= 1
            toks.append(self.advance())

    def select_item(self):
        start = self.tok
        toks = self.scan_expr(stop_kws=("FROM", "AS", "OVER"), stop_ops=(",",))
        if not toks:
            raise self.error("a column, expression or aggregation in the SELECT list")
        if self.tok.is_kw("OVER"):
            return self.aggregation(toks)
        alias = self.alias()
        if alias is None:
            if len(toks) != 1 or toks[0].kind != "ident":
                raise DslSyntaxError(f"expression {render_tokens(toks)!r} needs a name: add AS <name>",
                                     start.line, start.col, self.source)
            alias = toks[0].text
        return Projection(alias, render_tokens(toks))

    def alias(self) -> str | None:
        if self.tok.is_kw("AS"):
            self.advance()
            return self.name("a feature name after AS")
        return None

    def aggregation(self, call: list[Token]) -> Aggregation:
        first = call[0]
        if not (len(call) >= 3 and first.kind == "ident" and call[1].is_op("(") and call[-1].is_op(")")):
            raise DslSyntaxError("expected an aggregation call like sum(amount) before OVER",
                                 first.line, first.col, self.source)
        args, cur, depth = [], [], 0
        for t in call[2:-1]:
            if depth == 0 and t.is_op(","):
                args.append(cur)
                cur = []
                continue
            depth += t.is_op("(", "[") - t.is_op(")", "]")
            cur.append(t)
        args.append(cur)
        fn = first.text
        if AGG_ALIASES.get(fn.lower(), fn.lower()) not in AGG_KINDS:
            raise DslSyntaxError(f"unknown aggregation {fn!r} before OVER; use one of {', '.join(AGG_KINDS)} "
                                 f"(SQL window functions like OVER (PARTITION BY ...) are not supported)",
                                 first.line, first.col, self.source)
        k = 0
        if fn.lower() == "last_k":
            if len(args) != 2 or len(args[1]) != 1 or args[1][0].kind != "number":
                raise DslSyntaxError("last_k takes a column and a count, e.g. last_k(amount, 5)",
                                     first.line, first.col, self.source)
            k = int(args[1][0].text)
            args = args[:1]
        if len(args) != 1 or not args[0]:
            raise DslSyntaxError(f"{fn}() takes exactly one column or expression (count(*) for a row count)",
                                 first.line, first.col, self.source)
        column = None if len(args[0]) == 1 and args[0][0].is_op("*") else render_tokens(args[0])
        self.expect_kw("OVER")
        window = self.window()
        alias = self.alias()
        if alias is None:
            if column is not None and not re.fullmatch(r"[A-Za-z_]\w*", column):
                raise DslSyntaxError(f"aggregation over expression {column!r} needs a name: add AS <name>",
                                     first.line, first.col, self.source)
            alias = f"{AGG_ALIASES.get(fn.lower(), fn.lower())}_{column or 'star'}"
        return Aggregation(alias, fn, column, window, k)

    def window(self):
        t = self.tok
        kind = self.name(f"a window ({', '.join(WINDOW_KINDS)})").lower()
        if kind not in _WINDOWS:
            raise DslSyntaxError(f"unknown window {t.text!r}; use one of {', '.join(WINDOW_KINDS)}",
                                 t.line, t.col, self.source)
        make, n_args = _WINDOWS[kind]
        args = []
        if self.accept_op("("):
            while not self.tok.is_op(")"):
                a = self.tok
                if a.kind not in ("string", "number"):
                    raise self.error("a duration like '5m' or '1h'")
                args.append(self.literal())
                if not self.accept_op(","):
                    break
            self.expect_op(")")
        elif n_args:
            raise self.error(f"'(' after {kind}")
        if len(args) != n_args:
            shape = {"tumbling": "tumbling('1h')", "sliding": "sliding('1h', '5m')",
                     "continuous": "continuous('24h', '1h')", "session": "session('30m')",
                     "lifetime": "lifetime()"}[kind]
            raise DslSyntaxError(f"{kind} takes {n_args} duration(s), e.g. {shape}", t.line, t.col, self.source)
        try:
            spec = make(*args)
        except ValueError as e:
            if kind in ("sliding", "continuous") and "multiple of its hop" in str(e):
                e = (f"{kind}({args[0]!r}, {args[1]!r}): the hop must divide the size "
                     f"(windows are whole hops), e.g. {kind}('1h', '5m')")
            raise DslSyntaxError(str(e), t.line, t.col, self.source) from None
        return spec

    def service(self) -> FeatureService:
        name = self.name("a feature service name")
        opts = self.maybe_options(NAMED_OPTIONS, "CREATE FEATURE SERVICE")
        self.expect_kw("AS")
        self.expect_op("(")
        refs = []
        while True:
            view = self.name("a feature reference like view:feature")
            version = None
            if self.accept_op("@"):
                v = self.tok
                if not (v.kind == "ident" and re.fullmatch(r"[vV]\d+", v.text)):
                    raise self.error("a version like v2 after '@'")
                version = int(self.advance().text[1:])
            feature = "*"
            if self.accept_op(":"):
                feature = "*" if self.accept_op("*") else self.name("a feature name or * after ':'")
            refs.append(FeatureRef(view, feature, version))
            if self.accept_op(")"):
                break
            if not self.accept_op(","):
                raise self.error("',' or ')' in the feature list")
        return FeatureService(name, tuple(refs), description=opts.get("description") or "")


def infer_format(path: str) -> str:
    return "csv" if str(path).lower().rstrip("*").endswith((".csv", ".csv.gz")) else "parquet"


def parse_with_lines(text: str, source: str = "<sql>") -> list[tuple[object, int]]:
    """[(definition, line of its CREATE)] in file order."""
    return Parser(text, source).parse_script()


def parse(text: str, source: str = "<sql>") -> list:
    """Definitions in a DSL script, in order. Raises DslSyntaxError (with line
    and column) or DefinitionError."""
    return [obj for obj, _ in parse_with_lines(text, source)]
