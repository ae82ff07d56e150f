"""The scan-event parser: one test per dead-letter reason, conversions, and fuzzing."""

from __future__ import annotations

import datetime as dt
import json
import pickle

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.events import (
    CODES,
    REASONS,
    STATUSES,
    TERMINAL_CODES,
    Invalid,
    ScanEvent,
    _parse_strict,
    _synthetic_lines,
    epoch_seconds,
    parse_batch,
    parse_line,
)

BASE = {
    "package_id": "9400109104250532908587",
    "event_code": "A1",
    "facility_id": "JACKSONVILLE-FL-DC",
    "event_time": "2024-11-20T06:13:31Z",
    "ingest_time": "2024-11-20T06:15:00+00:00",
}
HEADER = {
    "event_code": "GX",
    "service": "ground",
    "promised_date": "2024-11-22",
    "promised_by": "2024-11-22T20:00:00-05:00",
    "destination": "PO-34442",
    "recipient_ref": "C00012345",
}
T_EVENT = 1732083211  # 2024-11-20T06:13:31Z
T_INGEST = 1732083300


def line(**changes) -> bytes:
    """BASE with fields changed; a value of ... removes the field."""
    row = dict(BASE)
    for key, value in changes.items():
        if value is ...:
            row.pop(key, None)
        else:
            row[key] = value
    return json.dumps(row).encode()


def test_a_valid_line():
    assert parse_line(line()) == ScanEvent(
        package_id="9400109104250532908587",
        code="A1",
        facility="JACKSONVILLE-FL-DC",
        event_ts=T_EVENT,
        ingest_ts=T_INGEST,
    )


def test_header_fields_are_parsed():
    event = parse_line(line(**HEADER))
    assert isinstance(event, ScanEvent)
    assert event.code == "GX"
    assert event.service == "ground"
    assert event.promised_date == "2024-11-22"
    assert event.promised_by_ts == int(dt.datetime(2024, 11, 23, 1, 0, tzinfo=dt.UTC).timestamp())
    assert event.destination == "PO-34442"
    assert event.recipient_ref == "C00012345"


def test_header_fields_default_to_none():
    event = parse_line(line())
    assert (event.service, event.promised_date, event.promised_by_ts) == (None, None, None)
    assert (event.destination, event.recipient_ref) == (None, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-11-20T06:13:31Z", T_EVENT),
        ("2024-11-20T06:13:31+00:00", T_EVENT),
        ("2024-11-20T01:13:31-05:00", T_EVENT),
        ("2024-11-20T11:58:31+05:45", T_EVENT),  # Nepal
        ("2024-11-19T20:13:31-10:00", T_EVENT),  # the day before, locally
        ("2024-11-20T06:13:31.999+00:00", T_EVENT),  # fractions are truncated
        ("2024-11-20 06:13:31Z", T_EVENT),
        ("2024-11-20t06:13:31z", T_EVENT),
        ("2024-11-20T06:13Z", T_EVENT - 31),  # no seconds: the lenient ISO 8601 path
        ("2024-11-20T01:13-05:00", T_EVENT - 31),
        ("2024-11-20t06:13z", T_EVENT - 31),  # lenient and lower case
    ],
)
def test_times_with_any_offset_convert_to_utc_epoch_seconds(text, expected):
    event = parse_line(line(event_time=text))
    assert isinstance(event, ScanEvent), event
    assert event.event_ts == expected


def test_ingest_time_with_an_offset():
    event = parse_line(line(ingest_time="2024-11-20T07:15:00+01:00"))
    assert event.ingest_ts == T_INGEST


@pytest.mark.parametrize("package_id", ["A", "9400-1093-ab", "-", "X" * 40])
def test_package_ids_of_the_contract_are_accepted(package_id):
    assert parse_line(line(package_id=package_id)).package_id == package_id


def test_tl_may_have_no_facility():
    assert parse_line(line(event_code="TL", facility_id=None)).facility is None
    assert parse_line(line(event_code="TL", facility_id="")).facility is None


