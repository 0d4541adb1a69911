"""fep-ha.cfg and syslod.cfg: typed values, environment overrides, one-line errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fepha import config
from fepha.config import ConfigError


def write(root: Path, text: str, name: str = "fep-ha.cfg") -> None:
    (root / "cfg").mkdir(parents=True, exist_ok=True)
    (root / "cfg" / name).write_text(text)


def test_shipped_files_parse_with_the_seed_timers() -> None:
    cfg = config.load_node(env={})
    assert (cfg.channel_switch_s, cfg.takeover_s) == (30.0, 90.0)
    assert cfg.node_id == "A" and cfg.peer == "B"
    assert config.load_log(env={}).level == "INFO"
    cfg = config.load_node(env={})
    assert (cfg.iec104_k, cfg.iec104_w, cfg.iec104_t1_s, cfg.iec104_t3_s, cfg.iec104_gi_period_s) == (12, 8, 15.0,
                                                                                                  20.0, 0.0)


def test_environment_overrides_every_value(tmp_path: Path) -> None:
    write(tmp_path, "[redis]\nvip = 10.1.1.1\n[timers]\ntakeover_s = 90\n")
    cfg = config.load_node(tmp_path, env={"FEP_REDIS_VIP": "198.18.0.100", "FEP_TIMERS_TAKEOVER_S": "4",
                                          "FEP_NODE_ID": "B", "FEP_API_PORT": "9000"})
    assert (cfg.vip, cfg.takeover_s, cfg.node_id, cfg.api_port) == ("198.18.0.100", 4.0, "B", 9000)


@pytest.mark.parametrize("text,env,expect", [
    ("[timers]\ntakeover_s = soon\n", {}, "fep-ha.cfg [timers] takeover_s = 'soon': expected a number of seconds >= 0.001 and <= 86400 (one day)"),
    ("[timers]\nchannel_switch_s = -3\n", {}, "[timers] channel_switch_s = '-3': expected a number of seconds >= 0.001 and <= 86400 (one day)"),
    ("[node]\nid = C\n", {}, "fep-ha.cfg [node] id = 'C': expected A or B"),
    ("[node]\nip = 999.1.1.1\n", {}, "[node] ip = '999.1.1.1': expected an IP address"),
    ("[redis]\nport = 70000\n", {}, "[redis] port = '70000': expected a TCP port 1..65535"),
    ("[writer]\nwrite_mode = fast\n", {}, "write_mode = 'fast': expected one of auto, direct, batched"),
    ("[timers]\ntakeover = 90\n", {}, "fep-ha.cfg [timers] takeover: unknown setting"),
    ("", {"FEP_REDIS_PORT": "x"}, "environment FEP_REDIS_PORT = 'x': expected a TCP port 1..65535"),
    ("[timers]\nlease_ttl_s = 1\nlease_tick_s = 1\n", {}, "lease_ttl_s = 1.0: must be more than twice lease_tick_s"),
    ("[timers]\nstop_handover_s = 1\n", {}, "[timers] stop_handover_s = 1.0: must be 0 or more than lease_tick_s"),
    ("", {"FEP_TIMERS_STOP_HANDOVER_S": "-1"}, "FEP_TIMERS_STOP_HANDOVER_S = '-1': expected 0 or a number of seconds >= 0.001 and <= 86400 (one day)"),
    ("[timers\n", {}, "fep-ha.cfg"),
    ("[iec104]\nk = 4\nw = 8\n", {}, "[iec104] k = 4, w = 8: need w <= k <= 32767"),
    ("[iec104]\nt1_s = 5\nt2_s = 5\n", {}, "[iec104] t2_s = 5.0: must be less than t1_s (5.0)"),
    ("[iec104]\ngi_period_s = -1\n", {}, "[iec104] gi_period_s = '-1': expected 0 or a number of seconds >= 0.001 and <= 86400 (one day)"),
    ("", {"FEP_IEC104_CLOCK_SYNC_S": "often"}, "FEP_IEC104_CLOCK_SYNC_S = 'often': expected 0 or a number of seconds >= 0.001 and <= 86400 (one day)"),
    ("[se104s]\nk = 4\nw = 8\n", {}, "[se104s] k = 4, w = 8: need w <= k <= 32767"),
    ("[se104s]\nt1_s = 0\n", {}, "[se104s] t1_s = '0': expected a number of seconds > 0 and <= 255"),
    ("[se104s]\nt1_s = 5\nt2_s = 5\n", {}, "[se104s] t2_s = 5.0: must be less than t1_s (5.0)"),
    ("", {"FEP_TIMERS_LEASE_TTL": "5"}, "environment FEP_TIMERS_LEASE_TTL: unknown setting (known: "
     "FEP_TIMERS_CHANNEL_SWITCH_S,"),
    ("", {"FEP_REDIS_HOST": "10.0.0.1"}, "environment FEP_REDIS_HOST: unknown setting"),
])
def test_bad_value_is_one_line_naming_it(tmp_path: Path, text: str, env: dict, expect: str) -> None:
    write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        config.load_node(tmp_path, env=env)
    msg = str(exc.value)
    assert expect in msg and "\n" not in msg


def test_stop_handover_zero_means_none(tmp_path: Path) -> None:
    write(tmp_path, "[timers]\nstop_handover_s = 0\n")
    assert config.load_node(tmp_path, env={}).stop_handover_s == 0


def test_log_level_checked(tmp_path: Path) -> None:
    write(tmp_path, "[log]\nlevel = LOUD\n", "syslod.cfg")
    with pytest.raises(ConfigError, match=r"syslod.cfg \[log\] level = 'LOUD'"):
        config.load_log(tmp_path, env={})


def test_a_command_stops_with_the_line_and_exit_2(tmp_path: Path) -> None:
    write(tmp_path, "[timers]\ntakeover_s = never\n")
    p = subprocess.run(["sysload", "check"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "FEPROOT": str(tmp_path)}, check=False)
    assert p.returncode == 2
    assert p.stderr.strip().endswith("[timers] takeover_s = 'never': expected a number of seconds >= 0.001 and <= 86400 (one day)")
    assert "Traceback" not in p.stderr


def test_se104s_settings_reach_the_server_options(tmp_path: Path) -> None:
    """[se104s] k ... command_max_age_ms become Se104Server options; the runner's own options win."""
    import asyncio

    from fep_forwarder.app import Forwarder

    write(tmp_path, "[se104s]\nk = 20\nt3_s = 7\nbuffer_max = 50\n")
    cfg = config.load_node(tmp_path, env={"FEP_SE104S_W": "3"})
    fwd = Forwarder(cfg, asyncio.Event(), {"t3": 0.5})
    opts = fwd.protocol_options("se104s")
    assert (opts["k"], opts["w"], opts["t3"], opts["buffer_max"], opts["command_max_age_ms"]) == (20, 3, 0.5, 50, 10_000)
    assert "buffer_max" not in fwd.protocol_options("sefeps")


