"""The Host check: which names a server answers to (DNS rebinding: a page of another
site that its own name now points at 127.0.0.1 must not reach the API)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from httptools import HttpParserInvalidURLError, parse_url

from ._http import loggable

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
"""Names a server answers to whatever its bind address (``::1`` is ``[::1]`` in a Host)."""
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


def _ip(text: str) -> str | None:
    """``text`` as an IP address in its canonical form, or None if it is not one."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def origin_form(target: bytes) -> tuple[bytes, bytes] | None:
    """An absolute-form request target (``http://host:port/path?query``, which RFC 9112
    3.2.2 says a server must accept) as the origin form the app routes and the authority
    that is to be the request's one Host (the received Host is ignored, as the RFC says,
    so that the Host check judges the name the request was really for); None for a
    target of neither form (``*``, another scheme: left to find no route).  ValueError
    names what is wrong with a malformed URL or one that carries user information."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    shown = loggable(target[:100].decode("latin-1")) + ("..." if len(target) > 100 else "")
    try:
        parts = parse_url(target)
    except HttpParserInvalidURLError:
        raise ValueError(f"target: {shown!r} is not a valid URL") from None
    if parts.userinfo is not None:
        raise ValueError(f"target: {shown!r}: user information is not allowed in an "
                         "http URL")
    end = len(rest)
    for stop in b"/?#":
        at = rest.find(stop)
        if 0 <= at < end:
            end = at
    query = b"" if parts.query is None else b"?" + parts.query
    return (parts.path or b"/") + query, rest[:end]


def host_name(value: str) -> tuple[str, bool] | None:
    """The name of a ``Host`` header value and whether it is an IP literal; None if the
    value is malformed.

    The port, if any, is dropped (only the name is judged).  The name comes back in
    lower case without a trailing dot; an IP literal in its canonical form, an IPv6 one
    without its brackets (``[::1]:8080`` gives ``("::1", True)``).
    """
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        try:
            name = str(ipaddress.IPv6Address(name))
        except ValueError:
            return None
        is_ip = True
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
        name = name.lower()
        if name.endswith("."):
            name = name[:-1]
        if not name or not _NAME_CHARS.issuperset(name):
            return None
        canonical = _ip(name)
        is_ip = canonical is not None
        name = canonical or name
    if rest and not (rest[0] == ":" and len(rest) <= 6 and rest[1:].isascii()
                     and (rest[1:].isdigit() or rest == ":")):
        return None
    return name, is_ip


def allowed_host(entry: str) -> str:
    """One ``--allowed-hosts`` entry in the form :func:`host_name` gives; raise
    ``ValueError`` naming it.  ``*`` stays ``*`` (any host)."""
    text = entry.strip()
    if text == "*":
        return text
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:  # an IPv6 address, or a name with a port
        canonical = _ip(text)
        if canonical is None:
            raise ValueError(f"allowed_hosts: {entry!r}: expected a host name or an IP "
                             "address without a port (the port is not checked)")
        return canonical
    parsed = host_name(text)
    if parsed is None:
        raise ValueError(f"allowed_hosts: {entry!r}: expected a host name, an IP address "
                         "or '*'")
    return parsed[0]


def parse_allowed_hosts(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"a,b"`` or an iterable of names: each checked by :func:`allowed_host`."""
    entries = value.split(",") if isinstance(value, str) else list(value)
    return tuple(allowed_host(e) for e in entries if e.strip())


class HostCheck:
    """Which ``Host`` values a server answers to (a guard against DNS rebinding).

    A web page on ``rebind.evil.example`` whose name is made to resolve to 127.0.0.1
    reaches a local server as if it were on the same origin; its requests still carry
    ``Host: rebind.evil.example``.  So a request is answered only if its Host names:

    - the bind address (a name or an IP address), ``localhost``, ``127.0.0.1``, ``[::1]``;
    - any IP literal when the server binds every interface (``0.0.0.0``, ``::``): an IP
      address cannot be rebound, and the server is reachable by each of its own;
    - a name of ``allowed`` (``--allowed-hosts``); ``*`` there turns the check off.

    A request without a Host (HTTP/1.0) passes: every browser sends one.
    """

    def __init__(self, bind: str, allowed: Iterable[str] = ()) -> None:
        allowed = tuple(allowed)
        self.any_host = "*" in allowed
        bind_name = bind.strip().strip("[]").lower()
        canonical = _ip(bind_name)
        self.any_ip = bind_name == "" or (
            canonical is not None and ipaddress.ip_address(canonical).is_unspecified
        )
        names = set(LOCAL_HOSTS) | {n for n in allowed if n != "*"}
        if bind_name and not self.any_ip:
            names.add(canonical or bind_name.removesuffix("."))
        self.names = frozenset(names)
        self._good: set[bytes] = set()
        """Host values answered already (at most 64): most requests name one of a few."""

    def headers_problem(self, raw_headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """Why a request with these headers is refused, or None: no Host is answered
        (HTTP/1.0; every browser sends one), two are refused, one is :meth:`problem`'s."""
        if self.any_host:
            return None
        found = [value for name, value in raw_headers if name == b"host"]
        if not found:
            return None
        if len(found) > 1:
            return "host: more than one Host header"
        value = found[0]
        if value in self._good:
            return None
        problem = self.problem(value.decode("latin-1"))
        if problem is None and len(self._good) < 64:
            self._good.add(value)
        return problem

    def describe(self) -> str:
        """The answered-to hosts, for the log."""
        if self.any_host:
            return "any Host (--allowed-hosts '*')"
        shown = sorted(f"[{n}]" if ":" in n else n for n in self.names)
        return ", ".join(shown) + (", any IP address" if self.any_ip else "")

    def problem(self, value: str) -> str | None:
        """Why a request with ``Host: value`` is refused, or None if it is answered."""
        if self.any_host:
            return None
        parsed = host_name(value)
        shown = value if len(value) <= 100 else value[:100] + "..."
        if parsed is None:
            return f"host: {shown!r} is not a valid host"
        name, is_ip = parsed
        if name in self.names or (is_ip and self.any_ip):
            return None
        return (f"host: {shown!r} is not one this server answers to (add its name to "
                "--allowed-hosts or TRIOQUEUE_ALLOWED_HOSTS)")