def test_unknown_extra_keys_are_ignored():
    assert parse_line(line(additionalProp=None, eventCity="HERNANDO")) == parse_line(line())


def test_trailing_newline_and_str_input():
    assert parse_line(line() + b"\r\n") == parse_line(line())
    assert parse_line(line().decode()) == parse_line(line())


# --------------------------------------------------------------------------------------------
# One test per dead-letter reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"package_id": "P1",', "bad_json"),
        (b"", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (line() + b" trailing", "bad_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"a string"', "not_an_object"),
        (b"null", "not_an_object"),
        (line(package_id=...), "missing_field"),
        (line(event_code=...), "missing_field"),
        (line(facility_id=...), "missing_field"),
        (line(event_time=...), "missing_field"),
        (line(ingest_time=...), "missing_field"),
        (line(package_id=123), "wrong_type"),
        (line(event_code=1), "wrong_type"),
        (line(facility_id=7), "wrong_type"),
        (line(event_time=1732083211), "wrong_type"),
        (line(ingest_time=["2024-11-20T06:15:00Z"]), "wrong_type"),
        (line(event_code="ZZ"), "unknown_code"),
        (line(event_code="of"), "unknown_code"),
        (line(event_code=""), "unknown_code"),
        (line(event_time="2024-11-20T06:13:31"), "no_offset"),
        (line(ingest_time="2024-11-20T06:15:00"), "no_offset"),
        (line(event_time="2024-11-20T06:13"), "no_offset"),  # lenient path, still no offset
        (line(event_time="2024-11-20"), "no_offset"),
        (line(event_time="yesterday"), "bad_time"),
        (line(event_time="2024-13-20T06:13:31Z"), "bad_time"),
        (line(event_time="2024-11-20T24:13:31Z"), "bad_time"),
        (line(ingest_time=""), "bad_time"),
        (line(event_time="1999-12-31T23:59:59Z"), "absurd_time"),
        (line(ingest_time="1970-01-01T00:00:00Z"), "absurd_time"),
        (line(event_time="2024-11-21T07:00:00Z"), "absurd_time"),  # > 1 day after ingest
        (line(ingest_time="2025-03-01T00:00:00Z"), "absurd_time"),  # > 90 days after event
        (line(package_id=""), "bad_package_id"),
        (line(package_id="X" * 41), "bad_package_id"),
        (line(package_id="94001 0910"), "bad_package_id"),
        (line(package_id="9400\r\n1"), "bad_package_id"),
        (line(package_id="9400\x001"), "bad_package_id"),
        (line(package_id="94001é"), "bad_package_id"),
        (line(package_id="9400_1"), "bad_package_id"),
        (line(facility_id="PO\r\n1"), "bad_facility"),
        (line(facility_id="PO\x001"), "bad_facility"),
        (line(facility_id="F" * 101), "bad_facility"),
        (line(facility_id=None), "missing_facility"),
        (line(event_code="07", facility_id=""), "missing_facility"),
        (line(**HEADER | {"service": "air"}), "bad_header"),
        (line(**HEADER | {"service": 3}), "bad_header"),
        (line(**HEADER | {"promised_date": "2024-11-31"}), "bad_header"),
        (line(**HEADER | {"promised_by": "next week"}), "bad_header"),
        (line(**HEADER | {"promised_by": "2024-11-22T20:00:00"}), "bad_header"),
        (line(**HEADER | {"promised_by": "2024-11-22T20:00-05:00 x"}), "bad_header"),
        (line(**HEADER | {"promised_by": "1990-11-22T20:00:00Z"}), "bad_header"),
        (line(**HEADER | {"destination": ""}), "bad_header"),
        (line(**HEADER | {"destination": 12}), "bad_header"),
        (line(**HEADER | {"recipient_ref": ""}), "bad_header"),
        (line(**HEADER | {"recipient_ref": "R" * 65}), "bad_header"),
        (line(**HEADER | {"recipient_ref": "C1\nC2"}), "bad_header"),
    ],
)
def test_dead_letter_reasons(raw, reason):
    result = parse_line(raw)
    assert isinstance(result, Invalid), result
    assert result.reason == reason, result.detail


