"""Delivery through a real SMTP server (notifiers.smtpd) running in its own process.

Every message is counted at the server by its X-Delaywatch-Alert-Key header.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from notifiers.customers import Customer, load_customers
from notifiers.email import DrainReport, SmtpSender, drain, drain_forever
from notifiers.errors import (
    ConnectFailedError,
    ConnectTimeoutError,
    DeliveryTimeoutError,
    MessageBuildError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnconfirmedDeliveryError,
)
from notifiers.grouping import customer_digest
from notifiers.message import MessageComposer
from notifiers.metrics import NotifierMetrics
from notifiers.outbox import Outbox
from notifiers.smtpd import FailureRule, SmtpServerProcess, count_by_alert_key
from tests.notifiers.helpers import (
    FROM,
    SECRET,
    T0,
    UNSUBSCRIBE_URL,
    Clock,
    customer,
    drain_until_settled,
    free_port,
    make_alert,
    sender_for,
    write_customers_csv,
)


def setup_alerts(box: Outbox, n: int, *, start: int = 0) -> dict[str, Customer]:
    """One alert per customer (so a per-address failure script hits each message)."""
    custs = {}
    items = []
    for i in range(start, start + n):
        c = customer(i)
        custs[c.recipient_ref] = c
        items.append((make_alert(f"PKG-{i}"), c.recipient_ref))
    box.enqueue_many(items, now=T0)
    return custs


async def test_messages_arrive_once_each(
    outbox: Outbox, composer: MessageComposer, smtp_server, maildir: Path, clock: Clock,
    metrics: NotifierMetrics,
) -> None:  # fmt: skip
    server = smtp_server()
    customers = setup_alerts(outbox, 30)
    outbox.enqueue_many([(make_alert("PKG-0"), "r-0000")], now=T0)  # a replay: ignored
    report = await drain(
        outbox, customers, sender_for(server), composer=composer, now_fn=clock, batch=7,
        quiet_hours=None, metrics=metrics,
    )  # fmt: skip
    assert (report.claimed, report.sent) == (30, 30)
    counts = count_by_alert_key(maildir)
    assert counts == {f"PKG-{i}:stall:1": 1 for i in range(30)}
    assert outbox.stats()["sent"] == 30 and outbox.depth() == 0
    # A second drain, and a replayed enqueue, send nothing more.
    outbox.enqueue(make_alert("PKG-3"), "r-0003", now=T0)
    clock.advance(7200)
    again = await drain(
        outbox, customers, sender_for(server), composer=composer, now_fn=clock, quiet_hours=None
    )
    assert again.claimed == 0
    assert count_by_alert_key(maildir) == counts


async def test_connection_is_reused_within_a_batch(smtp_server, composer: MessageComposer) -> None:
    server = smtp_server()
    sender = sender_for(server)
    async with sender:
        await sender.send(composer.build(make_alert("A"), customer(1), when=T0), timeout=5)
        first = sender._smtp
        await sender.send(composer.build(make_alert("B"), customer(2), when=T0), timeout=5)
        assert sender._smtp is first and sender.is_connected
    assert not sender.is_connected


async def test_send_reports_per_recipient_refusals(smtp_server) -> None:
    server = smtp_server("gone@mail.example=550", "later@mail.example=451")
    msg = EmailMessage()
    msg["From"] = "updates@carrier.example"
    msg["To"] = "ok@mail.example, gone@mail.example, later@mail.example"
    msg["Subject"] = "multi"
    msg["X-Delaywatch-Alert-Key"] = "PKG-9:stall:1"
    msg.set_content("hello")
    async with sender_for(server) as sender:
        report = await sender.send(msg, timeout=5)
    assert report.accepted == ("ok@mail.example",)
    assert {a: r.code for a, r in report.refused.items()} == {
        "gone@mail.example": 550,
        "later@mail.example": 451,
    }
    assert not report.ok
    assert "mail.example" not in repr(report) and "[451, 550]" in repr(report)
    assert all("mail.example" not in r.message for r in report.refused.values())


async def test_unsubscribe_during_a_batch_takes_effect_at_once(
    outbox: Outbox, composer: MessageComposer, smtp_server, maildir: Path, clock: Clock
) -> None:
    server = smtp_server()
    customers = setup_alerts(outbox, 3)

    class UnsubscribingSender(SmtpSender):
        async def send(self, message, /, *, timeout=30.0):
            report = await super().send(message, timeout=timeout)
            outbox.unsubscribe("r-0001")  # the customer clicks while we are sending
            return report

    sender = UnsubscribingSender("127.0.0.1", server.port, local_hostname="t")
    report = await drain(
        outbox, customers, sender, composer=composer, now_fn=clock, quiet_hours=None
    )
    assert (report.sent, report.suppressed) == (2, 1)
    assert set(count_by_alert_key(maildir)) == {"PKG-0:stall:1", "PKG-2:stall:1"}
    assert outbox.get("PKG-1:stall:1").status == "suppressed"


async def test_retry_records_the_code_and_backs_off(
    outbox: Outbox, composer: MessageComposer, smtp_server, clock: Clock
) -> None:
    server = smtp_server("*=452x1")
    customers = setup_alerts(outbox, 1)
    report = await drain(
        outbox, customers, sender_for(server), composer=composer, now_fn=clock, quiet_hours=None
    )
    assert report.retried == 1
    row = outbox.rows()[0]
    assert (row.status, row.attempts, row.last_error_code) == ("pending", 1, 452)
    assert timedelta(seconds=15) <= row.next_attempt_at - clock() < timedelta(seconds=30)
    clock.advance(14)  # not yet due: nothing is claimed
    assert (await drain(outbox, customers, sender_for(server), composer=composer,
                        now_fn=clock, quiet_hours=None)).claimed == 0  # fmt: skip


async def test_a_customer_hears_moving_again_only_after_running_late(
    outbox: Outbox, composer: MessageComposer, smtp_server, maildir: Path, clock: Clock
) -> None:
    """The stall message meets a 4xx and waits for its retry: the back-on-track message
    queued after it is held, not sent first. When the retry is due, the package has moved:
    "running late" and "moving again" would arrive together, so the all-clear goes alone."""
    c = customer(1)
    server = smtp_server(f"{c.email}=451x1")
    outbox.enqueue(make_alert("P1"), c.recipient_ref, now=T0)
    outbox.enqueue(make_alert("P0"), c.recipient_ref, now=T0)  # (another package: goes)
    customers = {c.recipient_ref: c}
    report = await drain(outbox, customers, sender_for(server), composer=composer,
                         now_fn=clock, quiet_hours=None)
    assert (report.retried, report.held, report.sent) == (1, 1, 0)
    clock.advance(5)  # (the retry is due after ~30 s)
    outbox.enqueue(make_alert("P1", kind="back_on_track"), c.recipient_ref, now=clock())
    report = await drain(outbox, customers, sender_for(server), composer=composer,
                         now_fn=clock, quiet_hours=None)
    assert report.claimed == 0  # (held behind the stall's retry)
    assert count_by_alert_key(maildir) == {}
    clock.advance(3600)
    report = await drain(outbox, customers, sender_for(server), composer=composer,
                         now_fn=clock, quiet_hours=None)
    assert (report.superseded, report.sent) == (1, 2)
    assert outbox.get("P1:stall:1").status == "superseded"
    assert count_by_alert_key(maildir) == {"P0:stall:1": 1, "P1:back_on_track:1": 1}
    # a stall whose all-clear is not queued goes as ever
    outbox.enqueue(make_alert("P2"), c.recipient_ref, now=clock())
    report = await drain(outbox, customers, sender_for(server), composer=composer,
                         now_fn=clock, quiet_hours=None)
    assert (report.superseded, report.sent) == (0, 1)


async def test_quiet_hours_send_the_all_clear_alone_not_with_the_delay_it_answers(
    outbox: Outbox, composer: MessageComposer, smtp_server, maildir: Path,
    metrics: NotifierMetrics,
) -> None:
    """A stall at 21:10 in Chicago waits for the end of quiet hours; the package moves at
    23:30 and its all-clear waits too: at 08:00 the customer got "running late" and "moving
    again" in the same second. Now only the all-clear goes; a group's the same."""
    from notifiers.policy import QuietHours

    c = customer(1)
    server = smtp_server()
    night = Clock(datetime(2025, 3, 5, 3, 10, tzinfo=UTC))  # 21:10 CST
    group = "N1:weather:20250305T0200Z:" + customer_digest(c.recipient_ref)
    outbox.enqueue(make_alert("P1"), c.recipient_ref, now=night())
    outbox.enqueue(make_alert("P9", alert_key=f"{group}:incident_delay", kind="incident_delay",
                              packages=["P9", "P8"]), c.recipient_ref, now=night())
    customers = {c.recipient_ref: c}

    async def run() -> DrainReport:
        return await drain(outbox, customers, sender_for(server), composer=composer,
                           now_fn=night, quiet_hours=QuietHours(), metrics=metrics)

    assert (await run()).sent == 0
    night.advance(2 * 3600 + 20 * 60)  # 23:30
    outbox.enqueue(make_alert("P1", kind="back_on_track"), c.recipient_ref, now=night())
    outbox.enqueue(make_alert("P9", alert_key=f"{group}:back_on_track", kind="back_on_track",
                              packages=["P9", "P8"]), c.recipient_ref, now=night())
    assert (await run()).sent == 0
    night.advance(8.5 * 3600)  # 08:00
    report = await run()
    assert (report.superseded, report.sent) == (2, 2)
    assert count_by_alert_key(maildir) == {"P1:back_on_track:1": 1,
                                           f"{group}:back_on_track": 1}
    assert metrics.superseded._value.get() == 2


