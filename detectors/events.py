"""The native scan event: model, USPS code tables and a fast validating parser.

The wire format is the one of ``docs/schemas.md`` (one JSON object per line). :func:`parse_line`
turns one line into a :class:`ScanEvent` or an :class:`Invalid` (a dead letter with a stable
``reason`` code); it never raises. :func:`parse_batch` does the same for a batch of lines and is
the one the flow should call.

How it is fast: msgspec decodes each line straight into a typed struct, checking types, required
fields, string lengths, the scan code (a ``Literal``) and RFC 3339 timestamps with an offset in C.
What is left to Python is a few comparisons and two ``datetime.timestamp()`` calls per event.
Regular expressions are avoided on the hot path (a msgspec ``pattern`` costs ~1 us per field);
the character-set checks use ``str`` methods instead. Lines are decoded one by one, not with
``Decoder.decode_lines``: that one treats the buffer as a whitespace-separated stream, so a value
spread over two lines, or a blank line, would shift every later line's number and let malformed
lines through as one valid event.

Throughput, measured with ``python -c 'from detectors.events import _bench; _bench()'``
(200 000 synthetic lines, 10 % of them first events carrying the header, 1 % invalid; CPU time,
median of 5; 2-core CI-class AMD EPYC VM, CPython 3.11.7, msgspec 0.22, while other jobs kept
both cores busy)::

    parse_batch: 200000 lines in 0.528 s = 379 K lines/s (2.64 us/line)

(five such runs: 2.3-3.2 us/line, 310-430 K lines/s).

Of that, msgspec's decoding is ~0.75 us and the two ``timestamp()`` calls ~0.6 us. An
alternative that converts timestamp strings with a cache of minutes was measured slower.
Since 2026-11-24 the times are decoded as text and each distinct text converted once (the
same strict decoder, remembered; see :func:`parse_batch`). Lines 0, 5 M and 15 M of the
simulator's national replay, 400 K lines each in the flow's batches of 2,000, where a batch's
events share their seconds as a busy feed's do: 2.8 / 2.0 / 1.7 us a line became 2.3 / 1.4 /
1.2 us. On the synthetic lines above, whose times never repeat, a batch drops the cache
after its first 200 lines: 2.1 us became 2.2-2.3 us (``_bench`` now parses in such batches).
One thing changed with it: a time key given twice counts with its last value, as any other
key does, and its earlier values are no longer checked when the last is strict RFC 3339
(msgspec checked every value of a ``datetime`` field). Lines with a key twice are not what a
feed sends; what matters is that a line's result never depends on the batch it comes in,
with or without the cache.

Timestamps: ``event_time``/``ingest_time``/``promised_by`` must carry a UTC offset (``Z`` or
``+hh:mm``); they become integer epoch seconds (UTC, fractions truncated). Strict RFC 3339 is
decoded in C; anything else (e.g. ``2024-11-22T18:58+01:00`` without seconds) is retried with
:meth:`datetime.datetime.fromisoformat`, which accepts the ISO 8601 forms Python knows.

Privacy: ``Invalid.detail`` never contains the value of ``recipient_ref`` or ``destination``,
holds no control characters and is at most 200 characters long.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, NamedTuple

import msgspec

__all__ = [
    "ARRIVAL_CODES",
    "CODES",
    "DEPARTURE_CODES",
    "REASONS",
    "STATUSES",
    "TERMINAL_CODES",
    "Code",
    "Invalid",
    "ScanEvent",
    "epoch_seconds",
    "iso_time",
    "parse_batch",
    "parse_line",
]

# --------------------------------------------------------------------------------------------
# Code tables (shared/reference/event-formats.md §1d)

STATUSES: Final = (
    "pending",
    "accepted",
    "in_transit",
    "arrived",
    "departed",
    "at_delivery_unit",
    "out_for_delivery",
    "delivered",
    "attempted",
    "exception",
    "returned",
)


class Code(NamedTuple):
    """A USPS scan code: its normalised status and its meaning."""

    status: str
    text: str


_CODE_ROWS: tuple[tuple[str, str, str], ...] = (
    # pre-shipment / label
    ("GX", "pending", "Shipping label created, USPS awaiting item"),
    ("MA", "pending", "Manifest acknowledgement"),
    ("89", "pending", "Merchant order receipt notification, USPS awaiting item"),
    ("TM", "pending", "Truck manifest, acceptance pending"),
    ("GC", "pending", "Return receipt associated"),
    # acceptance
    ("03", "accepted", "Accepted / USPS in possession of item"),
    ("OA", "accepted", "Origin acceptance"),
    ("UA", "accepted", "Accepted at USPS facility"),
    ("PA", "accepted", "Passive acceptance"),
    ("AD", "accepted", "Acceptance at destination"),
    ("43", "accepted", "Picked up"),
    ("80", "accepted", "Picked up by shipping partner"),
    ("83", "accepted", "Tendered to Postal Service"),
    # in transit / processing
    ("10", "arrived", "Arrived at USPS regional origin facility"),
    ("A1", "arrived", "Arrived at USPS regional facility"),
    ("19", "arrived", "DC eVS arrive"),
    ("81", "arrived", "Arrived at shipping-partner facility"),
    ("41", "arrived", "Received at opening unit"),
    ("SF", "departed", "Departed post office"),
    ("EF", "departed", "Departed sort facility"),
    ("T1", "departed", "Departed USPS regional facility"),
    ("82", "departed", "Departed shipping-partner facility"),
    ("42", "departed", "USPS handoff to shipping partner"),
    ("TL", "in_transit", "In transit to next facility"),
    ("06", "in_transit", "Forwarded"),
    ("08", "exception", "Missent"),
    ("15", "exception", "Mis-shipped"),
    # at delivery unit
    ("07", "at_delivery_unit", "Arrived at post office"),
    ("PC", "at_delivery_unit", "Sorting/processing complete"),
    ("14", "at_delivery_unit", "Arrival at pickup point"),
    ("16", "at_delivery_unit", "Available for pickup"),
    ("17", "at_delivery_unit", "Picked up by agent"),
    # out for delivery, delivered
    ("OF", "out_for_delivery", "Out for delivery"),
    ("01", "delivered", "Delivered"),
    # attempted
    ("02", "attempted", "Delivery attempted / notice left"),
    ("52", "attempted", "Notice left"),
    ("53", "attempted", "Receptacle blocked"),
    ("54", "attempted", "Receptacle full / item oversized"),
    ("55", "attempted", "No secure location available"),
    ("56", "attempted", "No authorized recipient available"),
    ("30", "attempted", "Delivery attempted, no access to delivery location"),
    ("51", "attempted", "Business closed"),
    # alerts / exceptions (not terminal)
    ("71", "exception", "Rescheduled to next delivery day"),
    ("DX", "exception", "Delivery status not updated"),
    ("04", "exception", "Refused"),
    ("05", "exception", "Undeliverable as addressed"),
    ("44", "exception", "Customer recall"),
    # return to sender / terminal exception
    ("09", "returned", "Return to sender"),
    ("21", "returned", "No such number"),
    ("22", "returned", "Insufficient address"),
    ("23", "returned", "Moved, left no address"),
    ("24", "returned", "Forward expired"),
    ("25", "returned", "Addressee unknown"),
    ("26", "returned", "Vacant"),
    ("27", "returned", "Unclaimed"),
    ("28", "returned", "Deceased"),
    ("29", "returned", "Other"),
    ("31", "returned", "Not picked up"),
    ("11", "returned", "Dead letter"),
)

#: Every scan code the parser accepts, with its normalised status and meaning.
CODES: Final[Mapping[str, Code]] = MappingProxyType(
    {code: Code(status, text) for code, status, text in _CODE_ROWS}
)

#: Codes after which a package is expected to scan no more (delivered, returned, undeliverable).
TERMINAL_CODES: Final[frozenset[str]] = frozenset(
    {"01", "09", "11", "31", *(str(n) for n in range(21, 30))}
)
#: Scans that say a package arrived at a facility, and that it left one (facility statistics).
ARRIVAL_CODES: Final[frozenset[str]] = frozenset({"10", "A1", "19", "81", "41", "07", "14"})
DEPARTURE_CODES: Final[frozenset[str]] = frozenset({"SF", "EF", "T1", "82", "42"})

# --------------------------------------------------------------------------------------------
# Model


class ScanEvent(msgspec.Struct, frozen=True, gc=False):
    """One scan of one package, validated; times are epoch seconds (UTC).

    The header fields (``service`` ... ``recipient_ref``) are set on a package's first event
    (``GX``) only and are ``None`` elsewhere.
    """

    package_id: str
    code: str
    facility: str | None
    event_ts: int
    ingest_ts: int
    service: str | None = None
    promised_date: str | None = None
    promised_by_ts: int | None = None
    destination: str | None = None
    recipient_ref: str | None = None

    @property
    def status(self) -> str:
        """The normalised status of ``code`` (one of :data:`STATUSES`)."""
        return CODES[self.code].status

    @property
    def terminal(self) -> bool:
        """True for a code after which no further scan is expected."""
        return self.code in TERMINAL_CODES


class Invalid(msgspec.Struct, frozen=True, gc=False):
    """A line that is not a valid scan event: a stable ``reason`` code and a safe ``detail``."""

    reason: str
    detail: str


REASONS: Final[frozenset[str]] = frozenset(
    {
        "bad_json",
        "not_an_object",
        "missing_field",
        "wrong_type",
        "unknown_code",
        "no_offset",
        "bad_time",
        "absurd_time",
        "bad_package_id",
        "bad_facility",
        "missing_facility",
        "bad_header",
    }
)

# --------------------------------------------------------------------------------------------
# Wire structs (field names as on the wire)

_MIN_TS: Final = 946_684_800  # 2000-01-01T00:00:00Z
_MAX_AHEAD: Final = 86_400  # event_time may lead ingest_time by at most a day (clock skew)
_MAX_LAG: Final = 90 * 86_400  # ingest_time may trail event_time by at most 90 days
_DETAIL_MAX: Final = 200

_Text = Annotated[str, msgspec.Meta(max_length=100)]
_PackageId = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
_Time = Annotated[dt.datetime, msgspec.Meta(tz=True)]
_EventCode = Literal[tuple(CODES)]  # type: ignore[valid-type]
_Service = Literal["express", "ground"]
_Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class _Wire(msgspec.Struct, gc=False):
    package_id: _PackageId
    event_code: _EventCode
    facility_id: _Text | None
    event_time: _Time
    ingest_time: _Time
    service: _Service | None = None
    promised_date: dt.date | None = None
    promised_by: _Time | None = None
    destination: _Text | None = None
    recipient_ref: _Ref | None = None


class _WireText(msgspec.Struct, gc=False):
    """:class:`_Wire` with the times as text, for the lenient ISO 8601 retry."""

    package_id: _PackageId
    event_code: _EventCode
    facility_id: _Text | None
    event_time: str
    ingest_time: str
    service: _Service | None = None
    promised_date: dt.date | None = None
    promised_by: str | None = None
    destination: _Text | None = None
    recipient_ref: _Ref | None = None


_DECODE = msgspec.json.Decoder(_Wire).decode
_DECODE_TEXT = msgspec.json.Decoder(_WireText).decode
_DECODE_TIME = msgspec.json.Decoder(_Time).decode
_ENCODE = msgspec.json.encode

# time text -> epoch seconds, for texts _Time accepts (parse_batch's cache; see _epoch):
# ~9 MB when full (65,536 texts of 32 characters, measured with tracemalloc)
_EPOCHS: dict[str, int] = {}
_EPOCHS_MAX: Final = 1 << 16
_ValidationError = msgspec.ValidationError
_DecodeError = msgspec.DecodeError
# what the fast paths leave to _parse_strict: msgspec raises UnicodeDecodeError (not a
# DecodeError) for bytes that are not UTF-8 inside a JSON string
_UNREADABLE = (_DecodeError, UnicodeError)

_HEADER: Final = frozenset(
    {"service", "promised_date", "promised_by", "destination", "recipient_ref"}
)
_PRIVATE: Final = frozenset({"recipient_ref", "destination"})
_TIMES: Final = frozenset({"event_time", "ingest_time", "promised_by"})


def _safe(text: str) -> str:
    """Printable, single-line, at most ``_DETAIL_MAX`` characters; the value msgspec quotes
    in an "Invalid enum value" shown only if it looks like a code or a time (:func:`_shown`).

    >>> _safe("Invalid enum value 'Jane Doe jane@example.com' - at `$.service`")
    'Invalid enum value (25 characters, not shown) - at `$.service`'
    """
    if "Invalid enum value " in text:  # msgspec quotes the value as Python's repr() does
        text = _ENUM_VALUE.sub(lambda m: f"Invalid enum value {_shown(m[1][1:-1])}", text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    if len(text) > _DETAIL_MAX:
        text = text[: _DETAIL_MAX - 3] + "..."
    return text


_CODE_LIKE = re.compile(r"[A-Za-z0-9]{1,4}")
# the value runs to msgspec's last " - at `$...`" (a value may hold that text itself)
_ENUM_VALUE = re.compile(r"Invalid enum value (.*?)(?= - at `\$[^`]*`$|$)", re.DOTALL)
# a time as a feed would write one: a year first (a phone number, "+1 555-123-4567", is not)
_TIME_LIKE = re.compile(r"[0-9]{4}-[0-9TtZz:+\-. ]{0,35}")


def _shown(value: str) -> str:
    """A bad value for a dead letter's detail: quoted if it looks like a code or a time,
    else only its length (it may be anything, a name, an address or a phone number too).

    >>> _shown("2026-13-01T00:00:00+00:00"), _shown("ZZ"), _shown("+1 555-123-4567")
    ("'2026-13-01T00:00:00+00:00'", "'ZZ'", '(15 characters, not shown)')
    """
    if _CODE_LIKE.fullmatch(value) or _TIME_LIKE.fullmatch(value):
        return repr(value)
    return f"({len(value)} characters, not shown)"


def _invalid_from_error(line: bytes | str, error: msgspec.DecodeError) -> ScanEvent | Invalid:
    """Map a msgspec error to a reason code (cold path: only invalid lines get here).

    A time that is not strict RFC 3339 is not an error yet: the line is decoded again with the
    times as text, and :meth:`datetime.datetime.fromisoformat` gets a chance.
    """
    message = str(error)
    if not isinstance(error, _ValidationError):
        return Invalid("bad_json", _safe(message))
    field = None
    if " - at `$." in message:
        field = message.rsplit(" - at `$.", 1)[1].rstrip("`").split(".", 1)[0].split("[", 1)[0]
    if field is None:
        if message.startswith("Object missing required field"):
            return Invalid("missing_field", _safe(message))
        if message.startswith("Expected `object`"):
            return Invalid("not_an_object", _safe(message))
        return Invalid("bad_json", _safe(message))
    if field in _TIMES and "RFC3339" in message:
        return _retry_as_text(line)
    if field in _PRIVATE:  # never echo these, not even through msgspec's message
        kind = "wrong type" if ", got `" in message else "invalid"
        return Invalid("bad_header", f"{field}: {kind}")
    if field in _HEADER:
        return Invalid("bad_header", _safe(f"{field}: {message}"))
    if field == "package_id":
        reason = "wrong_type" if ", got `" in message else "bad_package_id"
        return Invalid(reason, _safe(message))
    if field == "event_code":
        if not message.startswith("Invalid enum value"):
            return Invalid("wrong_type", _safe(message))
        # msgspec quotes the value: shown only if it looks like a code (a garbled line can
        # carry a name or an address here, and the detail promises no personal data)
        value = message.split("'", 2)[1] if message.count("'") >= 2 else ""
        return Invalid("unknown_code", f"event_code {_shown(value)} is not a known code")
    if field in _TIMES and "timezone component" in message:
        return Invalid("no_offset", f"{field} has no UTC offset")
    if field == "facility_id":
        reason = "wrong_type" if ", got `" in message else "bad_facility"
        return Invalid(reason, _safe(message))
    return Invalid("wrong_type", _safe(message))


def epoch_seconds(value: Any) -> int | None:
    """An ISO 8601 time with an offset (as the flow's records carry them) as epoch seconds;
    None for an empty value.

    >>> epoch_seconds("2026-10-01T03:00:00+00:00"), epoch_seconds(None)
    (1790823600, None)
    """
    if not value:
        return None
    return int(dt.datetime.fromisoformat(str(value)).timestamp())


def iso_time(ts: float | None) -> str | None:
    """Epoch seconds as the ISO 8601 UTC time the flow's records carry (the inverse of
    :func:`epoch_seconds`, to the second); None for None or a negative time (a column's
    "unknown").

    >>> iso_time(1790823600), iso_time(None), iso_time(-1)
    ('2026-10-01T03:00:00+00:00', None, None)
    """
    if ts is None or ts < 0:
        return None
    return dt.datetime.fromtimestamp(int(ts), dt.UTC).isoformat()


def _iso_ts(value: str, field: str) -> int | Invalid:
    """Lenient ISO 8601 to epoch seconds, or why not."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        try:  # RFC 3339 allows a lower-case "t" and "z"; fromisoformat does not
            parsed = dt.datetime.fromisoformat(value.upper())
        except ValueError:
            return Invalid("bad_time", f"{field} is not an ISO 8601 time: {_shown(value)}")
    if parsed.tzinfo is None:
        return Invalid("no_offset", f"{field} has no UTC offset")
    return int(parsed.timestamp())


