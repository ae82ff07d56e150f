"""Turning an alert and a customer into a plain-language e-mail (text + HTML).

Everything that comes from the alert or the customer table is treated as untrusted: it passes
:func:`notifiers.headers.clean_text` before it reaches a template or a header, the HTML templates
autoescape, and the recipient comes from the customer table only, never from the alert.

Headers set (and no others, apart from the MIME ones): From, To, Subject, Date, Message-ID,
Auto-Submitted, X-Delaywatch-Alert-Key, List-Unsubscribe, List-Unsubscribe-Post. The
Message-ID is derived from the alert key, so a message sent twice is recognisably the same.

Everything the customer reads is in their language (``en`` or ``es``). The alert's ``evidence``
is English and, for an incident, written for operators ("P0100 is holding 80 packages..."), so
the per-package detail is built from the alert's structured fields instead (``facility_name``,
``last_event_code``, ``last_scan_time``, ``silence_seconds``, ``expected_seconds``,
``alert_time``; see :func:`describe_silence` and :func:`describe_moving`). Where those are
missing (an outbox row written before they existed), an English stall e-mail shows the
``evidence`` as it did; a Spanish one leaves the detail out, and no incident e-mail ever shows
it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from email import policy as email_policy
from email.headerregistry import Address, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import jinja2

from notifiers.customers import LOCALES, Customer, validate_address
from notifiers.errors import InvalidRecipientError, MessageBuildError
from notifiers.headers import clean_text
from notifiers.unsubscribe import unsubscribe_url
from notifiers.wording import scan_text

__all__ = ["HEADER_NAMES", "MessageComposer", "RenderedMessage"]

KINDS = ("stall", "incident_delay", "back_on_track")
TEMPLATE_DIR = Path(__file__).parent / "templates"

#: Every header a built message carries (lower case).
HEADER_NAMES = frozenset(
    {
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "auto-submitted",
        "x-delaywatch-alert-key",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "mime-version",
        "content-type",
    }
)

_MAX_SUBJECT = 150
_MAX_NAME = 80
_MAX_FACILITY = 80
_MAX_EVIDENCE = 400
_MAX_PACKAGE_ID = 40
_MAX_LISTED_PACKAGES = 20
_MAX_KEY = 200


class _VerbatimHeader(UnstructuredHeader):
    """A header written on one line exactly as given (checked ASCII, no whitespace).

    The standard folder turns a long unbreakable value (a URL) into RFC 2047 encoded words,
    which mail clients do not read as a URL; List-Unsubscribe must stay a plain ``<https://…>``.
    """

    max_count = 1

    def fold(self, *, policy: email_policy.Policy) -> str:
        return f"{self.name}: {self}{policy.linesep}"


_REGISTRY = HeaderRegistry()
for _name in ("list-unsubscribe", "list-unsubscribe-post", "x-delaywatch-alert-key"):
    _REGISTRY.map_to_type(_name, _VerbatimHeader)
_POLICY = email_policy.default.clone(header_factory=_REGISTRY)
_PARSER = BytesParser(policy=email_policy.default)


def _display_name(value: object) -> str:
    """A display name for From/To: cleaned, without double quotes and backslashes.

    The standard library's header folder drops the escaping of quotes inside a display name
    it has to fold (a long one), so the recipient would no longer parse back. Names do not
    need them.
    """
    return clean_text(str(value or "").replace('"', "'").replace("\\", "/"), max_len=_MAX_NAME)


_SPECIALS = frozenset('()<>[]:;@\\,."')  # RFC 5322: a display name with these is quoted


@functools.lru_cache(maxsize=4096)  # the round trip costs ~1-14 ms; customers recur
def _address(display_name: str, username: str, domain: str) -> Address:
    """``Address(display_name, username, domain)``, without the display name if the header,
    as the standard library folds and parses it back, would not name exactly that address.

    A long display name full of specials (``<<<<...``: a fuzzed customer name) is folded with
    its quoting lost, and the recipient no longer parses back; such a name is dropped (the
    address alone still reaches the customer). Names without specials need no check.
    """
    address = Address(display_name=display_name, username=username, domain=domain)
    if not display_name or _SPECIALS.isdisjoint(display_name):
        return address
    probe = EmailMessage(policy=_POLICY)
    probe["To"] = address
    try:
        back = _PARSER.parsebytes(probe.as_bytes())["To"].addresses
    except Exception:  # noqa: BLE001 - any parse failure means: not safe to send
        back = ()
    if [a.addr_spec for a in back] == [address.addr_spec]:
        return address
    return Address(username=username, domain=domain)


def _verbatim(value: str) -> str:
    if not value.isascii() or not value.isprintable() or len(value) > 900:
        raise MessageBuildError("header value is not short printable ASCII")
    return value


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    subject: str
    text: str
    html: str


# -- plain-language formatting ---------------------------------------------------------------

_MONTHS = {
    "en": "January February March April May June July August September October November December",
    "es": "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre "
    "diciembre",
}
_WEEKDAYS = {
    "en": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
    "es": "lunes martes miércoles jueves viernes sábado domingo",
}
_MAX_SECONDS = 10 * 365 * 86400
_UNITS = {
    "en": (("day", "days"), ("hour", "hours"), ("minute", "minutes")),
    "es": (("día", "días"), ("hora", "horas"), ("minuto", "minutos")),
}


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and 10 <= len(value) <= 40:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return parsed if parsed.tzinfo is not None and parsed.utcoffset() is not None else None


def format_local_time(value: object, zone: tzinfo, locale: str) -> str | None:
    """'Tuesday, March 4, 3:15 PM CST' / 'martes 4 de marzo, 15:15 CST'; None if unknown."""
    when = _parse_time(value)
    if when is None:
        return None
    try:
        local = when.astimezone(zone)
    except (OverflowError, ValueError):
        return None
    month = _MONTHS[locale].split()[local.month - 1]
    weekday = _WEEKDAYS[locale].split()[local.weekday()]
    abbrev = clean_text(local.tzname() or "", max_len=10)
    if locale == "es":
        return f"{weekday} {local.day} de {month}, {local:%H:%M} {abbrev}".rstrip()
    hour = local.hour % 12 or 12
    ampm = "AM" if local.hour < 12 else "PM"
    return f"{weekday}, {month} {local.day}, {hour}:{local:%M} {ampm} {abbrev}".rstrip()


def _seconds(value: object) -> float | None:
    """A plausible non-negative number of seconds (under ten years), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value < _MAX_SECONDS:  # NaN fails too
        return None
    return float(value)


