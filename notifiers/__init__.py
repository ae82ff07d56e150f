"""notifiers: from "an alert exists" to "the customer's mail server accepted exactly one e-mail".

The flow enqueues alerts into the durable :class:`Outbox` (unique per alert key); a sender
process runs :func:`drain` (or :func:`drain_forever`), which builds each message with a
:class:`MessageComposer` and delivers it through an :class:`SmtpSender`. This package knows
alerts (plain dicts with the keys of the Alert contract in docs/schemas.md) and customers; it
knows nothing about Bytewax or the command line.
"""

from notifiers.customers import Customer, load_customers
from notifiers.email import (
    DEFAULT_QUIET_HOURS,
    DeliveryReport,
    DrainReport,
    Refusal,
    SmtpSender,
    drain,
    drain_forever,
)
from notifiers.errors import (
    ConnectFailedError,
    ConnectTimeoutError,
    CustomerTableError,
    DeliveryError,
    DeliveryTimeoutError,
    InvalidRecipientError,
    MessageBuildError,
    NotifierError,
    PermanentDeliveryError,
    RelayError,
    TransientDeliveryError,
)
from notifiers.message import MessageComposer
from notifiers.metrics import NotifierMetrics, OutboxCollector, make_notifier_metrics
from notifiers.outbox import EnqueueResult, Outbox, OutboxRow
from notifiers.policy import QuietHours, backoff_delay
from notifiers.unsubscribe import make_token, verify_unsubscribe_token

__all__ = [
    "DEFAULT_QUIET_HOURS",
    "ConnectFailedError",
    "ConnectTimeoutError",
    "Customer",
    "CustomerTableError",
    "DeliveryError",
    "DeliveryReport",
    "DeliveryTimeoutError",
    "DrainReport",
    "EnqueueResult",
    "InvalidRecipientError",
    "MessageBuildError",
    "MessageComposer",
    "NotifierError",
    "NotifierMetrics",
    "OutboxCollector",
    "Outbox",
    "OutboxRow",
    "PermanentDeliveryError",
    "QuietHours",
    "Refusal",
    "RelayError",
    "SmtpSender",
    "TransientDeliveryError",
    "backoff_delay",
    "drain",
    "drain_forever",
    "load_customers",
    "make_notifier_metrics",
    "make_token",
    "verify_unsubscribe_token",
]