def _retry_as_text(line: bytes | str) -> ScanEvent | Invalid:
    try:
        wire = _DECODE_TEXT(line)
    except _DecodeError as error:
        # The error is elsewhere in the line: times are plain text here, so this cannot loop.
        return _invalid_from_error(line, error)
    except UnicodeError:  # the time's text is not UTF-8 (the datetime decoder said "RFC3339")
        return Invalid("bad_json", "the line is not valid UTF-8 text")
    event_ts = _iso_ts(wire.event_time, "event_time")
    if isinstance(event_ts, Invalid):
        return event_ts
    ingest_ts = _iso_ts(wire.ingest_time, "ingest_time")
    if isinstance(ingest_ts, Invalid):
        return ingest_ts
    promised_by_ts = None
    if wire.promised_by is not None:
        promised_by_ts = _iso_ts(wire.promised_by, "promised_by")
        if isinstance(promised_by_ts, Invalid):
            return Invalid("bad_header", promised_by_ts.detail)
    return _finish(wire, event_ts, ingest_ts, promised_by_ts)


def _from_wire(wire: _Wire) -> ScanEvent | Invalid:
    # Aware datetimes of years 1..9999 always have a timestamp (no OverflowError).
    promised_by = wire.promised_by
    return _finish(
        wire,
        int(wire.event_time.timestamp()),
        int(wire.ingest_time.timestamp()),
        None if promised_by is None else int(promised_by.timestamp()),
    )


