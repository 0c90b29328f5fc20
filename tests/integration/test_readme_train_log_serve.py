"""The README's "Train, log, serve" section runs as written: its python
block, in an empty directory, starts a real `fstore serve` and a real
`mlflow models serve --env-manager local`, and its printed predictions
follow a push. (The five-minute tour is test_readme_tour.py.)"""
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADING = "## Train, log, serve (MLflow)"


def section_blocks(text: str) -> list[str]:
    body = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def _stop_left_behind(cwd) -> None:
    """The servers the script started, if it failed before stopping them:
    the processes whose working directory is the test's own temp dir."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == str(cwd):
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            continue


def test_readme_train_log_serve_runs_verbatim(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sklearn")
    (script,) = section_blocks((ROOT / "README.md").read_text())
    # as after `pip install -e '.[mlflow]'`: `fstore` and `mlflow` on PATH; no telemetry from a test
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # no other test's experiment
    env.update(PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               MLFLOW_DISABLE_TELEMETRY="true")
    try:
        res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                             timeout=240, env=env)
    except subprocess.TimeoutExpired as e:
        out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x for x in (e.stdout or "", e.stderr or ""))
        pytest.fail(f"the README's script ran for 240 s: {out[-5000:]}")
    finally:
        _stop_left_behind(tmp_path)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    lines = res.stdout.splitlines()
    assert "[0, 1, 0]" in lines  # live features, an unknown user filled as in training
    assert "[1, 1, 0]" in lines  # the push moved user 1's prediction
    assert any(line.startswith("(400, \"Model is missing inputs ['user_id'].") for line in lines), res.stdout
    assert "['fraud']" in lines
