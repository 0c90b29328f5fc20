"""The SQL DSL: every statement kind parses to the model, and a parse error
names its line and column and what was expected."""
import pytest

from fscore.window_spec import continuous, lifetime, session, sliding, tumbling
from fsapp.registry.dsl import canonical_expr, parse
from fsapp.registry.errors import DefinitionError, DslSyntaxError
from fsapp.registry.model import (
    Aggregation, Column, Entity, FeatureRef, FeatureService, FeatureView, FileSource, Projection, Stream,
)
from fsapp.registry.render import script_sql


def one(text):
    [obj] = parse(text)
    return obj


def test_entity_with_description():
    e = one("CREATE ENTITY user (user_id BIGINT) WITH (description = 'a card holder')")
    assert e == Entity("user", [Column("user_id", "BIGINT")], "a card holder")


def test_stream_options_and_type_aliases():
    s = one("CREATE STREAM transactions (user_id INT8, merchant STRING, amount DOUBLE PRECISION, ts TIMESTAMP) "
            "WITH (topic = 'txns', timestamp = 'ts', allowed_lateness = '5m')")
    assert s == Stream("transactions", [("user_id", "BIGINT"), ("merchant", "VARCHAR"), ("amount", "DOUBLE"),
                                        ("ts", "TIMESTAMP")], "ts", topic="txns", allowed_lateness=300_000_000)


def test_column_types_with_any_parameters_parse_and_round_trip():
    # STRUCT(...), MAP(...), ENUM(...) did not parse ("expected a type parameter, found 'a'"), and
    # ENUM('lo', 'hi') was upper-cased to ENUM('LO', 'HI'): every push of 'lo' was refused
    s = one("CREATE STREAM t (a STRUCT(x INTEGER, \"Y z\" VARCHAR)[], m map(varchar, double), "
            "e ENUM('lo', 'Hi x'), d decimal(10, 2), g INTEGER[][], ts TIMESTAMP) WITH (timestamp = 'ts')")
    assert [(c.name, c.type) for c in s.columns] == [("a", 'STRUCT(x INTEGER, "Y z" VARCHAR)[]'), ("m", "MAP(varchar, double)"),
                         ("e", "ENUM('lo', 'Hi x')"), ("d", "DECIMAL(10,2)"), ("g", "INTEGER[][]"), ("ts", "TIMESTAMP")]
    assert parse(script_sql([s])) == [s]
    for bad, expected in (("CREATE STREAM t (c DECIMAL(), ts TIMESTAMP) WITH (timestamp = 'ts')", "a type parameter"),
                          ("CREATE STREAM t (c STRUCT(a INTEGER", "'\\)' closing the type of column c")):
        with pytest.raises(DslSyntaxError, match=expected):
            parse(bad)


def test_push_only_stream_has_no_topic():
    assert one("create stream s (a BIGINT, ts TIMESTAMP) with (timestamp = 'ts')").topic is None


def test_file_source_format_inferred_from_path():
    src = one("CREATE SOURCE hist (a BIGINT, v FLOAT[4], ts TIMESTAMP) WITH (path = 'data/h.csv', timestamp = 'ts')")
    assert src == FileSource("hist", [("a", "BIGINT"), ("v", "FLOAT[4]"), ("ts", "TIMESTAMP")], "ts", "data/h.csv",
                             "csv")


def test_aggregated_view_from_the_issue():
    v = one("CREATE FEATURE VIEW user_txn AS SELECT user_id, count(*) OVER sliding('1h', '5m') AS txn_count_1h, "
            "sum(amount) OVER continuous('24h', '1h') AS amount_24h FROM transactions WHERE amount > 0")
    assert v == FeatureView("user_txn", "transactions", features=(Projection("user_id", "user_id"),),
                            aggregations=(Aggregation("txn_count_1h", "count", None, sliding("1h", "5m")),
                                          Aggregation("amount_24h", "sum", "amount", continuous("24h", "1h"))),
                            filter="amount > 0")


def test_every_window_kind_expression_inputs_and_default_names():
    v = one("""CREATE FEATURE VIEW v AS SELECT user_id,
        avg(amount) OVER tumbling('1d'),
        last_k(amount * 2, 3) OVER lifetime() AS lk,
        count(*) OVER session('30m') AS n,
        max(amount) OVER lifetime
    FROM t""")
    assert [(a.name, a.function, a.column, a.window, a.k) for a in v.aggregations] == [
        ("mean_amount", "mean", "amount", tumbling("1d"), 0), ("lk", "last_k", "amount * 2", lifetime(), 3),
        ("n", "count", None, session("30m"), 0), ("max_amount", "max", "amount", lifetime(), 0)]


def test_plain_view_options_before_as_or_at_the_end():
    a = one("CREATE FEATURE VIEW p WITH (ttl = '1d') AS SELECT user_id, lower( segment ) AS seg FROM profiles")
    b = one("CREATE FEATURE VIEW p AS SELECT user_id, lower(segment) AS seg FROM profiles WITH (ttl = '1d')")
    assert a == b and a.ttl == 86_400_000_000 and a.features[1] == Projection("seg", "lower(segment)")


