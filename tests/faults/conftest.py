"""Fixtures of the fault tests: the api ones (an app under httpx, closed at the end) and the two-node system
of tests/api/test_with_services.py (its services not started yet), and test_single_node.py's one node (its services started)."""

from tests.api.conftest import make_api  # noqa: F401 (fixture)
from tests.api.test_with_services import system  # noqa: F401 (fixture)
from tests.faults.test_single_node import node  # noqa: F401 (fixture: one node's real processes)
