"""The README's five-minute tour runs verbatim: every ```python block, in
order, as one script in an empty directory (it starts and stops a real
`fstore serve`), so the tour cannot go stale."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_tour_runs_verbatim(tmp_path):
    text = (ROOT / "README.md").read_text()
    tour = text.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]  # later sections have tests of their own
    blocks = re.findall(r"```python\n(.*?)```", tour, re.S)
    assert len(blocks) >= 3, "the tour needs its definitions, embedded and client blocks"
    # as after the README's first command (`pip install . && fstore demo`):
    # pandas is a test extra, not a dependency, so the tour must not need it
    no_pandas = ("import sys\n"
                 "class NoPandas:\n"
                 "    def find_spec(self, name, path=None, target=None):\n"
                 "        if name.split('.')[0] == 'pandas':\n"
                 "            raise ModuleNotFoundError(\"No module named 'pandas'\", name=name)\n"
                 "sys.meta_path.insert(0, NoPandas())\n")
    script = no_pandas + "\n".join(blocks)
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "{'accepted': 6, 'late': 0" in out
    assert "'amount_24h': [135.0, None]" in out
    assert "[86.0, 135.0]" in out  # the training set, point in time
    assert "'amount_24h': [135.0, 99.0]" in out  # the client read after its own push
    assert "user_txn feature:user_txn@v1:amount_24h" in out or "feature:user_txn@v1:amount_24h" in out
