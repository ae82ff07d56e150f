"""Making untrusted text safe for a one-line header or a line of a message.

The standard library refuses CR and LF in header values, but not everything else:
an RFC 2047 encoded word such as ``=?UTF-8?Q?=0D=0A?=Bcc:`` is decoded when the header is
set and re-emitted as a real line break, and NUL bytes or Unicode line separators pass through.
:func:`clean_text` therefore decodes encoded words, checks what they decode to, replaces every
control, format and separator character with a space, collapses whitespace, breaks up any
``=?`` that is left (so nothing can be read as an encoded word again) and caps the length.

>>> clean_text("CHICAGO IL NDC\\r\\nBcc: x@example.com", max_len=60)
'CHICAGO IL NDC Bcc: x@example.com'
>>> clean_text("=?UTF-8?Q?=0A?=Bcc: evil", max_len=60)
'Bcc: evil'
>>> clean_text("a" * 50, max_len=10)
'aaaaaaaaa…'
"""

from __future__ import annotations

import unicodedata
from email.header import decode_header

__all__ = ["clean_text"]

# Unicode categories that never belong in a one-line field: controls (incl. CR, LF, NUL, TAB,
# NEL), format characters (bidi overrides, zero-width), line/paragraph separators, surrogates.
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_MAX_DECODE_ROUNDS = 3


def _decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words; undecodable input comes back unchanged."""
    try:
        parts = decode_header(text)
    except Exception:  # malformed base64 / quoted-printable: leave as is, defused below
        return text
    out = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        if charset is None:  # plain text between encoded words (stdlib's own encoding)
            out.append(chunk.decode("raw-unicode-escape", errors="replace"))
            continue
        try:
            out.append(chunk.decode(charset, errors="replace"))
        except LookupError:  # unknown charset name
            out.append(chunk.decode("utf-8", errors="replace"))
    return "".join(out)


def clean_text(value: object, *, max_len: int) -> str:
    """Return ``value`` as a single safe line of at most ``max_len`` characters."""
    if max_len < 1:
        raise ValueError("max_len must be positive")
    text = "" if value is None else str(value)
    text = text[: max_len * 8]  # bound the work on huge inputs before decoding
    for _ in range(_MAX_DECODE_ROUNDS):
        if "=?" not in text:
            break
        decoded = _decode_words(text)
        if decoded == text:
            break
        text = decoded
    text = "".join(" " if unicodedata.category(ch) in _DROP_CATEGORIES else ch for ch in text)
    text = " ".join(text.split())
    while "=?" in text:  # whatever still looks like the start of an encoded word
        text = text.replace("=?", "= ?")
    if len(text) > max_len:
        text = text[: max_len - 1].rstrip() + "…"
    return text
