"""Fixtures of the fault tests: the api ones (an app under httpx, closed at the end)."""

from tests.api.conftest import make_api  # noqa: F401 (fixture)
