"""The README's quickstart commands stay exactly as CI runs them, and its
Python blocks compile (tests/integration/test_readme_tour.py runs them)."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_python_blocks_compile():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    for i, code in enumerate(blocks):
        compile(code, f"README.md python block {i}", "exec")


def test_readme_names_the_two_quickstart_commands():
    text = (ROOT / "README.md").read_text()
    assert "pip install . && fstore demo" in text
    assert "pip install -e '.[test]' && pytest -q" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[test]' && pytest -q" in ci


def test_readme_tour_needs_nothing_the_first_command_does_not_install():
    # `pip install . && fstore demo` brings no pandas: the tour's code calls no
    # .to_df() (comments may mention it); test_readme_tour.py runs it without pandas
    text = (ROOT / "README.md").read_text()
    for code in re.findall(r"```python\n(.*?)```", text, re.S):
        for line in code.splitlines():
            assert ".to_df()" not in line.split("#", 1)[0], line
