"""Which ``Host`` a request to the status server may name (defence against DNS rebinding).

Loopback clients need no token, so a web page in any browser on the dock (the kiosk
included) could otherwise read the API after pointing a host name of its own at 127.0.0.1
("DNS rebinding"): the browser then sends ``Host: attacker.example:8470``. Every request
must therefore name one of the dock's own names: ``localhost``, ``127.0.0.1``, ``::1``, the
bind address (when it is a specific one) and ``web.allowed_hosts``; with or without a
port, case-insensitive, a trailing dot ignored. Anything else, no Host, or two Host
headers is answered 421 (Misdirected Request) by :class:`dockd.status.web.AccessGuard`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
_NAME_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*")
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "*"})


def _port_ok(port: str) -> bool:
    return re.fullmatch(r"\d{1,5}", port) is not None and 0 < int(port) < 65536


def normalise_host(value: str) -> str | None:
    """The host part of a Host header (or a configured name) in canonical form: lower
    case, no trailing dot, IPv6 without brackets and compressed; None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not _port_ok(rest[1:] if rest[:1] == ":" else "x")):
            return None
        try:
            return str(ipaddress.IPv6Address(host.split("%", 1)[0]))
        except ValueError:
            return None
    if value.count(":") == 1:
        value, _, port = value.partition(":")
        if not _port_ok(port):
            return None
    elif ":" in value:  # a bare IPv6 address (only as a configured name)
        try:
            return str(ipaddress.IPv6Address(value))
        except ValueError:
            return None
    value = value.removesuffix(".")
    if not value or len(value) > 253:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    return value if _NAME_RE.fullmatch(value) else None


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The names a request may carry: the defaults, the bind address and ``extra``."""
    names = set(DEFAULT_HOSTS)
    if bind.strip() not in _WILDCARD_BINDS:
        names.add(bind)
    names.update(extra)
    return frozenset(n for n in (normalise_host(x) for x in names) if n is not None)


def bad_allowed_hosts(values: Sequence[str]) -> list[str]:
    """Configured names that are not a host name or IP address (for config checks)."""
    return [v for v in values if normalise_host(v) is None or v.strip() in _WILDCARD_BINDS]


def host_refusal(headers: Iterable[tuple[bytes, bytes]], allowed: frozenset[str]) -> str | None:
    """Why the request's Host header is not acceptable, or None when it is."""
    hosts = [v for k, v in headers if k.lower() == b"host"]
    if len(hosts) != 1:
        return "exactly one Host header is required"
    try:
        raw = hosts[0].decode("ascii")
    except UnicodeDecodeError:
        return "Host header is not ASCII"
    name = normalise_host(raw)
    if name is None or name not in allowed:
        return (f"host {raw[:100]!r} is not one of this dock's names (add it to "
                "web.allowed_hosts)")
    return None
