"""Generated requests against every endpoint get no 500.

Bodies come from the OpenAPI document's request schemas (a small JSON-schema
→ hypothesis translation below; schemathesis is not a dependency), with
strings drawn partly from the starter repo's real names so that requests
reach the engine, the registry and DuckDB rather than stopping at the first
validation. Arbitrary JSON, arbitrary bytes and wrong content types are
mixed in."""
import json
from urllib.parse import quote

import pytest
from falcon import testing
from hypothesis import given, strategies as st

from fsapp.api import EngineBackend, create_app
from fsapp.engine import Engine
from fsapp.registry.repo import Repo
from fsapp.registry.scaffold import init_repo

H = 3_600_000_000
T0 = 1_764_000_000_000_000 // H * H
VOCAB = ["transactions", "user_txn", "merchant_txn", "user_profile", "fraud_v1", "card_user", "merchant",
         "user_txn:txn_count_1h", "user_txn:*", "user_txn@v1:amount_24h", "merchant_txn:volume_1d",
         "user_profile:age", "user_id", "merchant_id", "amount", "ts", "event_timestamp", "currency", "country",
         "is_online", "2026-11-27T10:00:00Z", "feature_view", "feature_views", "stream", "entity", "source",
         "feature_service", "online", "offline", "online_and_offline"]
STATUSES = {200, 400, 404, 405, 406, 413, 415, 422}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "repo"
    init_repo(root)
    repo = Repo(root)
    repo.apply()
    eng = Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync="never", clock=lambda: T0 + 2 * H)
    client = testing.TestClient(create_app(EngineBackend(eng), max_body_bytes=64 << 10))
    rows = [{"user_id": u, "merchant_id": f"m{u}", "amount": 1.5 * u, "currency": "EUR", "country": "DE",
             "is_online": True, "ts": T0 + u * 60_000_000} for u in range(1, 6)]
    assert client.simulate_post("/api/v1/push", json={"stream": "transactions", "rows": rows}).status_code == 200
    doc = client.simulate_get("/api/v1/openapi.json").json
    yield client, doc
    eng.close()


# ---- JSON schema → strategy

names = st.sampled_from(VOCAB) | st.text(max_size=12)
json_scalars = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.integers(-5, 5)
                | st.floats(allow_nan=True, allow_infinity=True) | names)
any_json = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(names, inner, max_size=4), max_leaves=12)


# Values that fit the starter repo's keys and stream columns, so that a
# share of the generated requests gets past validation into the engine.
fitting = (st.integers(1, 6) | st.sampled_from(["m1", "m2", "EUR", "DE"]) | st.booleans()
           | st.integers(T0, T0 + 2 * H) | st.sampled_from(["2025-11-24T17:00:00Z", "2025-11-24 16:30:00"])
           | st.floats(-10, 100))
TXN_COLUMNS = ["user_id", "merchant_id", "amount", "currency", "country", "is_online", "ts"]


@st.composite
def equal_columns(draw, scalar):
    """An object of same-length arrays (sometimes of the stream's columns)."""
    n = draw(st.integers(0, 4))
    keys = draw(st.lists(st.sampled_from(VOCAB) | names, max_size=4, unique=True)
                | st.sampled_from([TXN_COLUMNS, ["user_id", "event_timestamp"], ["user_id"],
                                   ["user_id", "merchant_id", "event_timestamp"]]))
    return {k: draw(st.lists(scalar, min_size=n, max_size=n)) for k in keys}


txn_row = st.fixed_dictionaries({"user_id": st.integers(1, 6), "ts": st.integers(T0, T0 + 2 * H)},
                                optional={"merchant_id": st.sampled_from(["m1", "m2"]) | json_scalars,
                                          "amount": st.floats(-5, 50) | json_scalars,
                                          "currency": st.just("EUR"), "is_online": st.booleans()})


