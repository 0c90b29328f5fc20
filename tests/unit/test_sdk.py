"""The SDK: FeatureStore (embedded) calls, the Client's error mapping and
input conversions, the data commands of the CLI."""
import datetime as dt
import json
import time

import pytest

from fsapp import FeatureStore
from fsapp.cli import main
from fsapp.engine.errors import BatchError, UnknownStreamError
from fsapp.errors import FeatureNameCollision
from fsapp.registry.errors import NotFoundError, RepoError
from fsapp.registry.scaffold import init_repo
from fsapp.sdk.convert import entity_columns, to_us
from fsapp.sdk.errors import TITLE_TO_CLASS, AuthError, RequestError, error_from_response

H = 3_600_000_000


def rows(now, n=6, user=1):
    return [{"user_id": user, "merchant_id": "m7", "amount": 20.0 + i, "currency": "USD", "country": "US",
             "is_online": True, "ts": now - dt.timedelta(minutes=50 - 5 * i)} for i in range(n)]


@pytest.fixture
def store(tmp_path):
    init_repo(tmp_path / "repo")
    s = FeatureStore(tmp_path / "repo", fsync="never")
    s.apply()
    yield s
    s.close()


def test_push_then_online_and_historical(store):
    now = dt.datetime.now(dt.timezone.utc)
    assert store.push("transactions", rows(now))["accepted"] == 6
    r = store.get_online_features(features=["user_txn:amount_24h", "user_txn:last_5_amounts"],
                                  entity_rows={"user_id": [1, 2]})
    d = r.to_dict()
    assert d["user_id"] == [1, 2] and d["amount_24h"] == [135.0, None]
    assert d["last_5_amounts"][0] == [25.0, 24.0, 23.0, 22.0, 21.0]
    assert r.statuses()["amount_24h"] == ["PRESENT", "NOT_FOUND"]
    assert list(r.to_df().columns) == ["user_id", "amount_24h", "last_5_amounts"]
    labels = {"user_id": [1, 1], "event_timestamp": [now - dt.timedelta(minutes=30), now]}
    t = store.get_historical_features(labels, features=["user_txn:amount_24h"])
    assert t.to_arrow().column("amount_24h").to_pylist() == [86.0, 135.0]  # point in time
    # an output name given twice is refused (tests/unit/test_feature_names.py:
    # every surface); the starter service reads with short names or full ones
    with pytest.raises(FeatureNameCollision, match="requested twice"):
        store.get_online_features(features=["user_txn:txn_count_1h", "user_txn:txn_count_1h"],
                                  entity_rows=[{"user_id": 1}])
    short = store.get_online_features(feature_service="fraud_v1",
                                      entity_rows=[{"user_id": 1, "merchant_id": "m7"}]).to_dict()
    full = store.get_online_features(feature_service="fraud_v1", full_feature_names=True,
                                     entity_rows=[{"user_id": 1, "merchant_id": "m7"}]).to_dict()
    assert full["merchant_txn__merchant_txn_count_1h"] == short["merchant_txn_count_1h"]
    assert full["user_txn__txn_count_1h"] == short["txn_count_1h"]
    labels["merchant_id"] = ["m7", "m7"]
    df = store.get_historical_features(labels, feature_service="fraud_v1", full_feature_names=True).to_df()
    assert df["user_txn__amount_24h"].tolist() == [86.0, 135.0]


def test_registry_calls(store):
    assert [v["name"] for v in store.list_feature_views()] == ["merchant_txn", "user_profile", "user_txn"]
    assert [s["name"] for s in store.list_feature_services()] == ["fraud_v1"]
    assert store.list_streams()[0]["name"] == "transactions" and len(store.list_entities()) == 2
    assert store.describe("user_txn@v1")["kind"] == "feature_view"
    assert store.lineage("user_txn:amount_24h")["root"] == "feature:user_txn@v1:amount_24h"


def test_domain_errors_say_what_to_fix(store, tmp_path):
    with pytest.raises(UnknownStreamError, match="streams are: transactions"):
        store.push("nope", [{"a": 1}])
    with pytest.raises(NotFoundError, match="has no feature 'nope'"):
        store.get_online_features(features=["user_txn:nope"], entity_rows=[{"user_id": 1}])
    with pytest.raises(BatchError, match="same keys"):
        store.get_online_features(features=["user_txn:amount_24h"], entity_rows=[{"user_id": 1}, {}])
    with pytest.raises(ValueError, match="exactly one"):
        store.get_online_features(entity_rows=[{"user_id": 1}])
    init_repo(tmp_path / "fresh")
    with pytest.raises(RepoError, match="apply"):
        FeatureStore(tmp_path / "fresh").push("transactions", [])


