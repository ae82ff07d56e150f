"""RFC 8058 unsubscribe tokens, and the customer table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from notifiers.customers import load_customers
from notifiers.errors import CustomerTableError
from notifiers.metrics import make_notifier_metrics
from notifiers.unsubscribe import make_token, unsubscribe_url, verify_unsubscribe_token

SECRET = b"k" * 32


def test_token_round_trip_and_forgeries() -> None:
    token = make_token("r-0042", SECRET)
    assert verify_unsubscribe_token(token, SECRET) == "r-0042"
    assert verify_unsubscribe_token(token, b"another secret") is None
    ref_part, mac_part = token.split(".")
    other_ref = make_token("r-0043", SECRET).split(".")[0]
    assert verify_unsubscribe_token(f"{other_ref}.{mac_part}", SECRET) is None  # swapped ref
    flipped = mac_part[:-1] + ("A" if mac_part[-1] != "A" else "B")
    assert verify_unsubscribe_token(f"{ref_part}.{flipped}", SECRET) is None
    for junk in ("", ".", "a.b.c", token + ".", "!!!.???", "x" * 5000, f"{ref_part}."):
        assert verify_unsubscribe_token(junk, SECRET) is None
    assert make_token("r-0042", SECRET) == token  # stable: a re-sent mail carries the same link


@given(ref=st.text(min_size=1, max_size=64), junk=st.text(max_size=200))
def test_property_tokens_verify_only_for_their_ref(ref: str, junk: str) -> None:
    ref = ref.encode("utf-8", "replace").decode("utf-8")  # no lone surrogates in a ref
    assert verify_unsubscribe_token(make_token(ref, SECRET), SECRET) == ref
    found = verify_unsubscribe_token(junk, SECRET)
    assert found is None or make_token(found, SECRET) == junk


def test_unsubscribe_url() -> None:
    url = unsubscribe_url("https://n.example/u", "r-1", SECRET)
    assert url.startswith("https://n.example/u?token=")
    token = url.split("token=")[1]
    assert verify_unsubscribe_token(token, SECRET) == "r-1"
    assert unsubscribe_url("https://n.example/u?list=alerts", "r-1", SECRET).startswith(
        "https://n.example/u?list=alerts&token="
    )
    for bad in ("http://n.example/u", "https:///u", "https://n.example/u#frag", "//n.example/u"):
        with pytest.raises(ValueError):
            unsubscribe_url(bad, "r-1", SECRET)
    with pytest.raises(ValueError):
        make_token("r-1", b"")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_customers(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.csv",
        "recipient_ref,name,email,locale,tz\n"
        "r-1,Ana Pérez,ana@mail.example,es,Europe/Madrid\n"
        "r-2,Bob,bob@mail.example,EN,America/Chicago\n",
    )
    customers = load_customers(path)
    assert set(customers) == {"r-1", "r-2"}
    assert customers["r-1"].locale == "es" and customers["r-2"].locale == "en"
    assert customers["r-1"].zone.key == "Europe/Madrid"
    assert "ana@mail.example" not in repr(customers["r-1"])
    assert "Pérez" not in repr(customers["r-1"])


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ('r-1,Ana,"ana@mail.example\r\nBcc: x@evil.example",en,UTC', "email"),
        ("r-1,Ana,ana@mail.example\x00,en,UTC", "email"),
        ('r-1,Ana,"ana@mail.example, x@evil.example",en,UTC', "email"),
        ("r-1,Ana,Ana <ana@mail.example>,en,UTC", "email"),
        ("r-1,Ana,ana@mail.example,fr,UTC", "locale"),
        ("r-1,Ana,ana@mail.example,en,Mars/Olympus", "tz"),
        (",Ana,ana@mail.example,en,UTC", "recipient_ref"),
    ],
)
def test_bad_customer_rows_name_line_and_column_not_the_value(
    tmp_path: Path, row: str, column: str
) -> None:
    path = write(tmp_path / "c.csv", "recipient_ref,name,email,locale,tz\n" + row + "\n")
    with pytest.raises(CustomerTableError) as info:
        load_customers(path)
    text = str(info.value)
    assert re.search(rf"c\.csv:\d+: column {column} ", text), text
    assert "ana@mail.example" not in text and "evil" not in text


def test_missing_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "recipient_ref,name,locale\nr-1,Ana,en\n")
    with pytest.raises(CustomerTableError, match="missing column"):
        load_customers(path)


def test_metrics_factory_uses_the_given_registry() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    ma = make_notifier_metrics(a)
    make_notifier_metrics(b)  # a second registry: no clash
    ma.failed.labels(reason="transient").inc()
    ma.duplicates.inc(3)
    assert a.get_sample_value("delaywatch_emails_failed_total", {"reason": "transient"}) == 1
    assert a.get_sample_value("delaywatch_emails_failed_total", {"reason": "permanent"}) == 0
    assert a.get_sample_value("delaywatch_outbox_duplicates_total") == 3
    assert b.get_sample_value("delaywatch_outbox_duplicates_total") == 0
    names = {f.name for f in a.collect()}
    assert names == {
        "delaywatch_emails_sent",
        "delaywatch_emails_failed",
        "delaywatch_email_attempts",
        "delaywatch_emails_unconfirmed",
        "delaywatch_emails_superseded",
        "delaywatch_outbox_depth",
        "delaywatch_outbox_oldest_pending_age_seconds",
        "delaywatch_outbox_duplicates",
    }
