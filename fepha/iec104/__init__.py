"""IEC 60870-5-104, one stack for both directions, without sockets.

- `codec`: APDU framing (I/S/U frames, FrameReader), ASDUs, information elements, CP56Time2a.
- `link`: the link layer of one connection (N(S)/N(R), k/w, t1-t3, STARTDT/STOPDT/TESTFR) as a state
  machine, for either role: `Role.SERVER` (controlled station) or `Role.CLIENT` (controlling station).

Users: se104s (services/forwarder/se104s, a server to SCADA masters), the acquirer's IEC 104 client and the
simulated RTU (tools/rtu104sim.py). Sockets and clocks stay in those callers.
"""
