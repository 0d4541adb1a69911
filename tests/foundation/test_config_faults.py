"""Broken fep-ha.cfg / syslod.cfg inputs as an operator or a fault run produces them: each problem is one
line naming file, section, key and value, every problem at once, and every command stops with exit 2 and
no traceback (docs/configuration.md)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from fepha import config
from fepha.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(root: Path, data: bytes, name: str = "fep-ha.cfg") -> Path:
    (root / "cfg").mkdir(parents=True, exist_ok=True)
    path = root / "cfg" / name
    path.write_bytes(data)
    return path


def problems(root: Path, env: dict[str, str] | None = None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as exc:
        config.load_node(root, env=env or {})
    return exc.value.problems


@pytest.mark.parametrize("data,expect", [
    (b"[node]\nid = A\n; caf\xe9 (latin-1)\n", "fep-ha.cfg line 3: byte 0xe9 is not UTF-8"),
    (b"[timers]\ntakeover_s = inf\n", "[timers] takeover_s = 'inf': expected a number of seconds >= 0.001 and <= 86400 (one day)"),
    (b"[timers]\nlease_ttl_s = 1e400\n", "[timers] lease_ttl_s = '1e400': expected a number of seconds >= 0.001 and <= 86400 (one day)"),
    (b"[iec104]\ngi_period_s = nan\n", "[iec104] gi_period_s = 'nan': expected 0 or a number of seconds >= 0.001 and <= 86400 (one day)"),
    (b"[DEFAULT]\nport = 7000\n", "fep-ha.cfg [DEFAULT] port: unknown setting"),
    (b"[timer]\n", "fep-ha.cfg [timer]: unknown section"),
    # cfgaudit: what an independent checker tries
    (b"[node]\nthis is not ini\n", "fep-ha.cfg line 2: 'this is not ini' is not 'key = value' or '[section]'"),
    (b"id = A\n", "fep-ha.cfg line 1: 'id = A' comes before any [section]"),
    (b"[node]\nid = A\nid = B\n", "fep-ha.cfg line 3: [node] id is set twice"),
    (b"[node]\nid = A\n[node]\n", "fep-ha.cfg line 3: [node] appears twice"),
    ("[redis]\nport = \u0668\u0660\n".encode(), "[redis] port = '\u0668\u0660': expected a TCP port 1..65535"),
    (b"[node]\nbind = 999.1.1.1\n", "[node] bind = '999.1.1.1': expected an IP address or a host name"),
    (b"[redis]\nlocal_host = 1.2.3\n", "[redis] local_host = '1.2.3': expected an IP address or a host name"),
    (b"[timers]\npoll_ms = 5\n", "[timers] poll_ms = '5': expected a whole number in 10..3600000"),
    (b"[timers]\nreconnect_min_s = 10\nreconnect_max_s = 1\n",
     "[timers] reconnect_min_s = 10.0: must not exceed reconnect_max_s (1.0)"),
    (b"[iec104]\nk = 40000\nw = 8\n", "[iec104] k = 40000, w = 8: need w <= k <= 32767"),
    (b"[iec104]\nt1_s = 300\n", "[iec104] t1_s = '300': expected a number of seconds > 0 and <= 255"),
    (b"[se104s]\nt3_s = 1e300\n", "[se104s] t3_s = '1e300': expected a number of seconds > 0 and <= 255"),
    (b"[paths]\nsemodel =\n", "[paths] semodel = '': expected a path"),
    # cfgfuzz: a timeout too long for a socket ended sysload and every service with an OverflowError traceback
    (b"[redis]\nsocket_timeout_s = 1e10\n",
     "[redis] socket_timeout_s = '1e10': expected a number of seconds >= 0.001 and <= 86400 (one day)"),
    (b"[timers]\nheartbeat_s = 0.0001\n",  # a heartbeat key of lifetime 0 ms: Redis refused every one
     "[timers] heartbeat_s = '0.0001': expected a number of seconds >= 0.001 and <= 86400 (one day)"),
    (b"[modbus_trains]\nkeepalive_s = 32768\n",  # the kernel refused it at each master's connection
     "[modbus_trains] keepalive_s = '32768': expected a whole number in 0..32767"),
    (b"[iec104]\nclock_sync_s = 86401\n",
     "[iec104] clock_sync_s = '86401': expected 0 or a number of seconds >= 0.001 and <= 86400 (one day)"),
    # already right, pinned
    (b"[redis]\nport =\n", "[redis] port = '': expected a TCP port 1..65535"),
    (b"[redis]\nport = +80\n", "[redis] port = '+80': expected a TCP port 1..65535"),
    (b"[api]\nopen_reads = maybe\n", "[api] open_reads = 'maybe': expected true or false"),
    (b"[iec104]\nk = 0\n", "[iec104] k = '0': expected a whole number > 0"),
    (b"[control]\ntimeout_s = 0\n", "[control] timeout_s = '0': expected a number of seconds >= 0.001 and <= 86400 (one day)"),
    (b"[modbus_trains]\nquality_unit = 255\n", "[modbus_trains] quality_unit = 255: a unit id is 1 ... 254"),
    (b"[node]\nid = A\n  B\n", "[node] id = 'A\\nB': expected A or B"),
    (b"[node]\nid = A\x00\n", "[node] id = 'A\\x00': expected A or B"),
    (b"[NODE]\nid = B\n", "fep-ha.cfg [NODE]: unknown section"),
    (b"[tls]\nkey = node.key\n", "[tls] key = 'node.key': needs cert (without cert the servers run without TLS)"),
    (b"[tls]\nca = ca.pem\n", "[tls] ca = 'ca.pem': needs cert (without cert the servers run without TLS)"),
])
def test_broken_file_is_one_line(tmp_path: Path, data: bytes, expect: str) -> None:
    write(tmp_path, data)
    (line,) = problems(tmp_path)
    assert expect in line, line


def test_a_file_that_cannot_be_read_is_not_taken_for_defaults(tmp_path: Path) -> None:
    """configparser skips a file it cannot open: an unreadable fep-ha.cfg was node A with every default."""
    (tmp_path / "cfg" / "fep-ha.cfg").mkdir(parents=True)
    (line,) = problems(tmp_path)
    assert line.endswith("fep-ha.cfg: cannot read: Is a directory")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", ["fep-ha.cfg", "syslod.cfg"])
def test_a_named_pipe_is_not_read(tmp_path: Path, name: str) -> None:
    """cfgfuzz: reading a named pipe waits for a writer: every command hung at its start."""
    (tmp_path / "cfg").mkdir()
    os.mkfifo(tmp_path / "cfg" / name)
    with pytest.raises(ConfigError) as exc:
        config.load_log(tmp_path, env={}) if name == "syslod.cfg" else config.load_node(tmp_path, env={})
    assert exc.value.problems == (f"{tmp_path}/cfg/{name}: is a named pipe (FIFO), not a file",)


@pytest.mark.timeout(10)
def test_a_tls_file_that_is_a_named_pipe_is_not_read(tmp_path: Path) -> None:
    from fep_forwarder.tlspolicy import tls_context
    os.mkfifo(tmp_path / "node.pem")
    with pytest.raises(ConfigError) as exc:
        tls_context(config.NodeConfig(tls_cert="node.pem"), tmp_path)
    assert str(exc.value) == f"[tls] cert = 'node.pem': {tmp_path}/node.pem is a named pipe (FIFO), not a file"


def test_missing_or_empty_file_means_defaults_and_environment(tmp_path: Path) -> None:
    """Documented: benches and containers configure a node by environment alone."""
    assert config.load_node(tmp_path, env={"FEP_NODE_ID": "B"}).node_id == "B"
    write(tmp_path, b"")
    assert config.load_node(tmp_path, env={}) == config.NodeConfig()


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    write(tmp_path, b"[timers]\ntakeover_s = soon\nlease_ttl_s = 1\nlease_tick_s = 1\n[redis]\nport = 0\n"
                    b"[node]\nidd = B\n")
    lines = problems(tmp_path, {"FEP_API_PORT": "http"})
    assert len(lines) == 4, lines
    assert any(line.endswith("[node] idd: unknown setting") for line in lines)
    assert any("[timers] takeover_s = 'soon'" in line for line in lines)
    assert any("[redis] port = '0'" in line for line in lines)
    assert any("environment FEP_API_PORT = 'http'" in line for line in lines)
    write(tmp_path, b"[timers]\nlease_ttl_s = 1\nlease_tick_s = 1\n[iec104]\nk = 2\nw = 3\n")
    assert len(problems(tmp_path)) == 2  # the rules across settings too


@pytest.mark.parametrize("cmd", [["sysload", "check"], ["fep-acquirer"], ["fep-forwarder"], ["fep-api"]])
def test_every_command_stops_with_one_line_per_problem(tmp_path: Path, cmd: list[str]) -> None:
    write(tmp_path, (REPO / "cfg" / "syslod.cfg").read_bytes(), "syslod.cfg")
    write(tmp_path, b"[timers]\ntakeover_s = -1\n[writer]\nbatch = 5\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEP_")}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**env, "FEPROOT": str(tmp_path)},
                       check=False)
    lines = p.stderr.strip().splitlines()
    prog = cmd[0]
    assert p.returncode == 2, p.stderr
    assert lines == [f"{prog}: {tmp_path}/cfg/fep-ha.cfg [writer] batch: unknown setting",
                     f"{prog}: {tmp_path}/cfg/fep-ha.cfg [timers] takeover_s = '-1': expected a number of seconds >= 0.001 and <= 86400 (one day)"]
    write(tmp_path, b"[node]\nid = \xff\n")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**env, "FEPROOT": str(tmp_path)},
                       check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == f"{prog}: {tmp_path}/cfg/fep-ha.cfg line 2: byte 0xff is not UTF-8 (save the file as UTF-8)"


@pytest.mark.parametrize("env,suffix", [
    ({}, ""),
    ({"FEP_TIMERS_LEASE_TICK_S": "5"}, " (from environment FEP_TIMERS_LEASE_TICK_S)"),
    ({"FEP_TIMERS_LEASE_TICK_S": "5", "FEP_TIMERS_LEASE_TTL_S": "3"},
     " (from environment FEP_TIMERS_LEASE_TTL_S, FEP_TIMERS_LEASE_TICK_S)"),
])
def test_a_rule_across_settings_names_the_variables_that_set_its_values(tmp_path: Path, env: dict[str, str],
                                                                        suffix: str) -> None:
    """lease_ttl_s against a lease_tick_s set by the file or by a variable: the line does not blame the file
    for a variable's value."""
    if not env:
        write(tmp_path, b"[timers]\nlease_tick_s = 5\n")
    lines = [line for line in problems(tmp_path, env) if "lease_ttl_s" in line]
    assert lines == [f"{tmp_path}/cfg/fep-ha.cfg [timers] lease_ttl_s = 3.0: must be more than twice lease_tick_s "
                     f"(5.0){suffix}"], lines


