"""`fstore demo` runs end to end and leaves no process or file behind."""
import os
import subprocess
import sys

from fsapp.cli import main


def test_demo_passes_and_cleans_up(tmp_path):
    keep = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "fsapp.cli", "demo", "--rows", "20000", "--readers", "1",
                          "--keep", str(keep)], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "acknowledged rows lost: 0" in res.stdout
    assert "torn or invalid rows seen: 0" in res.stdout
    assert "demo passed" in res.stdout
    res = subprocess.run([sys.executable, "-m", "fsapp.cli", "demo", "--rows", "5000", "--readers", "0"],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    tmp_root = res.stdout.split(" in ", 1)[1].split()[0]
    assert not os.path.exists(tmp_root)


def test_bad_usage_exits_2(capsys):
    assert main([]) == 2
    try:
        main(["demo", "--rows", "0"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("--rows 0 was accepted")
    assert "--rows" in capsys.readouterr().err
