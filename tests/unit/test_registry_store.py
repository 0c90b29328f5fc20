"""Registry storage, versions, plan and the read side (catalog, lineage)."""
import sqlite3

import pytest

from fscore.schema import Schema
from fscore.window_spec import Agg, sliding
from fsapp.registry import (
    IncompatibleChange, NotFoundError, Registry, RegistryConflict, Repo, init_repo, lineage, render_lineage,
)
from fsapp.registry.errors import DefinitionError

DEFS = """
CREATE ENTITY user (user_id BIGINT);
CREATE STREAM txns (user_id BIGINT, amount DOUBLE, merchant VARCHAR, ts TIMESTAMP)
    WITH (topic = 'txns', timestamp = 'ts');
CREATE FEATURE VIEW user_txn AS
SELECT user_id, count(*) OVER sliding('1h', '5m') AS n_1h, sum(amount * 2) OVER sliding('1h', '5m') AS s_1h,
       max(amount) OVER {window} AS max_amount
FROM txns WHERE amount > 0;
CREATE FEATURE SERVICE model AS (user_txn:n_1h, user_txn:max_amount);
"""


def make_repo(tmp_path, window="lifetime()"):
    (tmp_path / "fstore.yaml").write_text("project: test\n")
    write_defs(tmp_path, window)
    return Repo(tmp_path)


def write_defs(root, window="lifetime()", extra=""):
    (root / "defs.sql").write_text(DEFS.format(window=window) + extra)


def test_apply_versions_history_and_old_versions_stay_readable(tmp_path):
    repo = make_repo(tmp_path)
    plan, first = repo.apply()
    assert first == 1 and [c.action for c in plan.changes] == ["add"] * 4
    assert repo.apply()[1] is None  # unchanged: nothing written

    write_defs(tmp_path, window="tumbling('1d')")
    plan = repo.plan()
    [ch] = plan.incompatible
    assert ch.name == "user_txn" and ch.action == "change" and (ch.old_version, ch.new_version) == (1, 2)
    assert "window of max_amount: lifetime() -> tumbling('1d')" in ch.incompatible
    with pytest.raises(IncompatibleChange, match="--allow-incompatible"):
        repo.apply()
    _, second = repo.apply(allow_incompatible=True)
    assert second == 2

    reg = Registry(repo.registry_path)
    assert reg.feature_view("user_txn").version == 2
    assert reg.feature_view("user_txn", 1).definition.aggregations[2].window.kind == "lifetime"
    assert [e.version for e in reg.store.history("user_txn")] == [1, 2]
    # The service follows the view's new version: a new service version, pinned.
    assert reg.get("model").version == 2
    assert reg.get("model").resolved["features"] == ["user_txn@v2:n_1h", "user_txn@v2:max_amount"]
    assert reg.get("model", 1).resolved["features"] == ["user_txn@v1:n_1h", "user_txn@v1:max_amount"]
    assert [c["action"] for c in reg.store.changes(2)] == ["change", "change"]
    reg.close()


def test_compatible_change_and_removal(tmp_path):
    repo = make_repo(tmp_path)
    repo.apply()
    write_defs(tmp_path, extra="CREATE ENTITY merchant (merchant VARCHAR);")
    plan = repo.plan()
    assert [(c.name, c.action) for c in plan.pending] == [("merchant", "add")] and not plan.incompatible
    repo.apply()
    write_defs(tmp_path)
    plan = repo.plan()
    [ch] = plan.pending
    assert ch.action == "remove" and ch.incompatible
    repo.apply(allow_incompatible=True)
    with _registry(repo) as reg:
        with pytest.raises(NotFoundError, match="merchant was removed .* merchant@v1"):
            reg.get("merchant")
        assert reg.get("merchant", 1).kind == "entity"
    # Re-adding continues the version sequence rather than reusing v1.
    write_defs(tmp_path, extra="CREATE ENTITY merchant (merchant VARCHAR);")
    assert repo.plan().pending[0].new_version == 2


class _registry:
    def __init__(self, repo):
        self.reg = Registry(repo.registry_path)

    def __enter__(self):
        return self.reg

    def __exit__(self, *exc):
        self.reg.close()