def test_feature_service_refs():
    s = one("CREATE FEATURE SERVICE fraud_v1 AS (user_txn:txn_count_1h, user_txn@v2:amount_24h, profile, p:*)")
    assert s == FeatureService("fraud_v1", (FeatureRef("user_txn", "txn_count_1h"),
                                            FeatureRef("user_txn", "amount_24h", 2),
                                            FeatureRef("profile", "*"), FeatureRef("p", "*")))


def test_script_with_comments_and_semicolons_round_trips():
    text = """-- entities
    CREATE ENTITY user (user_id BIGINT); /* a block
    comment */ CREATE STREAM t (user_id BIGINT, amount DOUBLE, ts TIMESTAMP) WITH (timestamp = 'ts');;
    CREATE FEATURE VIEW v AS SELECT user_id, sum(amount) OVER sliding('1h', '5m') AS s FROM t WHERE amount > 0;
    """
    objs = parse(text)
    assert len(objs) == 3 and parse(script_sql(objs)) == objs


@pytest.mark.parametrize("text, line, col, expected", [
    ("CREATE ENTITY user (user_id)", 1, 28, "expected a type for column user_id"),
    ("CREATE FEATURE\n  VEIW x", 2, 3, "expected VIEW or SERVICE"),
    ("CREATE TABLE x", 1, 8, "expected ENTITY, STREAM, SOURCE"),
    ("CREATE STREAM s (a BIGINT)", 1, 27, "expected WITH"),
    ("CREATE STREAM s (a BIGINT) WITH (topic = 't')", 1, 28, "needs option timestamp"),
    ("CREATE STREAM s (a BIGINT) WITH (tpoic = 't')", 1, 34, "unknown option 'tpoic'"),
    ("CREATE FEATURE VIEW v AS SELECT a + 1 FROM s", 1, 33, "needs a name: add AS"),
    ("CREATE FEATURE VIEW v AS SELECT u,\n  sum(a) OVER sliding('1h', '7m') AS x FROM s", 2, 15,
     "the hop must divide the size"),
    ("CREATE FEATURE VIEW v AS SELECT u, sum(a) OVER hopping('1h') AS x FROM s", 1, 48, "unknown window 'hopping'"),
    ("CREATE FEATURE VIEW v AS SELECT u, sum(a) OVER sliding('1h') AS x FROM s", 1, 48, "sliding takes 2"),
    ("CREATE FEATURE VIEW v AS SELECT u FROM s WHERE (a > 1", 1, 48, "unclosed '('"),
    ("CREATE FEATURE VIEW v AS SELECT u FROM", 1, 39, "expected the source or stream name after FROM (an identifier), found end of input"),
    ("CREATE FEATURE SERVICE s AS (v@2:x)", 1, 32, "a version like v2"),
    ("CREATE ENTITY a (x BIGINT) CREATE ENTITY b (y BIGINT)", 1, 28, "expected ';'"),
    ("CREATE ENTITY a (x BIGINT) WITH (description = 'oops)", 1, 48, "unterminated quoted text"),
])
def test_parse_errors_give_line_column_and_expectation(text, line, col, expected):
    with pytest.raises(DslSyntaxError) as ei:
        parse(text, "defs.sql")
    e = ei.value
    assert (e.line, e.column) == (line, col), str(e)
    assert expected in str(e) and str(e).startswith(f"defs.sql:{line}:{col}:")


def test_model_errors_carry_the_statement_position():
    with pytest.raises(DefinitionError, match=r"defs.sql:2:1: .*duplicate feature name"):
        parse("CREATE ENTITY u (a BIGINT);\nCREATE FEATURE VIEW v AS SELECT u, a AS x, b AS x FROM s", "defs.sql")
    with pytest.raises(DefinitionError, match="last_k needs 1 <= k"):
        parse("CREATE FEATURE VIEW v AS SELECT u, last_k(a, 0) OVER lifetime() AS x FROM s")
    with pytest.raises(DslSyntaxError, match="unknown aggregation .median."):
        parse("CREATE FEATURE VIEW v AS SELECT u, median(a) OVER lifetime() AS x FROM s")


