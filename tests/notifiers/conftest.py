"""Fixtures for the notifier tests; the real SMTP server (notifiers.smtpd) runs in its own
process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from notifiers.message import MessageComposer
from notifiers.metrics import NotifierMetrics, make_notifier_metrics
from notifiers.outbox import Outbox
from notifiers.smtpd import SmtpServerProcess
from tests.notifiers.helpers import FROM, SECRET, UNSUBSCRIBE_URL, Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def composer() -> MessageComposer:
    return MessageComposer(
        from_address=FROM, unsubscribe_url=UNSUBSCRIBE_URL, unsubscribe_secret=SECRET
    )


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> NotifierMetrics:
    return make_notifier_metrics(registry)


@pytest.fixture
def outbox(tmp_path: Path, metrics: NotifierMetrics) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite", metrics=metrics)
    yield box
    box.close()


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    return tmp_path / "maildir"


@pytest.fixture
def smtp_server(maildir: Path, tmp_path: Path) -> Iterator[Callable[..., SmtpServerProcess]]:
    """Factory: start notifiers.smtpd in a child process with the given failure rules."""
    started: list[SmtpServerProcess] = []

    def start(*rules: str, port: int = 0) -> SmtpServerProcess:
        server = SmtpServerProcess(
            maildir, port=port, rules=rules, stderr=tmp_path / "smtpd.log"
        ).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