def test_feature_and_column_diffs_are_flagged(tmp_path):
    repo = make_repo(tmp_path)
    repo.apply()
    (tmp_path / "defs.sql").write_text(DEFS.format(window="lifetime()")
                                       .replace("amount DOUBLE", "amount BIGINT")
                                       .replace("sum(amount * 2)", "sum(amount * 3)"))
    plan = {c.name: c for c in repo.plan().pending}
    assert "column amount: type DOUBLE -> BIGINT" in plan["txns"].incompatible
    assert "feature max_amount" not in " ".join(plan["user_txn"].incompatible)  # still DOUBLE
    assert any("input of s_1h: amount * 2 -> amount * 3" in d for d in plan["user_txn"].details)


def test_invalid_repo_writes_nothing(tmp_path):
    repo = make_repo(tmp_path)
    write_defs(tmp_path, extra="CREATE FEATURE SERVICE broken AS (user_txn:nope);")
    with pytest.raises(DefinitionError, match="no feature 'nope'"):
        repo.apply()
    assert not repo.registry_path.exists()


def test_pinned_reference_to_an_old_version(tmp_path):
    repo = make_repo(tmp_path)
    repo.apply()
    write_defs(tmp_path, window="tumbling('1d')", extra="CREATE FEATURE SERVICE old AS (user_txn@v1:max_amount);")
    repo.apply(allow_incompatible=True)
    with _registry(repo) as reg:
        assert reg.get("old").resolved["features"] == ["user_txn@v1:max_amount"]
        [(info, feat)] = reg.resolve_features(feature_service="old")
        assert (info.version, feat) == (1, "max_amount")
    write_defs(tmp_path, extra="CREATE FEATURE SERVICE old AS (user_txn@v7:max_amount);")
    with pytest.raises(DefinitionError, match="no feature view user_txn version 7"):
        repo.plan()


def test_apply_refuses_a_stale_plan(tmp_path):
    repo = make_repo(tmp_path)
    store = repo.open_registry(create=True)
    plan = repo.plan(store)
    repo.apply()
    with pytest.raises(RegistryConflict, match="changed since this plan"):
        store.apply(plan)
    store.close()


def test_a_failed_apply_leaves_the_registry_unchanged(tmp_path):
    repo = make_repo(tmp_path)
    repo.apply()
    write_defs(tmp_path, extra="CREATE ENTITY merchant (merchant VARCHAR); CREATE ENTITY zzz (z BIGINT);")
    store = repo.open_registry()
    plan = repo.plan(store)
    assert [c.name for c in plan.pending] == ["merchant", "zzz"]
    plan.pending[1].new_spec = {"bad": object()}  # fails after merchant was written
    with pytest.raises(TypeError):
        store.apply(plan)
    assert store.head() == 1 and "merchant" not in store.snapshot().entries
    store.close()


def test_catalog_gives_the_engine_what_it_needs(tmp_path):
    repo = make_repo(tmp_path)
    repo.apply()
    with _registry(repo) as reg:
        view = reg.feature_view("user_txn")
        assert view.online_schema() == Schema([("user_id", "int64")], [("n_1h", "int64"), ("s_1h", "float64"),
                                                                       ("max_amount", "float64")])
        assert view.input_columns() == {"__in0": "amount * 2", "amount": "amount"}
        assert view.window_groups() == [
            (sliding("1h", "5m"), (Agg("count", None, "n_1h"), Agg("sum", "__in0", "s_1h"))),
            (view.definition.aggregations[2].window, (Agg("max", "amount", "max_amount"),))]
        sql = view.projection_sql("batch")
        assert sql == ('SELECT "user_id", "ts", (amount * 2) AS "__in0", (amount) AS "amount" FROM batch '
                       'WHERE (amount > 0)')
        assert [f for _, f in reg.resolve_features(["user_txn:*"])] == ["n_1h", "s_1h", "max_amount"]
        with pytest.raises(NotFoundError, match="has no feature 'x'"):
            reg.resolve_features(["user_txn:x"])


def test_lineage_graph_and_text(tmp_path):
    repo = make_repo(tmp_path)
    repo.apply()
    with _registry(repo) as reg:
        g = reg.lineage("user_txn:n_1h")
        assert g["root"] == "feature:user_txn@v1:n_1h"
        ids = {n["id"] for n in g["nodes"]}
        assert {"topic:txns", "stream:txns@v1", "feature_view:user_txn@v1", "feature_service:model@v1"} <= ids
        assert "feature:user_txn@v1:s_1h" not in ids  # a sibling is neither upstream nor downstream
        text = render_lineage(lineage(reg.store, "txns"))
        assert text.splitlines()[0] == "stream txns v1"
        assert "kafka topic txns" in text and "feature service model v1" in text
        with pytest.raises(NotFoundError):
            reg.lineage("nothing")


