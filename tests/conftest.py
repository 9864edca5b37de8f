from __future__ import annotations

import inspect
import os
from typing import Any

import pytest
from hypothesis import settings

# Property tests are deterministic unless asked otherwise: CI must never fail one run in ten on an input nobody can
# reproduce. "ci" (the default) derives every example from the test itself (derandomize) and keeps no example
# database; HYPOTHESIS_PROFILE=random explores with fresh random seeds (and prints the seed of a failure, so it can
# be replayed with --hypothesis-seed): run it by hand to look for new bugs, and keep what it finds as an @example.
# Loaded here, before any test module builds its own settings on top of the profile.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("random", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: Any) -> None:
    # Every coroutine test runs on anyio's pytest plugin (asyncio backend), so tests are plain `async def`.
    # The mark goes on the function before collection, so @pytest.mark.parametrize still applies.
    if inspect.iscoroutinefunction(obj) and name.startswith("test"):
        pytest.mark.anyio(obj)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