def test_modbus_trains_settings_reach_the_server_options(tmp_path: Path) -> None:
    """[modbus_trains] keepalive_s (default 60) and quality_unit become ModbusTrainsServer options."""
    import asyncio

    from fep_forwarder.app import Forwarder

    write(tmp_path, "")
    fwd = Forwarder(config.load_node(tmp_path, env={}), asyncio.Event(), {})
    opts = fwd.protocol_options("modbus_trains")
    assert opts["keepalive_s"] == 60 and "quality_unit" not in opts
    write(tmp_path, "[modbus_trains]\nkeepalive_s = 5\nquality_unit = 9\n")
    fwd = Forwarder(config.load_node(tmp_path, env={}), asyncio.Event(), {})
    opts = fwd.protocol_options("modbus_trains")
    assert (opts["keepalive_s"], opts["quality_unit"]) == (5, 9)
    assert "keepalive_s" not in fwd.protocol_options("sefeps")


def test_variables_outside_the_sections_are_not_settings(tmp_path: Path) -> None:
    """FEP_RUN (the keepalived container's run directory) and compose's FEP_IMAGE / FEP_BIND are not
    settings of any section: they are left alone, while a misspelt one inside a section is refused."""
    env = {"FEP_RUN": "/run/fep", "FEP_IMAGE": "fep-ha:latest", "FEP_BIND": "0.0.0.0", "FEP_HA_KEEP": "1",
           "FEP_LOG_LEVEL": "DEBUG", "FEP_TIMERS_TAKEOVER_S": "4"}
    assert config.load_node(tmp_path, env=env).takeover_s == 4.0
    assert config.load_log(tmp_path, env=env).level == "DEBUG"
    with pytest.raises(ConfigError, match="environment FEP_LOG_LVL: unknown setting"):
        config.load_log(tmp_path, env={"FEP_LOG_LVL": "DEBUG"})


def test_modbus_trains_quality_unit_reaches_the_server_options(tmp_path: Path) -> None:
    """[modbus_trains] quality_unit becomes the modbus_trains servers' quality_unit option (0: none); 255 is
    refused (it addresses the server itself)."""
    import asyncio

    from fep_forwarder.app import Forwarder

    assert "quality_unit" not in Forwarder(config.load_node(tmp_path, env={}), asyncio.Event()).protocol_options(
        "modbus_trains")
    write(tmp_path, "[modbus_trains]\nquality_unit = 9\n")
    fwd = Forwarder(config.load_node(tmp_path, env={}), asyncio.Event())
    assert fwd.protocol_options("modbus_trains")["quality_unit"] == 9
    assert "quality_unit" not in fwd.protocol_options("se104s")
    with pytest.raises(config.ConfigError, match="quality_unit = 255"):
        config.load_node(tmp_path, env={"FEP_MODBUS_TRAINS_QUALITY_UNIT": "255"})