def test_every_reason_is_tested():
    tested = {reason for _, reason in test_dead_letter_reasons.pytestmark[0].args[1]}
    assert tested == REASONS


@pytest.mark.parametrize("field", ["recipient_ref", "destination"])
@pytest.mark.parametrize(
    "value", ["Jane Doe\n<jane@example.com>", "jane@example.com " * 10, 42, ["jane"], ""]
)
def test_details_never_echo_recipient_fields(field, value):
    result = parse_line(line(**HEADER | {field: value}))
    assert result.reason == "bad_header"
    assert field in result.detail
    assert "jane" not in result.detail
    assert "42" not in result.detail


@pytest.mark.parametrize(("field", "reason"), [("event_code", "unknown_code"),
                                               ("event_time", "bad_time"),
                                               ("ingest_time", "bad_time")])
def test_details_show_a_bad_code_or_time_but_not_a_name_in_its_place(field, reason):
    """A garbled line can carry a name or an address where a code or a time belongs: the
    detail shows the value only if it looks like a code or a time, else its length."""
    shown = parse_line(line(**{field: "ZZ" if field == "event_code" else "2024-13-45T99:00"}))
    assert shown.reason == reason
    assert ("'ZZ'" if field == "event_code" else "'2024-13-45T99:00'") in shown.detail
    hidden = parse_line(line(**{field: "Jane Doe, 12 Elm Street"}))
    assert hidden.reason == reason, hidden
    assert "Jane" not in hidden.detail and "Elm" not in hidden.detail
    assert "23 characters" in hidden.detail


def test_details_are_short_single_line_and_printable():
    result = parse_line(line(event_time="\r\n\x00" + "9" * 5000))
    assert result.reason == "bad_time"
    assert len(result.detail) <= 200
    assert result.detail.isprintable()


# --------------------------------------------------------------------------------------------
# Batches


def test_parse_batch_keeps_order_and_indexes():
    good_a, good_b = line(), line(package_id="P2", event_code="07")
    events, invalids = parse_batch([good_a, b"{", good_b, b"[]"])
    assert [e.package_id for e in events] == ["9400109104250532908587", "P2"]
    assert [(i, bad.reason) for i, bad in invalids] == [(1, "bad_json"), (3, "not_an_object")]


def test_parse_batch_never_merges_lines():
    # A value split over two lines plus two values on one line: decode_lines would accept
    # these as three events; line by line, each of them is bad.
    first, second = line()[:40], line()[40:]
    events, invalids = parse_batch([first, second, line() + b" " + line()])
    assert events == []
    assert [i for i, _ in invalids] == [0, 1, 2]


def test_synthetic_benchmark_lines():
    lines = _synthetic_lines(2000, seed=1)
    events, invalids = parse_batch(lines)
    assert len(events) + len(invalids) == 2000
    assert {bad.reason for _, bad in invalids} == {"unknown_code"}
    assert 5 <= len(invalids) <= 40
    assert sum(e.service is not None for e in events) >= 150


# --------------------------------------------------------------------------------------------
# The model and the code tables


def test_scan_events_are_frozen_and_picklable():
    event = parse_line(line(**HEADER))
    with pytest.raises(AttributeError):
        event.code = "01"
    assert pickle.loads(pickle.dumps(event)) == event
    assert msgspec.json.decode(msgspec.json.encode(event), type=ScanEvent) == event


def test_status_and_terminal():
    assert parse_line(line()).status == "arrived"
    assert not parse_line(line()).terminal
    assert parse_line(line(event_code="01")).terminal
    assert parse_line(line(event_code="01")).status == "delivered"