async def test_a_customer_whose_row_is_unusable_waits_and_the_others_are_sent(
    outbox: Outbox, composer: MessageComposer, smtp_server, maildir: Path, clock: Clock
) -> None:
    server = smtp_server()
    customers = setup_alerts(outbox, 3)
    broken = customer(1).recipient_ref
    del customers[broken]  # its row was skipped by load_customers(bad=...)
    report = await drain(outbox, customers, sender_for(server), composer=composer,
                         now_fn=clock, quiet_hours=None, unusable={broken}, backoff_base=60)
    assert (report.sent, report.customer_row_bad, report.failed_permanent) == (2, 1, 0)
    row = outbox.get("PKG-1:stall:1")
    assert (row.status, row.attempts) == ("pending", 0)  # no attempt spent, not failed
    assert row.next_attempt_at - clock() == timedelta(seconds=60)  # tried at the next run
    clock.advance(60)  # the table mended
    report = await drain(outbox, setup_customers(3), sender_for(server), composer=composer,
                         now_fn=clock, quiet_hours=None)
    assert report.sent == 1
    assert count_by_alert_key(maildir) == {f"PKG-{i}:stall:1": 1 for i in range(3)}


def setup_customers(n: int) -> dict[str, Customer]:
    return {c.recipient_ref: c for c in map(customer, range(n))}