@pytest.mark.parametrize("env,expect", [
    ({"FEP_REDIS_PORT": " 6379 "}, "environment FEP_REDIS_PORT = ' 6379 ': expected a TCP port 1..65535"),
    ({"FEP_NODE_ID": "a"}, "environment FEP_NODE_ID = 'a': expected A or B"),
    ({"FEP_API_OPEN_READS": "2"}, "environment FEP_API_OPEN_READS = '2': expected true or false"),
    ({"FEP_NODE_BIND": "1.2.3"}, "environment FEP_NODE_BIND = '1.2.3': expected an IP address or a host name"),
    ({"FEP_IEC104_T3_S": "256"}, "environment FEP_IEC104_T3_S = '256': expected a number of seconds > 0 and <= 255"),
    # cfgfuzz: '$' of the host name pattern matched before a final line break: 'plc1\n' was a host
    ({"FEP_REDIS_VIP": "plc1\n"}, "environment FEP_REDIS_VIP = 'plc1\\n': expected an IP address or a host name"),
])
def test_a_bad_variable_is_one_line(tmp_path: Path, env: dict[str, str], expect: str) -> None:
    (line,) = problems(tmp_path, env)
    assert line.startswith(expect), line


@pytest.mark.parametrize("env,expect", [
    # docsaudit: docs/configuration.md says a whole number is ASCII digits only; int() read these for k and w
    ({"FEP_IEC104_K": "\u0661\u0662"}, "environment FEP_IEC104_K = '\u0661\u0662': expected a whole number > 0"),
    ({"FEP_IEC104_W": "1_0"}, "environment FEP_IEC104_W = '1_0': expected a whole number > 0"),
    ({"FEP_SE104S_K": "+12"}, "environment FEP_SE104S_K = '+12': expected a whole number > 0"),
    ({"FEP_SE104S_W": " 8"}, "environment FEP_SE104S_W = ' 8': expected a whole number > 0"),
    # docsaudit: '--5' got int()'s own message, not the range the docs promise
    ({"FEP_WRITER_BATCH_SIZE": "--5"}, "environment FEP_WRITER_BATCH_SIZE = '--5': expected a whole number in "
     "1..100000"),
])
def test_a_whole_number_is_ascii_digits_refused_with_its_range(tmp_path: Path, env: dict[str, str],
                                                              expect: str) -> None:
    (line,) = problems(tmp_path, env)
    assert line == expect


