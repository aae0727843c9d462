"""docs/extending.md runs as written: each ```python file=NAME.py block is a file of its own, outside
the library, imported from a fresh folder; its `demo()` fits with it through the public engine."""

import importlib
import re
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
BLOCK = re.compile(r"```python file=(?P<name>\w+)\.py\n(?P<code>.*?)```", re.S)


def _blocks() -> dict[str, str]:
    return {m["name"]: m["code"] for m in BLOCK.finditer(DOC.read_text())}


def test_the_page_has_the_four_examples():
    assert sorted(_blocks()) == ["anisotropic_tv", "discrepancy_stop", "grey_operator", "tiny_decoder"]


@pytest.mark.slow  # four compiles (~40 s on 2 cores): CI's slow step runs them
@pytest.mark.parametrize("name", sorted(_blocks()))
def test_each_example_is_one_file_that_fits(name, tmp_path, monkeypatch):
    (tmp_path / f"{name}.py").write_text(_blocks()[name])
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    module = importlib.import_module(name)
    try:
        result = module.demo()
    finally:
        sys.modules.pop(name, None)
    assert result.restored is not None
