"""docs/config_keys.md: every config key has a meaning, and the file is what `python -m def_ray.config` generates."""

import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from def_ray.config import Config, StorageOptions, _Section, describe

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "config_keys.md"
REGENERATE = "(head -4 docs/config_keys.md; python -m def_ray.config) > /tmp/ck && mv /tmp/ck docs/config_keys.md"


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, f in model.model_fields.items():
        yield f"{prefix}{name}", f
        if isinstance(f.annotation, type) and issubclass(f.annotation, _Section):
            yield from _fields(f.annotation, f"{prefix}{name}.")


def test_every_key_and_section_has_a_meaning():
    rows = [r.split("|") for r in describe()]
    empty = [cells[1].strip() for cells in rows if not cells[3].strip()]
    assert not empty, f"config keys without a meaning (add description= in def_ray/config.py): {empty}"
    leaves = [key for key, f in _fields(Config) if not f.description
              and not (isinstance(f.annotation, type) and issubclass(f.annotation, _Section)
                       and f.annotation is not StorageOptions)]
    assert not leaves, f"fields without description=: {leaves}"
    storage = [k for k, f in StorageOptions.model_fields.items() if not f.description]
    assert not storage, f"StorageOptions fields without description=: {storage}"


def test_doc_is_what_the_schema_generates():
    generated = subprocess.run([sys.executable, "-m", "def_ray.config"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout
    text = DOC.read_text(encoding="utf-8")
    head = "".join(text.splitlines(keepends=True)[:4])
    assert text == head + generated, f"docs/config_keys.md is stale; regenerate it: {REGENERATE}"
    assert generated.count("\n| `") == len([r for r in describe() if r.startswith("| `")])
