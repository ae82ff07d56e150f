"""A small SMTP server for tests and the demo: stores every accepted message in a Maildir.

It stands in for the customer's mail server. It can be scripted to fail: a rule
``ADDRESS=ACTION[xN][/STAGE]`` answers ``ACTION`` (an SMTP code such as ``451`` or ``550``, or
``drop`` to close the connection without a reply) to mail for ``ADDRESS`` (``*`` for any), the
first ``N`` times (always if ``xN`` is left out), at ``STAGE`` ``rcpt`` (default for codes) or
``data`` (default for ``drop``)::

    python -m notifiers.smtpd --dir runs/mail --port 2525 \\
        --fail 'slow@example.com=451x2' --fail 'gone@example.com=550' --fail '*=dropx1'

It prints ``READY <host> <port>`` once it accepts connections and stops on SIGTERM / SIGINT.
:class:`SmtpServerProcess` runs it as a child process; :func:`start_server` runs it in a
thread of the current process; :func:`count_by_alert_key` counts what arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import mailbox
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiosmtpd.controller import Controller

__all__ = [
    "FailureRule",
    "MaildirHandler",
    "SmtpServerProcess",
    "count_by_recipient",
    "count_by_alert_key",
    "main",
    "start_server",
]

log = logging.getLogger(__name__)

_RULE = re.compile(
    r"^(?P<addr>[^=\s]+)=(?P<action>\d{3}|drop)(?:x(?P<times>\d+))?(?:/(?P<stage>rcpt|data))?$"
)
_TEXT = {
    421: "4.3.2 Service shutting down, closing transmission channel",
    450: "4.2.0 Mailbox unavailable, try again later",
    451: "4.3.0 Local error in processing, try again later",
    452: "4.3.1 Insufficient system storage",
    550: "5.1.1 Recipient address rejected: User unknown",
    551: "5.1.6 User not local",
    552: "5.2.2 Mailbox full",
    553: "5.1.3 Mailbox name not allowed",
    554: "5.7.1 Transaction failed",
}


@dataclass(frozen=True, slots=True)
class FailureRule:
    """Answer ``code`` (or drop the connection) for ``address`` the first ``times`` times."""

    address: str  # "*" matches every address
    code: int | None  # None: drop the connection without a reply
    times: int | None = None  # None: always
    stage: str = "rcpt"

    @classmethod
    def parse(cls, text: str) -> FailureRule:
        m = _RULE.match(text.strip())
        if m is None:
            raise ValueError(
                f"bad failure rule {text!r}; expected ADDRESS=CODE|drop[xN][/rcpt|data]"
            )
        drop = m["action"] == "drop"
        code = None if drop else int(m["action"])
        if code is not None and not 400 <= code < 600:
            raise ValueError(f"failure rule {text!r}: code must be 4xx or 5xx")
        return cls(
            address=m["addr"].lower(),
            code=code,
            times=int(m["times"]) if m["times"] else None,
            stage=m["stage"] or ("data" if drop else "rcpt"),
        )

    def matches(self, address: str) -> bool:
        return self.address == "*" or self.address == address.lower()


class MaildirHandler:
    """aiosmtpd handler: applies the failure rules, then stores the message in a Maildir."""

    def __init__(self, directory: str | Path, rules: Sequence[FailureRule] = ()) -> None:
        self.directory = Path(directory)
        self.mailbox = mailbox.Maildir(self.directory, create=True)
        self.rules = list(rules)
        self._hits: Counter[tuple[int, str]] = Counter()
        self.accepted = 0

    def _rule_for(self, address: str, stage: str) -> FailureRule | None:
        for i, rule in enumerate(self.rules):
            if rule.stage != stage or not rule.matches(address):
                continue
            hit = (i, address.lower())
            if rule.times is None or self._hits[hit] < rule.times:
                self._hits[hit] += 1
                return rule
        return None

    @staticmethod
    def _reply(rule: FailureRule, server: Any, address: str) -> str:
        if rule.code is None:  # vanish without an answer
            server.transport.close()
            return "421 4.4.2 connection dropped"
        if rule.code == 421:  # the server closes the channel after saying so
            asyncio.get_running_loop().call_soon(server.transport.close)
        text = _TEXT.get(rule.code, f"{rule.code // 100}.0.0 scripted failure")
        # Echo the address like Postfix does, so clients must keep it out of their logs.
        return f"{rule.code} {text} <{address}>"

    async def handle_RCPT(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list
    ) -> str:
        rule = self._rule_for(address, "rcpt")
        if rule is not None:
            return self._reply(rule, server, address)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        for address in envelope.rcpt_tos:
            rule = self._rule_for(address, "data")
            if rule is not None:
                return self._reply(rule, server, address)
        content = envelope.original_content
        self.mailbox.add(content if isinstance(content, bytes) else content.encode())
        self.accepted += 1
        return "250 2.0.0 OK: queued"


class _Controller(Controller):
    """aiosmtpd's threaded Controller that also works with port 0 (any free port)."""

    def _trigger_server(self) -> None:
        if self.server is not None and self.server.sockets:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def start_server(
    directory: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    rules: Sequence[FailureRule | str] = (),
    smtputf8: bool = True,
) -> Controller:
    """Start the server in a background thread; ``controller.port`` is the bound port.
    ``smtputf8=False``: a relay that does not offer SMTPUTF8 (many do not).

    Call ``controller.stop()`` when done.
    """
    parsed = [r if isinstance(r, FailureRule) else FailureRule.parse(r) for r in rules]
    controller = _Controller(
        MaildirHandler(directory, parsed), hostname=host, port=port, ready_timeout=10.0,
        enable_SMTPUTF8=smtputf8,
    )
    controller.start()
    return controller