async def test_retries_are_bounded_then_failed_with_the_last_code(
    outbox: Outbox, composer: MessageComposer, smtp_server, maildir: Path, clock: Clock, registry,
    metrics: NotifierMetrics,
) -> None:  # fmt: skip
    server = smtp_server("*=451")  # never recovers
    customers = setup_alerts(outbox, 2)
    await drain_until_settled(
        outbox, customers, sender_for(server), composer=composer, clock=clock,
        max_attempts=3, metrics=metrics,
    )  # fmt: skip
    for row in outbox.rows():
        assert (row.status, row.attempts, row.last_error_code) == ("failed_permanent", 3, 451)
    assert not any(outbox.is_suppressed(ref) for ref in customers)  # not the address's fault
    assert registry.get_sample_value("delaywatch_emails_failed_total", {"reason": "transient"}) == 2
    assert count_by_alert_key(maildir) == {}


async def test_server_down_then_up_loses_nothing(
    outbox: Outbox, composer: MessageComposer, smtp_server, maildir: Path, clock: Clock, registry,
    metrics: NotifierMetrics,
) -> None:  # fmt: skip
    port = free_port()
    customers = setup_alerts(outbox, 40)
    sender = sender_for(port)
    # Down for 20 minutes, drained every 2 minutes: nothing is sent, no attempt is used up.
    for _ in range(10):
        report = await drain(
            outbox, customers, sender, composer=composer, now_fn=clock, quiet_hours=None,
            metrics=metrics,
        )  # fmt: skip
        assert report.sent == 0
        clock.advance(120)
    assert report.relay_error_code == 451 and report.released > 0
    assert outbox.depth() == 40
    assert all(r.attempts == 0 and r.status == "pending" for r in outbox.rows())
    assert registry.get_sample_value("delaywatch_outbox_depth") == 40
    assert registry.get_sample_value("delaywatch_outbox_oldest_pending_age_seconds") == 9 * 120
    assert registry.get_sample_value("delaywatch_email_attempts_total") == 0

    smtp_server(port=port)  # the server comes back on the same port
    clock.advance(60)
    report = await drain(
        outbox, customers, sender, composer=composer, now_fn=clock, quiet_hours=None,
        metrics=metrics,
    )  # fmt: skip
    assert report.sent == 40
    assert count_by_alert_key(maildir) == {f"PKG-{i}:stall:1": 1 for i in range(40)}
    assert registry.get_sample_value("delaywatch_outbox_depth") == 0
    assert registry.get_sample_value("delaywatch_outbox_oldest_pending_age_seconds") == 0


async def test_server_killed_mid_run_loses_nothing(
    outbox: Outbox, composer: MessageComposer, maildir: Path, clock: Clock
) -> None:
    port = free_port()
    customers = setup_alerts(outbox, 10)
    first = SmtpServerProcess(maildir, port=port, rules=["*=451x1"]).start()
    report = await drain(outbox, customers, sender_for(port), composer=composer, now_fn=clock,
                         quiet_hours=None)  # fmt: skip
    assert report.retried == 10
    first.kill()  # SIGKILL
    clock.advance(3600)
    report = await drain(outbox, customers, sender_for(port), composer=composer, now_fn=clock,
                         quiet_hours=None)  # fmt: skip
    assert (report.sent, report.released, outbox.depth()) == (0, 10, 10)
    assert all(r.attempts == 1 for r in outbox.rows())  # the outage cost no attempt
    with SmtpServerProcess(maildir, port=port):
        clock.advance(3600)
        report = await drain(outbox, customers, sender_for(port), composer=composer,
                             now_fn=clock, quiet_hours=None)  # fmt: skip
    assert report.sent == 10
    assert count_by_alert_key(maildir) == {f"PKG-{i}:stall:1": 1 for i in range(10)}


