"""The command's face to a new user: `fstore --version`, `python -m fsapp`
(the same command when the script is not on PATH), and the PEP 561 markers
type checkers look for, declared as package data so the wheel ships them."""
import pathlib
import subprocess
import sys
import tomllib
from importlib.metadata import version

import pytest

from fsapp.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"fstore {version('fstore')}"


def test_python_dash_m_fsapp_is_the_fstore_command():
    res = subprocess.run([sys.executable, "-m", "fsapp", "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == f"fstore {version('fstore')}", res.stderr
    res = subprocess.run([sys.executable, "-m", "fsapp"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "usage: fstore" in res.stdout  # no command: help, exit 2 (like fstore)


def test_both_packages_ship_a_py_typed_marker():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package in ("fsapp", "fscore"):
        assert (ROOT / "src" / package / "py.typed").is_file()
        assert "py.typed" in data.get(package, []), f"pyproject package-data does not ship {package}/py.typed"
