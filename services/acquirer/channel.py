"""Channel switching state machine (seed): reconnect with backoff, switch after channel_switch_s.

Pure: the I/O task asks `next_attempt(now)` which channel to try and when, and reports `connected(now)` /
`failed(now, error)`. While neither channel works the machine keeps alternating, one channel for
`switch_s` at a time.

`now` is a monotonic clock (time.monotonic()): a wall-clock step (NTP, manual setting) must neither
switch a channel early nor hold it back. The optional `wall` argument is the same instant on the wall
clock, kept only for display (`since`, written as `ch<n>_since_ms` for the api); without it `since` is `now`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChannelInfo:
    connected: bool = False
    since: float = 0.0  # wall-clock time of the last connect / loss (display only; 0: never)
    last_error: str = ""
    switches: int = 0  # times this channel became the active one by a switch


@dataclass
class ChannelSwitcher:
    channels: tuple[int, ...]  # channel numbers, e.g. (1, 2)
    switch_s: float
    backoff_min_s: float
    backoff_max_s: float
    active: int = 0
    down_since: float | None = None  # when the active channel went (or started) without a connection
    backoff: float = 0.0
    info: dict[int, ChannelInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.active = self.active or self.channels[0]
        self.info = {c: ChannelInfo() for c in self.channels}
        self.backoff = self.backoff_min_s

    def connected(self, now: float, wall: float | None = None) -> None:
        info = self.info[self.active]
        if not info.connected:
            info.connected, info.since = True, now if wall is None else wall
        self.down_since = None
        self.backoff = self.backoff_min_s

    def failed(self, now: float, error: str, wall: float | None = None) -> None:
        """A connect attempt or an established connection of the active channel failed."""
        info = self.info[self.active]
        if info.connected or self.down_since is None:  # first failure: shortest backoff
            info.since = now if wall is None else wall
            self.down_since = now
            self.backoff = self.backoff_min_s
        else:
            self.backoff = min(self.backoff * 2, self.backoff_max_s)
        info.connected, info.last_error = False, error

    def next_attempt(self, now: float) -> tuple[int, float]:
        """(channel to try, delay before trying): switches when the active one was down for switch_s."""
        if (self.down_since is not None and len(self.channels) > 1
                and now - self.down_since >= self.switch_s):
            i = self.channels.index(self.active)
            self.active = self.channels[(i + 1) % len(self.channels)]
            self.info[self.active].switches += 1
            self.down_since = now
            self.backoff = self.backoff_min_s
            return self.active, 0.0
        if self.down_since is None:
            return self.active, 0.0
        delay = self.backoff
        if len(self.channels) > 1:
            delay = min(delay, max(0.0, self.down_since + self.switch_s - now))
        return self.active, delay

    def state(self) -> dict[str, str]:
        """Flat fields for the keyspace.channel_state hash."""
        out = {"active": str(self.active)}
        for c, i in self.info.items():
            out[f"ch{c}_connected"] = "1" if i.connected else "0"
            out[f"ch{c}_since_ms"] = str(int(i.since * 1000))
            out[f"ch{c}_error"] = i.last_error
            out[f"ch{c}_switches"] = str(i.switches)
        return out