def test_log_backups_are_bounded(tmp_path: Path) -> None:
    """cfgfuzz: [log] backups = 10**9 was taken, and each rotation then looked for a billion numbered files
    (logging's RotatingFileHandler) while the program could not log."""
    write(tmp_path, b"[log]\nbackups = 1000000000\n", "syslod.cfg")
    with pytest.raises(ConfigError) as exc:
        config.load_log(tmp_path, env={})
    assert exc.value.problems == (f"{tmp_path}/cfg/syslod.cfg [log] backups = '1000000000': expected a whole number "
                                  "in 0..1000",)
    write(tmp_path, b"[log]\nbackups = 1000\n", "syslod.cfg")
    assert config.load_log(tmp_path, env={}).backups == 1000


@pytest.mark.parametrize("name,section,key,highest", [
    # bounds review: these took any positive whole number (batch_window_ms = 2000000 held every value of a
    # batched node 33 minutes; command_max_age_ms past IEC 104's longest time-out ran commands nobody waits for)
    ("fep-ha.cfg", "writer", "batch_window_ms", 1000),
    ("fep-ha.cfg", "writer", "batch_size", 100_000),
    ("fep-ha.cfg", "writer", "resend_max_changes", 1_000_000),
    ("fep-ha.cfg", "se104s", "command_max_age_ms", 255_000),
    ("fep-ha.cfg", "se104s", "queue_max", 10_000_000),
    ("fep-ha.cfg", "se104s", "buffer_max", 10_000_000),
    ("fep-ha.cfg", "api", "stream_clients", 10_000),
    ("fep-ha.cfg", "api", "stream_queue", 100_000),
    ("fep-ha.cfg", "quality", "stale_polls", 1000),
    ("syslod.cfg", "log", "max_bytes", 10_000_000_000),
])
def test_whole_numbers_are_bounded(tmp_path: Path, name: str, section: str, key: str, highest: int) -> None:
    """Each whole-number setting is taken at its highest value and refused one above it (in the file and as
    a variable), with one line naming the setting, the value and the range."""
    load, cls = (config.load_log, config.LogConfig) if name == "syslod.cfg" else (config.load_node, config.NodeConfig)
    (field,) = [f.name for f in fields(cls) if (f.metadata["section"], config._key(f)) == (section, key)]
    write(tmp_path, f"[{section}]\n{key} = {highest}\n".encode(), name)
    assert getattr(load(tmp_path, env={}), field) == highest
    write(tmp_path, f"[{section}]\n{key} = {highest + 1}\n".encode(), name)
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, env={})
    assert exc.value.problems == (f"{tmp_path}/cfg/{name} [{section}] {key} = '{highest + 1}': expected a whole "
                                  f"number in 1..{highest}",)
    var = f"FEP_{section}_{key}".upper()
    write(tmp_path, b"", name)
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, env={var: str(highest * 1000)})
    assert exc.value.problems == (f"environment {var} = '{highest * 1000}': expected a whole number in "
                                  f"1..{highest}",)


