"""A bounded HTTP GET for what the project reads from servers it does not trust: a trainer's
/metrics page, a Prometheus answer.

Every read has a size cap and one deadline for the whole exchange, name lookup included; an
error says only that the URL failed, and the cause goes to the debug log (of `critbatch.metrics`,
its one user), never into a status or an Event.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import socket
import threading
import time
import urllib.parse
from typing import Any

log = logging.getLogger("critbatch.metrics")

_CHUNK = 64 * 1024


class Unreachable(Exception):
    """The URL did not answer 200 with a body within the limits: `<url> unreachable or
    invalid`, nothing about why."""


def _cut(conn: http.client.HTTPConnection) -> None:
    """The deadline passed: shut the socket, so that a blocked read returns at once."""
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _addresses(host: str, port: int, end: float) -> list[tuple]:
    """The host's stream addresses, looked up before `end`: getaddrinfo has no timeout of its
    own, so a slow resolver is waited for in a thread that is abandoned at the deadline."""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return [(socket.AF_INET6, socket.SOCK_STREAM, 0, "", (host, port, 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, 0, "", (host, port))]
    answer: list[Any] = []

    def lookup() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            answer.append(exc)

    thread = threading.Thread(target=lookup, name="critbatch-lookup", daemon=True)
    thread.start()
    thread.join(max(0.0, end - time.monotonic()))
    if not answer:
        raise TimeoutError(f"name lookup of {host} not done in time")
    if isinstance(answer[0], OSError):
        raise answer[0]
    return answer[0]


def _connect(addresses: list[tuple], timeout: float) -> socket.socket:
    """A connected socket to the first of `addresses` that answers."""
    error: OSError = OSError("no address")
    for family, kind, proto, _, sockaddr in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def get(url: str, *, timeout: float, limit: int, deadline: float | None = None,
        accept: str = "*/*") -> bytes:
    """GET `url` (http or https, no redirects, no proxy) and return its body, or raise
    Unreachable when it does not answer 200 with at most `limit` bytes within `timeout`
    seconds from now (and before `deadline`, a `time.monotonic()` value).

    The deadline covers the whole exchange, not each socket operation: the name lookup is
    abandoned when it passes, and a watchdog shuts the socket then, so a server trickling its
    headers or body is cut there.
    """
    start = time.monotonic()
    end = start + timeout if deadline is None else min(start + timeout, deadline)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
    except ValueError as exc:
        log.debug("GET %s: %s", url, exc)
        raise Unreachable(f"{url} unreachable or invalid") from None
    remaining = end - start
    if remaining <= 0:
        raise Unreachable(f"{url} unreachable or invalid")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, port or (443 if parts.scheme == "https" else 80),
               timeout=remaining)
    watchdog = threading.Timer(remaining, _cut, (conn,))
    watchdog.daemon = True
    watchdog.start()
    try:
        addresses = _addresses(parts.hostname, conn.port, end)
        conn._create_connection = lambda _address, timeout, _source: _connect(addresses, timeout)
        conn.connect()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path, headers={"Accept": accept, "Accept-Encoding": "identity",
                                           "User-Agent": "critbatch"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise ValueError(f"HTTP status {resp.status}")
        length = resp.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            raise ValueError(f"Content-Length {int(length)} over the limit of {limit} bytes")
        chunks, size = [], 0
        while True:
            if time.monotonic() >= end:
                raise TimeoutError(f"not done within {timeout:g}s")
            chunk = resp.read1(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise ValueError(f"body over the limit of {limit} bytes")
            chunks.append(chunk)
        if time.monotonic() >= end:  # the watchdog may have ended the body early
            raise TimeoutError(f"not done within {timeout:g}s")
        if resp.length:  # closed before its Content-Length: a cut page could misread
            raise ValueError("body shorter than its Content-Length")
        return b"".join(chunks)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        log.debug("GET %s: %s: %s", url, type(exc).__name__, exc)
        raise Unreachable(f"{url} unreachable or invalid") from None
    finally:
        watchdog.cancel()
        conn.close()
