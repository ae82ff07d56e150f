"""Several processes on one machine: one Bytewax cluster, each process holding whole shards.

Python runs one thread of Python at a time, so Bytewax's worker threads (``-w``) do not add
CPU; processes do. ``delaywatch replay --processes N`` starts N-1 more processes of the same
flow and joins them as a Bytewax cluster on 127.0.0.1: process 0 (the command itself) reads
and parses the feed and sends each shard's events to the process holding that shard; the
network step (incidents, folding, grouping) and each output file live on one process.

Bytewax places a key on worker ``SipHash-1-3(key) % workers`` (Rust's ``DefaultHasher``
over the key's UTF-8 bytes and a 0xff terminator, ``stateful_batch`` in bytewax 0.21.1). Left
to that, shards ``"0"`` and ``"1"`` both land on worker 1 of 2, and one process would do all
the tracking. :func:`shard_keys` names the shards so that shard ``s`` lands on worker
``s % N``; :func:`worker_of` is Bytewax's placement, checked against a real cluster in
``tests/flows/test_cluster.py`` (a Bytewax upgrade that moved keys would fail there).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_addresses", "free_ports", "network_key", "shard_keys", "worker_of"]

_M = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M


def _siphash13(data: bytes) -> int:
    """SipHash-1-3 with the zero key: what Rust's ``DefaultHasher::new()`` computes."""
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _M
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _M
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _M
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _M
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        sip_round()
        v0 ^= m
    last = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= last
    sip_round()
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        sip_round()
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The worker (of ``workers``) on which Bytewax 0.21 keeps a stateful step's ``key``.

    >>> [worker_of(str(k), 2) for k in range(6)]
    [1, 1, 1, 1, 0, 0]
    """
    return _siphash13(key.encode() + b"\xff") % workers


def shard_keys(shards: int, workers: int = 1) -> list[str]:
    """The key of each shard: shard ``s`` is kept on worker ``s % workers``.

    One worker: ``"0"``, ``"1"``, ... (the keys of every run before clusters, which their
    recovery stores hold). Several: ``str(s)`` where Bytewax already places it on worker
    ``s % workers``, else the first ``"s.j"`` (j = 1, 2, ...) that it does. A recovery store
    is tied to its worker count (the keys differ): the CLI refuses to resume one with another.

    >>> shard_keys(4, 2)
    ['0.3', '1', '2.1', '3']
    >>> [worker_of(k, 2) for k in shard_keys(4, 2)]
    [0, 1, 0, 1]
    """
    if workers <= 1:
        return [str(s) for s in range(shards)]
    keys = []
    for s in range(shards):
        key, j = str(s), 0
        while worker_of(key, workers) != s % workers:
            j += 1
            key = f"{s}.{j}"
        keys.append(key)
    return keys


def network_key(workers: int = 1) -> str:
    """The network step's key: ``"network"``, or with several workers the first
    ``"network.j"`` that Bytewax keeps on the last one. Process 0 also reads and parses the
    feed: with the network step as well it was the one the others waited for (3 M lines on
    two processes: 89-91 K events a second, against 101-111 K with the step on process 1).
    Its metrics (incidents, alerts, messages) are served on ``metrics_port + workers - 1``.

    >>> network_key(), worker_of(network_key(2), 2), worker_of(network_key(3), 3)
    ('network', 1, 2)
    """
    key, j = "network", 0
    while workers > 1 and worker_of(key, workers) != workers - 1:
        j += 1
        key = f"network.{j}"
    return key


def free_addresses(n: int, host: str = "127.0.0.1") -> list[str]:
    """``n`` ``host:port`` addresses whose ports were free a moment ago (the cluster binds
    them next; another program taking one meanwhile makes the run fail, not hang). The ports
    are outside the kernel's ephemeral range: an outgoing connection on this host (a metrics
    scrape, an SMTP session) cannot take one between the check and the bind."""
    return [f"{host}:{port}" for port in free_ports(n, host)]


def free_ports(n: int, host: str = "127.0.0.1", *, consecutive: bool = False) -> list[int]:
    """``n`` ports free a moment ago on ``host``, below the kernel's ephemeral range
    (``/proc/sys/net/ipv4/ip_local_port_range``; where it is unknown, ports the kernel
    picks); ``consecutive``: ``p, p + 1, ...`` (e.g. a metrics port per process)."""
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(200 if low > _LOWEST + n else 0):
        start = rng.randrange(_LOWEST, low - n)
        ports = list(range(start, start + n)) if consecutive else [
            rng.randrange(_LOWEST, low) for _ in range(n)]
        if len(set(ports)) == n and _bindable(ports, host):
            return ports
    for _ in range(200):  # the kernel's own picks (then in its ephemeral range)
        socks = []
        try:
            for _ in range(1 if consecutive else n):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((host, 0))
                socks.append(sock)
            ports = [sock.getsockname()[1] for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        if consecutive:
            ports = list(range(ports[0], ports[0] + n))
        if ports[-1] < 65536 and _bindable(ports, host):
            return ports
    raise OSError(f"no {n} free ports found on {host}")


_LOWEST = 10_000  # below: the well-known and registered services people run


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _bindable(ports: list[int], host: str) -> bool:
    socks = []
    try:
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for sock in socks:
            sock.close()