def test_a_long_value_is_quoted_bounded(tmp_path: Path) -> None:
    write(tmp_path, b"[node]\nid = " + b"A" * 100_000 + b"\n")
    (line,) = problems(tmp_path)
    assert line.endswith("[node] id = '" + "A" * 59 + "... (100000 characters): expected A or B"), line[-200:]


def test_a_tls_certificate_that_cannot_be_loaded_stops_the_forwarder_with_one_line(tmp_path: Path) -> None:
    """A missing or broken certificate is a configuration error (exit 2, one line), not a traceback."""
    write(tmp_path, (REPO / "cfg" / "syslod.cfg").read_bytes(), "syslod.cfg")
    write(tmp_path, b"[tls]\ncert = cfg/missing.pem\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEP_")}
    p = subprocess.run(["fep-forwarder"], capture_output=True, text=True, timeout=60, check=False,
                       env={**env, "FEPROOT": str(tmp_path), "FEP_LOG_DIR": "", "FEP_LOG_CONSOLE": "false"})
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        f"fep-forwarder: [tls] cert = 'cfg/missing.pem', key = '': cannot load {tmp_path}/cfg/missing.pem: "
        "No such file or directory"), p.stderr


@pytest.mark.parametrize("cmd", [["sysload", "check"], ["fep-acquirer"], ["fep-api"]])
def test_a_log_directory_that_cannot_be_made_is_one_line(tmp_path: Path, cmd: list[str]) -> None:
    """[log] dir naming a file (or a place no directory can be made) was a traceback and exit 1 at every command."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "afile").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEP_")}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False,
                       env={**env, "FEPROOT": str(tmp_path), "FEP_LOG_DIR": str(tmp_path / "afile")})
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == (f"{cmd[0]}: [log] dir = '{tmp_path}/afile' (syslod.cfg or FEP_LOG_DIR): cannot "
                                f"create the directory {tmp_path}/afile: File exists"), p.stderr


@pytest.mark.parametrize("args,expect", [
    (["--port", "99999"], "fep-api: error: argument --port: '99999': expected a TCP port 1..65535"),
    (["--port", "0"], "fep-api: error: argument --port: '0': expected a TCP port 1..65535"),
    (["--bind", "1.2.3"], "fep-api: error: argument --bind: '1.2.3': expected an IP address or a host name"),
])
def test_fep_api_options_are_checked_as_the_settings_they_override(tmp_path: Path, args: list[str], expect: str) -> None:
    """--port 99999 was an OverflowError traceback, --port 0 served on a random port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEP_")}
    p = subprocess.run(["fep-api", *args], capture_output=True, text=True, timeout=60, check=False,
                       env={**env, "FEPROOT": str(tmp_path), "FEP_LOG_DIR": ""})
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith(expect), p.stderr


