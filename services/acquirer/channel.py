"""Channel switching state machine (seed): reconnect with backoff, switch after channel_switch_s.

Pure: the I/O task asks `next_attempt(now)` which channel to try and when, and reports `connected(now)` /
`failed(now, error)`. While neither channel works the machine keeps alternating, one channel for
`switch_s` at a time.

A channel counts as down from its first failure until it has then worked `switch_s` without a failure: a
flapping channel (a lossy link: connects, times out, connects again) is switched away from `switch_s`
after its first failure, as a dead one is. Reset at each reconnection, the timer kept such a channel
active while the other one worked (HA lab, 40 % loss on channel 1: switched after 24 s with a 3 s
switch time; docs/ha.md "Degraded links").

"Works" means complete polls, not only an open connection: a poll in which a block went unanswered (a
timeout or a gateway's 0x0B, the connection kept: `polled(now, complete=False)`) is a failure of the
channel too. A device that accepts the connection and answers only some requests never closed it, so the
RTU stayed on that channel for good while the other one worked; now `polled` tells the runner to close
the connection once the channel has not worked for `switch_s`, and `next_attempt` switches. A channel
left that way still answered most blocks: if the channel switched to fails before answering a poll (not
wired, cut), the runner goes back to the partial one at once instead of after `switch_s` without values,
and tries the other again only after another `switch_s` of incomplete polls.

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
    down_since: float | None = None  # first failure of the active channel not followed by switch_s of work
    up_since: float | None = None  # start of the active channel's work: its connection, or its first
    # complete poll after an incomplete one (None: not working now)
    backoff: float = 0.0
    info: dict[int, ChannelInfo] = field(default_factory=dict)
    partial: bool = False  # the active channel is given up for incomplete polls (`polled` returned True)
    fallback: int | None = None  # the channel so left, until the active one answers a poll
    back: bool = False  # the active one failed first: go back to `fallback` at the next attempt

    def __post_init__(self) -> None:
        self.active = self.active or self.channels[0]
        self.info = {c: ChannelInfo() for c in self.channels}
        self.backoff = self.backoff_min_s

    def connected(self, now: float, wall: float | None = None) -> None:
        info = self.info[self.active]
        if not info.connected:
            info.connected, info.since = True, now if wall is None else wall
        self.up_since = now
        self.backoff = self.backoff_min_s

    def failed(self, now: float, error: str, wall: float | None = None) -> None:
        """A connect attempt or an established connection of the active channel failed."""
        info = self.info[self.active]
        stable = self.up_since is not None and info.connected and now - self.up_since >= self.switch_s
        if info.connected or self.down_since is None:
            info.since = now if wall is None else wall
        if self.down_since is None or stable:  # a new outage (none yet, or it had worked switch_s since)
            self.down_since = now
            self.backoff = self.backoff_min_s
        elif info.connected:  # flapping: connected again, failed again; retried at once as after any loss
            self.backoff = self.backoff_min_s
        else:
            self.backoff = min(self.backoff * 2, self.backoff_max_s)
        info.connected, info.last_error = False, error
        self.back = self.fallback is not None

    def polled(self, now: float, complete: bool, error: str = "") -> bool:
        """A poll on the connected active channel, `complete` when every block was answered. Returns True
        when the channel has not worked for `switch_s` (down since its first failure, connection or
        incomplete poll, without `switch_s` of complete polls since) and there is another channel: the
        caller then closes the connection and reports it with `failed`."""
        self.fallback = None  # this channel answers: the normal rules apply
        if complete:
            if self.up_since is None:
                self.up_since = now
            if self.down_since is not None and now - self.up_since >= self.switch_s:
                self.down_since = None  # worked a whole switch time: recovered
            return False
        stable = self.up_since is not None and now - self.up_since >= self.switch_s
        if self.down_since is None or stable:
            self.down_since = now
        self.up_since = None
        self.info[self.active].last_error = error
        self.partial = len(self.channels) > 1 and now - self.down_since >= self.switch_s
        return self.partial

    def next_attempt(self, now: float) -> tuple[int, float]:
        """(channel to try, delay before trying): switches when the active one was down for switch_s."""
        if self.down_since is None or self.info[self.active].connected:
            return self.active, 0.0
        if self.back and self.fallback is not None:
            ch, self.fallback, self.back = self.fallback, None, False
            return self._switch(ch, now), 0.0
        if len(self.channels) > 1 and now - self.down_since >= self.switch_s:
            i = self.channels.index(self.active)
            left, partial = self.active, self.partial
            self._switch(self.channels[(i + 1) % len(self.channels)], now)
            self.fallback = left if partial else None
            return self.active, 0.0
        delay = self.backoff
        if len(self.channels) > 1:
            delay = min(delay, max(0.0, self.down_since + self.switch_s - now))
        return self.active, delay

    def _switch(self, ch: int, now: float) -> int:
        self.active = ch
        self.info[ch].switches += 1
        self.down_since, self.up_since = now, None
        self.backoff = self.backoff_min_s
        self.partial = self.back = False
        return ch

    def state(self) -> dict[str, str]:
        """Flat fields for the keyspace.channel_state hash."""
        out = {"active": str(self.active)}
        for c, i in self.info.items():
            out[f"ch{c}_connected"] = "1" if i.connected else "0"
            out[f"ch{c}_since_ms"] = str(int(i.since * 1000))
            out[f"ch{c}_error"] = i.last_error
            out[f"ch{c}_switches"] = str(i.switches)
        return out
