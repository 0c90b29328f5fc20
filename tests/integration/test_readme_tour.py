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
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3, "the tour needs its definitions, embedded and client blocks"
    script = "\n".join(blocks)
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "{'accepted': 6, 'late': 0" in out
    assert "'amount_24h': [135.0, None]" in out
    assert "'amount_24h': [135.0, 99.0]" in out  # the client read after its own push
    assert "user_txn feature:user_txn@v1:amount_24h" in out or "feature:user_txn@v1:amount_24h" in out