def test_an_empty_batch_is_zero_accepted_and_still_names_a_stream_that_must_exist(store, tmp_path, capsys):
    """An empty batch (a filter that kept nothing, an empty file) is a push of nothing, not an
    error about missing columns; an unknown stream is an error whatever the batch holds,
    from the CLI too (an empty file read "0 accepted" for a stream that does not exist)."""
    for empty in ([], {}):
        assert store.push("transactions", empty) == {"accepted": 0, "late": 0, "lsn": 0}
        with pytest.raises(UnknownStreamError, match="streams are: transactions"):
            store.push("nope", empty)
    with pytest.raises(BatchError, match="timestamp column 'ts'"):  # columns given are still checked
        store.push("transactions", {"user_id": []})
    store.close()
    repo = str(store.repo.root)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    capsys.readouterr()
    assert main(["push", "nope", str(empty), "--repo", repo]) == 1
    assert "no stream 'nope'; streams are: transactions" in capsys.readouterr().err
    assert main(["push", "transactions", str(empty), "--repo", repo]) == 0
    assert json.loads(capsys.readouterr().out)["accepted"] == 0
    csv = tmp_path / "empty.csv"
    csv.write_text("")
    assert main(["push", "transactions", str(csv), "--repo", repo]) == 1
    assert "empty.csv: empty CSV file; its first line must name the columns" in capsys.readouterr().err


def test_cli_file_and_argument_mistakes_are_named_before_any_work(store, tmp_path, capsys):
    """A bad Parquet file names itself; a training set's output path is checked before the set is
    built (it failed after, with pyarrow's errno text); an entity given twice is refused (the second
    silently replaced the first)."""
    store.close()
    repo = str(store.repo.root)
    not_parquet = tmp_path / "events.parquet"
    not_parquet.write_bytes(b"not parquet")
    labels = tmp_path / "labels.csv"
    labels.write_text("user_id,event_timestamp\n1,2026-12-01T00:00:00Z\n")
    capsys.readouterr()
    for cmd in (["push", "transactions", str(not_parquet)],
                ["historical", str(not_parquet), "-o", str(tmp_path / "o.parquet"), "--features", "user_txn:txn_count_1h"]):
        assert main(cmd + ["--repo", repo]) == 1
        assert f"{not_parquet}: not a Parquet file" in capsys.readouterr().err
    feats = ["--features", "user_txn:txn_count_1h", "--repo", repo]
    assert main(["historical", str(labels), "-o", str(tmp_path / "no" / "dir" / "o.parquet")] + feats) == 1
    err = capsys.readouterr().err
    assert f"the directory {tmp_path / 'no' / 'dir'} does not exist" in err and "building" not in err
    assert main(["historical", str(labels), "-o", str(tmp_path)] + feats) == 1
    assert "is a directory; name the file to write" in capsys.readouterr().err
    assert main(["historical", str(labels), "-o", str(tmp_path / "train.txt")] + feats) == 1  # was Parquet
    assert "train.txt: name a .parquet or .csv file (or - for CSV on stdout)" in capsys.readouterr().err
    assert main(["historical", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "o.parquet")] + feats) == 1
    assert "missing.csv: no such file" in capsys.readouterr().err
    assert main(["get", "user_txn:txn_count_1h", "-e", "user_id=1", "-e", "user_id=2", "--repo", repo]) == 1
    assert "user_id is given twice" in capsys.readouterr().err
    # an empty value made the whole list text: "row 0 holds '1'; send the number itself"
    assert main(["get", "user_txn:txn_count_1h", "-e", "user_id=1,,2", "--repo", repo]) == 1
    assert "--entity 'user_id=1,,2': value 1 is empty" in capsys.readouterr().err


def test_features_as_a_bare_string_says_to_give_a_list(store):
    """features="user_txn:amount_24h" was iterated per character: "no definition named 'u'"."""
    for call in (lambda: store.get_online_features(features="user_txn:amount_24h", entity_rows={"user_id": [1]}),
                 lambda: store.get_historical_features({"user_id": [1], "event_timestamp": ["2026-12-01T00:00:00Z"]},
                                                       features="user_txn:amount_24h")):
        with pytest.raises(TypeError, match=r"features is a list of references, e.g. "
                                            r"features=\['user_txn:amount_24h'\]"):
            call()


def test_rows_without_columns_are_refused_not_read_as_no_rows(store):
    # a DataFrame of 3 rows and no columns, or [{}, {}], answered "0 accepted": Arrow reads no rows
    import pandas as pd
    with pytest.raises(BatchError, match="the DataFrame has 3 rows and no columns"):
        store.push("transactions", pd.DataFrame(index=range(3)))
    with pytest.raises(BatchError, match="row 0 of 2 is an empty object"):
        store.push("transactions", [{}, {}])
    assert store.push("transactions", []) == {"accepted": 0, "late": 0, "lsn": 0}


