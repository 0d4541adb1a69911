"""The documents that are generated from, or must follow, a single definition in code."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from fep_tools import cfgdoc
from fepha import keyspace as ks

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_doc_matches_the_settings_models() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert cfgdoc.splice(doc, cfgdoc.render()) == doc, "run: python -m fep_tools.cfgdoc --write"


PLACEHOLDER = {"rtu": "{rtu}", "node": "{node}", "ctl_id": "{id}", "table": "{TABLE}", "service": "{service}"}


def _documented_names() -> list[str]:
    """Every key, stream and channel name the keyspace module can build, with placeholders for ids."""
    names = [v for k, v in vars(ks).items() if k.isupper() and isinstance(v, str) and k != "PREFIX"]
    for name, fn in vars(ks).items():
        if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != ks.__name__:
            continue
        params = list(inspect.signature(fn).parameters.values())
        args = [PLACEHOLDER.get(p.name, "{" + p.name + "}") for p in params if p.default is p.empty]
        out = fn(*args)
        if isinstance(out, str):
            names.append(out)
    return names


def test_every_key_of_the_keyspace_module_is_documented() -> None:
    doc = (ROOT / "docs" / "keyspace.md").read_text()
    documented = set(re.findall(r"`(fep:[^`]+)`", doc))
    missing = [n for n in _documented_names() if n not in documented]
    assert not missing, f"keys missing from docs/keyspace.md: {missing}"
