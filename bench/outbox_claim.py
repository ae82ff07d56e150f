"""Time of ``Outbox.claim_due`` on large outboxes, where a customer's messages go in order.

    .venv/bin/python bench/outbox_claim.py [--rows 200000] [--dir /tmp]

``claim_due`` runs inside the outbox's write lock, which the flow's sink waits for (10 s at
most), so it must stay short whatever the outbox holds. Each case fills a fresh outbox, then
times two claims of 100 rows at the same time (the first also moves the rows it finds held
behind a customer's earlier message to that message's due time, once; the second is what
every later claim costs). Cases, ``N`` = ``--rows``:

* ``sent_history``: N sent rows and 1,000 due ones (a long-running outbox);
* ``backlog``: N due rows for N/4 customers (the sender was down);
* ``night``: N/2 customers, each with a row deferred by quiet hours and a later due row;
* ``one_customer_blocked``: one customer, a row waiting for a retry, N due rows behind it;
* ``one_customer_free``: one customer with N/10 due rows and nothing in the way.

Prints one JSON line per case. Results go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from notifiers.outbox import Outbox

T0 = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)


def _fill(path: Path, rows: list[tuple[str, str, float]]) -> Outbox:
    box = Outbox(path)
    ts = T0.timestamp()
    with box._write() as conn:  # (bulk, as the sink's enqueue_many would, without payloads)
        conn.executemany(
            "INSERT INTO outbox (alert_key, recipient_ref, kind, payload, status, attempts,"
            " next_attempt_at, created_at, updated_at) VALUES (?, ?, 'stall', '{}', ?, 0, ?,"
            " ?, ?)",
            [(f"K{i}", ref, status, ts + due, ts, ts) for i, (ref, status, due) in
             enumerate(rows)])
    return box


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    n = args.rows
    cases = {
        "sent_history": [(f"r{i % 50_000}", "sent", -10.0) for i in range(n)]
        + [(f"r{i}", "pending", -1.0) for i in range(1000)],
        "backlog": [(f"r{i % (n // 4)}", "pending", -1.0) for i in range(n)],
        "night": [(f"r{i}", "pending", 36_000.0) for i in range(n // 2)]
        + [(f"r{i}", "pending", -1.0) for i in range(n // 2)],
        "one_customer_blocked": [("hot", "pending", 600.0)]
        + [("hot", "pending", -1.0)] * n,
        "one_customer_free": [("hot", "pending", -1.0)] * (n // 10),
    }
    work = Path(tempfile.mkdtemp(prefix="outbox_claim_", dir=args.dir))
    for name, rows in cases.items():
        box = _fill(work / f"{name}.sqlite", rows)
        times, got = [], []
        for _ in range(2):
            t = time.perf_counter()
            claimed = box.claim_due(T0, 100)
            times.append(round((time.perf_counter() - t) * 1000, 1))
            got.append(len(claimed))
            for row in claimed:  # sent, as a drain would before its next claim
                box.mark_sent(row.alert_key, T0)
        box.close()
        print(json.dumps({"case": name, "rows": len(rows), "claims_ms": times,
                          "claimed": got}))


if __name__ == "__main__":
    main()
