"""The customer table: the only place personal data (names, e-mail addresses) comes from.

``customers.csv`` has the columns ``recipient_ref,name,email,locale,tz`` (see docs/schemas.md).
A :class:`Customer` never shows its name or address in ``repr``, so it can be logged safely.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.headerregistry import Address
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import idna

from notifiers.errors import CustomerTableError, InvalidRecipientError

__all__ = ["LOCALES", "Customer", "load_customers", "validate_address"]

Locale = Literal["en", "es"]
LOCALES: tuple[str, ...] = ("en", "es")
_COLUMNS = ("recipient_ref", "name", "email", "locale", "tz")


def validate_address(addr_spec: str) -> Address:
    """Parse a bare addr-spec (``user@example.com``) strictly or raise InvalidRecipientError.

    Rejects anything with whitespace, control or format characters (a zero-width space
    copied in with the address would reach the relay and bounce), a display name, angle
    brackets or more than one address, so a table entry can never smuggle in a second
    recipient. An internationalized domain comes back in its ASCII form (IDNA 2008 with
    UTS #46 mapping), which every relay takes, also one without SMTPUTF8; a non-ASCII local
    part still needs SMTPUTF8.
    The error text never contains the address.

    >>> validate_address("anna@Bücher.example").addr_spec
    'anna@xn--bcher-kva.example'
    """
    if (
        not isinstance(addr_spec, str)
        or not 3 <= len(addr_spec) <= 254
        or any(ch.isspace() or not ch.isprintable() for ch in addr_spec)  # (zero-width too)
        or any(ch in addr_spec for ch in '<>,;"()[]\\')
        or addr_spec.count("@") != 1
    ):
        raise InvalidRecipientError("recipient address is not a plain addr-spec")
    local, _, domain = addr_spec.partition("@")
    if not local or not domain or "." not in domain or domain.startswith(".") or ".." in domain:
        raise InvalidRecipientError("recipient address is not a plain addr-spec")
    try:
        address = Address(addr_spec=addr_spec)
    except (HeaderParseError, ValueError, IndexError, TypeError):
        raise InvalidRecipientError("recipient address is not a plain addr-spec") from None
    if address.addr_spec != addr_spec:
        raise InvalidRecipientError("recipient address does not round-trip")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            raise InvalidRecipientError(
                "recipient domain is not a valid internationalized domain name") from None
        address = Address(username=address.username, domain=domain)
    return address


@dataclass(frozen=True, slots=True)
class Customer:
    """One row of the customer table. ``name`` and ``email`` are hidden from ``repr``."""

    recipient_ref: str
    name: str = field(repr=False)
    email: str = field(repr=False)
    locale: Locale = "en"
    tz: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)


def load_customers(
    path: str | Path, *, bad: list[tuple[str, str]] | None = None
) -> dict[str, Customer]:
    """Read ``customers.csv`` into ``{recipient_ref: Customer}``.

    Every row is validated (address, locale in en|es, IANA zone); a bad row raises
    :class:`CustomerTableError` naming the file line and the column, never a value (not even
    the row's recipient_ref: in a row that lost a field, that column holds a name or an
    address). Given a ``bad`` list, a bad row is skipped instead, and ``bad`` gets (its
    recipient_ref column, that error), in file order: a sender holds those customers'
    messages, and those of customers missing from the table (a row whose recipient_ref was
    lost or shifted is theirs), until it is mended, and sends everyone else's. A table
    without the columns always raises.
    """
    customers: dict[str, Customer] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise CustomerTableError(
                f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(_COLUMNS)}"
            )
        for row in reader:
            try:
                customer = _parse_row(row, where=f"{path}:{reader.line_num}")
            except CustomerTableError as exc:
                if bad is None:
                    raise
                bad.append(((row.get("recipient_ref") or "").strip(), str(exc)))
                continue
            customers[customer.recipient_ref] = customer
    return customers


def _parse_row(row: Mapping[str, str | None], *, where: str) -> Customer:
    ref = (row.get("recipient_ref") or "").strip()
    if not ref:
        raise CustomerTableError(f"{where}: column recipient_ref is empty")
    email = (row.get("email") or "").strip()
    try:
        validate_address(email)
    except InvalidRecipientError:
        raise CustomerTableError(
            f"{where}: column email is not a plain address"
        ) from None
    locale = (row.get("locale") or "").strip().lower()
    if locale not in LOCALES:
        raise CustomerTableError(
            f"{where}: column locale must be one of {', '.join(LOCALES)}"
        )
    tz = (row.get("tz") or "").strip()
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CustomerTableError(
            f"{where}: column tz must be an IANA zone name"
        ) from None
    return Customer(
        recipient_ref=ref,
        name=(row.get("name") or "").strip(),
        email=email,
        locale=locale,  # type: ignore[arg-type]
        tz=tz,
    )