@contextlib.asynccontextmanager
async def silent_server(*, greet: bool) -> AsyncIterator[int]:
    """A TCP server that never answers (greet=False) or stops answering after EHLO."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if greet:
            writer.write(b"220 hello\r\n")
            await reader.readline()  # EHLO
            writer.write(b"250 ok\r\n")
        await reader.read()  # then silence until the client goes away
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_timeouts_are_transient_and_are_timeout_errors(composer: MessageComposer) -> None:
    msg = composer.build(make_alert("PKG-1"), customer(1), when=T0)
    async with silent_server(greet=False) as port:
        with pytest.raises(ConnectTimeoutError) as info:
            await SmtpSender("127.0.0.1", port, local_hostname="t").send(msg, timeout=0.3)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, ConnectFailedError)
    async with silent_server(greet=True) as port:
        with pytest.raises(DeliveryTimeoutError) as info2:
            await SmtpSender("127.0.0.1", port, local_hostname="t").send(msg, timeout=0.3)
    err = info2.value
    assert isinstance(err, TimeoutError) and isinstance(err, TransientDeliveryError)
    assert err.code == 451 and err.alert_key == "PKG-1:stall:1"


async def test_mid_transaction_timeout_is_an_attempt_that_is_retried(
    outbox: Outbox, composer: MessageComposer, clock: Clock
) -> None:
    customers = setup_alerts(outbox, 1)
    async with silent_server(greet=True) as port:
        report = await drain(
            outbox, customers, SmtpSender("127.0.0.1", port, local_hostname="t"),
            composer=composer, now_fn=clock, quiet_hours=None, timeout=0.3,
        )  # fmt: skip
    assert report.retried == 1
    row = outbox.rows()[0]
    assert (row.status, row.attempts, row.last_error_code) == ("pending", 1, 451)


async def test_error_hierarchy_from_the_sender(smtp_server, composer: MessageComposer) -> None:
    c = customer(1)
    server = smtp_server(f"{c.email}=451x1", f"{c.email}=550")
    sender = sender_for(server)
    msg = composer.build(make_alert("PKG-1"), c, when=T0)
    async with sender:
        with pytest.raises(TransientDeliveryError) as t:
            await sender.send(msg, timeout=5)
        with pytest.raises(PermanentDeliveryError) as p:
            await sender.send(msg, timeout=5)
    assert (t.value.code, p.value.code) == (451, 550)
    assert t.value.__cause__ is None and t.value.__suppress_context__  # nothing chained
    assert "PKG-1:stall:1" in str(p.value) and c.email not in str(p.value)
    with pytest.raises(ConnectFailedError) as down:
        await sender_for(free_port()).send(msg, timeout=2)
    assert down.value.code == 451 and isinstance(down.value, ConnectionError)


async def test_unknown_customer_and_unusable_address_fail_without_sending(
    outbox: Outbox, composer: MessageComposer, smtp_server, maildir: Path, clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = smtp_server()
    broken = Customer("r-broken", "N", "not an address", "en", "UTC")
    outbox.enqueue(make_alert("PKG-1"), "r-missing", now=T0)
    outbox.enqueue(make_alert("PKG-2"), "r-broken", now=T0)
    outbox.enqueue(make_alert("PKG-3"), "r-late", now=T0)
    late = Customer("r-late", "L", "late@mail.example", "en", "UTC")
    with caplog.at_level("DEBUG"):
        report = await drain(
            outbox, {"r-broken": broken}, sender_for(server), composer=composer, now_fn=clock,
            quiet_hours=None, unknown_wait=6 * 3600,
        )  # fmt: skip
        # customers missing from the table wait for it (an export lagging the feed) ...
        assert (report.failed_permanent, report.customer_unknown) == (1, 2)
        assert outbox.get("PKG-1:stall:1").status == "pending"
        assert outbox.get("PKG-1:stall:1").attempts == 0
        clock.advance(3 * 3600)  # ... one comes within the wait: its message goes
        report = await drain(
            outbox, {"r-broken": broken, "r-late": late}, sender_for(server),
            composer=composer, now_fn=clock, quiet_hours=None, unknown_wait=6 * 3600,
        )  # fmt: skip
        assert (report.sent, report.customer_unknown) == (1, 1)
        clock.advance(3 * 3600)  # ... the other never does: after the wait, it fails
        report = await drain(
            outbox, {"r-broken": broken}, sender_for(server), composer=composer, now_fn=clock,
            quiet_hours=None, unknown_wait=6 * 3600,
        )  # fmt: skip
    assert (report.failed_permanent, report.customer_unknown) == (1, 0)
    assert outbox.get("PKG-1:stall:1").last_error_code == 550
    assert outbox.get("PKG-2:stall:1").last_error_code == 553
    assert count_by_alert_key(maildir) == {"PKG-3:stall:1": 1}
    # the log names the alert and a digest of the customer, never the reference itself
    assert "PKG-1:stall:1" in caplog.text and customer_digest("r-missing") in caplog.text
    assert "r-missing" not in caplog.text and "r-broken" not in caplog.text


async def test_an_internationalized_domain_is_delivered_by_a_relay_without_smtputf8(
    outbox: Outbox, composer: MessageComposer, maildir: Path, clock: Clock
) -> None:
    """A relay that does not offer SMTPUTF8, as many do not: the domain goes in its ASCII
    form (it failed 553 "SMTPUTF8 not supported")."""
    from notifiers.smtpd import start_server

    server = start_server(maildir, smtputf8=False)
    anna = Customer("r-idn", "Anna", "anna@bücher.example", "en", "UTC")
    outbox.enqueue(make_alert("PKG-1"), anna.recipient_ref, now=T0)
    try:
        report = await drain(outbox, {anna.recipient_ref: anna}, sender_for(server.port),
                             composer=composer, now_fn=clock, quiet_hours=None)
    finally:
        server.stop()
    assert (report.sent, report.failed_permanent) == (1, 0)
    assert count_by_alert_key(maildir) == {"PKG-1:stall:1": 1}


async def test_a_bounce_is_logged_without_the_customer(
    outbox: Outbox, composer: MessageComposer, smtp_server, clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = customer(1)
    server = smtp_server(f"{c.email}=550")
    outbox.enqueue(make_alert("PKG-1"), c.recipient_ref, now=T0)
    with caplog.at_level("DEBUG"):
        report = await drain(outbox, {c.recipient_ref: c}, sender_for(server),
                             composer=composer, now_fn=clock, quiet_hours=None)
    assert report.failed_permanent == 1 and outbox.is_suppressed(c.recipient_ref)
    assert "suppressed" in caplog.text and customer_digest(c.recipient_ref) in caplog.text
    for private in (c.recipient_ref, c.email, c.name):
        assert private not in caplog.text


async def test_drain_forever_stops_when_asked(
    outbox: Outbox, composer: MessageComposer, smtp_server, maildir: Path
) -> None:
    server = smtp_server()
    customers = setup_alerts(outbox, 3)
    stop = asyncio.Event()
    task = asyncio.create_task(
        drain_forever(
            outbox, customers, sender_for(server), composer=composer, stop=stop,
            now_fn=lambda: T0 + timedelta(hours=1), poll_interval=0.05, quiet_hours=None,
        )
    )  # fmt: skip
    for _ in range(100):
        if outbox.depth() == 0:
            break
        await asyncio.sleep(0.05)
    stop.set()
    total = await asyncio.wait_for(task, 5)
    assert total.sent == 3 and len(count_by_alert_key(maildir)) == 3


async def test_drain_forever_reports_the_relay_back_up(
    outbox: Outbox, composer: MessageComposer, smtp_server, maildir: Path, clock: Clock
) -> None:
    """A relay down for the first drains and then back: the summed report counts what was
    put back while it was down, and says no relay error at the end (it was the last one's)."""
    port = free_port()
    customers = setup_alerts(outbox, 3)
    stop = asyncio.Event()
    task = asyncio.create_task(
        drain_forever(
            outbox, customers, sender_for(port, timeout=1.0), composer=composer, stop=stop,
            now_fn=clock, poll_interval=0.05, quiet_hours=None,
        )
    )  # fmt: skip
    clock.advance(3600)
    await asyncio.sleep(0.5)  # drains find the relay down (connection refused)
    assert outbox.depth() == 3
    smtp_server(port=port)
    clock.advance(3600)  # what was put back is due again
    for _ in range(200):
        if outbox.depth() == 0:
            break
        await asyncio.sleep(0.05)
    stop.set()
    total = await asyncio.wait_for(task, 5)
    assert total.sent == 3 and total.released >= 3
    assert (total.relay_error_code, total.relay_error) == (None, None)
    assert len(count_by_alert_key(maildir)) == 3


_CRASHING_SENDER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from datetime import datetime, timezone
    from notifiers import MessageComposer, Outbox, SmtpSender, drain, load_customers

    outbox_path, customers_path, port, crash_after = sys.argv[1:5]
    crash_after = int(crash_after)

    class CrashingSender(SmtpSender):
        accepted = 0
        async def send(self, message, /, *, timeout=30.0):
            report = await super().send(message, timeout=timeout)
            CrashingSender.accepted += 1
            if CrashingSender.accepted == crash_after:
                os.kill(os.getpid(), signal.SIGKILL)  # after acceptance, before mark_sent
            return report

    composer = MessageComposer(from_address=sys.argv[5], unsubscribe_url=sys.argv[6],
                               unsubscribe_secret=sys.argv[7].encode())
    now = datetime(2025, 3, 4, 15, 0, tzinfo=timezone.utc)
    asyncio.run(drain(Outbox(outbox_path), load_customers(customers_path),
                      CrashingSender("127.0.0.1", int(port), local_hostname="t"),
                      composer=composer, now_fn=lambda: now, quiet_hours=None))
    """
)


@pytest.mark.faults
async def test_kill_9_between_acceptance_and_record_duplicates_exactly_that_message(
    tmp_path: Path, composer: MessageComposer, smtp_server, maildir: Path
) -> None:
    server = smtp_server()
    path = tmp_path / "crash.sqlite"
    custs = [customer(i) for i in range(10)]
    csv_path = write_customers_csv(tmp_path / "customers.csv", custs)
    with Outbox(path) as box:
        box.enqueue_many([(make_alert(f"PKG-{i}"), c.recipient_ref) for i, c in enumerate(custs)],
                         now=T0)  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING_SENDER, str(path), str(csv_path), str(server.port), "3",
         FROM, UNSUBSCRIBE_URL, SECRET.decode()],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()

    with Outbox(path) as box:
        stats = box.stats()
        assert (stats["sent"], stats["sending"]) == (2, 8)  # the batch is leased, not lost
        customers = load_customers(csv_path)
        clock = Clock(T0)
        early = await drain(box, customers, sender_for(server), composer=composer,
                            now_fn=clock, quiet_hours=None)  # fmt: skip
        assert early.claimed == 0  # the dead sender's lease still holds
        clock.advance(301)  # the batch's lease (300 s) expired
        report = await drain(box, customers, sender_for(server), composer=composer,
                             now_fn=clock, quiet_hours=None)  # fmt: skip
        # the one being sent when it died was renewed for the longest send (10 x 30 s + 600 s)
        assert report.sent == 7 and box.stats()["sending"] == 1
        clock.advance(SmtpSender().longest_send() - 300)
        report = await drain(box, customers, sender_for(server), composer=composer,
                             now_fn=clock, quiet_hours=None)  # fmt: skip
        assert report.sent == 1 and box.stats()["sent"] == 10 and box.depth() == 0

    counts = count_by_alert_key(maildir)
    assert set(counts) == {f"PKG-{i}:stall:1" for i in range(10)}  # lost: 0
    duplicates = {k: n for k, n in counts.items() if n > 1}
    assert duplicates == {"PKG-2:stall:1": 2}  # exactly the one kill in the gap


def test_failure_rule_parsing() -> None:
    assert FailureRule.parse("a@b.example=451x2") == FailureRule("a@b.example", 451, 2, "rcpt")
    assert FailureRule.parse("*=drop") == FailureRule("*", None, None, "data")
    assert FailureRule.parse("A@B.example=554/data") == FailureRule(
        "a@b.example", 554, None, "data"
    )
    for bad in ("a@b", "a@b=250", "a@b=451x", "=451", "a@b=451/helo"):
        with pytest.raises(ValueError):
            FailureRule.parse(bad)


def test_smtpd_cli_rejects_bad_rules(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "notifiers.smtpd", "--dir", str(tmp_path), "--fail", "nonsense"],
        capture_output=True, timeout=30, env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 2 and b"bad failure rule" in proc.stderr


async def test_the_senders_timeout_holds_when_drain_is_given_none(
    outbox: Outbox, composer: MessageComposer, clock: Clock
) -> None:
    """``smtp.timeout_seconds`` reaches the sender; drain used to send with its own 30 s
    default whatever the sender's (a relay that stops answering held a run 30 s a row)."""
    customers = setup_alerts(outbox, 1)
    async with silent_server(greet=True) as port:
        report = await asyncio.wait_for(drain(
            outbox, customers, SmtpSender("127.0.0.1", port, local_hostname="t", timeout=0.3),
            composer=composer, now_fn=clock, quiet_hours=None,
        ), timeout=15)  # the 30 s default would hit this first  # fmt: skip
    assert report.retried == 1 and report.sent == 0
    [row] = outbox.rows()
    assert (row.status, row.attempts, row.last_error_code) == ("pending", 1, 451)


async def test_a_template_that_fails_fails_its_row_and_the_queue_goes_on(
    outbox: Outbox, smtp_server, maildir: Path, clock: Clock, tmp_path: Path,
) -> None:  # fmt: skip
    """An edited template (``template_dir``) that names a field the context lacks: the
    Spanish customer's row fails with 554 and a reason that quotes no customer data; the
    others' messages go. (The Jinja error used to escape drain: every run stopped there.)"""
    import shutil

    from notifiers.message import TEMPLATE_DIR

    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATE_DIR, templates)
    spanish = templates / "stall.es.txt"
    spanish.write_text(spanish.read_text(encoding="utf-8").replace(
        "{{ silence }}", "{{ silence_text }}"), encoding="utf-8")
    edited = MessageComposer(from_address=FROM, unsubscribe_url=UNSUBSCRIBE_URL,
                             unsubscribe_secret=SECRET, template_dir=templates)
    customers = {c.recipient_ref: c for c in (
        customer(i, locale="es" if i == 1 else "en") for i in range(4))}
    outbox.enqueue_many([(make_alert(f"PKG-{i}"), f"r-{i:04d}") for i in range(4)], now=T0)
    server = smtp_server()
    report = await drain(outbox, customers, sender_for(server), composer=edited,
                         now_fn=clock, quiet_hours=None)
    assert (report.sent, report.failed_permanent) == (3, 1)
    assert count_by_alert_key(maildir) == {f"PKG-{i}:stall:1": 1 for i in (0, 2, 3)}
    failed = {r.alert_key: (r.status, r.last_error_code) for r in outbox.rows()
              if r.status != "sent"}
    assert failed == {"PKG-1:stall:1": ("failed_permanent", 554)}
    with pytest.raises(MessageBuildError) as info:
        edited.render(make_alert("PKG-1"), customers["r-0001"])
    assert "stall.es.txt" in str(info.value) and "Number1" not in str(info.value)


