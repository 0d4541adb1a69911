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


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _pattern(name: str) -> re.Pattern[str]:
    """A keyspace name with its `{placeholders}` as one key segment each."""
    return re.compile("".join("[^:]+" if part.startswith("{") else re.escape(part)
                              for part in re.split(r"(\{[^}]+\})", name)))


def test_every_key_the_docs_name_is_one_the_keyspace_module_builds() -> None:
    """The other direction: a key a document names (`fep:m:forwarder:{node}`, `fep:chan:*`) that the
    keyspace module cannot build is a key no service reads or writes (a renamed or misspelt one)."""
    patterns = [_pattern(n) for n in _documented_names()]
    unknown = []
    for path in DOCS:
        for key in set(re.findall(r"`(fep:[^`\s]+)`", path.read_text())):
            if "*" in key:  # a glob (docs/ha.md: `fep:chan:*`): it must cover some key
                glob = re.compile(".*".join(re.escape(p) for p in key.split("*")))
                if not any(glob.fullmatch(n) for n in _documented_names()):
                    unknown.append(f"{path.name}: {key}")
                continue
            concrete = re.sub(r"\{[^}]+\}|<[^>]+>", "x", key)
            if not any(p.fullmatch(concrete) for p in patterns):
                unknown.append(f"{path.name}: {key}")
    assert not unknown, f"keys the docs name that fepha/keyspace.py does not build: {unknown}"


NOT_SETTINGS = {
    "FEP_RUN", "FEP_IMAGE", "FEP_BIND", "FEP_PYTHON",  # compose.yml's and the keepalived container's
    "FEP_TRACE_FORWARDER",  # bench/forward.py --trace (docs/configuration.md says it is no setting)
    "FEP_SCREENSHOTS",  # tests/api/test_dashboard_live.py
    "FEP_TIMERS_LEASE_TTL",  # docs/configuration.md's example of a misspelt variable
}


def test_every_setting_the_docs_name_exists() -> None:
    """`[section] key` and FEP_<SECTION>_<KEY> in any document name a setting of fepha.config (a renamed
    setting left in the prose sends an operator to a key that is refused as unknown)."""
    from dataclasses import fields

    from fepha.config import LogConfig, NodeConfig, _key
    known = {(f.metadata["section"], _key(f)) for cls in (NodeConfig, LogConfig) for f in fields(cls)}
    sections = {s for s, _ in known}
    variables = {f"FEP_{s}_{k}".upper() for s, k in known}
    wrong = []
    for path in DOCS:
        text = path.read_text()
        for section, key in re.findall(r"`\[(\w+)\] (\w+)`", text):
            if section in sections and (section, key) not in known:
                wrong.append(f"{path.name}: [{section}] {key}")
        for var in set(re.findall(r"\bFEP_[A-Z0-9_]*[A-Z0-9]\b", text)):
            if var not in variables and var not in NOT_SETTINGS:
                wrong.append(f"{path.name}: {var}")
    assert not wrong, f"settings the docs name that fepha/config.py does not have: {wrong}"


def test_the_api_docs_endpoints_are_the_apps_operations() -> None:
    """docs/api.md's Endpoints table against the app's OpenAPI schema: every operation documented and
    every documented one served, each documented query parameter taken with the documented default, and
    each status its row names (404, 409) one the operation declares."""
    from fep_api.app import create_app
    from fepha.config import NodeConfig

    schema = create_app(NodeConfig()).openapi()
    served = {(m.upper(), re.sub(r"\{\w+\}", "{id}", p)) for p, ops in schema["paths"].items() for m in ops}
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("## Endpoints", 1)[1].split("\n## ", 1)[0]
    documented: set[tuple[str, str]] = set()
    problems = []
    for method, path, query, answer in re.findall(r"^\| `(GET|POST) ([^`?]+)(?:\?([^`]*))?` \| (.*) \|$",
                                                  section, re.M):
        if path == "/":  # the dashboard, not in the schema
            continue
        documented.add((method, path))
        spath = next((p for p in schema["paths"] if re.sub(r"\{\w+\}", "{id}", p) == path), None)
        if spath is None:
            continue
        op = schema["paths"][spath][method.lower()]
        params = {q["name"]: q.get("schema", {}) for q in op.get("parameters", []) if q["in"] == "query"}
        for item in filter(None, (query or "").split("&")):
            name, _, default = item.partition("=")
            if name == "...":
                continue
            if name not in params:
                problems.append(f"{method} {path}: no query parameter {name}")
            elif default and str(params[name].get("default")) != default:
                problems.append(f"{method} {path}: {name} defaults to {params[name].get('default')}, not {default}")
        for status in set(re.findall(r"\b(40[49])\b", answer)):
            if status not in op["responses"]:
                problems.append(f"{method} {path}: the schema declares no {status}")
    assert documented == served, (f"documented, not served: {sorted(documented - served)}; "
                                  f"served, not documented: {sorted(served - documented)}")
    assert not problems, problems


