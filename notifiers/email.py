"""Sending e-mail over SMTP (aiosmtplib) and draining the outbox into it.

:class:`SmtpSender` wraps one reusable aiosmtplib connection: ``async with sender:`` keeps it
open for a batch, :meth:`SmtpSender.send` (re)connects when needed and turns every SMTP outcome
into a :class:`DeliveryReport` or one of the errors in :mod:`notifiers.errors`.

:func:`drain` moves due outbox rows to the SMTP server. Delivery guarantee: at-least-once per
alert key, recorded only after the server accepted the message. A drain cancelled (Ctrl-C,
SIGTERM) while a message is out carries it to its answer and records it, then stops. A
duplicate (with the same Message-ID) needs a kill between the server's acceptance and
``mark_sent`` (the row's lease then runs out and it is sent again), or a relay that took the
message and never answered its end within ``data_timeout`` (10 minutes; it is sent again
after ``backoff_max``, not sooner).
Nothing is dropped: every claimed
row ends ``sent``, ``failed_permanent`` (with its code), ``suppressed``, or goes back to
``pending``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import unquote

import aiosmtplib

from notifiers.customers import Customer
from notifiers.errors import (
    CONNECTION_LOST_CODE,
    ConnectFailedError,
    ConnectTimeoutError,
    DeliveryTimeoutError,
    InvalidRecipientError,
    MessageBuildError,
    PermanentDeliveryError,
    RelayError,
    TransientDeliveryError,
    UnconfirmedDeliveryError,
    redact,
)
from notifiers.grouping import customer_digest
from notifiers.message import MessageComposer
from notifiers.metrics import NotifierMetrics
from notifiers.outbox import Outbox, OutboxRow
from notifiers.policy import QuietHours, backoff_delay

__all__ = [
    "DEFAULT_QUIET_HOURS",
    "DeliveryReport",
    "DrainReport",
    "Refusal",
    "SmtpSender",
    "drain",
    "drain_forever",
]

log = logging.getLogger(__name__)

DEFAULT_QUIET_HOURS = QuietHours()
NO_CUSTOMER_CODE = 550  # recipient_ref not in the customer table ("no such user")


@dataclass(frozen=True, slots=True)
class Refusal:
    code: int
    message: str  # redacted server text


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What the server said about one message.

    ``accepted`` and ``refused`` are keyed by address; they are hidden from ``repr`` so a
    report can be logged without personal data.
    """

    alert_key: str | None
    message_id: str | None
    accepted: tuple[str, ...] = field(repr=False)
    refused: Mapping[str, Refusal] = field(repr=False)
    response: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.accepted) and not self.refused

    def __repr__(self) -> str:
        codes = sorted(r.code for r in self.refused.values())
        return (
            f"DeliveryReport(alert_key={self.alert_key!r}, message_id={self.message_id!r}, "
            f"accepted={len(self.accepted)}, refused_codes={codes})"
        )


def _alert_key_of(message: EmailMessage) -> str | None:
    value = message.get("X-Delaywatch-Alert-Key")
    return unquote(str(value)) if value is not None else None


class _NoReplyToData(Exception):
    """DATA timed out (``timed_out``) or lost its connection: the relay may have the
    message."""

    def __init__(self, *, timed_out: bool) -> None:
        super().__init__()
        self.timed_out = timed_out