def strategy(schema: dict, doc: dict):
    if "$ref" in schema:
        return strategy(doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]], doc)
    if "oneOf" in schema:
        s = st.one_of([strategy(x, doc) for x in schema["oneOf"]])
        return s | st.none() if schema.get("nullable") else s
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | names
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        required = {k: strategy(v, doc) for k, v in props.items() if k in schema.get("required", ())}
        optional = {k: strategy(v, doc) for k, v in props.items() if k not in required}
        fixed = st.fixed_dictionaries(required, optional=optional)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            free = st.dictionaries(names, strategy(extra, doc), max_size=4)
            if extra.get("type") == "array":  # columns
                free = free | equal_columns(fitting | json_scalars)
            elif "oneOf" in extra:  # a row of scalars
                free = free | txn_row
            return fixed | free if props else free
        return fixed
    if kind == "array":
        items = strategy(schema.get("items", {}), doc)
        return st.lists(items, max_size=5) | st.lists(items, min_size=1, max_size=1)
    if kind == "string":
        if schema.get("format") == "date-time":
            return st.datetimes().map(lambda d: d.isoformat() + "Z") | names
        return names
    if kind == "integer":
        return st.integers(-(2 ** 70), 2 ** 70) | st.integers(0, 10)
    if kind == "number":
        return (st.floats(allow_nan=False, allow_infinity=False) | st.integers(T0 // 10 ** 6, T0 // 10 ** 6 + 7200)
                | st.integers(T0, T0 + 2 * H))
    if kind == "boolean":
        return st.booleans()
    return any_json


FEATURES = st.lists(st.sampled_from(["user_txn:txn_count_1h", "user_txn:*", "merchant_txn:volume_1d",
                                     "user_txn:last_5_amounts", "user_profile:age"]), min_size=1, max_size=3)


@st.composite
def keyed(draw, time_column=False):
    n = draw(st.integers(0, 4))
    cols = {"user_id": draw(st.lists(st.integers(1, 8) | fitting, min_size=n, max_size=n))}
    if draw(st.booleans()):
        cols["merchant_id"] = draw(st.lists(st.sampled_from(["m1", "m2"]) | fitting, min_size=n, max_size=n))
    if time_column:
        cols["event_timestamp"] = draw(st.lists(fitting, min_size=n, max_size=n))
    return cols


# Requests close to valid, per endpoint: the schema alone rarely satisfies
# cross-field rules (exactly one of features / feature_service).
NEAR_VALID = {
    "/api/v1/features/online": st.fixed_dictionaries(
        {"features": FEATURES, "entities": keyed()}, optional={"as_of": fitting, "full_feature_names": st.booleans()}),
    "/get-online-features": st.fixed_dictionaries({"feature_service": st.just("fraud_v1"), "entities": keyed()})
    | st.fixed_dictionaries({"features": FEATURES, "entities": keyed()}),
    "/api/v1/features/historical": st.fixed_dictionaries({"features": FEATURES, "entities": keyed(True)}),
    "/api/v1/push": st.fixed_dictionaries({"stream": st.just("transactions"), "rows": st.lists(txn_row, max_size=4)}),
    "/push": st.fixed_dictionaries({"push_source_name": st.just("transactions"),
                                    "df": equal_columns(fitting)}),
    "/api/v1/materialize": st.fixed_dictionaries({"end": fitting}, optional={"start": fitting,
                                                                            "views": st.lists(names, max_size=2)}),
    "/write-to-online-store": st.fixed_dictionaries(
        {"feature_view_name": st.sampled_from(["user_profile", "user_txn", "merchant_txn"]) | names,
         "df": keyed(True)}),
    "/materialize": st.fixed_dictionaries({}, optional={"start_ts": fitting, "end_ts": fitting,
                                                        "feature_views": st.lists(names, max_size=2),
                                                        "disable_event_timestamp": st.booleans()}),
    "/materialize-incremental": st.fixed_dictionaries({"end_ts": fitting},
                                                      optional={"feature_views": st.lists(names, max_size=2)}),
}


def request_schema(doc, path):
    content = doc["paths"][path]["post"]["requestBody"]["content"]
    return content["application/json"]["schema"]


POSTS = ["/api/v1/features/online", "/api/v1/features/historical", "/api/v1/push", "/api/v1/materialize",
         "/get-online-features", "/push", "/write-to-online-store", "/materialize", "/materialize-incremental"]


def check(res):
    assert res.status_code != 500, res.text
    assert res.status_code in STATUSES, (res.status_code, res.text)
    if res.status_code >= 400:
        body = res.json
        assert body["title"] and body["description"], body


# An `amount` beyond float32 range overflows in the last_k vector column
# (stored as inf): an engine-level choice reported separately, not an API 500.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("path", POSTS)
@given(data=st.data())
def test_generated_json_bodies_get_no_500(api, path, data):
    client, doc = api
    body = data.draw(strategy(request_schema(doc, path), doc) | NEAR_VALID[path] | any_json, label="body")
    check(client.simulate_post(path, body=json.dumps(body), headers={"Content-Type": "application/json"}))


@pytest.mark.parametrize("path", POSTS)
@given(raw=st.binary(max_size=200), ctype=st.sampled_from(["application/json", "text/plain", "",
                                                           "application/vnd.apache.arrow.stream",
                                                           "application/json; charset=utf-8"]),
       stream=st.none() | names)
def test_arbitrary_bytes_get_no_500(api, path, raw, ctype, stream):
    client, _ = api
    headers = {"Content-Type": ctype} if ctype else {}
    check(client.simulate_post(path, body=raw, headers=headers, params={"stream": stream} if stream else None))


@given(kind=names, name=st.none() | names, version=st.none() | st.text(max_size=4) | st.integers(-3, 3).map(str))
def test_registry_and_lineage_reads_get_no_500(api, kind, name, version):
    client, _ = api
    q = {"version": version} if version is not None else None
    path = f"/api/v1/registry/{quote(kind, safe='')}" + (f"/{quote(name, safe='')}" if name is not None else "")
    check(client.simulate_get(path or "/", params=q))
    if name is not None:
        check(client.simulate_get(f"/api/v1/lineage/{quote(name, safe='')}"))