def test_only_a_mailboxs_own_refusal_is_a_bounce() -> None:
    """Suppression is for a mailbox that does not take mail: a policy refusal (5.7.x), a
    refused body, a 554 to every recipient or an address we could not encode are not."""
    def bounce(code: int, step: str, text: str = "") -> bool:
        return PermanentDeliveryError(code, step=step, server_message=text).bounce

    assert bounce(550, "rcpt", "5.1.1 User unknown") and bounce(551, "rcpt")
    assert bounce(553, "rcpt", "5.1.3 Bad destination mailbox address syntax")
    assert not bounce(550, "rcpt", "5.7.1 Relaying denied")
    assert not bounce(554, "rcpt", "5.7.1 Relay access denied")
    assert not bounce(552, "rcpt", "5.2.2 Mailbox full")
    assert not bounce(554, "data", "5.6.0 Message content rejected")
    assert not bounce(553, "encode", "SMTPUTF8 not supported")


async def test_two_senders_on_one_outbox_send_each_message_once_when_leases_run_out(
    outbox: Outbox, composer: MessageComposer, maildir: Path, tmp_path: Path
) -> None:
    """A batch that outlasts its lease (a slow relay) while a second ``send`` runs: the
    second takes the rows whose lease ran out, and the first, reaching them later, must not
    send them too (it did: 8 messages delivered 13 times). Each sender renews a row's lease
    as it reaches it; a row another sender took is skipped and counted (``lease_lost``)."""
    from datetime import UTC, datetime

    from aiosmtpd.controller import Controller

    from notifiers.smtpd import MaildirHandler

    class Slow(MaildirHandler):
        async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201, N802
            await asyncio.sleep(0.4)
            return await super().handle_DATA(server, session, envelope)

    customers = setup_alerts(outbox, 8)
    controller = Controller(Slow(maildir), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        async def one(delay: float) -> DrainReport:
            await asyncio.sleep(delay)
            with Outbox(outbox.path) as own:  # its own connection, as another process has
                return await drain(
                    own, customers, SmtpSender("127.0.0.1", controller.port, local_hostname="t"),
                    composer=composer, now_fn=lambda: datetime.now(UTC), quiet_hours=None,
                    lease=1.0)  # fmt: skip

        first, second = await asyncio.gather(one(0.0), one(1.3))
    finally:
        controller.stop()
    counts = count_by_alert_key(maildir)
    assert counts == {f"PKG-{i}:stall:1": 1 for i in range(8)}
    assert first.sent + second.sent == 8 and first.lease_lost + second.lease_lost > 0
    assert {r.status for r in outbox.rows()} == {"sent"}


class _Stalling:
    """An in-process relay (aiosmtpd) that stores each message, then waits ``delay`` seconds
    before it answers the message's end (a relay scanning the message, or a hung one)."""

    def __init__(self, maildir: Path, delay: float) -> None:
        from aiosmtpd.controller import Controller

        from notifiers.smtpd import MaildirHandler

        class Handler(MaildirHandler):
            async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201, N802
                reply = await super().handle_DATA(server, session, envelope)
                await asyncio.sleep(delay)
                return reply

        self.controller = Controller(Handler(maildir), hostname="127.0.0.1", port=free_port())

    def __enter__(self) -> int:
        self.controller.start()
        return self.controller.port

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


async def test_a_relay_that_answers_the_messages_end_late_gets_it_once(
    outbox: Outbox, composer: MessageComposer, maildir: Path, clock: Clock
) -> None:
    """The reply to the final dot may take minutes (RFC 5321: wait 10). Under the command
    timeout it timed out, the relay kept the message, and every retry delivered it again."""
    customers = setup_alerts(outbox, 2)
    with _Stalling(maildir, delay=0.6) as port:
        sender = SmtpSender("127.0.0.1", port, timeout=0.2, data_timeout=5.0,
                            local_hostname="delaywatch.test")
        reports = await drain_until_settled(outbox, customers, sender, composer=composer,
                                            clock=clock, quiet_hours=None)
    assert count_by_alert_key(maildir) == {"PKG-0:stall:1": 1, "PKG-1:stall:1": 1}
    assert sum(r.sent for r in reports) == 2 and sum(r.retried for r in reports) == 0


async def test_a_message_whose_end_is_never_answered_is_sent_again_only_after_backoff_max(
    outbox: Outbox, composer: MessageComposer, maildir: Path, clock: Clock,
    metrics: NotifierMetrics, registry,  # noqa: ANN001
) -> None:
    customers = setup_alerts(outbox, 1)
    with _Stalling(maildir, delay=1.5) as port:
        sender = SmtpSender("127.0.0.1", port, timeout=0.2, data_timeout=0.4,
                            local_hostname="delaywatch.test")
        with pytest.raises(UnconfirmedDeliveryError) as caught:
            async with sender:
                await sender.send(composer.build(make_alert("X"), customer(9), when=T0))
        assert caught.value.step == "data" and "no reply" in str(caught.value)
        report = await drain(outbox, customers, sender, composer=composer, now_fn=clock,
                             quiet_hours=None, backoff_base=30.0, backoff_max=3600.0,
                             metrics=metrics)
    assert (report.unconfirmed, report.retried, report.sent) == (1, 1, 0)
    assert registry.get_sample_value("delaywatch_emails_unconfirmed_total") == 1
    row = outbox.get("PKG-0:stall:1")
    assert row is not None and row.status == "pending" and row.attempts == 1
    assert row.next_attempt_at >= clock() + timedelta(seconds=3600)  # not 30 s: it may be there
    assert count_by_alert_key(maildir) == {"PKG-0:stall:1": 1, "X:stall:1": 1}


async def test_a_rows_lease_outlasts_a_long_send_so_no_other_sender_takes_it(
    outbox: Outbox, composer: MessageComposer, maildir: Path
) -> None:
    """A send waits up to ``data_timeout`` for the message's end: the row's lease is renewed
    for the longest send, not for ``lease``, or a second sender takes the row mid-send."""
    from datetime import UTC, datetime

    customers = setup_alerts(outbox, 1)
    with _Stalling(maildir, delay=1.5) as port:
        async def one(delay: float) -> DrainReport:
            await asyncio.sleep(delay)
            with Outbox(outbox.path) as own:
                sender = SmtpSender("127.0.0.1", port, timeout=0.1, data_timeout=5.0,
                                    local_hostname="t")
                return await drain(own, customers, sender, composer=composer,
                                   now_fn=lambda: datetime.now(UTC), quiet_hours=None,
                                   lease=0.5)

        first, second = await asyncio.gather(one(0.0), one(0.9))
    assert count_by_alert_key(maildir) == {"PKG-0:stall:1": 1}
    assert (first.sent, second.claimed) == (1, 0)
    assert SmtpSender(timeout=0.1, data_timeout=5.0).longest_send() == pytest.approx(6.0)


async def test_a_drain_cancelled_while_a_message_is_out_records_its_answer_and_stops(
    outbox: Outbox, composer: MessageComposer, maildir: Path, clock: Clock
) -> None:
    """Ctrl-C or SIGTERM while the relay takes a message: put back unanswered, it went
    twice (the relay had it). It is carried to its answer and recorded; the rest go back."""
    customers = setup_alerts(outbox, 4)
    with _Stalling(maildir, delay=0.8) as port:
        sender = SmtpSender("127.0.0.1", port, timeout=5.0, local_hostname="delaywatch.test")
        run = asyncio.ensure_future(drain(outbox, customers, sender, composer=composer,
                                          now_fn=clock, quiet_hours=None))
        while not any(maildir.glob("new/*")):  # the relay has the first message
            await asyncio.sleep(0.02)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        statuses = {r.alert_key: r.status for r in outbox.rows()}
        assert statuses == {"PKG-0:stall:1": "sent", "PKG-1:stall:1": "pending",
                            "PKG-2:stall:1": "pending", "PKG-3:stall:1": "pending"}
        again = await drain(outbox, customers, sender, composer=composer, now_fn=clock,
                            quiet_hours=None)
    assert again.sent == 3
    assert count_by_alert_key(maildir) == {f"PKG-{i}:stall:1": 1 for i in range(4)}


async def test_a_drain_stopped_twice_stops_at_once_and_leaves_no_send_behind(
    outbox: Outbox, composer: MessageComposer, maildir: Path, clock: Clock
) -> None:
    """The second stop does not wait for the answer; the send it was waiting for must not
    go on, orphaned, on the connection being closed."""
    customers = setup_alerts(outbox, 2)
    with _Stalling(maildir, delay=2.0) as port:
        sender = SmtpSender("127.0.0.1", port, timeout=5.0, local_hostname="delaywatch.test")
        run = asyncio.ensure_future(drain(outbox, customers, sender, composer=composer,
                                          now_fn=clock, quiet_hours=None))
        while not any(maildir.glob("new/*")):
            await asyncio.sleep(0.02)
        run.cancel()
        await asyncio.sleep(0.1)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await asyncio.sleep(0.1)
        left = [t for t in asyncio.all_tasks()
                if t is not asyncio.current_task() and not t.done()]
        assert left == []
    assert {r.status for r in outbox.rows()} == {"pending"}  # unanswered: it may go again
