"""The README's Python example runs verbatim, so it cannot go stale."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_python_example_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    for code in blocks:
        res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    assert "(3, 9.5, 'DE')" in res.stdout


def test_readme_names_the_two_quickstart_commands():
    text = (ROOT / "README.md").read_text()
    assert "pip install . && fstore demo" in text
    assert "pip install -e '.[test]' && pytest -q" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[test]' && pytest -q" in ci
