"""The dock's web status page, JSON API and Prometheus endpoint (Starlette, served by uvicorn).

The daemon starts it with :func:`start_web` in one thread of its own; every handler is a
read-only view over a read-only connection to the state database. Pages:

- ``/``        kiosk: one tile per port for the officers at the dock
- ``/fleet``   recorders, those not fit for the next shift first (equipment admin)
- ``/it``      backlog, deadline forecast, alarms, targets, staging disk (IT staff)

API (GET only, JSON, schema at ``/api/openapi.json``): ``/api/status``, ``/api/ports``,
``/api/recorders``, ``/api/queue``, ``/api/findings``; metrics at ``/metrics``.

Access: every request must name one of the dock's own host names in ``Host`` (else 421,
against DNS rebinding: :mod:`dockd.status.web_hosts`); loopback clients are served; any
other client needs ``Authorization: Bearer <web.token>`` and is refused (403) when no token
is configured.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Config
from ..errors import DockdError
from ..store import Reader, ReadOnlyState, utcnow
from . import i18n, web_data, web_hosts
from .metrics import metrics_response
from .web_openapi import openapi_spec

log = logging.getLogger(__name__)

STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml"}
PAGES = ("kiosk", "fleet", "it")
POLL_MS_DEFAULT, POLL_MS_MIN, POLL_MS_MAX = 1000, 200, 10000
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


class WebError(DockdError):
    """The web status server could not start (address in use, bad bind address)."""


# --------------------------------------------------------------------------- access


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class AccessGuard:
    """ASGI middleware: the Host rule, GET/HEAD only, the token rule, and security headers
    on every reply."""

    def __init__(self, app: ASGIApp, token: str, hosts: frozenset[str] = frozenset()):
        self.app = app
        self.token = token.encode("utf-8")
        self.hosts = hosts or web_hosts.allowed_hosts("")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        host = client[0] if client else None
        refusal = self._refusal(scope, host)
        if refusal is not None:
            status, why, extra = refusal
            log.warning("web: refused %s %s from %s: %s", scope.get("method"),
                        scope.get("path"), host, why)
            resp = JSONResponse({"error": why}, status_code=status, headers=extra)
            await resp(scope, receive, self._with_headers(send))
            return
        await self.app(scope, receive, self._with_headers(send))

    def _refusal(self, scope: Scope, host: str | None) -> tuple[int, str, dict[str, str]] | None:
        wrong_host = web_hosts.host_refusal(scope.get("headers") or [], self.hosts)
        if wrong_host is not None:
            return 421, wrong_host, {}
        if scope.get("method") not in ("GET", "HEAD"):
            return 405, "read-only: GET only", {"Allow": "GET, HEAD"}
        if is_loopback(host):
            return None
        if not self.token:
            return 403, "access beyond loopback needs web.token configured on the dock", {}
        auth = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = auth.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            return None
        return 401, "bearer token required", {"WWW-Authenticate": 'Bearer realm="dockd"'}

    @staticmethod
    def _with_headers(send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                headers += [(b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"),
                            (b"x-frame-options", b"DENY"),
                            (b"cache-control", b"no-store"),
                            (b"content-security-policy", CSP.encode())]
                message = {**message, "headers": headers}
            await send(message)
        return wrapped


# --------------------------------------------------------------------------- the app


def _static_files() -> dict[str, tuple[bytes, str]]:
    root = resources.files("dockd.status").joinpath("static")
    out = {}
    for entry in root.iterdir():
        suffix = Path(entry.name).suffix
        if entry.is_file() and suffix in STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return out


class _StateHolder:
    """One read-only connection, opened on first use (the daemon creates the database)."""

    def __init__(self, path: Path, clock: Callable[[], datetime]):
        self.path = path
        self.clock = clock
        self._state: ReadOnlyState | None = None
        self._lock = threading.Lock()

    def get(self) -> ReadOnlyState:
        with self._lock:
            if self._state is None:
                self._state = ReadOnlyState(self.path, clock=self.clock)
            return self._state

    def close(self) -> None:
        with self._lock:
            if self._state is not None:
                self._state.close()
                self._state = None


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, ensure_ascii=False, default=str, allow_nan=False)
    return Response(body, status_code=status, media_type="application/json")


def _poll_ms(request: Request) -> int:
    try:
        value = int(request.query_params.get("poll", POLL_MS_DEFAULT))
    except ValueError:
        return POLL_MS_DEFAULT
    return max(POLL_MS_MIN, min(value, POLL_MS_MAX))


def create_app(cfg: Config, state_path: Path | str, *,
               clock: Callable[[], datetime] = utcnow) -> Starlette:
    """The ASGI application: pages, API and metrics over the state at ``state_path``."""
    holder = _StateHolder(Path(state_path), clock)
    static = _static_files()
    spec = openapi_spec()
    default_lang = i18n.pick_language(cfg.web.language)

    def api(build: Callable[[Reader, Config, datetime], dict[str, Any]]
            ) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                state = holder.get()
                return _json(build(state, cfg, clock()))
            except (DockdError, sqlite3.Error) as exc:
                log.warning("web: %s: state not readable: %s", request.url.path, exc)
                return _json({"error": f"state not readable: {exc}"}, 503)
        return endpoint

    def page(view: str) -> Callable[[Request], Response]:
        template = static[f"{view}.html"][0].decode("utf-8")

        def endpoint(request: Request) -> Response:
            lang = i18n.pick_language(request.query_params.get("lang"), default_lang)
            text = i18n.catalog(lang)
            conf: dict[str, Any] = {"lang": lang, "view": view, "dock": cfg.dock.id, "dock_name": cfg.dock.name,
                    "poll_ms": _poll_ms(request), "t": text, "tz": cfg.dock.timezone}
            blob = json.dumps(conf, ensure_ascii=False).replace("<", "\\u003c")
            html = (template.replace("{{html_lang}}", text["html_lang"])
                    .replace("{{title}}", text[f"title.{view}"])
                    .replace("{{config}}", blob))
            return Response(html, media_type="text/html; charset=utf-8")
        return endpoint

    def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static or name.endswith(".html"):
            return _json({"error": "not found"}, 404)
        body, ctype = static[name]
        return Response(body, media_type=ctype)

    def openapi(_: Request) -> Response:
        return _json(spec)

    def metrics(_: Request) -> Response:
        body, ctype = metrics_response(holder.get, cfg, clock)
        return Response(body, media_type=ctype)

    def health(_: Request) -> Response:
        return _json({"ok": True, "dock": cfg.dock.id})

    routes = [
        Route("/", page("kiosk"), methods=["GET"]),
        Route("/fleet", page("fleet"), methods=["GET"]),
        Route("/it", page("it"), methods=["GET"]),
        Route("/static/{name}", static_file, methods=["GET"]),
        Route("/api/status", api(web_data.api_status), methods=["GET"]),
        Route("/api/ports", api(web_data.api_ports), methods=["GET"]),
        Route("/api/recorders", api(web_data.fleet_data), methods=["GET"]),
        Route("/api/queue", api(web_data.api_queue), methods=["GET"]),
        Route("/api/findings", api(web_data.api_findings), methods=["GET"]),
        Route("/api/openapi.json", openapi, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.holder = holder
    app.add_middleware(AccessGuard, token=cfg.web.token,
                       hosts=web_hosts.allowed_hosts(cfg.web.bind, cfg.web.allowed_hosts))
    return app


# --------------------------------------------------------------------------- the server thread


def _bind(host: str, port: int) -> socket.socket:
    sock: socket.socket | None = None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(addr)
            sock.listen(64)
            sock.set_inheritable(True)
        except OSError:
            sock.close()
            raise
        return sock
    except OSError as exc:
        if sock is not None:  # e.g. the port is taken: do not leak the socket
            sock.close()
        raise WebError(f"web status page cannot listen on {host}:{port}: {exc}") from exc


@dataclass
class WebHandle:
    """The running web server: its address, and :meth:`stop`."""

    host: str
    port: int
    thread: threading.Thread
    server: Any
    holder: _StateHolder

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning("web server thread did not stop within %.0f s", timeout)
        self.holder.close()


def start_web(cfg: Config, state_path: Path | str, stop_event: threading.Event | None = None,
              *, clock: Callable[[], datetime] = utcnow, port: int | None = None
              ) -> WebHandle | None:
    """Serve the status page in a daemon thread; returns None when ``web.enabled`` is false.

    ``port`` overrides ``web.port`` (0: any free port, for tests). The server stops when
    ``stop_event`` is set or :meth:`WebHandle.stop` is called. Raises :class:`WebError` when
    the address cannot be bound.
    """
    import uvicorn

    if not cfg.web.enabled:
        log.info("web status page disabled (web.enabled = false)")
        return None
    host = cfg.web.bind
    sock = _bind(host, cfg.web.port if port is None else port)
    real_port = sock.getsockname()[1]
    if not is_loopback(host) and not cfg.web.token:
        log.warning("web status page listens on %s:%d without web.token: clients other than "
                    "loopback will be refused (403)", host, real_port)
    app = create_app(cfg, state_path, clock=clock)
    ucfg = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", http="h11",
                          ws="none", timeout_graceful_shutdown=2, server_header=False)

    class _Server(uvicorn.Server):
        async def on_tick(self, counter: int) -> bool:
            if stop_event is not None and stop_event.is_set():
                self.should_exit = True
            return await super().on_tick(counter)

    server = _Server(ucfg)

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException:  # noqa: BLE001 - the daemon must outlive its status page
            log.exception("web status server failed")
        finally:
            sock.close()

    thread = threading.Thread(target=run, name="web", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        raise WebError(f"web status page did not start on {host}:{real_port}")
    handle = WebHandle(host, real_port, thread, server, app.state.holder)
    log.info("web status page at %s (token %s)", handle.url,
             "required beyond loopback" if cfg.web.token else "not set: loopback only")
    return handle