def test_code_tables():
    simulator = {"GX", "03", "SF", "10", "A1", "T1", "TL", "08", "07", "OF", "02", "01"}
    assert simulator <= CODES.keys()
    assert {info.status for info in CODES.values()} == set(STATUSES)
    assert TERMINAL_CODES == {"01", "09", "11", "31"} | {str(n) for n in range(21, 30)}
    assert TERMINAL_CODES <= CODES.keys()
    assert {CODES[c].status for c in TERMINAL_CODES} == {"delivered", "returned"}
    assert CODES["OF"].status == "out_for_delivery"
    assert CODES["07"].status == "at_delivery_unit"
    assert CODES["02"].status == "attempted"
    assert CODES["GX"].status == "pending"
    assert CODES["03"].status == "accepted"
    assert CODES["T1"].status == "departed"
    assert CODES["TL"].status == "in_transit"
    assert CODES["71"].status == "exception"


# --------------------------------------------------------------------------------------------
# Fuzzing: never raises, always a ScanEvent or an Invalid with a known reason


def check(result):
    assert isinstance(result, ScanEvent | Invalid)
    if isinstance(result, Invalid):
        assert result.reason in REASONS
        assert len(result.detail) <= 200
        assert result.detail.isprintable()
    return result


@given(st.binary(max_size=400))
def test_arbitrary_bytes(raw):
    check(parse_line(raw))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_arbitrary_json(value):
    check(parse_line(json.dumps(value)))


fields = list(BASE) + list(HEADER)
nasty_text = st.text(alphabet=st.sampled_from("aZ09-:+TZ \r\n\x00\t\u2028é€"), max_size=30)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(fields),
        st.none() | st.integers() | nasty_text | st.sampled_from(list(CODES)) | json_values,
    )
)
def test_arbitrary_values_for_known_fields(changes):
    raw = json.dumps(BASE | changes).encode()
    result = check(parse_line(raw))
    if isinstance(result, ScanEvent):
        for text in (result.package_id, result.facility or "", result.recipient_ref or ""):
            assert "\r" not in text and "\n" not in text and "\x00" not in text


@given(
    st.sampled_from(["package_id", "facility_id", "recipient_ref", "destination"]),
    st.text(max_size=3),
    st.sampled_from(["\r", "\n", "\x00", "\r\n", "\x1b"]),
    st.text(max_size=3),
)
def test_control_characters_in_fields_are_refused(field, before, control, after):
    result = parse_line(line(**HEADER | {field: before + control + after}))
    assert isinstance(result, Invalid)
    assert control not in result.detail


@given(
    st.datetimes(
        min_value=dt.datetime(2001, 1, 1),
        max_value=dt.datetime(2099, 1, 1),
        timezones=st.sampled_from(
            [dt.UTC]
            + [dt.timezone(dt.timedelta(minutes=m)) for m in (-600, -300, -210, 60, 330, 345)]
        ),
    ),
    st.sampled_from(["seconds", "milliseconds", "microseconds", "minutes"]),
    st.integers(0, 3600),
)
def test_event_time_round_trip(when, timespec, lag):
    text = when.isoformat(timespec=timespec)
    ingest = (when + dt.timedelta(seconds=lag)).isoformat()
    event = check(parse_line(line(event_time=text, ingest_time=ingest)))
    expected = dt.datetime.fromisoformat(text).timestamp()
    assert event.event_ts == int(expected)


# strict RFC 3339, lenient ISO 8601 (the retry), no offset, not a time, not a string
times = st.sampled_from([
    "2024-11-20T06:13:31Z", "2024-11-20T06:13:31+00:00", "2024-11-20T01:13:31-05:00",
    "2024-11-20T06:13:31.999+05:30", "2024-11-20t06:13:31z", "2024-11-20 06:13:31Z",
    "2024-11-20T06:13+01:00", "2024-11-20T06:13:31", "2024-11-20", "1999-12-31T23:59:59Z",
    "2024-11-20T06:13:3\\u0031Z", "", "later", 1732083211, None,
])
timed_lines = st.builds(
    lambda event, ingest, promised, header: line(**(
        (HEADER | {"promised_by": promised} if header else {})
        | {"event_time": event, "ingest_time": ingest})).replace(b"\\\\u", b"\\u"),
    times, times, times, st.booleans())


