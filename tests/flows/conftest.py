from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.scenarios import get_scenario
from fixtures.simulate import simulate, write


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo network (all incident kinds), written once per test session."""
    out = tmp_path_factory.mktemp("demo_data")
    write(simulate(get_scenario("demo", packages=2500), seed=3), out)
    return out
