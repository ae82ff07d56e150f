"""RFC 8058 one-click unsubscribe tokens: an HMAC of the recipient_ref.

The token carries the (pseudonymous) ``recipient_ref`` and a SHA-256 HMAC over it, so the
endpoint needs no database lookup to know whom to unsubscribe and nobody can forge one for
somebody else. The endpoint must unsubscribe only on POST (``List-Unsubscribe=One-Click``) and
be idempotent (:meth:`notifiers.outbox.Outbox.unsubscribe` is); a GET only shows a page.

>>> token = make_token("r-000042", b"secret")
>>> verify_unsubscribe_token(token, b"secret")
'r-000042'
>>> verify_unsubscribe_token(token, b"other secret") is None
True
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from urllib.parse import urlencode, urlsplit

__all__ = ["make_token", "unsubscribe_url", "verify_unsubscribe_token"]

_CONTEXT = b"delaywatch-unsubscribe-v1\x00"
_MAC_BYTES = 16
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _secret(secret: bytes | str) -> bytes:
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise ValueError("the unsubscribe secret must not be empty")
    return raw


def _mac(recipient_ref: str, secret: bytes | str) -> bytes:
    digest = hmac.new(_secret(secret), _CONTEXT + recipient_ref.encode("utf-8"), hashlib.sha256)
    return digest.digest()[:_MAC_BYTES]


def make_token(recipient_ref: str, secret: bytes | str) -> str:
    """URL-safe token ``<base64url(recipient_ref)>.<base64url(mac)>``."""
    if not recipient_ref:
        raise ValueError("recipient_ref must not be empty")
    return f"{_b64(recipient_ref.encode('utf-8'))}.{_b64(_mac(recipient_ref, secret))}"


def verify_unsubscribe_token(token: str, secret: bytes | str) -> str | None:
    """The recipient_ref the token was made for, or None if it is malformed or forged."""
    if not isinstance(token, str) or len(token) > 1024 or token.count(".") != 1:
        return None
    ref_part, mac_part = token.split(".")
    if not _B64URL.fullmatch(ref_part) or not _B64URL.fullmatch(mac_part):
        return None
    try:
        raw_ref, mac = _unb64(ref_part), _unb64(mac_part)
        ref = raw_ref.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    if _b64(raw_ref) != ref_part or _b64(mac) != mac_part:  # only the canonical spelling
        return None
    if not ref or not hmac.compare_digest(mac, _mac(ref, secret)):
        return None
    return ref


def unsubscribe_url(base_url: str, recipient_ref: str, secret: bytes | str) -> str:
    """``base_url`` with ``?token=...`` appended; ``base_url`` must be https (RFC 8058)."""
    parts = urlsplit(base_url)
    if parts.scheme != "https" or not parts.netloc or parts.fragment:
        raise ValueError("the unsubscribe URL must be an absolute https URL (RFC 8058)")
    if not base_url.isascii() or any(ch.isspace() or ch in '<>"' for ch in base_url):
        raise ValueError('the unsubscribe URL must be plain ASCII without spaces or <>"')
    if len(base_url) > 512 or not base_url.isprintable():
        raise ValueError("the unsubscribe URL must be printable and at most 512 characters")
    separator = "&" if parts.query else "?"
    return f"{base_url}{separator}{urlencode({'token': make_token(recipient_ref, secret)})}"