class _Smtp(aiosmtplib.SMTP):
    """aiosmtplib's client, with its own wait for DATA's replies (RFC 5321 4.5.3.2: a client
    waits 10 minutes for the reply to the message's end, as relays may check the message
    before they answer) and a DATA that got no reply told from a refusal."""

    def __init__(self, *args: Any, data_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_timeout = data_timeout

    async def data(self, message: str | bytes, /, *, timeout: Any = None) -> Any:
        try:
            return await super().data(message, timeout=self.data_timeout)
        except (aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected) as exc:
            raise _NoReplyToData(
                timed_out=isinstance(exc, aiosmtplib.SMTPTimeoutError)) from None


class SmtpSender:
    """An SMTP client for one relay, reusing its connection across messages.

    >>> sender = SmtpSender("127.0.0.1", 2525, timeout=10.0)
    >>> sender
    SmtpSender(hostname='127.0.0.1', port=2525)
    >>> sender.longest_send()  # 10 commands at 10 s, the message's end at 600 s
    700.0

    Use ``async with sender:`` around a batch; the connection is opened on the first
    :meth:`send`, reopened after a disconnect and closed (QUIT) when the outermost ``async
    with`` ends. ``timeout`` is the wait for each command's reply; ``data_timeout`` the wait
    for DATA's, the last one of which comes only once the relay has taken (and perhaps
    checked) the message: RFC 5321's 10 minutes. A DATA that gets no reply raises
    :class:`~notifiers.errors.UnconfirmedDeliveryError`: the message may have arrived.
    """

    def __init__(
        self,
        hostname: str = "localhost",
        port: int = 25,
        *,
        timeout: float = 30.0,
        data_timeout: float = 600.0,
        local_hostname: str | None = None,
        use_tls: bool = False,
        start_tls: bool | None = None,
        username: str | None = None,
        password: str | None = None,
        validate_certs: bool = True,
    ) -> None:
        self.hostname = hostname
        self.port = port
        self.timeout = timeout
        self.data_timeout = data_timeout
        self._options: dict[str, Any] = {
            "local_hostname": local_hostname,
            "use_tls": use_tls,
            "start_tls": start_tls,
            "username": username,
            "password": password,
            "validate_certs": validate_certs,
        }
        self._smtp: aiosmtplib.SMTP | None = None
        self._depth = 0

    def __repr__(self) -> str:
        return f"SmtpSender(hostname={self.hostname!r}, port={self.port!r})"

    def longest_send(self, timeout: float | None = None) -> float:
        """Seconds one :meth:`send` can take at most, on a new connection: connect and
        greeting, EHLO, STARTTLS, EHLO, AUTH (two), MAIL, RCPT, a reconnect's QUIT and an
        RSET at ``timeout`` each (None: the sender's), DATA at ``data_timeout``. A message's
        lease must outlast it, or another sender could take the row mid-send."""
        timeout = self.timeout if timeout is None else timeout
        return 10 * timeout + max(self.data_timeout, timeout)

    @property
    def is_connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def __aenter__(self) -> SmtpSender:
        self._depth += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth <= 0:
            self._depth = 0
            await self.aclose()

    async def connect(self, *, timeout: float | None = None) -> None:
        """Open the connection if it is not open. Raises :class:`RelayError` subclasses."""
        if self.is_connected:
            return
        self._drop()
        timeout = self.timeout if timeout is None else timeout
        smtp = _Smtp(
            hostname=self.hostname, port=self.port, timeout=timeout,
            data_timeout=max(self.data_timeout, timeout), **self._options
        )
        try:
            await smtp.connect()
        except aiosmtplib.SMTPConnectTimeoutError:
            raise ConnectTimeoutError(
                step="connect", server_message=f"no answer from {self.hostname}:{self.port} "
                                               f"within {timeout:g} s") from None
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise ConnectFailedError(exc.code, step="connect", server_message=exc.message) from None
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected,
                OSError) as exc:
            # no reply at all: 451 for the retry rules; the text says where and why
            raise ConnectFailedError(
                CONNECTION_LOST_CODE, step="connect", replied=False,
                server_message=f"no connection to {self.hostname}:{self.port}: "
                               f"{_why(exc)}",
            ) from None
        except aiosmtplib.SMTPTimeoutError:
            raise ConnectTimeoutError(step="connect", server_message="timed out") from None
        except aiosmtplib.SMTPResponseException as exc:  # STARTTLS / AUTH refused
            raise RelayError(exc.code, step="connect", server_message=exc.message) from None
        except aiosmtplib.SMTPException:
            raise RelayError(
                CONNECTION_LOST_CODE, step="connect", server_message="session setup failed"
            ) from None
        self._smtp = smtp

    def _drop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
        self._smtp = None

    async def aclose(self) -> None:
        """QUIT and close (errors while quitting are ignored)."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if smtp.is_connected:
                await smtp.quit(timeout=min(self.timeout, 5.0))
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        finally:
            smtp.close()

    async def send(
        self, message: EmailMessage, /, *, timeout: float | None = None
    ) -> DeliveryReport:
        """Send ``message`` to the addresses in its To header (``timeout``: seconds per SMTP
        command; None: the sender's ``timeout``).

        Returns a :class:`DeliveryReport` (with per-recipient refusals if only some were
        refused). Raises :class:`TransientDeliveryError` (4xx; a lost connection counts as 451;
        :class:`DeliveryTimeoutError` on a timeout), :class:`PermanentDeliveryError` (5xx to
        the recipients or the data) or :class:`RelayError` (the relay refused the session or
        the sender; no message was judged).
        """
        key = _alert_key_of(message)
        from_header = message.get("From")
        to_header = message.get("To")
        if from_header is None or to_header is None:
            raise ValueError(f"send {key}: message needs From and To headers")
        sender = from_header.addresses[0].addr_spec
        recipients = [a.addr_spec for a in to_header.addresses]
        if timeout is None:
            timeout = self.timeout
        await self.connect(timeout=timeout)
        assert self._smtp is not None
        try:
            errors, response = await self._smtp.send_message(
                message, sender=sender, recipients=recipients, timeout=timeout
            )
        except _NoReplyToData as exc:
            self._drop()
            raise UnconfirmedDeliveryError(
                CONNECTION_LOST_CODE, step="data", alert_key=key,
                server_message=("no reply to the message's end" if exc.timed_out
                                else "connection lost in DATA"),
            ) from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refusals = exc.recipients
            transient = [r for r in refusals if 400 <= r.code < 500]
            first = (transient or refusals)[0]
            cls = TransientDeliveryError if transient else PermanentDeliveryError
            if first.code < 400:  # nonsense reply: retry rather than lose
                cls = TransientDeliveryError
            self._drop_if_disconnected()
            raise cls(
                first.code,
                step="rcpt",
                alert_key=key,
                server_message=redact(first.message, *recipients),
            ) from None
        except aiosmtplib.SMTPSenderRefused as exc:
            self._drop_if_disconnected()
            raise RelayError(
                exc.code, step="mail", alert_key=key, server_message=redact(exc.message, sender)
            ) from None
        except (aiosmtplib.SMTPHeloError, aiosmtplib.SMTPAuthenticationError) as exc:
            self._drop()
            raise RelayError(exc.code, step="ehlo", alert_key=key) from None
        except aiosmtplib.SMTPResponseException as exc:  # SMTPDataError and the like
            self._drop_if_disconnected()
            cls = PermanentDeliveryError if exc.code >= 500 else TransientDeliveryError
            raise cls(
                exc.code,
                step="data",
                alert_key=key,
                server_message=redact(exc.message, *recipients),
            ) from None
        except aiosmtplib.SMTPTimeoutError:
            self._drop()
            raise DeliveryTimeoutError(step="send", alert_key=key) from None
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError, OSError):
            self._drop()
            raise TransientDeliveryError(
                CONNECTION_LOST_CODE, step="send", alert_key=key, server_message="connection lost"
            ) from None
        except aiosmtplib.SMTPNotSupported:  # e.g. a non-ASCII address and no SMTPUTF8
            raise PermanentDeliveryError(
                553, step="encode", alert_key=key, server_message="SMTPUTF8 not supported"
            ) from None
        except ValueError:  # aiosmtplib refused to put the address on the wire
            raise PermanentDeliveryError(
                553, step="encode", alert_key=key, server_message="address not sendable"
            ) from None
        refused = {
            addr: Refusal(resp.code, redact(resp.message, *recipients))
            for addr, resp in errors.items()
        }
        return DeliveryReport(
            alert_key=key,
            message_id=str(message.get("Message-ID") or "") or None,
            accepted=tuple(r for r in recipients if r not in errors),
            refused=refused,
            response=redact(response, *recipients),
        )

    def _drop_if_disconnected(self) -> None:
        if self._smtp is not None and not self._smtp.is_connected:
            self._drop()


# -- the drain loop --------------------------------------------------------------------------


@dataclass(slots=True)
class DrainReport:
    """Counts of what one :func:`drain` did (no personal data; safe to log)."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed_transient: int = 0  # retries exhausted
    failed_permanent: int = 0  # 5xx, unknown customer, unusable address
    suppressed: int = 0  # skipped: recipient suppressed during this drain
    deferred: int = 0  # quiet hours
    released: int = 0  # put back untouched (relay unreachable, or drain interrupted)
    held: int = 0  # put back: an earlier message to the same customer has not gone yet
    customer_row_bad: int = 0  # put back: the customer's row in the table is unusable
    customer_unknown: int = 0  # put back: not in the table (yet), for up to ``unknown_wait``
    lease_lost: int = 0  # not sent: its lease ran out and another sender took it
    unconfirmed: int = 0  # sent, no reply to its end: maybe delivered; again after a long wait
    superseded: int = 0  # a delay message not sent: its all-clear was queued before it could go
    # the relay's reply code when it refused us, 451 when it could not be reached (no reply)
    relay_error_code: int | None = None
    relay_error: str | None = None  # what went wrong with the relay, e.g. "no connection to
    # smtp.example.org:587: Connection refused" (no personal data)

    #: the fields that are no counts (the relay's state): not added by :meth:`add`
    NOT_COUNTS: ClassVar[frozenset[str]] = frozenset({"relay_error_code", "relay_error"})

    def add(self, other: DrainReport) -> None:
        """Add ``other``'s counts (a later drain's) to these. The relay error is the relay's
        state as the last drain that met it left it: ``other``'s error if it had one; none
        once the relay answered ``other`` about a message (accepted it, deferred it with a
        4xx, or took it without confirming: it is back); else the one kept.

        >>> total = DrainReport(released=3, relay_error_code=451, relay_error="timed out")
        >>> total.add(DrainReport(released=3))  # nothing was due: the relay not tried
        >>> total.released, total.relay_error_code
        (6, 451)
        >>> total.add(DrainReport(claimed=3, sent=3))
        >>> total.sent, total.released, total.relay_error_code, total.relay_error
        (3, 6, None, None)
        >>> total.add(DrainReport(released=1, relay_error_code=421, relay_error="busy"))
        >>> total.add(DrainReport(claimed=1, retried=1))  # a 4xx for one message: it answers
        >>> total.relay_error_code, total.retried
        (None, 1)
        """
        for f in fields(self):
            if f.name not in self.NOT_COUNTS:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        if other.relay_error_code is not None or other.sent or other.retried or \
                other.unconfirmed:
            self.relay_error_code, self.relay_error = other.relay_error_code, other.relay_error


def _why(exc: BaseException) -> str:
    """An OS or aiosmtplib error's reason, without its host or any address."""
    for error in (exc, exc.__cause__, exc.__context__):  # (aiosmtplib wraps the OS error)
        number = getattr(error, "errno", None)
        if isinstance(number, int) and number > 0:  # asyncio's text repeats the address
            return os.strerror(number)
    reason = (getattr(exc, "strerror", None) or getattr(exc.__cause__, "strerror", None)
              or getattr(exc, "message", None) or "")
    return redact(str(reason)) or type(exc).__name__


class _RelayDown(Exception):
    def __init__(self, error: RelayError) -> None:
        super().__init__(str(error))
        self.error = error


def _utcnow() -> datetime:
    return datetime.now(tz=UTC)


async def drain(
    outbox: Outbox,
    customers: Mapping[str, Customer],
    sender: SmtpSender,
    *,
    composer: MessageComposer,
    now_fn: Callable[[], datetime],
    batch: int = 100,
    max_attempts: int = 8,
    backoff_base: float = 30.0,
    backoff_max: float = 3600.0,
    quiet_hours: QuietHours | None = DEFAULT_QUIET_HOURS,
    relay_retry: float | None = None,
    timeout: float | None = None,
    lease: float = 300.0,
    metrics: NotifierMetrics | None = None,
    unusable: Container[str] = (),
    hold_unknown: bool = False,
    unknown_wait: float = 43200.0,
    dated: Callable[[OutboxRow], datetime] | None = None,
) -> DrainReport:
    """Send every outbox row that is due now; return what happened.

    For each claimed row: a ``recipient_ref`` missing from ``customers`` waits (back to
    pending for ``backoff_base`` seconds, no attempt counted, ``customer_unknown``) until
    ``unknown_wait`` seconds after the row was made (a customer export that lags the feed),
    then fails the row (550); an unusable address fails it (553); in quiet hours
    (recipient's zone) the row is deferred to their end without counting an attempt;
    otherwise the message is built and sent. Accepted: ``mark_sent``
    (after acceptance). 4xx, lost connection, timeout: retry after
    :func:`~notifiers.policy.backoff_delay` (no reply to the message's end, which it may
    have taken: after ``backoff_max`` at the soonest; counted ``unconfirmed``), and after
    ``max_attempts`` attempts
    ``failed_permanent`` with the last code. 5xx: ``failed_permanent``, and on a bounce
    (550/551/553 to RCPT TO, not a 5.7.x policy refusal: ``PermanentDeliveryError.bounce``)
    the recipient is suppressed. If the relay itself cannot be reached or refuses the
    session, the rest of the batch goes back to ``pending`` for ``relay_retry`` seconds
    (default ``backoff_base``) without counting attempts, so an outage never uses up a
    message's attempts.

    Rows that become due while the drain runs wait for the next call. Messages to customers
    in ``unusable`` (their row in the customer table is bad: ``load_customers(bad=...)``),
    and with ``hold_unknown`` those to customers missing from the table (a row that lost its
    recipient_ref is someone's), go back to pending for ``backoff_base`` seconds without an
    attempt: they go once the table is mended, and everyone else's go now. A message that
    cannot be built (an edited template that fails) fails its row with 554, and the rest go.
    ``timeout``: seconds per SMTP command; None: the sender's own (``smtp.timeout_seconds``).
    A row is claimed for ``lease`` seconds and renewed, when its turn comes, for as long as
    its send can take (``SmtpSender.longest_send``, if longer), so no other sender takes it
    mid-send.

    A message is dated, and says what is still ahead (its estimate), as of ``now_fn()``, or
    of ``dated(row)`` when given: the demo, replaying the past, dates each message when the
    live service would have sent it (its alert time).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    cutoff = now_fn()
    send_lease = max(lease, sender.longest_send(timeout))  # (a row is renewed to it to go)
    report = DrainReport()
    stopping: list[bool] = []  # cancelled while a message was out (see _answered)
    suppressed_now: set[str] = set()
    async with sender:
        relay_down = False
        while not relay_down:
            # Due as of the start; leased from now (a long drain must not hand out stale leases).
            elapsed = max(0.0, (now_fn() - cutoff).total_seconds())
            rows = outbox.claim_due(cutoff, batch, lease=lease + elapsed)
            if not rows:
                break
            report.claimed += len(rows)
            unfinished = {row.alert_key: row for row in rows}
            retry_at = now_fn()
            waiting: dict[str, str] = {}  # customer -> their message not sent in this batch
            try:
                for row in rows:
                    ref = row.recipient_ref
                    if ref in unusable or hold_unknown and ref not in customers:
                        report.customer_row_bad += outbox.release(  # until the table is mended
                            [row], now_fn() + timedelta(seconds=backoff_base))
                        del unfinished[row.alert_key]
                        continue
                    if ref not in customers and (
                            now_fn() - row.created_at).total_seconds() < unknown_wait:
                        report.customer_unknown += outbox.release(  # the table may catch up
                            [row], now_fn() + timedelta(seconds=backoff_base))
                        del unfinished[row.alert_key]
                        continue
                    earlier = waiting.get(row.recipient_ref)
                    if earlier is not None:  # keep the customer's messages in order
                        before = outbox.get(earlier)
                        report.held += outbox.release(
                            [row], before.next_attempt_at if before else retry_at)
                        del unfinished[row.alert_key]
                        continue
                    renewed = outbox.renew(row, now_fn(), lease=send_lease)
                    if renewed is not None:
                        unfinished[row.alert_key] = renewed  # (its token, if put back)
                    else:
                        del unfinished[row.alert_key]
                        now_row = outbox.get(row.alert_key)
                        if now_row is not None and now_row.status == "suppressed":
                            report.suppressed += 1  # unsubscribed (or bounced) meanwhile
                            continue
                        # the batch outlasted its lease: the row is another sender's now
                        log.warning("drain: alert %s: lease ran out and another sender took "
                                    "it; not sent here", row.alert_key)
                        report.lease_lost += 1
                        continue
                    pending = report.retried + report.deferred
                    await _deliver(
                        row,
                        outbox=outbox,
                        customers=customers,
                        sender=sender,
                        composer=composer,
                        now_fn=now_fn,
                        dated=dated,
                        max_attempts=max_attempts,
                        backoff_base=backoff_base,
                        backoff_max=backoff_max,
                        quiet_hours=quiet_hours,
                        timeout=timeout,
                        metrics=metrics,
                        report=report,
                        suppressed_now=suppressed_now,
                        stopping=stopping,
                    )
                    del unfinished[row.alert_key]
                    if stopping:  # cancelled while it was sent: it is recorded, now stop
                        raise asyncio.CancelledError
                    if report.retried + report.deferred != pending:  # still to go
                        waiting[row.recipient_ref] = row.alert_key
            except _RelayDown as down:
                relay_down = True
                report.relay_error_code = down.error.code
                report.relay_error = str(down.error)
                retry_at = now_fn() + timedelta(
                    seconds=backoff_base if relay_retry is None else relay_retry
                )
                log.warning(
                    "drain: relay unavailable (%s); %d message(s) back to pending",
                    down.error,
                    len(unfinished),
                )
            finally:
                if unfinished:  # relay down, or an exception / cancellation mid-batch
                    report.released += outbox.release(
                        unfinished.values(), retry_at, code=report.relay_error_code
                    )
    if stopping:  # (the relay went down as the message in flight was answered)
        raise asyncio.CancelledError
    if metrics is not None:
        metrics.observe_outbox(outbox, now_fn())
    return report


async def _answered(send: Awaitable[DeliveryReport], stopping: list[bool]) -> DeliveryReport:
    """``send``, carried to its answer even if the drain is cancelled meanwhile (Ctrl-C,
    SIGTERM): the relay may be taking the message, and put back unanswered it would go
    twice. Then ``stopping`` says so, and the drain stops once the answer is recorded (a
    second cancellation stops at once)."""
    task = asyncio.ensure_future(send)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.cancelled():
            raise
        stopping.append(True)
        if not task.done():
            log.warning("drain: stopping once the message being sent has its answer")
            try:
                await asyncio.wait([task])
            except asyncio.CancelledError:  # stopped again: at once, the send with it
                task.cancel()
                raise
        return task.result()


async def _deliver(
    row: OutboxRow,
    *,
    outbox: Outbox,
    customers: Mapping[str, Customer],
    sender: SmtpSender,
    composer: MessageComposer,
    now_fn: Callable[[], datetime],
    dated: Callable[[OutboxRow], datetime] | None,
    max_attempts: int,
    backoff_base: float,
    backoff_max: float,
    quiet_hours: QuietHours | None,
    timeout: float | None,
    metrics: NotifierMetrics | None,
    report: DrainReport,
    suppressed_now: set[str],
    stopping: list[bool],
) -> None:
    key = row.alert_key
    if row.recipient_ref in suppressed_now or outbox.is_suppressed(row.recipient_ref):
        # Bounced earlier in this batch, or unsubscribed since the claim: the suppression
        # already set this row to ``suppressed``.
        report.suppressed += 1
        return
    customer = customers.get(row.recipient_ref)
    if customer is None:
        log.error("drain: alert %s: customer %s (digest of its recipient_ref) not in the "
                  "customer table, also after waiting for it", key,
                  customer_digest(row.recipient_ref))
        outbox.mark_failed(key, NO_CUSTOMER_CODE)
        _count_failure(metrics, "permanent")
        report.failed_permanent += 1
        return
    now = now_fn()
    if quiet_hours is not None:
        allowed = quiet_hours.next_allowed(now, customer.tz)
        if allowed > now:
            outbox.defer(key, allowed)
            report.deferred += 1
            log.debug("drain: alert %s deferred to end of quiet hours", key)
            return
    when = now if dated is None else dated(row)
    if _answered_by_all_clear(outbox, row, when):
        # held (quiet hours, a relay down) until the package moved again: "running late"
        # and "moving again" in the same minute; the all-clear alone says both
        outbox.supersede(key)
        report.superseded += 1
        if metrics is not None:
            metrics.superseded.inc()
        log.info("drain: alert %s superseded by its all-clear, not sent", key)
        return
    try:
        message = composer.build(row.alert, customer, when=when)
    except InvalidRecipientError as exc:
        log.error("drain: alert %s: unusable recipient address (%s)", key, exc.code)
        outbox.mark_failed(key, exc.code)
        _count_failure(metrics, "permanent")
        report.failed_permanent += 1
        return
    except MessageBuildError as exc:
        log.error("drain: alert %s: cannot build message: %s", key, exc)
        outbox.mark_failed(key, 554)
        _count_failure(metrics, "permanent")
        report.failed_permanent += 1
        return

    try:
        await _answered(sender.send(message, timeout=timeout), stopping)
    except RelayError as exc:
        raise _RelayDown(exc) from None
    except PermanentDeliveryError as exc:
        _count_attempt(metrics)
        outbox.mark_failed(key, exc.code, suppress_recipient=exc.bounce)
        _count_failure(metrics, "permanent")
        report.failed_permanent += 1
        if exc.bounce:
            suppressed_now.add(row.recipient_ref)
            log.warning("drain: %s; customer %s (digest of its recipient_ref) suppressed",
                        exc, customer_digest(row.recipient_ref))
        else:  # the relay's or our side: this message fails, the customer stays
            log.error("drain: %s; not a bounce: customer %s (digest of its recipient_ref) "
                      "not suppressed", exc, customer_digest(row.recipient_ref))
        return
    except TransientDeliveryError as exc:
        _count_attempt(metrics)
        attempts = row.attempts + 1
        if attempts >= max_attempts:
            outbox.mark_failed(key, exc.code)
            _count_failure(metrics, "transient")
            report.failed_transient += 1
            log.error("drain: %s; giving up after %d attempts", exc, attempts)
        else:
            delay = backoff_delay(key, attempts, base=backoff_base, cap=backoff_max)
            if isinstance(exc, UnconfirmedDeliveryError):  # not again soon: it may be there
                delay = max(delay, backoff_max)
            outbox.mark_retry(key, exc.code, now_fn() + timedelta(seconds=delay))
            report.retried += 1
            log.info("drain: %s; attempt %d, retry in %.0f s", exc, attempts, delay)
        if isinstance(exc, UnconfirmedDeliveryError):
            report.unconfirmed += 1
            if metrics is not None:
                metrics.unconfirmed.inc()
            log.warning("drain: alert %s: the relay did not confirm the message; it may have "
                        "been delivered (a later copy has the same Message-ID)", key)
        return
    # Accepted by the server. Record it now: a stop between here and the commit is the one
    # window in which the message can be sent twice.
    _count_attempt(metrics)
    outbox.mark_sent(key, now_fn())
    if metrics is not None:
        metrics.sent.inc()
    report.sent += 1
    log.debug("drain: alert %s sent", key)


def _answered_by_all_clear(outbox: Outbox, row: OutboxRow, when: datetime) -> bool:
    """A delay message whose package's all-clear is queued, decided by ``when`` (a replay
    sent at once, dated as live, :func:`drain`'s ``dated``, is not: live, each went in
    its turn)."""
    clear = _all_clear_key(row.alert_key, row.kind)
    answer = None if clear is None else outbox.get(clear)
    if answer is None:
        return False
    decided = alert_time(answer)
    return decided is None or decided <= when  # (undated: it is there, so decided by now)


def alert_time(row: OutboxRow) -> datetime | None:
    """When an outbox row's message was decided (its ``alert_time``, aware; naive: UTC), or
    None if it has none that reads as a time."""
    try:
        at = datetime.fromisoformat(str(row.alert.get("alert_time")))
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _all_clear_key(key: str, kind: str) -> str | None:
    """The key of a delay message's all-clear (docs/schemas.md: a stall's
    ``package:back_on_track:episode``, an incident group's ``...:back_on_track``), or None.

    >>> _all_clear_key("P1:stall:2", "stall")
    'P1:back_on_track:2'
    >>> _all_clear_key("I:ab12:incident_delay", "incident_delay")
    'I:ab12:back_on_track'
    """
    if kind not in ("stall", "incident_delay"):
        return None
    head, found, tail = key.rpartition(f":{kind}")
    return f"{head}:back_on_track{tail}" if found else None


def _count_attempt(metrics: NotifierMetrics | None) -> None:
    if metrics is not None:
        metrics.attempts.inc()


def _count_failure(metrics: NotifierMetrics | None, reason: str) -> None:
    if metrics is not None:
        metrics.failed.labels(reason=reason).inc()


async def drain_forever(
    outbox: Outbox,
    customers: Mapping[str, Customer],
    sender: SmtpSender,
    *,
    composer: MessageComposer,
    stop: asyncio.Event,
    now_fn: Callable[[], datetime] = _utcnow,
    poll_interval: float = 1.0,
    **options: Any,
) -> DrainReport:
    """Call :func:`drain` every ``poll_interval`` seconds until ``stop`` is set.

    ``options`` are passed to :func:`drain`. Returns the summed reports (their relay error:
    the relay's state at the end, see :meth:`DrainReport.add`).
    """
    total = DrainReport()
    while not stop.is_set():
        report = await drain(outbox, customers, sender, composer=composer, now_fn=now_fn, **options)
        total.add(report)
        if report.claimed:
            log.info("drain: %r", report)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=poll_interval)
    return total