def test_a_duration_past_the_event_time_range_is_refused_at_apply(tmp_path):
    """ttl = '999999999d' passed apply and then the engine could not open the repo (OverflowError
    converting it to int64 µs): every duration is now bounded by the event-time span."""
    from fscore.errors import WindowSpecError
    from fscore.window_spec import MAX_DURATION, MAX_DURATION_DAYS, duration
    from fsapp.registry.repo import Repo

    def defs(opt="", view_with="", window="lifetime()"):
        return ("CREATE ENTITY e (k BIGINT);\n"
                f"CREATE STREAM s (k BIGINT, ts TIMESTAMP) WITH (timestamp = 'ts'{opt});\n"
                f"CREATE FEATURE VIEW v {view_with}AS SELECT k, count(*) OVER {window} AS c FROM s;\n")
    longest, too_long = f"'{MAX_DURATION_DAYS}d'", f"'{MAX_DURATION_DAYS + 1}d'"
    parse(defs(f", allowed_lateness = {longest}, max_future = {longest}", f"WITH (ttl = {longest}) ",
               f"sliding({longest}, '1d')"))
    for text in (defs(opt=f", allowed_lateness = {too_long}"), defs(opt=f", max_future = {too_long}"),
                 defs(view_with=f"WITH (ttl = {too_long}) "), defs(view_with="WITH (ttl = '999999999d') "),
                 defs(window=f"tumbling({too_long})"), defs(window=f"session({too_long})")):
        with pytest.raises((DefinitionError, DslSyntaxError),
                           match=f"longer than event times reach.*at most {MAX_DURATION_DAYS}d"):
            parse(text)
    assert duration(MAX_DURATION) == MAX_DURATION
    with pytest.raises(WindowSpecError, match="longer than event times reach"):
        duration(MAX_DURATION + 1)
    # the filed case, end to end: refused by apply, so no engine ever meets it
    root = tmp_path / "r"
    root.mkdir()
    (root / "fstore.yaml").write_text("project: r\n")
    (root / "defs.sql").write_text(defs(view_with="WITH (ttl = '999999999d') "))
    with pytest.raises(DefinitionError, match="ttl: duration '999999999d' is longer than event times reach"):
        Repo(root).apply()
    (root / "defs.sql").write_text("CREATE ENTITY e (k BIGINT);\nCREATE ENTITY e (j VARCHAR);\n")
    with pytest.raises(DefinitionError, match="duplicate name: also defined as an entity"):
        Repo(root).apply()


def test_online_takes_true_or_false_and_quoted_false_is_false():
    """WITH (online = 'false') made an online view: the option was bool() of a non-empty string."""
    def online(value):
        (view,) = parse(f"CREATE FEATURE VIEW v WITH (online = {value}) AS SELECT k, x AS y FROM s")
        return view.online
    assert [online(v) for v in ("FALSE", "false", "'false'", "'FALSE'", "TRUE", "'true'")] == \
        [False, False, False, False, True, True]
    for bad in ("'maybe'", "0", "NULL", "'no'"):
        with pytest.raises(DslSyntaxError, match=f"option online takes TRUE or FALSE, got {bad}"):
            online(bad)
    with pytest.raises(DefinitionError, match="online is True or False, got 'false'"):
        FeatureView("v", "s", features=(Projection("y", "x"),), online="false")


def test_canonical_expr_spacing_and_rejects_a_second_statement():
    assert canonical_expr("sum( a+b )") == canonical_expr("sum(a + b)") == "sum(a + b)"
    assert canonical_expr("CAST(x AS INT)::VARCHAR") == "CAST(x AS INT)::VARCHAR"
    assert canonical_expr("v[ 1 ] .field") == "v[1].field"
    with pytest.raises(DefinitionError, match="';' is not allowed"):
        canonical_expr("1; DROP TABLE t")
    with pytest.raises(DefinitionError, match="unclosed"):
        canonical_expr("lower(x")


def test_an_avro_streams_schema_file_is_checked_at_apply(tmp_path):
    """avro_schema = '{not json' (or a file that is not a schema) passed apply; the Kafka source
    then failed when `fstore serve` started. Apply reads and parses it now."""
    from fsapp.registry.repo import Repo
    root = tmp_path / "r"
    (root / "schemas").mkdir(parents=True)
    (root / "fstore.yaml").write_text("project: r\n")

    def defs(path):
        (root / "defs.sql").write_text(
            "CREATE ENTITY e (k BIGINT);\n"
            "CREATE STREAM s (k BIGINT, ts TIMESTAMP) WITH (topic = 't', timestamp = 'ts', format = 'avro', "
            f"avro_schema = '{path}');\n")
    for path, text, message in (
            ("{not json", None, "defs.sql:2: stream s: avro_schema: Avro schema file .* cannot be read"),
            ("schemas/a.avsc", "{", "is not JSON"),
            ("schemas/a.avsc", '{"type": "string"}', "the top level must be a record"),
            ("schemas/a.avsc", '{"type": "record", "name": "x", "fields": [{"name": "k", "type": "lung"}]}',
             "is not a valid schema .*lung")):
        if text is not None:
            (root / path).write_text(text)
        defs(path)
        with pytest.raises(DefinitionError, match=message):
            Repo(root).apply()
        assert not (root / "data" / "registry.db").exists()
    (root / "schemas/a.avsc").write_text('{"type": "record", "name": "x", "fields": [{"name": "k", "type": "long"}]}')
    Repo(root).apply()