def format_duration(seconds: object, locale: str) -> str | None:
    """'2 days 3 hours' / '2 días 3 horas'; the two largest units; None if unknown.

    >>> format_duration(112_500, "en"), format_duration(112_500, "es")
    ('1 day 7 hours', '1 día 7 horas')
    >>> format_duration("31 h", "en") is None
    True
    """
    seconds = _seconds(seconds)
    if seconds is None:
        return None
    minutes = int(seconds // 60)
    values = (minutes // 1440, minutes % 1440 // 60, minutes % 60)
    parts = [f"{n} {names[n != 1]}" for n, names in zip(values, _UNITS[locale], strict=True) if n]
    if not parts:
        return "1 minuto" if locale == "es" else "1 minute"
    return " ".join(parts[:2])


# What happened, per incident kind and locale ({facility} is the cleaned facility name).
_CAUSES = {
    "en": {
        "facility_slowdown": "{facility} is moving packages more slowly than usual",
        "facility_stop": "{facility} stopped processing packages for a while and is working "
                         "through the backlog",
        "weather": "severe weather is delaying packages at {facility} and nearby facilities",
        "lane_delay": "the transport leaving {facility} is running late",
        None: "{facility} is moving packages more slowly than usual",
    },
    "es": {
        "facility_slowdown": "{facility} está procesando los paquetes más despacio de lo "
                             "habitual",
        "facility_stop": "{facility} dejó de procesar paquetes durante un tiempo y está "
                         "recuperando el retraso",
        "weather": "el mal tiempo está retrasando los paquetes en {facility} y en "
                   "instalaciones cercanas",
        "lane_delay": "el transporte que sale de {facility} va con retraso",
        None: "{facility} está procesando los paquetes más despacio de lo habitual",
    },
}
# The same, said of a package that has moved on since (``moving``): it was, not it is.
_CAUSES_PAST = {
    "en": {
        "facility_slowdown": "{facility} was moving packages more slowly than usual",
        "facility_stop": "{facility} stopped processing packages for a while",
        "weather": "severe weather delayed packages at {facility} and nearby facilities",
        "lane_delay": "the transport leaving {facility} ran late",
        None: "{facility} was moving packages more slowly than usual",
    },
    "es": {
        "facility_slowdown": "{facility} estaba procesando los paquetes más despacio de lo "
                             "habitual",
        "facility_stop": "{facility} dejó de procesar paquetes durante un tiempo",
        "weather": "el mal tiempo retrasó los paquetes en {facility} y en instalaciones "
                   "cercanas",
        "lane_delay": "el transporte que salió de {facility} iba con retraso",
        None: "{facility} estaba procesando los paquetes más despacio de lo habitual",
    },
}
_SOMEWHERE = {"en": "one of our facilities", "es": "una de nuestras instalaciones"}


def describe_cause(kind: object, facility: str | None, locale: str, past: bool = False) -> str:
    """The plain-language cause of an incident delay (no trailing period); ``past`` for a
    package that has moved on since.

    >>> describe_cause("weather", "DENVER CO PLANT", "en")
    'severe weather is delaying packages at DENVER CO PLANT and nearby facilities'
    >>> describe_cause("weather", "DENVER CO PLANT", "en", past=True)
    'severe weather delayed packages at DENVER CO PLANT and nearby facilities'
    >>> describe_cause("unknown-kind", None, "es")
    'una de nuestras instalaciones está procesando los paquetes más despacio de lo habitual'
    """
    table = _CAUSES_PAST if past else _CAUSES
    causes = table.get(locale, table["en"])
    text = causes.get(kind if isinstance(kind, str) else None) or causes[None]
    return text.format(facility=facility or _SOMEWHERE.get(locale, _SOMEWHERE["en"]))


# The per-package detail (a silence, and a package moving again), per locale.
_SILENCE = {
    "en": {
        "one": "No scan for {silence}",
        "several": "No scan for up to {silence}",
        "at": " at {facility}",
        "transit": " in transit",
        "last": " (last scan: {last})",
        "usual": "; packages usually move on within {usual}",
    },
    "es": {
        "one": "Sin escaneos durante {silence}",
        "several": "Hasta {silence} sin escaneos",
        "at": " en {facility}",
        "transit": " en tránsito",
        "last": " (último escaneo: {last})",
        "usual": "; normalmente los paquetes siguen su camino en menos de {usual}",
    },
}
_MOVING = {
    "en": {
        "again": "It was scanned again",
        "on": " on {when}",
        "after": ", after {silence} without a scan",
        "at": " at {facility}",
        "transit": " in transit",
        "cleared": "The hold-up has cleared.",
        "cleared_at": "The hold-up at {facility} has cleared.",
        "moved": "They were held up and have been scanned again since.",
        "some_moved": "{n} of them {verb} been scanned again since.",
        "moved_at": "They were held up at {facility} and have been scanned again since.",
        "delivered": "It has been delivered.",
        "delivered_on": "It was delivered on {when}.",
        "delivered_all": "They have all been delivered.",
    },
    "es": {
        "again": "Se escaneó de nuevo",
        "on": " el {when}",
        "after": ", tras {silence} sin escaneos",
        "at": " en {facility}",
        "transit": " en tránsito",
        "cleared": "El retraso se ha resuelto.",
        "cleared_at": "El retraso en {facility} se ha resuelto.",
        "moved": "Estuvieron detenidos y desde entonces se han escaneado de nuevo.",
        "some_moved": "{n} de ellos {verb} escaneado de nuevo desde entonces.",
        "moved_at": "Estuvieron detenidos en {facility} y desde entonces se han escaneado de "
        "nuevo.",
        "delivered": "Ya ha sido entregado.",
        "delivered_on": "Se entregó el {when}.",
        "delivered_all": "Todos han sido entregados.",
    },
}


def describe_silence(
    locale: str,
    silence: str | None,
    *,
    facility: str | None = None,
    in_transit: bool = False,
    scan: str | None = None,
    last_scan: str | None = None,
    usual: str | None = None,
    several: bool = False,
) -> str | None:
    """The detail of a delay: how long without a scan, where, the last scan and what is usual.

    Takes values already formatted for ``locale`` (see :func:`format_duration`,
    :func:`format_local_time`, :func:`notifiers.wording.scan_text`); anything None is left
    out, and without ``silence`` there is no detail (None). ``several``: the longest silence
    of several packages (the last scan is then not one package's, and is left out).

    >>> describe_silence("en", "1 day 7 hours", facility="DENVER CO PLANT",
    ...                  scan="Arrived at facility", last_scan="Tuesday, March 4, 3:15 PM MST",
    ...                  usual="12 hours")  # doctest: +NORMALIZE_WHITESPACE
    'No scan for 1 day 7 hours at DENVER CO PLANT (last scan: Arrived at facility,
     Tuesday, March 4, 3:15 PM MST); packages usually move on within 12 hours.'
    >>> describe_silence("es", "1 día 7 horas", facility="DENVER CO PLANT",
    ...                  scan="Llegó a la instalación", last_scan="martes 4 de marzo, 15:15 MST",
    ...                  usual="12 horas")  # doctest: +NORMALIZE_WHITESPACE
    'Sin escaneos durante 1 día 7 horas en DENVER CO PLANT (último escaneo: Llegó a la
     instalación, martes 4 de marzo, 15:15 MST); normalmente los paquetes siguen su camino en
     menos de 12 horas.'
    >>> describe_silence("es", "2 días", facility="DENVER CO PLANT", several=True)
    'Hasta 2 días sin escaneos en DENVER CO PLANT.'
    >>> describe_silence("en", None, facility="DENVER CO PLANT") is None
    True
    """
    if not silence:
        return None
    words = _SILENCE.get(locale, _SILENCE["en"])
    text = words["several" if several else "one"].format(silence=silence)
    if in_transit:
        text += words["transit"]
    elif facility:
        text += words["at"].format(facility=facility)
    last = ", ".join(part for part in (scan, last_scan) if part)
    if last and not several:
        text += words["last"].format(last=last)
    if usual:
        text += words["usual"].format(usual=usual)
    return text + "."


_STAGE = {
    "en": {"last": "The last scan was “{scan}”.",
           "usual": "Packages usually move on from there within {usual}."},
    "es": {"last": "El último escaneo fue «{scan}».",
           "usual": "Normalmente los paquetes siguen su camino en menos de {usual}."},
}


def describe_stage(locale: str, scan: str | None = None, usual: str | None = None) -> str | None:
    """A stall's detail: what the last scan was and what is usual at that step (the e-mail
    already says where, when and for how long); None when neither is known.

    >>> describe_stage("en", "Arrived at facility", "8 hours")
    'The last scan was “Arrived at facility”. Packages usually move on from there within 8 hours.'
    >>> describe_stage("es", None, "8 horas")
    'Normalmente los paquetes siguen su camino en menos de 8 horas.'
    """
    words = _STAGE.get(locale, _STAGE["en"])
    parts = [words["last"].format(scan=scan)] if scan else []
    if usual:
        parts.append(words["usual"].format(usual=usual))
    return " ".join(parts) or None


def describe_moving(
    locale: str,
    *,
    moved_at: str | None = None,
    silence: str | None = None,
    facility: str | None = None,
    in_transit: bool = False,
    delivered: bool = False,
) -> str:
    """The detail of a package moving again: when it was scanned, after how long, where from.

    ``facility`` is where the package was held (the alert's facility), not where it was just
    scanned. Without ``moved_at`` and ``silence`` (the all-clear of several packages), it says
    that the hold-up has cleared.

    >>> describe_moving("en", moved_at="Tuesday, March 4, 8:30 AM CST", silence="1 day 5 hours",
    ...                 facility="CHICAGO IL NDC")  # doctest: +NORMALIZE_WHITESPACE
    'It was scanned again on Tuesday, March 4, 8:30 AM CST, after 1 day 5 hours without a scan
     at CHICAGO IL NDC.'
    >>> describe_moving("es", moved_at="martes 4 de marzo, 8:30 CST", silence="1 día 5 horas",
    ...                 facility="CHICAGO IL NDC")  # doctest: +NORMALIZE_WHITESPACE
    'Se escaneó de nuevo el martes 4 de marzo, 8:30 CST, tras 1 día 5 horas sin escaneos en
     CHICAGO IL NDC.'
    >>> describe_moving("es", facility="CHICAGO IL NDC")
    'El retraso en CHICAGO IL NDC se ha resuelto.'
    """
    words = _MOVING.get(locale, _MOVING["en"])
    if delivered:  # the scan that ended the silence was the delivery
        return words["delivered_on"].format(when=moved_at) if moved_at else words["delivered"]
    if not moved_at and not silence:
        return words["cleared_at"].format(facility=facility) if facility else words["cleared"]
    text = words["again"]
    if moved_at:
        text += words["on"].format(when=moved_at)
    if silence:
        text += words["after"].format(silence=silence)
        if in_transit:
            text += words["transit"]
        elif facility:
            text += words["at"].format(facility=facility)
    return text + "."


def _silence_seconds(alert: Mapping[str, Any]) -> float | None:
    """``silence_seconds``, or else the time from ``last_scan_time`` to ``alert_time``."""
    silence = _seconds(alert.get("silence_seconds"))
    if silence is not None:
        return silence
    last, at = _parse_time(alert.get("last_scan_time")), _parse_time(alert.get("alert_time"))
    if last is None or at is None:
        return None
    return _seconds((at - last).total_seconds())


def _usual_seconds(value: object) -> float | None:
    """The learned usual silence, to the nearest hour from one hour up (it is an estimate)."""
    usual = _seconds(value)
    if not usual:
        return None
    return round(usual / 3600) * 3600.0 if usual >= 3600 else usual


def _place_name(name: object, facility_id: object) -> str:
    """A facility as the customer may read it: its name, never its internal id (the flow
    fills a facility missing from the facility list with its id); "" if there is none."""
    text = clean_text(name, max_len=_MAX_FACILITY)
    return "" if text == clean_text(facility_id, max_len=_MAX_FACILITY) else text


_DATES = {
    "en": ("promised by {promised}", "new estimate {estimate}", "new estimate not known yet"),
    "es": ("prometido antes del {promised}", "nueva estimación {estimate}",
           "nueva estimación todavía desconocida"),
}


def describe_dates(locale: str, package: str, promised: str | None, estimate: str | None,
                   moving: bool = False) -> str:
    """One package of several, with its own promise and estimate (``moving``: an all-clear,
    which says nothing of an estimate it does not have).

    >>> describe_dates("en", "P1", "Friday, November 6, 8:00 PM EST", None)
    'P1: promised by Friday, November 6, 8:00 PM EST; new estimate not known yet'
    >>> describe_dates("es", "P1", None, "sábado 7 de noviembre, 21:00 EST")
    'P1: nueva estimación sábado 7 de noviembre, 21:00 EST'
    """
    words = _DATES.get(locale, _DATES["en"])
    parts = [] if promised is None else [words[0].format(promised=promised)]
    if estimate is not None:
        parts.append(words[1].format(estimate=estimate))
    elif not moving:
        parts.append(words[2])
    return f"{package}: {'; '.join(parts)}" if parts else package


def days_late(promised: object, estimate: object, zone: tzinfo = UTC) -> int | None:
    """Calendar days from the promise to the new estimate in ``zone`` (the customer's), as the
    two dates printed in the e-mail read; None if not late, unknown, or later the same day.

    >>> days_late("2026-10-02T23:00:00+00:00", "2026-10-03T20:00:00+00:00")
    1
    >>> days_late("2026-11-07T01:00:00+00:00", "2026-11-08T02:00:00+00:00")  # 25 hours
    1
    >>> days_late("2026-10-02T12:00:00+00:00", "2026-10-02T20:00:00+00:00") is None
    True
    >>> days_late("2026-10-02T23:00:00+00:00", "2026-10-02T20:00:00+00:00") is None
    True
    """
    p, e = _parse_time(promised), _parse_time(estimate)
    if p is None or e is None or e <= p:
        return None
    try:
        days = (e.astimezone(zone).date() - p.astimezone(zone).date()).days
    except (OverflowError, ValueError):
        return None
    return days or None


# -- the composer ----------------------------------------------------------------------------


class MessageComposer:
    """Builds :class:`~email.message.EmailMessage` objects for alerts.

    Parameters
    ----------
    from_address
        The From header, e.g. ``"Parcel updates <updates@example.com>"``.
    unsubscribe_url
        Absolute https URL of the one-click unsubscribe endpoint; ``?token=…`` is appended.
    unsubscribe_secret
        HMAC key for the unsubscribe tokens (see :mod:`notifiers.unsubscribe`).
    message_id_domain
        Right-hand side of the Message-ID (default: the From address's domain).
    template_dir
        Directory with the Jinja2 templates (default: the packaged ``templates/``).
    """

    def __init__(
        self,
        *,
        from_address: str,
        unsubscribe_url: str,
        unsubscribe_secret: bytes | str,
        message_id_domain: str | None = None,
        template_dir: str | Path | None = None,
    ) -> None:
        try:
            if clean_text(from_address, max_len=300) != from_address.strip():
                raise InvalidRecipientError("control characters")
            (parsed,) = _REGISTRY("from", from_address).addresses
            sender = validate_address(parsed.addr_spec)
        except (InvalidRecipientError, ValueError, IndexError, TypeError):
            raise ValueError("from_address must be 'Name <addr@domain>' or 'addr@domain'") from None
        self.from_address = _address(_display_name(parsed.display_name), sender.username,
                                     sender.domain)
        self._unsubscribe_base = unsubscribe_url
        self._secret = unsubscribe_secret
        # Fail at start-up, not at the first message, if the URL or secret is unusable.
        _verbatim(f"<{self._unsubscribe_url('probe')}>")
        domain = message_id_domain or sender.domain
        if not domain or not all(ch.isalnum() or ch in ".-" for ch in domain):
            raise ValueError("message_id_domain must be a plain domain name")
        self.message_id_domain = domain
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(template_dir or TEMPLATE_DIR)),
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html",), default_for_string=False, default=False
            ),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )

    def __repr__(self) -> str:
        return f"MessageComposer(message_id_domain={self.message_id_domain!r})"

    def _unsubscribe_url(self, recipient_ref: str) -> str:
        return unsubscribe_url(self._unsubscribe_base, recipient_ref, self._secret)

    def message_id(self, alert_key: str) -> str:
        """Deterministic Message-ID for an alert key."""
        digest = hashlib.sha256(alert_key.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return f"<dw.{digest}@{self.message_id_domain}>"

    def context(self, alert: Mapping[str, Any], customer: Customer,
                when: datetime | None = None) -> dict[str, Any]:
        """The (cleaned) values the templates see, for a message sent at ``when``.

        ``detail`` is the per-package detail in the customer's language (see the module
        docstring), or None when there is nothing to say; the alert's ``evidence`` is not
        passed on as such. A facility is named by its name only, never by its internal id
        (a facility missing from the facility list: "one of our facilities"), and not at all
        when the packages of one message are at different places (``place_count``). An
        estimate that has passed by ``when`` (a message sent late: the relay was down, quiet
        hours) is not shown as the new estimate: it is not known any more.
        """
        locale = customer.locale if customer.locale in LOCALES else "en"
        try:
            zone: tzinfo = ZoneInfo(customer.tz)
        except Exception:  # an unusable zone falls back to UTC rather than losing the message
            zone = ZoneInfo("UTC")
        raw_packages = alert.get("packages")
        packages = (
            [clean_text(p, max_len=_MAX_PACKAGE_ID) for p in raw_packages]
            if isinstance(raw_packages, list | tuple)
            else []
        )
        package_id = clean_text(alert.get("package_id"), max_len=_MAX_PACKAGE_ID)
        if not packages and package_id:
            packages = [package_id]
        facility = _place_name(alert.get("facility_name"), alert.get("facility_id"))
        # a package last scanned in transit (TL) has a null facility_id (its facility_name,
        # "in transit", is the operator's English, not the customer's language)
        in_transit = "facility_id" in alert and alert["facility_id"] is None
        cause_at = facility  # where the incident is: for a package on the road, the
        if in_transit:  # facility it left (a lane from there, or weather there)
            facility = ""
            cause_at = _place_name(alert.get("departed_from_name"), alert.get("departed_from"))
        places = alert.get("place_count")
        if isinstance(places, int) and not isinstance(places, bool) and places > 1:
            # several packages at different places (a region's weather): none is named as
            # where they all are; the cause keeps the incident's place
            facility, in_transit = "", False
        count = alert.get("package_count")
        if isinstance(count, bool) or not isinstance(count, int) or count < len(packages):
            count = len(packages)
        kind = alert.get("kind")
        delivered = kind == "back_on_track" and alert.get("ended") == "delivered"
        silence_seconds = _silence_seconds(alert)
        expected = alert.get("expected_seconds")
        # the silence passed the stage's usual one (unknown: as the stall says it did)
        usual_shown = _usual_seconds(expected)  # (the usual as the e-mail words it)
        beyond_usual = not (silence_seconds is not None and usual_shown is not None
                            and silence_seconds < usual_shown)
        silence = format_duration(silence_seconds, locale)
        last_scan = format_local_time(alert.get("last_scan_time"), zone, locale)
        detail: str | None
        if kind == "back_on_track":
            several = count > 1
            moved_at = None
            scanned = _parse_time(alert.get("last_scan_time"))
            if scanned is not None and silence_seconds is not None and not several:
                try:
                    moved_at = scanned + timedelta(seconds=silence_seconds)
                except OverflowError:
                    moved_at = None
            detail = describe_moving(
                locale,
                moved_at=format_local_time(moved_at, zone, locale),
                silence=None if several else silence,
                facility=facility,
                in_transit=in_transit,
                delivered=delivered,
            )
            if delivered and several:
                detail = _MOVING.get(locale, _MOVING["en"])["delivered_all"]
        elif kind == "stall":
            # the e-mail's first lines say where, when and for how long: only what the last
            # scan was and what is usual here (not when the silence is shorter than that: a
            # carrier's exception scan, e.g. missent, is told early on purpose)
            detail = None if silence is None else describe_stage(
                locale, scan_text(alert.get("last_event_code"), locale),
                format_duration(usual_shown, locale) if beyond_usual else None)
            if silence is None and locale == "en":
                # a row from before the structured fields: its English evidence, as before
                detail = clean_text(alert.get("evidence"), max_len=_MAX_EVIDENCE) or None
        elif alert.get("moving"):  # held by the incident, told when it moved on, late
            # the last scan is the one after the hold (the latest of them, for several)
            last_scan = format_local_time(alert.get("moved_at"), zone, locale) or last_scan
            if count > 1 or silence is None:
                words = _MOVING.get(locale, _MOVING["en"])
                detail = (words["moved_at"].format(facility=facility) if facility
                          else words["moved"])
            else:
                detail = describe_moving(locale, silence=silence, facility=facility,
                                         in_transit=in_transit)
        else:
            detail = describe_silence(
                locale,
                silence,
                facility=facility,
                in_transit=in_transit,
                scan=scan_text(alert.get("last_event_code"), locale),
                usual=format_duration(_usual_seconds(alert.get("expected_seconds")), locale),
                several=count > 1,
            )
            moved = alert.get("moved_count")
            if isinstance(moved, int) and not isinstance(moved, bool) and 0 < moved < count:
                words = _MOVING.get(locale, _MOVING["en"])
                verb = ("has" if moved == 1 else "have") if locale != "es" else (
                    "se ha" if moved == 1 else "se han")
                some = words["some_moved"].format(n=moved, verb=verb)
                detail = f"{detail} {some}" if detail else some

        def still_ahead(value: object) -> object:  # an estimate passed by now: unknown
            at = _parse_time(value)
            return None if at is None or (when is not None and at <= when) else value

        estimate = still_ahead(alert.get("new_estimate"))
        late = days_late(alert.get("promised_by"), estimate, zone)
        listed = packages[:_MAX_LISTED_PACKAGES]
        dates = alert.get("dates")
        promised: str | None = format_local_time(alert.get("promised_by"), zone, locale)
        shown_estimate = format_local_time(estimate, zone, locale)
        if count > 1 and isinstance(dates, list) and dates:
            # several packages: each with its own promise and estimate (one promise and
            # another package's estimate would say a lateness that no package has)
            own = {str(d[0]): (d[1], still_ahead(d[2])) for d in dates
                   if isinstance(d, list | tuple) and len(d) == 3}
            # the most days late of them all (the message's own pair: the latest package's,
            # also when more packages are left out of the list)
            days = [d for pair in own.values() if (d := days_late(*pair, zone)) is not None]
            late = max([*days, late or 0]) or None
            for i, pid in enumerate(listed):
                pair = own.get(pid)
                if pair is not None:
                    listed[i] = describe_dates(
                        locale, pid, format_local_time(pair[0], zone, locale),
                        format_local_time(pair[1], zone, locale), kind == "back_on_track")
            promised = shown_estimate = None
            dates_listed = True
        else:
            dates_listed = False
        return {
            "kind": kind,
            "name": clean_text(customer.name, max_len=_MAX_NAME),
            "package_id": package_id or (packages[0] if packages else ""),
            "packages": listed,
            "dates_listed": dates_listed,
            "delivered": delivered,
            "more_packages": max(0, count - min(len(packages), _MAX_LISTED_PACKAGES)),
            "package_count": count,
            "facility": facility,
            "cause": describe_cause(alert.get("incident_kind"), cause_at, locale,
                                    past=bool(alert.get("moving"))),
            "days_late": late,
            "detail": detail,
            "in_transit": in_transit,
            "longer_than_usual": beyond_usual,
            "moving": bool(alert.get("moving")),
            "last_scan": last_scan,
            "promised": promised,
            "estimate": shown_estimate,
            "silence": silence,
            "unsubscribe_url": self._unsubscribe_url(customer.recipient_ref),
            "locale": locale,
        }

    def render(self, alert: Mapping[str, Any], customer: Customer,
               when: datetime | None = None) -> RenderedMessage:
        """Subject, text and HTML for an alert, in the customer's language and time zone, as
        sent at ``when`` (see :meth:`context`)."""
        kind = alert.get("kind")
        if kind not in KINDS:
            raise MessageBuildError(
                "alert kind is not one of " + ", ".join(KINDS),
                alert_key=str(alert.get("alert_key")),
            )
        ctx = self.context(alert, customer, when)
        stem = f"{kind}.{ctx['locale']}"
        name = f"{stem}.subject.txt"
        try:
            subject = self._env.get_template(name).render(ctx)
            ctx["subject"] = clean_text(subject, max_len=_MAX_SUBJECT)
            name = f"{stem}.txt"
            text = self._env.get_template(name).render(ctx)
            name = f"{stem}.html"
            html = self._env.get_template(name).render(ctx)
        except jinja2.TemplateError as exc:
            # an edited template (template_dir): the row fails, the queue goes on. The
            # error's own text can quote the context (the customer's data): not shown
            line = getattr(exc, "lineno", None)
            raise MessageBuildError(
                f"template {name}{'' if line is None else f' line {line}'}: "
                f"{type(exc).__name__}", alert_key=str(alert.get("alert_key"))) from None
        return RenderedMessage(subject=ctx["subject"], text=text, html=html)

    def build(
        self, alert: Mapping[str, Any], customer: Customer, /, *, when: datetime
    ) -> EmailMessage:
        """The e-mail for ``alert`` to ``customer``, dated ``when`` (aware).

        Raises :class:`InvalidRecipientError` if the customer's address is unusable and
        :class:`MessageBuildError` if the alert cannot be rendered.
        """
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("when must be a timezone-aware datetime")
        key = alert.get("alert_key")
        if not isinstance(key, str) or not key:
            raise MessageBuildError("alert has no alert_key")
        try:
            recipient = validate_address(customer.email)
        except InvalidRecipientError as exc:
            exc.alert_key = key
            raise
        rendered = self.render(alert, customer, when)
        msg = EmailMessage(policy=_POLICY)
        msg["From"] = self.from_address
        msg["To"] = _address(_display_name(customer.name), recipient.username,
                             recipient.domain)
        msg["Subject"] = rendered.subject
        msg["Date"] = format_datetime(when)
        msg["Message-ID"] = self.message_id(key)
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Delaywatch-Alert-Key"] = _verbatim(
            quote(key[:_MAX_KEY], safe=":-_.~", errors="backslashreplace")
        )
        msg["List-Unsubscribe"] = _verbatim(f"<{self._unsubscribe_url(customer.recipient_ref)}>")
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg.set_content(rendered.text)
        msg.add_alternative(rendered.html, subtype="html")
        return msg
