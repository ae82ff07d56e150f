"""Errors raised by the notifiers, modelled on aiosmtplib's hierarchy.

Every delivery error carries the SMTP reply ``.code`` it stands for and the ``.alert_key`` it
concerns. Messages name the step and the alert key, never an e-mail address or a person's name:
server replies are redacted before they are kept (:func:`redact`), and errors raised here are
never chained to the underlying aiosmtplib exception (whose text may hold the address).

Transient errors (4xx; connection loss counts as 451) mean "try this message again later";
permanent errors (5xx) mean "do not retry; suppress the recipient".

>>> err = TransientDeliveryError(451, step="send", alert_key="PKG-1:stall:1")
>>> str(err)
'send PKG-1:stall:1: SMTP 451'
>>> isinstance(DeliveryTimeoutError(step="send", alert_key="k"), TimeoutError)
True
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "ConnectFailedError",
    "ConnectTimeoutError",
    "CustomerTableError",
    "DeliveryError",
    "DeliveryTimeoutError",
    "InvalidRecipientError",
    "MessageBuildError",
    "NotifierError",
    "PermanentDeliveryError",
    "RelayError",
    "TransientDeliveryError",
    "UnconfirmedDeliveryError",
    "redact",
]

CONNECTION_LOST_CODE = 451

_POLICY = re.compile(r"\b5\.7\.\d{1,3}\b")  # enhanced status 5.7.x: security or policy
_ADDRESS_LIKE = re.compile(r"[^\s<>\"'(),;:\[\]]+@[^\s<>\"'(),;:\[\]]+")


def redact(text: str, *secrets: str) -> str:
    """Remove anything that looks like an e-mail address (and the given strings) from ``text``.

    >>> redact("550 5.1.1 <bob@example.com>: Recipient address rejected")
    '550 5.1.1 <[redacted]>: Recipient address rejected'
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _ADDRESS_LIKE.sub("[redacted]", text)


class NotifierError(Exception):
    """Base class of every error raised by the notifiers."""


class CustomerTableError(NotifierError):
    """The customer table is malformed (the message names the line and column, not the value)."""


class MessageBuildError(NotifierError):
    """An alert could not be turned into an e-mail."""

    def __init__(self, message: str, /, *, alert_key: str | None = None) -> None:
        super().__init__(message)
        self.alert_key = alert_key


class InvalidRecipientError(MessageBuildError):
    """The customer's address is not a usable addr-spec (treated like SMTP 553)."""

    code = 553


class DeliveryError(NotifierError):
    """An SMTP delivery did not succeed. ``.code`` is the SMTP reply code."""

    def __init__(
        self,
        code: int,
        /,
        *,
        step: str,
        alert_key: str | None = None,
        server_message: str = "",
    ) -> None:
        self.code = code
        self.step = step
        self.alert_key = alert_key
        #: The server's reply text with anything address-like removed.
        self.server_message = redact(server_message)
        text = f"{step} {alert_key or '-'}: SMTP {code}"
        if self.server_message:
            text += f" ({self.server_message})"
        super().__init__(text)


class TransientDeliveryError(DeliveryError):
    """4xx reply, or the connection was lost mid-transaction (451): retry later."""


class PermanentDeliveryError(DeliveryError):
    """5xx reply to the recipient or the message: do not retry. The recipient is suppressed
    only on a :attr:`bounce`.

    >>> PermanentDeliveryError(550, step="rcpt", server_message="5.1.1 no such user").bounce
    True
    >>> PermanentDeliveryError(554, step="rcpt", server_message="5.7.1 Relay access denied").bounce
    False
    """

    @property
    def bounce(self) -> bool:
        """The server said this mailbox does not take mail (550, 551 or 553 to RCPT TO, not
        a 5.7.x policy refusal): a relay that refuses everyone (554 "relay access denied"),
        a refused message body (DATA) or an address we could not put on the wire is not the
        recipient's doing, and suppressing would silence every customer it hits."""
        return (self.step == "rcpt" and self.code in (550, 551, 553)
                and not _POLICY.search(self.server_message))


class DeliveryTimeoutError(TransientDeliveryError, TimeoutError):
    """The server did not answer in time (counts as 451)."""

    def __init__(
        self,
        code: int = CONNECTION_LOST_CODE,
        /,
        *,
        step: str,
        alert_key: str | None = None,
        server_message: str = "timed out",
    ) -> None:
        super().__init__(code, step=step, alert_key=alert_key, server_message=server_message)


class UnconfirmedDeliveryError(TransientDeliveryError):
    """The message went to the relay but it never said whether it took it: no reply to the
    message's end within ``data_timeout``, or the connection dropped in DATA (counts as 451).
    It may have been delivered (RFC 1047), so it is sent again only after a long back-off,
    with the same Message-ID."""


class RelayError(TransientDeliveryError):
    """The relay refused *us* (greeting, EHLO, STARTTLS, AUTH, MAIL FROM), not the recipient.

    Whatever its code, the message itself was not judged, so it is not counted as an attempt
    and nobody is suppressed; the batch is put back and tried later. ``.code`` keeps the reply.
    """


class ConnectFailedError(RelayError, ConnectionError):
    """The relay could not be reached at all (refused, unreachable, dropped the greeting).

    ``replied=False``: no SMTP reply came at all (``.code`` 451 only for the retry rules),
    and the text says so instead of naming a code the relay never sent:

    >>> str(ConnectFailedError(451, step="connect", replied=False,
    ...                        server_message="no connection to relay.test:25: Connection refused"))
    'connect: no connection to relay.test:25: Connection refused (no SMTP reply; retried later)'
    """

    def __init__(self, code: int, /, *, replied: bool = True, **kwargs: Any) -> None:
        super().__init__(code, **kwargs)
        self.replied = replied
        if not replied:
            self.args = (f"{self.step}: {self.server_message} (no SMTP reply; retried later)",)


class ConnectTimeoutError(ConnectFailedError, DeliveryTimeoutError):
    """Connecting to the relay timed out."""

    def __init__(self, code: int = CONNECTION_LOST_CODE, /, **kwargs: Any) -> None:
        kwargs.setdefault("server_message", "timed out")
        super().__init__(code, replied=False, **kwargs)