def _finish(
    wire: _Wire | _WireText, event_ts: int, ingest_ts: int, promised_by_ts: int | None
) -> ScanEvent | Invalid:
    """The checks msgspec cannot express, then the event."""
    pid = wire.package_id
    if not (pid.isascii() and (pid.isalnum() or pid.replace("-", "0").isalnum())):
        return Invalid("bad_package_id", "package_id must match [A-Za-z0-9-]{1,40}")
    if event_ts < _MIN_TS or ingest_ts < _MIN_TS:
        return Invalid("absurd_time", "event_time or ingest_time before 2000-01-01")
    if event_ts - ingest_ts > _MAX_AHEAD:
        return Invalid("absurd_time", "event_time more than 1 day after ingest_time")
    if ingest_ts - event_ts > _MAX_LAG:
        return Invalid("absurd_time", "ingest_time more than 90 days after event_time")
    code = wire.event_code
    facility = wire.facility_id
    if not facility:
        if code != "TL":
            return Invalid("missing_facility", f"facility_id is null for event_code {code}")
        facility = None
    elif not facility.isprintable():
        return Invalid("bad_facility", "facility_id contains control characters")
    if (
        wire.service is None
        and promised_by_ts is None
        and wire.promised_date is None
        and wire.destination is None
        and wire.recipient_ref is None
    ):
        return ScanEvent(pid, code, facility, event_ts, ingest_ts)
    if promised_by_ts is not None and promised_by_ts < _MIN_TS:
        return Invalid("bad_header", "promised_by before 2000-01-01")
    destination = wire.destination
    if destination is not None and not (destination and destination.isprintable()):
        return Invalid("bad_header", "destination: invalid")
    ref = wire.recipient_ref
    if ref is not None and not ref.isprintable():
        return Invalid("bad_header", "recipient_ref: invalid")
    promised_date = wire.promised_date
    return ScanEvent(
        pid,
        code,
        facility,
        event_ts,
        ingest_ts,
        wire.service,
        None if promised_date is None else promised_date.isoformat(),
        promised_by_ts,
        destination,
        ref,
    )


