"""Failover figures on the HA suite's harness (tests/ha/harness.py, tests/ha/plant.py): two namespaced
nodes, real Redis and keepalived with deploy/keepalived's scripts (advert_int 1), the PLC simulator, both
nodes' acquirer and forwarder started with compose.yml's command and environment, the SCADA probe.

    sudo python bench/failover.py [--runs 3]

Per run, two labs:
1. Node loss (scenario 4 of tests/ha/test_node_loss.py, same procedure and counting): node A (VIP, master
   Redis, every lease) is killed (SIGKILL of all its processes + link down) 2 s after a change of every
   device point; a DI is toggled on its device right after the kill. Lease TTL: `--lease-ttl-s`, by
   default the product's (3 s; the tests use 4 s), takeover time the product's 90 s: B can take the
   leases only once A's have lapsed (with the lab's 6 s takeover, the takeover rule would fire first).
   `vip_move_s`: kill -> VIP on B. `node_loss_to_data_s`: kill -> that DI change received by the IEC 104
   client on B (the first new data B delivers; B's acquirer must take the leases and poll).
   Every point changes every max(10, lease TTL + 6) s: longer than the failover gap (no writer between
   the kill and B's first poll as holder), so that each change is visible to polling.
   `lost_changes`: device changes (simulator journal, see tests/ha/plant.py) not received by the SCADA
   client on B, from one change before the kill to one after it; summed over all runs (not a median:
   any loss shows).
2. Device loss: device 1 (RTU 1) cut from its holder A on both its addresses (iptables in A's namespace,
   device 2 untouched). `device_loss_takeover_s`: cut -> the first value of RTU 1 written by node B (lease
   moved and B's full image in the master Redis). It is dominated by the takeover timer, which the lab
   shortens (`takeover_s`, printed); the product default is 90 s (add ~the overhead printed).

3. SCADA switchover (tests/ha/switchover.py, as tests/ha/test_scada_switchover.py): an IEC 104 master
   receiving continuous spontaneous events from node A moves to node B when A is killed; per point, the
   spontaneous events lost and duplicated (interrogation answers not counted); the bound is the events k
   unacknowledged I frames can hold.

Last line: `vip_move_s=… node_loss_to_data_s=… device_loss_takeover_s=… lost_changes=…
scada_switch_lost=… scada_switch_dup=… scada_switch_dup_bound=…` (medians, except lost_changes and
scada_switch_lost: totals, scada_switch_dup: the worst run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fepha import keyspace as ks
from fepha import points
from fepha.config import NodeConfig
from tests.ha import plant
from tests.ha.harness import PLC_IPS, Lab, Node, can_run, device_port
from tests.ha.test_node_loss import node_loss_run

RTU = 1


def node_loss(runs_dir: Path, lease_ttl_s: float) -> dict[str, float]:
    lab = Lab({"lease_ttl_s": lease_ttl_s, "takeover_s": 90}, base=runs_dir)
    try:
        lab.start()
        res = node_loss_run(lab, hold_s=max(plant.HOLD_S, lease_ttl_s + 6))
        c = res["count"]
        return {"vip_move_s": res["vip_move_s"], "redis_master_s": res["redis_master_s"],
                "lease_move_s": res["lease_move_s"], "node_loss_to_data_s": res["node_loss_to_data_s"],
                "changes_made": c.made, "lost_changes": c.made - c.received}
    finally:
        lab.close()


def first_write_by(node_view: Node, holder: str, since_ms: int) -> bool:
    """True once RTU 1's lease is `holder`'s and a value of RTU 1 acquired after `since_ms` is in Redis."""
    if plant.holder(node_view, RTU) != holder:
        return False
    recs = node_view.redis_cli("hvals", ks.values(RTU)).splitlines()
    return any(points.decode(r).ts_ms >= since_ms for r in recs if r)


def device_loss(runs_dir: Path, takeover_s: float) -> dict[str, float]:
    lab = Lab({"takeover_s": takeover_s}, base=runs_dir)
    try:
        lab.start()
        a, b = plant.start_a_holding(lab, [RTU])
        plant.start_services(b, "acquirer")
        lab.wait_for(lambda: b.redis_cli("hget", ks.link(RTU), "valb") == "1", 30, "B reaching device 1", 0.3)
        time.sleep(1.0)
        port = device_port(lab, RTU)
        t0 = time.time()
        for ip in PLC_IPS:
            a.cut(ip, port)
        lab.wait_for(lambda: first_write_by(a, "B", int(t0 * 1000)), lab.timers["takeover_s"] + 40,
                     "B holding device 1 and writing its values", interval=0.05)
        return {"device_loss_takeover_s": time.time() - t0, "takeover_s": float(lab.timers["takeover_s"])}
    finally:
        lab.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lease-ttl-s", type=float, default=NodeConfig().lease_ttl_s,
                    help="lease TTL of the node-loss runs (default: the product's, fepha.config)")
    ap.add_argument("--takeover-s", type=float, default=6.0,
                    help="takeover time of the device-loss runs (product: 90; shortened by default)")
    args = ap.parse_args()
    reason = can_run()
    if reason:
        print(f"failover: cannot run: {reason}", file=sys.stderr)
        return 2
    plant.BASE.mkdir(exist_ok=True)
    runs = []
    for i in range(args.runs):
        r = {**node_loss(plant.BASE, args.lease_ttl_s), **device_loss(plant.BASE, args.takeover_s)}
        runs.append(r)
        print(f"run {i + 1}: " + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in r.items()), flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    lost = sum(r["lost_changes"] for r in runs)
    made = sum(r["changes_made"] for r in runs)
    takeover_s = med["takeover_s"]
    print(f"medians over {args.runs} runs: redis_master_s={med['redis_master_s']:.2f} "
          f"lease_move_s={med['lease_move_s']:.2f} (lease_ttl_s={args.lease_ttl_s:g}); lost {lost} of {made} "
          f"device changes; device loss with takeover_s={takeover_s:g} "
          f"(overhead {med['device_loss_takeover_s'] - takeover_s:.2f} s)")
    # issue 10 c: SCADA switchover (tests/ha/switchover.py), keys appended to the last line
    from tests.ha.switchover import scada_switch_figures
    switch = scada_switch_figures(plant.BASE, args.runs, {"lease_ttl_s": args.lease_ttl_s, "takeover_s": 90})
    print(f"vip_move_s={med['vip_move_s']:.2f} node_loss_to_data_s={med['node_loss_to_data_s']:.2f} "
          f"device_loss_takeover_s={med['device_loss_takeover_s']:.2f} lost_changes={lost} {switch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