def test_a_dataframe_with_categorical_columns_pushes_like_plain_text(store):
    """pandas' category dtype (dictionary-encoded in Arrow) was refused for a text key: "takes text;
    got dictionary<values=large_string, ...> values"."""
    import pandas as pd
    now = dt.datetime.now(dt.timezone.utc)
    plain = pd.DataFrame(rows(now, n=3, user=2))
    cat = plain.assign(merchant_id=plain.merchant_id.astype("category"), country=plain.country.astype("category"),
                       user_id=plain.user_id.astype("category"))
    assert store.push("transactions", cat) == {"accepted": 3, "late": 0, "lsn": 1}
    got = store.get_online_features(features=["user_txn:amount_24h", "merchant_txn:volume_1d"],
                                    entity_rows=pd.DataFrame({"user_id": [2], "merchant_id": pd.Series(["m7"],
                                                                                                 dtype="category")}))
    assert got.to_dict()["amount_24h"] == [63.0]  # 20 + 21 + 22


def test_objects_in_a_text_column_are_refused_not_stored_as_their_text(store):
    """A dict in a VARCHAR column was accepted from a DataFrame (DuckDB's cast stored "{'a': 1}") while
    HTTP refused it; a complex column raised pyarrow's own error."""
    import pandas as pd
    now = dt.datetime.now(dt.timezone.utc)
    base = pd.DataFrame(rows(now, n=2))
    for column, values, message in (("country", [{"a": 1}, {"b": 2}], r"column 'country' \(VARCHAR\) takes text; "
                                                                       r"got struct<.*> values \(objects and lists"),
                                     ("country", [["a"], ["b"]], "got list<item: string> values"),
                                     ("amount", [1 + 2j, 3 + 0j], "could not read the DataFrame: .*complex128")):
        with pytest.raises(BatchError, match=message):
            store.push("transactions", base.assign(**{column: values}))
    assert store.push("transactions", base)["accepted"] == 2


def test_materialize_fills_the_profile_view_from_its_file(store):
    import pyarrow as pa
    import pyarrow.parquet as pq
    now = time.time_ns() // 1000
    pq.write_table(pa.table({"user_id": [1], "age": [33], "country": ["DE"], "segment": ["Gold"],
                             "is_verified": [True], "updated_at": pa.array([now - H], pa.timestamp("us"))}),
                   str(store.repo.root / "data" / "user_profiles.parquet"))
    store.close()  # re-open: file sources are read when the engine opens
    assert store.materialize(None, "now", views=["user_profile"])["views"] == {"user_profile": 1}
    d = store.get_online_features(features=["user_profile:age", "user_profile:segment"],
                                  entity_rows=[{"user_id": 1}]).to_dict()
    assert d == {"user_id": [1], "age": [33], "segment": ["gold"]}


