"""SCADA-side switchover (issue 10 c): a master receiving continuous spontaneous events from node A moves
to node B when A dies. Counted per point (tests/ha/switchover.py): no event lost, and duplicates no more
than k unacknowledged I frames hold; a master known to the system gets no second end of initialisation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ha import plant
from tests.ha.harness import FIGURES, Lab
from tests.ha.switchover import scada_switch_run


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with plant.plant_lab(request) as lab:
        yield lab


def test_master_moves_from_a_dead_node_to_the_other_without_loss_or_flood(lab: Lab) -> None:
    res = scada_switch_run(lab)
    c = res["count"]
    FIGURES.update({"scada_switch_made": c.made, "scada_switch_lost": c.lost, "scada_switch_dup": c.dup,
                    "scada_switch_dup_bound": c.bound})
    assert c.points >= 3 and res["ticks_after_kill"] >= 3, res
    assert c.made >= 10 * c.points, c                                   # continuous events across the switch
    assert c.lost == 0, f"events lost across the switchover: {c.per_point}"
    assert c.dup <= c.bound, f"{c.dup} duplicates, bound {c.bound}: {c.per_point}"
    assert res["inits"].count("B") == 0, "B treated the master as new (end of initialisation)"
