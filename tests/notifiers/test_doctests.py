"""The examples in the notifiers' docstrings are run (pytest's testpaths skip the package)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "notifiers.errors",
    "notifiers.headers",
    "notifiers.metrics",
    "notifiers.policy",
    "notifiers.smtpd",
    "notifiers.unsubscribe",
    "notifiers.email",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