def test_cli_materialize_on_a_fresh_repo_and_a_missing_source(tmp_path, capsys):
    # `fstore init` ships the profile data its definitions name, so the first
    # materialize works; without the file, the view is skipped with a reason
    # and the other views are still materialized (exit 1: not everything ran)
    from fsapp.registry.scaffold import STARTER_USERS
    repo = str(tmp_path / "repo")
    init_repo(repo)
    assert main(["apply", "-r", repo]) == 0
    capsys.readouterr()
    assert main(["materialize", "now-7d", "now", "--repo", repo]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == {"views": {"merchant_txn": 0, "user_profile": STARTER_USERS, "user_txn": 0},
                                   "skipped": {}}, out.err
    assert main(["get", "user_profile:age", "-e", "user_id=1", "--repo", repo, "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)["age"][0], int)
    (tmp_path / "repo" / "data" / "user_profiles.parquet").unlink()
    assert main(["materialize", "now-7d", "now", "--repo", repo]) == 1
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["views"] == {"merchant_txn": 0, "user_txn": 0} and list(doc["skipped"]) == ["user_profile"]
    assert "source user_profiles: cannot read" in doc["skipped"]["user_profile"]  # the store's reason, passed on
    assert "skipped user_profile: source user_profiles: cannot read" in out.err


def test_error_mapping_covers_every_api_title():
    from fsapp.api.errors import _STATUS_OF
    for exc, status, title in _STATUS_OF:
        assert title in TITLE_TO_CLASS, f"sdk.errors.TITLE_TO_CLASS lacks {title!r}"
        # the class raised, or (titles shared by two classes) one of the same builtin family
        assert issubclass(exc, TITLE_TO_CLASS[title]) or exc.__mro__[-2] is TITLE_TO_CLASS[title].__mro__[-2] \
            or issubclass(exc, OSError) and issubclass(TITLE_TO_CLASS[title], OSError), (exc, title)
    e = error_from_response(404, b'{"title": "Unknown stream", "description": "no stream x"}', "u")
    assert isinstance(e, UnknownStreamError) and str(e) == "no stream x" and e.status == 404
    assert isinstance(error_from_response(401, b'{"title": "Invalid API key", "description": "d"}', "u"), AuthError)
    assert isinstance(error_from_response(415, b"{}", "u"), RequestError)


def test_conversions():
    assert to_us("2026-11-27T10:00:00Z") == to_us(dt.datetime(2026, 11, 27, 10)) == 1795773600000000
    assert to_us(1795773600) == to_us(1795773600000) == 1795773600000000
    assert to_us("now-1h", now=10 * H) == 9 * H and to_us("-30m", now=H) == H // 2
    with pytest.raises(ValueError, match="ISO-8601"):
        to_us("yesterday-ish")
    # units in capitals raised KeyError('H') ("error: 'H'" from the CLI)
    assert to_us("now-2H", now=10 * H) == to_us("now-2h", now=10 * H) == 8 * H and to_us("-1D", now=0) == -24 * H
    # times past years 1..9999 were taken (an as_of of year -271,000 read as a time)
    for bad in ("now-99999999d", "now-" + "9" * 400 + "d", 1e30, "1e30", -1e20):
        with pytest.raises(ValueError, match="outside years 0001..9999"):
            to_us(bad)
    assert entity_columns([{"user_id": 1}, {"user_id": 2}]) == {"user_id": [1, 2]}


def test_cli_push_get_materialize_embedded(tmp_path, capsys):
    init_repo(tmp_path / "repo")
    repo = str(tmp_path / "repo")
    assert main(["apply", "-r", repo]) == 0
    now = dt.datetime.now(dt.timezone.utc)
    f = tmp_path / "events.jsonl"
    f.write_text("\n".join(json.dumps({**r, "ts": r["ts"].isoformat()}) for r in rows(now)) + "\n")
    capsys.readouterr()
    assert main(["push", "transactions", str(f), "--repo", repo]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["accepted"] == 6 and "push transactions" in out.err  # progress on stderr
    assert main(["get", "user_txn:amount_24h", "--entity", "user_id=1,2", "--repo", repo, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"user_id": [1, 2], "amount_24h": [135.0, None]}
    # an on-demand feature: its request column typed on the command line
    assert main(["get", "txn_context:share_of_24h_spend", "-e", "user_id=1", "-e", "amount:float=67.5", "--repo",
                 repo, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["share_of_24h_spend"] == [0.5]
    assert main(["get", "txn_context:share_of_24h_spend", "-e", "user_id=1", "--repo", repo]) == 1
    assert "needs the request column(s) amount" in capsys.readouterr().err
    assert main(["materialize", "now-1d", "now", "--views", "user_txn", "--repo", repo]) == 0
    assert json.loads(capsys.readouterr().out)["views"]["user_txn"] == 1
    labels = tmp_path / "labels.csv"
    labels.write_text(f"user_id,event_timestamp\n1,{now.isoformat()}\n")
    out_file = tmp_path / "train.parquet"
    assert main(["historical", str(labels), "--features", "user_txn:amount_24h", "-o", str(out_file),
                 "--repo", repo]) == 0
    import pyarrow.parquet as pq
    assert pq.read_table(out_file).column("amount_24h").to_pylist() == [135.0]
    # failures: exit 1 with what to do; usage: exit 2
    assert main(["push", "nope", str(f), "--repo", repo]) == 1
    assert "streams are" in capsys.readouterr().err
    assert main(["get", "user_txn:amount_24h", "--entity", "user_id", "--repo", repo]) == 1
    assert "KEY=V1,V2" in capsys.readouterr().err
    assert main(["get", "--entity", "user_id=1", "--repo", repo]) == 2
    assert main(["push", "transactions", str(tmp_path / "missing.jsonl"), "--repo", repo]) == 1
    # FILE after an option: argparse had given it to nothing ("unrecognized arguments: events.jsonl")
    capsys.readouterr()
    assert main(["push", "transactions", "--batch-rows", "4", str(f), "--repo", repo]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["accepted"] + res["late"] == 6
    with pytest.raises(SystemExit):
        main(["push", "transactions", "--batch-rows", "4", str(f), "extra", "--repo", repo])
    err = capsys.readouterr().err
    assert "unrecognized arguments: " in err and err.rstrip().endswith(" extra")
    assert main(["get", "user_txn:amount_24h", "-e", "user_id=1", "--url", "http://127.0.0.1:9"]) == 1
    assert "fstore serve" in capsys.readouterr().err


def test_the_http_client_and_the_api_know_every_registry_kind():
    """Client.describe tried five kinds of seven: an on-demand view was 'no
    definition named ...' over HTTP (found by the demo once training sets
    described their features)."""
    from fsapp.api import backend
    from fsapp.registry import model
    from fsapp.sdk import client, embedded

    for mod in (backend, client, embedded):
        assert set(mod.KINDS) == set(model.KINDS), mod.__name__