@given(st.lists(st.one_of(st.binary(max_size=60), st.just(line()), st.just(line(**HEADER)),
                          timed_lines), max_size=40))
def test_parse_batch_agrees_with_parse_line(lines):
    """parse_batch remembers converted time texts: every line, whatever its times and
    whatever came before it (a text seen as good, bad or lenient), gives the result of the
    plain strict decoder (these lines have no key twice), and parse_line's."""
    events, invalids = parse_batch(lines)
    singles = [_parse_strict(raw) for raw in lines]
    assert singles == [parse_line(raw) for raw in lines]
    assert events == [r for r in singles if isinstance(r, ScanEvent)]
    assert invalids == [(i, r) for i, r in enumerate(singles) if isinstance(r, Invalid)]


def test_parse_batch_leaves_the_time_cache_where_times_do_not_repeat():
    """Past the probe, a batch of ever-new times (the synthetic lines') is parsed without the
    cache, one of repeated times with it; both give parse_line's results, dead letters
    included, at the right indexes."""
    from detectors import events as module

    fresh = _synthetic_lines(3 * module._PROBE, seed=7, invalid_rate=0.05)
    repeated = [line(package_id=f"P{i}", event_time=f"2024-11-20T06:13:{i % 7:02d}Z")
                for i in range(3 * module._PROBE)] + [b"{", line(event_time="later")]
    for batch in (fresh, repeated):
        module._EPOCHS.clear()
        events, invalids = parse_batch(batch)
        remembered = len(module._EPOCHS)
        singles = [_parse_strict(raw) for raw in batch]
        assert events == [r for r in singles if isinstance(r, ScanEvent)]
        assert invalids == [(i, r) for i, r in enumerate(singles) if isinstance(r, Invalid)]
        assert len(invalids) >= 2
        if batch is fresh:  # the probe's lines bring 2-3 new texts each, the rest none
            assert remembered <= 3 * module._PROBE < 2 * len(batch)
    assert remembered == 8  # 7 event times and the one ingest time


def _twice(line: bytes, key: str, first: object) -> bytes:
    """``line`` with ``key`` given twice: ``first``, then the line's own value."""
    return line.replace(b"{", b"{" + json.dumps({key: first}).encode()[1:-1] + b", ", 1)


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_a_key_given_twice_counts_with_its_last_value(cached):
    """As in json: the last value of a key counts, for times too (their earlier values are
    not checked), with the time cache or without (a batch that left it): a line's result
    never depends on the batch it came in."""
    from detectors import events as module

    lines = [
        _twice(line(), "event_time", "2024-11-20T06:13:31"),  # no offset, then good
        _twice(line(), "event_time", "yesterday"),
        _twice(line(), "ingest_time", 12),  # a number: not a string, checked by msgspec
        line().replace(b'"ingest_time"', b'"event_time": "2024-11-20T06:13:31Z", '
                       b'"event_time": "2024-11-20T06:13:31", "ingest_time"'),  # good, none
        _twice(line(**HEADER), "promised_by", "soon"),
        _twice(line(), "facility_id", 7),  # not a time: every value checked
    ]
    module._EPOCHS.clear()
    # all-new times first: the batch leaves the cache after its probe
    before = [] if cached else _synthetic_lines(2 * module._PROBE, invalid_rate=0.0)
    events, invalids = parse_batch(before + lines)
    if not cached:
        assert len(module._EPOCHS) <= 3 * module._PROBE
    bad = {i - len(before): r for i, r in invalids if i >= len(before)}
    ours = iter(e for e in events if e.package_id == BASE["package_id"])
    got = [bad[i] if i in bad else next(ours) for i in range(len(lines))]
    assert got == [parse_line(raw) for raw in lines]
    first, second, third, fourth, fifth, sixth = (parse_line(raw) for raw in lines)
    assert first.event_ts == second.event_ts == T_EVENT  # the last value
    assert third.reason == "wrong_type"
    assert fourth.reason == "no_offset"  # the last value has none
    assert fifth.promised_by_ts == epoch_seconds(HEADER["promised_by"])
    assert sixth.reason == "wrong_type"