def parse_line(line: bytes | str) -> ScanEvent | Invalid:
    """Parse one line of ``events.jsonl``; never raises.

    Examples
    --------
    >>> parse_line(b'{"package_id": "P1", "event_code": "A1", "facility_id": "PLT-1",'
    ...            b' "event_time": "2024-11-20T01:13:00-05:00",'
    ...            b' "ingest_time": "2024-11-20T06:14:00Z"}')
    ScanEvent(package_id='P1', code='A1', facility='PLT-1', event_ts=1732083180, ingest_ts=1732083240, service=None, promised_date=None, promised_by_ts=None, destination=None, recipient_ref=None)
    >>> parse_line(b'{"package_id": "P1", "event_code": "ZZ"}')
    Invalid(reason='unknown_code', detail="event_code 'ZZ' is not a known code")
    >>> parse_line(b'{"package_id": ').reason
    'bad_json'

    A key given twice counts with its last value, as in :mod:`json`. A time key's earlier
    values are not checked when its last one is strict RFC 3339 (other fields' always are,
    by msgspec); when it is not, the first bad value names the error.
    """  # noqa: E501
    events, invalids = parse_batch((line,))
    return events[0] if events else invalids[0][1]


def _parse_strict(line: bytes | str) -> ScanEvent | Invalid:
    """One line decoded with the times as ``datetime`` (:class:`_Wire`), errors mapped to
    reasons: the reference :func:`parse_batch` falls back on for a line with any error,
    which therefore gets the dead letter this gives. (It also checks the earlier values of
    a time key given twice, which :func:`parse_line` does not.)"""
    try:
        wire = _DECODE(line)
    except _DecodeError as error:
        return _invalid_from_error(line, error)
    except UnicodeError:  # a str line with a lone surrogate, or bytes that are not UTF-8
        return Invalid("bad_json", "the line is not valid UTF-8 text")
    return _from_wire(wire)