@pytest.mark.parametrize("line, password", [
    (b'password = "pa ss ;w#rd"', "pa ss ;w#rd"),            # quoted: taken whole
    (b'password = ""', ""),
    (b'password = "a"b"', 'a"b'),                             # between the first and the last quote
    (b"password = p;a#ss", "p;a#ss"),                         # no space before: not a comment
    (b"password = secret", "secret"),
])
def test_a_secret_with_comment_characters_is_expressible(tmp_path: Path, line: bytes, password: str) -> None:
    """`password = pa ss ;word` was read as "pa ss" (configparser's inline comment): the node then failed to
    authenticate with a password the file seemed to hold. Quoted, it is taken whole."""
    write(tmp_path, b"[redis]\n" + line + b'\n[api]\ntoken = "t ;k"\n')
    cfg = config.load_node(tmp_path, env={})
    assert cfg.password == password and cfg.api_token == "t ;k"


@pytest.mark.parametrize("line", [b"password = zq1 zq2 ;zq3", b"password = zq1  # the redis one", b"password = ;",
                                  b'password = "zq1', b'password = "zq1"  ; zq2'])
def test_an_ambiguous_secret_is_refused_without_showing_it(tmp_path: Path, line: bytes) -> None:
    """What an inline comment would cut from a secret is refused with one line that says how to write it,
    and that does not show the secret."""
    write(tmp_path, b"[redis]\n" + line + b"\n")
    (problem,) = problems(tmp_path)
    assert problem.startswith(str(tmp_path / "cfg" / "fep-ha.cfg") + " [redis] password: "), problem
    assert "double quote" in problem and "zq" not in problem, problem


def test_an_inline_comment_after_other_values_still_is_one(tmp_path: Path) -> None:
    write(tmp_path, b'[node]\nid = B   ; node B\nbind = "127.0.0.2"\n[redis]\nport = 6380 #x\n')
    cfg = config.load_node(tmp_path, env={})
    assert (cfg.node_id, cfg.bind, cfg.port) == ("B", "127.0.0.2", 6380)