def count_by_alert_key(directory: str | Path) -> Counter[str]:
    """How many messages in the Maildir carry each ``X-Delaywatch-Alert-Key``."""
    counts: Counter[str] = Counter()
    path = Path(directory)
    if not (path / "new").is_dir():
        return counts
    for message in mailbox.Maildir(path, create=False):
        key = message.get("X-Delaywatch-Alert-Key")
        counts[unquote(str(key).strip()) if key is not None else ""] += 1
    return counts


def count_by_recipient(directory: str | Path) -> Counter[str]:
    """How many messages in the Maildir went to each (lower-cased) To address."""
    counts: Counter[str] = Counter()
    path = Path(directory)
    if not (path / "new").is_dir():
        return counts
    for message in mailbox.Maildir(path, create=False):
        for _, address in getaddresses(message.get_all("To", [])):
            counts[address.lower()] += 1
    return counts


class SmtpServerProcess:
    """The server in its own process (``python -m notifiers.smtpd``).

    >>> server = SmtpServerProcess("/tmp/mail", rules=["*=451x1"])
    >>> server.argv()[1:3]
    ['-m', 'notifiers.smtpd']

    ``start()`` waits for the READY line and sets ``port``; ``stop()`` sends SIGTERM and waits;
    ``kill()`` sends SIGKILL. Also a context manager.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rules: Sequence[str] = (),
        python: str = sys.executable,
        stderr: str | Path | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.host = host
        self.port = port
        self.rules = list(rules)
        self.python = python
        self.stderr = stderr
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        argv = [self.python, "-m", "notifiers.smtpd", "--dir", str(self.directory)]
        argv += ["--host", self.host, "--port", str(self.port)]
        for rule in self.rules:
            argv += ["--fail", rule]
        return argv

    def start(self, timeout: float = 15.0) -> SmtpServerProcess:
        if self.proc is not None:
            raise RuntimeError("server process already started")
        err = open(self.stderr, "ab") if self.stderr else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=err)
        finally:
            if err is not subprocess.DEVNULL:
                err.close()
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode("ascii", "replace").split() if ready else []
        if len(line) != 3 or line[0] != "READY":
            self.kill()
            raise RuntimeError(f"SMTP server process did not start (got {line!r})")
        self.port = int(line[2])
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._reap()

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> SmtpServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m notifiers.smtpd",
        description="Test SMTP server that stores accepted messages in a Maildir.",
    )
    parser.add_argument("--dir", required=True, help="Maildir directory (created if missing)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument(
        "--fail",
        action="append",
        default=[],
        metavar="ADDRESS=CODE|drop[xN][/rcpt|data]",
        help="scripted failure (repeatable), e.g. 'a@example.com=451x2' or '*=dropx1'",
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (stderr)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        rules = [FailureRule.parse(r) for r in args.fail]
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    controller = start_server(args.dir, host=args.host, port=args.port, rules=rules)
    print(f"READY {args.host} {controller.port}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        controller.stop()
    return 0


if __name__ == "__main__":
    os.umask(0o077)  # the Maildir holds personal data
    sys.exit(main())