def _strict_epoch(text: str) -> int:
    """A time as :class:`_Wire` reads it (strict RFC 3339 with an offset, else
    ``msgspec.DecodeError``), in epoch seconds."""
    return int(_DECODE_TIME(_ENCODE(text)).timestamp())


def _epoch(text: str) -> int:
    """:func:`_strict_epoch`, remembered in ``_EPOCHS``."""
    value = _strict_epoch(text)
    if len(_EPOCHS) >= _EPOCHS_MAX:
        _EPOCHS.clear()
    _EPOCHS[text] = value
    return value


def parse_batch(
    lines: Iterable[bytes | str],
) -> tuple[list[ScanEvent], list[tuple[int, Invalid]]]:
    """Parse many lines: the valid events in order, and ``(index in lines, Invalid)`` pairs.

    The same results as :func:`parse_line` on each line, faster where time texts repeat:
    the times are decoded as text and looked up in a cache of texts already converted
    (a feed's events of one second share their ``event_time``; at national volume ~20 K
    events a second do). A line whose times are new converts them with the strict
    decoder (then remembered); a line with any error, or a time that needs the lenient
    retry, is decoded again whole by :func:`_parse_strict`, which maps the error to its
    dead letter. Where the first ``_PROBE`` lines of a batch bring more than one new
    time text per two lines (times with milliseconds, say), the rest of the batch is
    parsed line by line without the cache, which would only cost there.

    Examples
    --------
    >>> good = (b'{"package_id": "P1", "event_code": "TL", "facility_id": null,'
    ...         b' "event_time": "2024-11-20T01:11:00Z", "ingest_time": "2024-11-20T01:12:00Z"}')
    >>> events, invalids = parse_batch([good, b"[]", b""])
    >>> [e.code for e in events], [(i, bad.reason) for i, bad in invalids]
    (['TL'], [(1, 'not_an_object'), (2, 'bad_json')])
    """
    events: list[ScanEvent] = []
    invalids: list[tuple[int, Invalid]] = []
    lines = lines if isinstance(lines, list) else list(lines)
    remembered = len(_EPOCHS)
    _parse_cached(lines[:_PROBE], 0, events, invalids)
    rest = lines[_PROBE:]
    if rest:
        if len(_EPOCHS) - remembered <= _PROBE // 2:  # (a cache cleared meanwhile counts as few)
            _parse_cached(rest, _PROBE, events, invalids)
        else:
            _parse_each(rest, _PROBE, events, invalids)
    return events, invalids


