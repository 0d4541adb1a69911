"""The interface every forwarding protocol server implements (se104s, modbus_trains, sefeps).

The forwarder's runner owns Redis: it loads the full image and follows the change stream, and hands each
server only the values of its own forwarding points, in stream order. A server owns its sockets and its
protocol; for a control it calls `ControlSink.execute` and answers its master with the result. A vendor
codec for sefeps can replace ours by implementing this same class.
"""

from __future__ import annotations

import abc
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from fepha.points import Value
from fepha.semodel.model import FwdPoint, Model, Rtu


@dataclass(frozen=True, slots=True)
class Update:
    """A new value of a forwarding point (the source point's value; the server applies COEF/type)."""

    fwd: FwdPoint
    value: Value


@dataclass(frozen=True, slots=True)
class ControlOutcome:
    ok: bool
    state: str  # done, failed, expired, unknown, rejected
    reason: str = ""


class ControlSink(Protocol):
    async def execute(self, fwd: FwdPoint, value: float, origin: str,
                      timeout_ms: int | None = None) -> ControlOutcome:
        """Run a control on the source point of `fwd` (a ZFDO/ZFAO row) through the lease holder;
        `value` is in engineering units of the source point. Never raises for a failed control."""
        ...


class ForwardServer(abc.ABC):
    """One forwarding RTU's server on this node."""

    protocol: ClassVar[str]

    def __init__(self, rtu: Rtu, model: Model, bind: str, controls: ControlSink, node: str,
                 tls: ssl.SSLContext | None = None, **options: Any) -> None:
        self.rtu = rtu
        self.model = model
        self.bind = bind
        self.controls = controls
        self.node = node
        self.tls = tls
        self.options = options

    @abc.abstractmethod
    async def start(self) -> None:
        """Bind and listen; raise OSError when the port cannot be bound."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Close the listener and every connection; leave no task running."""

    @abc.abstractmethod
    def load_image(self, updates: Sequence[Update]) -> None:
        """Replace the whole image (start, reconnect, stream gap). Not spontaneous data: masters get it
        by interrogation (or, for sefeps, as a full image message)."""

    @abc.abstractmethod
    def apply(self, updates: Sequence[Update]) -> None:
        """Changes in stream order: update the image and send them as spontaneous data."""

    @abc.abstractmethod
    def clients(self) -> dict[str, dict[str, Any]]:
        """Connected masters: peer address -> state (for the api and metrics)."""

    def queue_depth(self) -> int:
        """Events waiting to be sent, summed over connections and buffers."""
        return 0

    on_clients_changed: Callable[[], None] | None = None
    """Set by the runner: a server that calls it when a master connects or leaves gets its client list
    written at once; others are picked up by the runner's once-a-second housekeeping."""

    def counters(self) -> dict[str, int]:
        """Monotonic counters since start (names from docs/keyspace.md, e.g. events_sent, events_dropped,
        controls, controls_ok, control_latency_ms_sum); the runner adds their increases to the metrics
        hash. Optional: a server without counters returns {}."""
        return {}


SERVERS: dict[str, str] = {
    "se104s": "fep_forwarder.se104s:Se104Server",
    "modbus_trains": "fep_forwarder.modbus_trains:ModbusTrainsServer",
    "sefeps": "fep_forwarder.sefeps:SefepsServer",
}
"""Forwarding protocol (T004_RTU.PROTOCOL) -> "module:class" of its ForwardServer, imported on use so a
protocol's module is loaded only when a configuration has an RTU of it."""


def server_class(protocol: str) -> type[ForwardServer]:
    """The ForwardServer class of a protocol; KeyError for a protocol the validator would have rejected."""
    import importlib

    module, _, name = SERVERS[protocol].partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, ForwardServer)
    return cls
