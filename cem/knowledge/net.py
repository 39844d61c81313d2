"""Where the page fetcher may connect, one deadline over each request, and bounded decoding.

The fetcher follows links that search results name, so every connection is checked.
:class:`GuardedBackend` (an httpcore network backend) resolves the host once, keeps the
addresses that :class:`AddressPolicy` permits and connects to one of those very addresses:
there is no second lookup between the check and the connection, so DNS rebinding cannot
slip a private address in. TLS still verifies the certificate against the host name
(httpcore passes the URL's host as ``server_hostname``), and httpcore's pool is keyed by
host name, so a kept-alive connection is reused only for the host it was checked for.

Every socket operation of a request (resolve, connect, TLS, each read and write) gets only
the time left until the request's :func:`deadline`: per-operation timeouts alone let a
server that sends one header byte a second hold a request for minutes.
"""

from __future__ import annotations

import contextlib
import contextvars
import email.utils
import ipaddress
import re
import socket
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "cem_http_deadline", default=None
)


class Refused(Exception):
    """A request refused on purpose; ``counter`` names the ``SourceStats`` field it bumps."""

    def __init__(self, counter: str, reason: str):
        super().__init__(reason)
        self.counter, self.reason = counter, reason


def is_public(ip: IPAddress) -> bool:
    """True for an address of the public internet: not loopback, private, link-local,
    multicast, reserved or unspecified, looking inside IPv4-mapped and 6to4 IPv6 forms."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public(ip.ipv4_mapped)
        if ip.sixtofour is not None and not is_public(ip.sixtofour):
            return False
    special = (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )
    return ip.is_global and not special


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses, plus the hosts and networks of ``knowledge.allowed_private_hosts``."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AddressPolicy:
        """From IP addresses, CIDRs (``10.0.0.0/8``) and host names (``searx.lan``).

        Raises:
            ValueError: an entry is none of these; the message names it.
        """
        hosts, networks = set(), []
        for entry in entries:
            text = str(entry).strip().lower()
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                if "/" in text or not _HOSTNAME.fullmatch(text):
                    raise ValueError(
                        f"{entry!r} is not an IP address, a CIDR or a host name"
                    ) from None
                hosts.add(text.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def permits(self, host: str, ip: IPAddress) -> bool:
        """May a request for ``host`` connect to ``ip``?"""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if is_public(ip) or host.lower().rstrip(".") in self.hosts:
            return True
        return any(ip in net for net in self.networks)


@contextlib.contextmanager
def deadline(at: float) -> Iterator[None]:
    """Bound every socket operation in this block (this thread) by ``time.monotonic() <= at``."""
    token = _DEADLINE.set(at)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def time_left() -> float | None:
    """Seconds until the current deadline (None when there is none)."""
    at = _DEADLINE.get()
    return None if at is None else at - time.monotonic()


def bounded(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` cut to the time left; ``error`` when the deadline has passed."""
    left = time_left()
    if left is None:
        return timeout
    if left <= 0:
        raise error("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class RateLimiter:
    """At most ``per_s`` requests a second to each host; safe to share between threads."""

    def __init__(self, per_s: float):
        self._interval = 1.0 / per_s
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str) -> None:
        """Block until ``host`` may be sent another request, and book that slot."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, now))
            self._next[host] = slot + self._interval
        if slot > now:
            time.sleep(slot - now)


def retry_after_s(value: str) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def resolve(host: str, port: int, timeout: float | None) -> list[IPAddress]:
    """Every address of ``host``, without waiting past ``timeout``.

    ``getaddrinfo`` takes no timeout, so it runs in a daemon thread that is left behind
    (it ends with the system resolver's own timeout) when the deadline comes first.
    """
    with contextlib.suppress(ValueError):
        return [ipaddress.ip_address(host.strip("[]"))]
    box: dict[str, Any] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=lookup, name="cem-resolve", daemon=True).start()
    if not done.wait(timeout):
        raise httpcore.ConnectTimeout(f"resolving {host} took too long")
    if "error" in box:
        raise httpcore.ConnectError(f"cannot resolve {host}: {box['error']}")
    out: list[IPAddress] = []
    for *_, sockaddr in box["infos"]:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])  # drop an IPv6 scope id
        if ip not in out:
            out.append(ip)
    return out


class DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation ends by the request's deadline."""

    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, bounded(timeout, httpcore.ConnectTimeout)
        )
        return DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """TCP connections bounded by the deadline and, given a policy, only to permitted addresses.

    Args:
        policy: where connections may go; None for the configured API endpoints, which the
            user chose (a self-hosted SearXNG is usually on a private address).
    """

    def __init__(self, policy: AddressPolicy | None):
        self.policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = resolve(host, port, bounded(timeout, httpcore.ConnectTimeout))
        policy = self.policy
        permitted = (
            addresses if policy is None else [a for a in addresses if policy.permits(host, a)]
        )
        if not permitted:
            shown = ", ".join(str(ip) for ip in addresses)
            where = host if shown == host else f"{host} ({shown})"
            raise Refused(
                "refused_address",
                f"{where} is not a public address; not connected (list it in "
                f"knowledge.allowed_private_hosts to allow it)",
            )
        error: Exception | None = None
        for ip in permitted:  # connect to the checked address itself, never to a re-lookup
            try:
                timeout_left = bounded(timeout, httpcore.ConnectTimeout)
                stream = self._inner.connect_tcp(
                    str(ip), port, timeout_left, local_address, socket_options
                )
                return DeadlineStream(stream)
            except httpcore.ConnectError as e:
                error = e
        assert error is not None
        raise error


def read_body(chunks: Iterable[bytes], encoding: str, cap: int) -> bytes:
    """The body, decoded, refused as soon as it passes ``cap`` bytes on the wire or decoded.

    gzip and deflate bodies are inflated in steps of at most the room left under the cap,
    so a small compressed body that would inflate to gigabytes never holds more than
    ``cap`` bytes in memory.

    Raises:
        Refused: ``refused_size`` past the cap, ``refused_type`` for an encoding other than
            identity, gzip or deflate, or one that does not decode.
    """
    encoding = encoding.strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
        raise Refused("refused_type", f"content encoding {encoding!r} not accepted")
    # wbits 32+: zlib or gzip header, detected from the data (servers mix the two up).
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding not in ("", "identity") else None
    out, wire = bytearray(), 0
    try:
        for chunk in chunks:
            wire += len(chunk)
            if wire > cap:
                raise Refused("refused_size", f"response exceeds the {cap}-byte cap")
            if inflater is None:
                out += chunk
                continue
            data = chunk
            while data and not inflater.eof:  # bytes after the first gzip member are ignored
                out += inflater.decompress(data, cap - len(out) + 1)
                if len(out) > cap:
                    raise Refused(
                        "refused_size",
                        f"response exceeds the {cap}-byte cap once decompressed ({encoding})",
                    )
                data = inflater.unconsumed_tail
        if inflater is not None:  # all input is consumed: what is left is a few bytes at most
            out += inflater.flush()
    except zlib.error as e:
        raise Refused("refused_type", f"{encoding} body does not decode ({e})") from None
    if len(out) > cap:
        raise Refused("refused_size", f"response exceeds the {cap}-byte cap once decompressed")
    return bytes(out)