_PROBE: Final = 200  # lines of a batch that decide whether the rest uses the time cache


def _parse_text(line: bytes | str) -> ScanEvent | Invalid:
    """One line with the times as text, each converted by the strict decoder, not
    remembered (the last value of a time key given twice counts, as with the cache); a
    line with any error goes to :func:`_parse_strict`."""
    try:
        wire = _DECODE_TEXT(line)
        event_ts, ingest_ts = _strict_epoch(wire.event_time), _strict_epoch(wire.ingest_time)
        promised = wire.promised_by
        promised_by_ts = None if promised is None else _strict_epoch(promised)
    except _UNREADABLE:
        return _parse_strict(line)
    return _finish(wire, event_ts, ingest_ts, promised_by_ts)


def _parse_each(lines: list[bytes | str], first: int, events: list[ScanEvent],
                invalids: list[tuple[int, Invalid]]) -> None:
    """:func:`parse_batch`'s loop without the time cache: the times decoded as ``datetime``
    (a line that fails so, :func:`_parse_text`: the same results as with the cache)."""
    decode, finish = _DECODE, _finish
    for index, line in enumerate(lines, first):
        try:
            wire = decode(line)
        except _UNREADABLE:
            result = _parse_text(line)
        else:
            promised_by = wire.promised_by
            result = finish(
                wire,
                int(wire.event_time.timestamp()),
                int(wire.ingest_time.timestamp()),
                None if promised_by is None else int(promised_by.timestamp()),
            )
        if result.__class__ is ScanEvent:
            events.append(result)  # type: ignore[arg-type]
        else:
            invalids.append((index, result))  # type: ignore[arg-type]


