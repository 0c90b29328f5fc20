"""`fstore init / plan / apply / lineage / registry` as a user runs them, and
readers in other processes while apply writes: always a whole old or a whole
new registry, never a mix."""
import json
import subprocess
import sys
import textwrap

import pytest


def fstore(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fsapp.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.fixture
def repo(tmp_path):
    res = fstore("init", str(tmp_path / "repo"))
    assert res.returncode == 0, res.stderr
    return tmp_path / "repo"


def test_init_plan_apply_lineage_describe(repo):
    res = fstore("plan", "-r", str(repo))
    assert res.returncode == 0, res.stderr
    assert "+ feature view user_txn (v1)" in res.stdout and "11 to add" in res.stdout and "+ on-demand view txn_context (v1)" in res.stdout
    assert fstore("plan", "--check", "-r", str(repo)).returncode == 1

    res = fstore("apply", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert "Applied as #1" in res.stdout
    res = fstore("apply", cwd=repo)
    assert res.returncode == 0 and "Nothing to apply." in res.stdout
    assert fstore("plan", "--check", cwd=repo).returncode == 0

    res = fstore("lineage", "user_txn:amount_24h", "-r", str(repo))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "feature user_txn:amount_24h (v1, DOUBLE)"
    assert "kafka topic card-transactions" in res.stdout and "feature service fraud_v1 v1" in res.stdout
    graph = json.loads(fstore("lineage", "fraud_v1", "--json", "-r", str(repo)).stdout)
    assert graph["root"] == "feature_service:fraud_v1@v1"
    assert ["source:user_profiles@v1", "feature_view:user_profile@v1"] in graph["edges"]

    res = fstore("registry", "describe", "user_txn@v1", "-r", str(repo))
    assert res.returncode == 0 and "OVER sliding('1h', '5m') AS txn_count_1h" in res.stdout
    res = fstore("registry", "list", "-r", str(repo))
    assert "feature service  fraud_v1" in res.stdout


def test_incompatible_change_needs_the_flag_and_makes_a_new_version(repo):
    assert fstore("apply", "-r", str(repo)).returncode == 0
    sql = repo / "features.sql"
    sql.write_text(sql.read_text().replace("count(*) OVER sliding('1h', '5m') AS txn_count_1h",
                                           "count(*) OVER sliding('2h', '5m') AS txn_count_1h", 1))
    res = fstore("plan", "-r", str(repo))
    assert "~ feature view user_txn v1 -> v2   [INCOMPATIBLE]" in res.stdout
    assert "! window of txn_count_1h: sliding('1h', '5m') -> sliding('2h', '5m')" in res.stdout
    assert "~ feature view merchant_txn" not in res.stdout
    res = fstore("apply", "-r", str(repo))
    assert res.returncode == 1 and "--allow-incompatible" in res.stderr
    assert fstore("apply", "--allow-incompatible", "-r", str(repo)).returncode == 0
    old = fstore("registry", "describe", "user_txn@v1", "--json", "-r", str(repo))
    assert json.loads(old.stdout)["version"] == 1
    hist = fstore("registry", "history", "user_txn", "-r", str(repo)).stdout.splitlines()
    assert [h.split()[0] for h in hist] == ["v1", "v2"]


def test_errors_exit_1_with_a_message(repo, tmp_path):
    sql = repo / "features.sql"
    sql.write_text(sql.read_text().replace("sum(amount) OVER tumbling('1d')", "sum(merchant_id) OVER tumbling('1d')"))
    res = fstore("apply", "-r", str(repo))
    assert res.returncode == 1
    assert "features.sql:40: feature view merchant_txn: sum(merchant_id) AS volume_1d: sum needs a numeric" \
        in res.stderr
    assert not (repo / "data" / "registry.db").exists()
    sql.write_text("CREATE FEATURE VIEW v AS SELECT\n  FROM x")
    res = fstore("plan", "-r", str(repo))
    assert res.returncode == 1 and "features.sql:2:3: expected a column" in res.stderr
    assert fstore("plan", "-r", str(tmp_path)).returncode == 1  # not a repo
    assert fstore("lineage", "-r", str(repo), "x").returncode == 1  # no registry yet
    assert fstore("init", str(repo)).returncode == 1  # already a repo


def test_bad_usage_exits_2_and_every_help_has_an_example(capsys):
    from fsapp.cli import main
    for argv, code in ((["lineage"], 2), (["registry"], 2), (["init", "--help"], 0), (["plan", "--help"], 0),
                       (["apply", "--help"], 0), (["lineage", "--help"], 0), (["registry", "--help"], 0),
                       (["registry", "describe", "--help"], 0)):
        with pytest.raises(SystemExit) as ei:
            main(argv)
        assert ei.value.code == code, argv
        if code == 0:
            assert "example:" in capsys.readouterr().out, argv


READER = textwrap.dedent("""
    import json, sys, time
    from fsapp.registry.store import RegistryStore
    path, last = sys.argv[1], int(sys.argv[2])
    seen, snapshots, deadline = set(), 0, time.time() + 90
    while time.time() < deadline:
        with RegistryStore(path) as store:           # reopen: new processes must see it whole too
            for _ in range(20):
                snap = store.snapshot()
                gens = {e.spec["definition"].get("description") for e in snap.entries.values()}
                pins = {p.split(":")[0] for e in snap.entries.values() if e.kind == "feature_service"
                        for p in e.resolved["features"]}
                views = {f"{e.name}@v{e.version}" for e in snap.entries.values() if e.kind == "feature_view"}
                if len(gens) != 1 or not pins <= views or len(snap.entries) != 4:
                    print(json.dumps({"mixed": sorted(map(str, gens)), "pins": sorted(pins)}))
                    sys.exit(1)
                seen |= gens
                snapshots += 1
        if f"gen {last}" in seen:
            break
        time.sleep(0.005)
    print(json.dumps({"seen": sorted(seen), "snapshots": snapshots}))
""")

DEFS = """
CREATE ENTITY user (user_id BIGINT) WITH (description = 'gen {g}');
CREATE STREAM txns (user_id BIGINT, amount DOUBLE, ts TIMESTAMP) WITH (timestamp = 'ts', description = 'gen {g}');
CREATE FEATURE VIEW v WITH (description = 'gen {g}') AS
SELECT user_id, sum(amount) OVER sliding('1h', '{hop}') AS s FROM txns;
CREATE FEATURE SERVICE svc WITH (description = 'gen {g}') AS (v:s);
"""


def test_readers_see_the_old_or_the_new_registry_never_a_mix(tmp_path):
    (tmp_path / "fstore.yaml").write_text("project: concurrent\n")
    defs = tmp_path / "defs.sql"
    defs.write_text(DEFS.format(g=0, hop="5m"))
    assert fstore("apply", "-r", str(tmp_path)).returncode == 0
    last = 4
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / "data" / "registry.db"), str(last)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for g in range(1, last + 1):
            # Odd generations also change the window: every object gets a new version.
            defs.write_text(DEFS.format(g=g, hop="10m" if g % 2 else "5m"))
            res = fstore("apply", "--allow-incompatible", "-r", str(tmp_path))
            assert res.returncode == 0, res.stderr
        outs = [r.communicate(timeout=120) for r in readers]
    finally:
        for r in readers:
            if r.poll() is None:
                r.kill()
                r.wait()
    for (out, err), r in zip(outs, readers):
        assert r.returncode == 0, out + err
        report = json.loads(out)
        assert f"gen {last}" in report["seen"] and report["snapshots"] > 0