def test_each_settings_documented_range_is_the_one_taken() -> None:
    """A setting whose meaning names its range ("(1 ... 100,000)", "at most 32767") takes both ends and is
    refused one above: the generated table of docs/configuration.md cannot promise a bound the parser does
    not hold."""
    from dataclasses import fields

    from fepha.config import ConfigError, LogConfig, NodeConfig, _key, load_log, load_node
    checked, wrong = 0, []
    for cls, load in ((NodeConfig, load_node), (LogConfig, load_log)):
        for f in fields(cls):
            doc = f.metadata["doc"]
            if m := re.search(r"(\d[\d,]*) \.\.\. (\d[\d,]*)", doc):
                lo, hi = (int(g.replace(",", "")) for g in m.groups())
            elif m := re.search(r"at most (\d[\d,]*)\)", doc):
                lo, hi = None, int(m.group(1).replace(",", ""))
            else:
                continue
            var = f"FEP_{f.metadata['section']}_{_key(f)}".upper()
            for value, ok in ((lo, True), (hi, True), (hi + 1, False)):
                if value is None:
                    continue
                try:
                    load(ROOT / "nonexistent", env={var: str(value)})
                    taken = True
                except ConfigError:
                    taken = False
                if taken != ok:
                    wrong.append(f"{var}={value}: {'refused' if ok else 'taken'}, the doc says {doc!r}")
            checked += 1
    assert checked >= 14 and not wrong, wrong


def test_the_counters_keyspace_md_names_are_the_ones_counted() -> None:
    """docs/keyspace.md's counter names of `fep:m:acquirer:{node}` and `fep:m:forwarder:{node}` against what
    the services count: the acquirer's `metrics.inc("name")` calls, the forwarder's `Counters` fields, its
    `full_images` and the two gauges it sets."""
    from dataclasses import fields

    from fep_forwarder.base import Counters
    doc = (ROOT / "docs" / "keyspace.md").read_text()
    para = doc.split("Counter names. Acquirer:", 1)[1].split("\n\n", 1)[0]
    acq_text, fwd_text = para.split("Forwarder:", 1)
    named = {  # a name in backticks that starts the item, not the settings and keys its parentheses name
        "acquirer": set(re.findall(r"(?:^\s*|,\s*)`([a-z_]+)`", acq_text.replace("\n", " "))),
        "forwarder": set(re.findall(r"(?:^\s*|,\s*)`([a-z_]+)`", fwd_text.replace("\n", " "))),
    }
    added = doc.split("## Added by the services", 1)[1].split("\n## ", 1)[0]  # "Forwarder ...: also `full_images`"
    named["forwarder"] |= set(re.findall(r"also `([a-z_]+)`", added))
    counted = {
        "acquirer": set(re.findall(r"\.inc\(\s*\"([a-z_]+)\"",
                                   "".join(p.read_text() for p in (ROOT / "services" / "acquirer").glob("*.py")))),
        "forwarder": {f.name for f in fields(Counters)} | {"full_images", "stream_lag_ms", "clients"},
    }
    assert named == counted, {s: (sorted(named[s] - counted[s]), sorted(counted[s] - named[s])) for s in named}


def test_a_default_the_prose_gives_is_the_settings_default() -> None:
    """"`[section] key` (N)" or "(default N)" anywhere in the docs, and "`key` (N)" in docs/configuration.md,
    is the setting's default (the generated table cannot drift, the prose could)."""
    from dataclasses import fields

    from fepha.config import LogConfig, NodeConfig, _key
    defaults = {(f.metadata["section"], _key(f)): f.default for cls in (NodeConfig, LogConfig) for f in fields(cls)}
    pattern = re.compile(r"`(?:\[(\w+)\] )?(\w+)`\s*\((?:default )?(\d[\d,]*(?:\.\d+)?)(?: ?(s|ms)\b)?(?=[,;)\s])")
    checked, wrong = 0, []
    for path in DOCS:
        for m in pattern.finditer(path.read_text()):
            section, key, number, unit = m.groups()
            if section is None and path.name != "configuration.md":
                continue  # another doc's `heartbeat_s` (10) may be a server option (docs/sefeps.md)
            found = [(s, d) for (s, k), d in defaults.items() if k == key and section in (None, s)]
            if len(found) != 1:
                continue
            value = float(number.replace(",", "")) * (1000 if unit == "s" and key.endswith("_ms") else 1)
            checked += 1
            if float(found[0][1]) != value:
                wrong.append(f"{path.name}: {m.group()} but [{found[0][0]}] {key} defaults to {found[0][1]}")
    assert checked >= 20 and not wrong, wrong
