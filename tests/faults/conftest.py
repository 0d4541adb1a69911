"""Fixtures of the fault tests: the api ones (an app under httpx, closed at the end) and the two-node system
of tests/api/test_with_services.py (its services not started yet)."""

from tests.api.conftest import make_api  # noqa: F401 (fixture)
from tests.api.test_with_services import system  # noqa: F401 (fixture)
