"""`fstore demo` runs the whole product end to end and leaves no process or
file behind."""
import os
import re
import subprocess
import sys

from fsapp.cli import main


def test_demo_passes_and_cleans_up():
    # as after the README's `pip install . && fstore demo`: pandas is a test
    # extra, not a dependency, so the demo's own process must not need it
    no_pandas = (
        "import sys\n"
        "class NoPandas:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'pandas':\n"
        "            raise ModuleNotFoundError(\"No module named 'pandas'\", name=name)\n"
        "sys.meta_path.insert(0, NoPandas())\n"
        "from fsapp.cli import main\n"
        "sys.exit(main())\n")
    res = subprocess.run([sys.executable, "-c", no_pandas, "demo", "--events", "4000"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "acknowledged events lost: 0" in out
    assert "processes left: 0" in out
    assert re.search(r"1 entity +p50 +[\d.]+ ms", out)
    assert "demo passed" in out
    # what it prints follows the documented rules: the engine's late count is
    # the one the lateness rule predicts, and the sliding count is explained
    # by its window and equals the generated events in it
    late = re.search(r"late (\d+) \(logged offline, not applied online; the rule predicted (\d+)\)", out)
    assert late and late.group(1) == late.group(2), out
    count = re.search(r"txn_count_1h as of [\d:]+ is (\d+), and (\d+) of its on-time events", out)
    assert count and count.group(1) == count.group(2), out
    assert "closed 5-min hops only" in out and "newest event" in out
    root = out.split("fstore demo in ", 1)[1].split()[0]
    assert not os.path.exists(root)


def test_bad_usage_exits_2(capsys):
    assert main([]) == 2
    try:
        main(["demo", "--events", "0"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("--events 0 was accepted")
    assert "--events" in capsys.readouterr().err
