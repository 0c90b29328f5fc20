"""The compiled extensions are the modules imported: no silent pure-Python fallback."""
import importlib
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "fscore"
MODULES = sorted(p.stem for p in SRC.glob("*.pyx"))


def test_every_pyx_has_a_module():
    assert "table" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_extension_module_is_compiled(name):
    mod = importlib.import_module(f"fscore.{name}")
    assert pathlib.Path(mod.__file__).suffix in (".so", ".pyd"), mod.__file__
    assert mod.__loader__.__class__.__name__ == "ExtensionFileLoader"