def test_registry_file_is_wal_mode_and_readers_never_create(tmp_path):
    repo = make_repo(tmp_path)
    with pytest.raises(NotFoundError, match="run `fstore apply`"):
        Registry(repo.registry_path)
    repo.apply()
    mode = sqlite3.connect(repo.registry_path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_init_repo_applies_as_is(tmp_path):
    init_repo(tmp_path / "r")
    repo = Repo(tmp_path / "r")
    plan, apply_id = repo.apply()
    assert apply_id == 1 and len(plan.pending) == 11  # + txn_request, txn_context
    with _registry(repo) as reg:
        fraud = reg.resolve_features(feature_service="fraud_v1")
        assert {(i.name, f) for i, f in fraud} >= {("user_txn", "txn_count_1h"), ("user_profile", "age")}
        kinds = {w.kind for w, _ in reg.feature_view("user_txn").window_groups()}
        assert kinds == {"sliding", "continuous", "tumbling", "session", "lifetime"}


def test_init_where_a_repo_cannot_be_made_says_so_without_a_traceback(tmp_path):
    # `fstore init /proc/x` and `fstore init /dev/null` ended in pathlib's traceback
    from fsapp.registry.errors import RepoError

    (tmp_path / "file").write_text("x")
    with pytest.raises(RepoError, match=r"file exists and is not a directory; name a new or an existing directory"):
        init_repo(tmp_path / "file")
    with pytest.raises(RepoError, match=r"cannot create the repo in .*file/r: Not a directory"):
        init_repo(tmp_path / "file" / "r")
    assert (tmp_path / "file").read_text() == "x"


def test_one_registry_read_by_many_threads_at_once(tmp_path):
    """A registry object is shared by the engine's socket threads (and a gRPC
    server's thread pool): two reads at once issued a second BEGIN on the one
    SQLite connection — "cannot start a transaction within a transaction",
    a 500 on an as_of read in `fstore demo` under load."""
    import threading

    repo = make_repo(tmp_path)
    repo.apply()
    errors = []
    with _registry(repo) as reg:
        def reader():
            try:
                for _ in range(300):
                    reg.resolve_features(["user_txn:n_1h"], None)
                    reg.snapshot()
            except Exception as e:  # noqa: BLE001 - the test reports it
                errors.append(e)

        threads = [threading.Thread(target=reader) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors[:3]


def test_a_script_in_the_repo_that_applies_it_is_named_and_fstoreignore_leaves_scripts_out(tmp_path):
    """Every *.py in a repo runs as definitions (as Feast's): a training script beside the
    definitions that applied the repo when run recursed until Python's RecursionError, with the
    file named a thousand times. It is named once with what to do; `.fstoreignore` (Feast's
    `.feastignore`) lists files and directories that are not definitions."""
    from fsapp.registry.errors import RepoError
    repo = make_repo(tmp_path)
    script = "from fsapp.registry import Repo\nRepo(__file__.rsplit('/', 2)[0]).apply()\n"
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "train.py").write_text(script)
    with pytest.raises(RepoError) as e:
        repo.apply()
    assert str(e.value) == ("jobs/train.py: reading it as a definitions file read this repo's definitions again "
                            "(it plans or applies the repo when run): put that code under `if __name__ == "
                            "\"__main__\":`, move the script out of the repo, or list it in .fstoreignore")
    assert not repo.registry_path.exists()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "explore.py").write_text("raise SystemExit('not definitions')\n")
    (tmp_path / "old_job.py").write_text("raise SystemExit('not definitions')\n")
    (tmp_path / ".fstoreignore").write_text("# scripts, not definitions\njobs/train.py\nnotebooks/\n*_job.py\n")
    assert [p.name for p in repo.definition_files()] == ["defs.sql"]
    assert repo.apply()[1] is not None
    # a script whose work is under the main guard is read as definitions without running it
    (tmp_path / ".fstoreignore").write_text("notebooks\nold_job.py\n")
    (tmp_path / "jobs" / "train.py").write_text("if __name__ == '__main__':\n    " + script.replace("\n", "\n    "))
    assert repo.plan().pending == []
