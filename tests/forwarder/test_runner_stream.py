"""Table tests of the runner's pure rules (fep_forwarder.stream): ids, gap detection, entry -> Updates."""

import pytest

from fep_forwarder.stream import (
    Routing,
    demoted,
    entry_pairs,
    image_keys,
    kept_stream,
    lag_ms,
    parse_id,
    trimmed_past,
)
from fepha.points import Value
from fepha.semodel.model import Model

ROWS = {
    "T004_RTU": [
        {"RTUID": 1, "NAME": "acq", "RTUTYPE": 0, "PROTOCOL": "modbus_tcp"},
        {"RTUID": 10, "NAME": "104", "RTUTYPE": 2, "PROTOCOL": "se104s", "LISTENPORT": 2404},
        {"RTUID": 11, "NAME": "mbt", "RTUTYPE": 2, "PROTOCOL": "modbus_trains", "LISTENPORT": 1502},
    ],
    "T011_POINT": [
        {"PNTID": 101, "RTUID": 1, "KIND": "AI", "NAME": "", "AREA": "hr", "ADDRESS": 0, "DATATYPE": "float32"},
        {"PNTID": 109, "RTUID": 1, "KIND": "DO", "NAME": "", "AREA": "co", "ADDRESS": 1, "DATATYPE": "bool"},
    ],
    "T036_VTPNT": [{"VPID": 901, "RTUID": 1, "NAME": "link"}],
    "T005_ZFAI": [{"ZFID": 1, "RTUID": 10, "SRCID": 101, "ADDR": 1001, "TYPE": "M_ME_NC_1"},
                  {"ZFID": 2, "RTUID": 11, "SRCID": 101, "ADDR": 0, "TYPE": "float32"}],
    "T006_ZFDI": [{"ZFID": 1, "RTUID": 10, "SRCID": 901, "ADDR": 4, "TYPE": "M_SP_TB_1"}],
    "T008_ZFDO": [{"ZFID": 1, "RTUID": 10, "SRCID": 109, "ADDR": 5001, "TYPE": "C_SC_NA_1"}],
}
MODEL = Model.from_rows(ROWS)


@pytest.mark.parametrize("raw, parsed", [("1700000000000-3", (1700000000000, 3)), ("5", (5, 0)), (None, (0, 0)),
                                         ("", (0, 0))])
def test_parse_id(raw: str | None, parsed: tuple[int, int]) -> None:
    assert parse_id(raw) == parsed


@pytest.mark.parametrize("consumed, added, length, gap", [
    (10, 10, 10, False),  # nothing trimmed
    (10, 12, 5, False),  # 7 trimmed, we had consumed 10
    (10, 12, 1, True),  # 11 trimmed: entry 11 was never read
    (0, 0, 0, False),  # empty stream
    (100_000, 300_000, 100_000, True),  # far behind a trimmed stream
    (290_000, 300_000, 100_000, False),  # at the tail of a trimmed stream
])
def test_trimmed_past(consumed: int, added: int, length: int, gap: bool) -> None:
    assert trimmed_past(consumed, added, length) is gap


@pytest.mark.parametrize("error, yes", [
    ("UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)", True),
    ("LOADING Redis is loading the dataset in memory", False),    # a full resync: the image is reloaded
    ("Connection closed by server.", False),
    ("ERR unknown command", False),
])
def test_demoted(error: str, yes: bool) -> None:
    assert demoted(error) is yes


UP, SYNCING = {"master_link_status": "up", "master_sync_in_progress": 0}, {"master_link_status": "up",
                                                                           "master_sync_in_progress": 1}
READ = {"r": "1", "101": "7|0|1000"}


@pytest.mark.parametrize("replication, last_read, now, kept", [
    (UP, READ, dict(READ), True),                          # partial resync: the entry is there, as read
    ({"master_link_status": "down"}, READ, READ, None),    # not synced yet: ask again
    (SYNCING, READ, READ, None),                           # full sync under way
    (UP, READ, None, False),                               # the stream replaced (split brain healed): reload
    (UP, READ, {"r": "1", "101": "8|0|1000"}, False),       # an entry of the same id, another one
    (UP, None, READ, False),                               # nothing read to compare with: reload
])
def test_kept_stream(replication: dict, last_read: dict | None, now: dict | None, kept: bool | None) -> None:
    assert kept_stream(replication, last_read, now) is kept


def test_routing_maps_sources_to_each_forwarding_point_of_running_servers() -> None:
    r = Routing.of(MODEL, [10, 11])
    bad: list[str] = []
    ups = r.updates(entry_pairs({"r": "1", "101": "1.5|0|1000", "109": "1|0|5", "777": "3|0|1", "x": "1|0|1",
                                 "901": "garbage"}), bad)
    assert {rid: [(u.fwd.addr, u.value) for u in us] for rid, us in ups.items()} == {
        10: [(1001, Value(1.5, 0, 1000))], 11: [(0, Value(1.5, 0, 1000))]}
    assert len(bad) == 2  # "x" is not a point id, "garbage" is not a record; DO 109 is not routed (no event)
    only10 = Routing.of(MODEL, [10])
    assert list(only10.updates([("901", "1|0|7")])) == [10]
    assert list(only10.updates([("101", "2|0|7")])) == [10]


def test_image_keys_and_lag() -> None:
    assert image_keys(MODEL, Routing.of(MODEL, [10])) == [1]
    assert image_keys(MODEL, Routing.of(MODEL, [])) == []
    assert lag_ms("1000-0", 1500) == 500 and lag_ms("2000-0", 1500) == 0