def test_the_time_cache_clears_when_full_and_str_lines_parse_alike(monkeypatch):
    from detectors import events as module

    monkeypatch.setattr(module, "_EPOCHS_MAX", 5)
    module._EPOCHS.clear()
    lines = [line(event_time=f"2024-11-20T06:{m:02d}:31Z", ingest_time=f"2024-11-20T07:{m:02d}:00Z")
             for m in range(30)] * 2
    lines += [raw.decode() for raw in lines[:10]]  # str lines, as parse_line takes them
    events, invalids = parse_batch(lines)
    assert not invalids
    assert events == [_parse_strict(raw) for raw in lines]
    assert len({e.event_ts for e in events}) == 30
    assert len(module._EPOCHS) <= 5


@pytest.mark.parametrize("field", [*BASE, "destination", "recipient_ref"])
def test_bytes_that_are_not_utf8_inside_a_string_are_a_dead_letter(field: str) -> None:
    """A Latin-1 byte inside a JSON string (a feed writer that is not UTF-8): msgspec raises
    UnicodeDecodeError, not a DecodeError; it crashed the flow's parse step."""
    raw = json.dumps(BASE | {field: "Caf\u00e9"}, ensure_ascii=False).encode("latin-1")
    for result in (parse_line(raw), parse_batch([raw])[1][0][1],
                   parse_batch([line()] * 249 + [raw])[1][-1][1]):
        assert result == Invalid("bad_json", "the line is not valid UTF-8 text")


@given(st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1,
               max_size=3), st.sampled_from(list(BASE) + ["other"]))
def test_a_str_line_with_a_lone_surrogate_is_a_dead_letter_not_an_exception(bad, field):
    raw = json.dumps(BASE | {field: bad}, ensure_ascii=False)  # str: no UTF-8 form
    for result in (parse_line(raw), parse_batch([raw] * 250)[1][-1][1]):
        assert result == Invalid("bad_json", "the line is not valid UTF-8 text")


@pytest.mark.parametrize("value", ["Jane Doe jane@example.com", "O'Brien Street 5", 'a"b',
                                   "x - at `jane@example.com"])
def test_a_dead_letter_detail_never_echoes_a_header_value_that_may_be_personal(
        value: str) -> None:
    """A garbled header can carry a name or an address in any field: the detail names the
    field and why, and shows a value only if it looks like a code or a time."""
    line = json.dumps({"package_id": "P1", "event_code": "GX", "facility_id": "O-1",
                       "event_time": "2026-11-01T00:00:00+00:00",
                       "ingest_time": "2026-11-01T00:00:00+00:00", "service": value}).encode()
    found = parse_line(line)
    assert isinstance(found, Invalid) and found.reason == "bad_header"
    assert found.detail.startswith("service: Invalid enum value (")
    assert value not in found.detail and "Brien" not in found.detail
    assert "jane" not in found.detail and found.detail.endswith("- at `$.service`")
    short = parse_line(line.replace(json.dumps(value).encode(), b'"fast"'))
    assert "'fast'" in short.detail  # a code-like value is shown, to fix the feed by


def test_a_bad_time_is_shown_only_if_it_reads_as_a_time() -> None:
    """A time field holding something else (a phone number) is not echoed; a malformed
    date is, for the feed's owners to find it."""
    def line(value: str) -> bytes:
        return json.dumps({"package_id": "P1", "event_code": "A1", "facility_id": "F1",
                           "event_time": value,
                           "ingest_time": "2026-11-01T00:00:00+00:00"}).encode()

    phone = parse_line(line("+1 555-123-4567"))
    assert isinstance(phone, Invalid) and phone.reason == "bad_time"
    assert "555" not in phone.detail and "not shown" in phone.detail
    date = parse_line(line("2026-13-01T00:00:00+00:00"))
    assert isinstance(date, Invalid) and "'2026-13-01T00:00:00+00:00'" in date.detail