def _parse_cached(lines: list[bytes | str], first: int, events: list[ScanEvent],
                  invalids: list[tuple[int, Invalid]]) -> None:
    """:func:`parse_batch`'s loop with the time cache (``first``: the index of ``lines[0]``)."""
    decode, finish, epoch, known = _DECODE_TEXT, _finish, _epoch, _EPOCHS.get
    for index, line in enumerate(lines, first):
        try:
            wire = decode(line)
            text = wire.event_time
            event_ts = known(text)
            if event_ts is None:
                event_ts = epoch(text)
            text = wire.ingest_time
            ingest_ts = known(text)
            if ingest_ts is None:
                ingest_ts = epoch(text)
            text = wire.promised_by
            if text is None:
                promised_by_ts = None
            else:
                promised_by_ts = known(text)
                if promised_by_ts is None:
                    promised_by_ts = epoch(text)
        except _UNREADABLE:  # (a ValidationError too) the reference path, errors and all
            result = _parse_strict(line)
        else:
            result = finish(wire, event_ts, ingest_ts, promised_by_ts)
        if result.__class__ is ScanEvent:
            events.append(result)  # type: ignore[arg-type]
        else:
            invalids.append((index, result))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Benchmark: python -c 'from detectors.events import _bench; _bench()'


def _synthetic_lines(n: int, seed: int = 0, invalid_rate: float = 0.01) -> list[bytes]:
    """``n`` lines shaped like the simulator's (for benchmarks and tests)."""
    import random

    rng = random.Random(seed)
    encode = msgspec.json.encode
    route = ("GX", "03", "SF", "10", "T1", "TL", "A1", "07", "OF", "01")
    t0 = 1_732_000_000
    lines = []
    for i in range(n):
        step = i % len(route)
        code = route[step]
        ts = t0 + i * 7 + rng.randrange(3600)
        row: dict[str, object] = {
            "package_id": f"94001{i // len(route):017d}",
            "event_code": code,
            "facility_id": None if code == "TL" else f"FAC-{rng.randrange(2000):04d}",
            "event_time": dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(),
            "ingest_time": dt.datetime.fromtimestamp(ts + rng.randrange(600), dt.UTC).isoformat(),
        }
        if step == 0:
            row |= {
                "service": rng.choice(("express", "ground")),
                "promised_date": "2024-11-22",
                "promised_by": "2024-11-22T20:00:00-05:00",
                "destination": "PO-0001",
                "recipient_ref": f"C{i:08d}",
            }
        if rng.random() < invalid_rate:
            row["event_code"] = "Z9"
        lines.append(encode(row))
    return lines


def _bench(n: int = 200_000, repeat: int = 5, path: str | None = None,
           start: int = 0) -> None:  # pragma: no cover - manual tool
    """Parse ``n`` synthetic lines, or lines ``start`` to ``start + n`` of the file ``path``,
    in the flow's batches of 2,000; prints the median CPU time of ``repeat`` passes."""
    import statistics
    import time
    from itertools import islice

    if path is None:
        lines = _synthetic_lines(n)
    else:
        with open(path, "rb") as f:
            lines = list(islice(f, start, start + n))
        n = len(lines)
    runs = []
    for _ in range(repeat):
        _EPOCHS.clear()  # each pass as new lines (the time cache would remember the last)
        began = time.process_time()
        events, invalids = [], []
        for i in range(0, n, 2000):  # the flow's batches
            good, bad = parse_batch(lines[i:i + 2000])
            events += good
            invalids += bad
        runs.append(time.process_time() - began)
    took = statistics.median(runs)
    print(
        f"parse_batch: {n} lines in {took:.3f} s = {n / took / 1e3:.0f} K lines/s "
        f"({took / n * 1e6:.2f} us/line); {len(events)} events, {len(invalids)} invalid "
        f"(median of {repeat}, CPU time)"
    )
