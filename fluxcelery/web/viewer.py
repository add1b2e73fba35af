"""The trace viewer behind ``fluxcelery dev``: a standard-library HTTP server and a JSON API.

Data comes from an NDJSON trace file or from a database; the sources and the pure
derivations of runs, steps and attempts live in ``sources.py``. The page in ``static/``
builds every element with DOM APIs, so step names and errors taken from traces are always
shown as text, never parsed as markup.

Routes: ``GET /`` (the page), ``/static/<file>``, ``/api/runs?workflow=&status=&limit=&offset=``,
``/api/runs/<run_id>`` and ``/api/events?run=&workflow=&type=&since=&limit=``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..core.errors import StorageError
from ..trace.event import EVENT_TYPES
from .sources import RUN_EVENTS as RUN_EVENTS
from .sources import (
    RUN_STATUSES,
    DbSource,
    FileSource,
    HttpError,
    Source,
    _choices,
    _int,
    _since,
    _text,
    not_found,
    parse_query,
)
from .sources import STEP_STATUSES as STEP_STATUSES
from .sources import TERMINAL as TERMINAL
from .sources import attempt_log as attempt_log
from .sources import bad_request as bad_request
from .sources import build_detail as build_detail
from .sources import derive_run_status as derive_run_status
from .sources import derive_steps as derive_steps
from .sources import parse_trace_line as parse_trace_line
from .sources import summarize_run as summarize_run

# The ``X as X`` imports re-export names that lived here before ``sources.py`` was split out.

log = logging.getLogger("fluxcelery.web")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "viewer.js": "text/javascript; charset=utf-8",
    "viewer.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_RUNS, MAX_EVENTS = 1000, 5000

# -- HTTP --------------------------------------------------------------------------------


def json_bytes(value: Any) -> bytes:
    """Compact JSON with ``<``, ``>`` and ``&`` escaped (still the same JSON values)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _server_error(exc: Exception) -> tuple[int, dict[str, str]]:
    """503 when the database is unreachable (its message names no password), else 500."""
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, StorageError):
        return 503, {"error": str(exc)}
    if isinstance(exc, OperationalError):
        return 503, {"error": "database unavailable (see the server log)"}
    return 500, {"error": "internal error (see the server log)", "type": type(exc).__name__}


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "fluxcelery-viewer"
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections are closed

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def _not_allowed(self) -> None:
        self._send(405, json_bytes({"error": "method not allowed; use GET"}), head=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _handle(self, head: bool) -> None:
        try:
            if not self.server.host_allowed(self.headers.get("Host")):
                raise HttpError(403, "host not allowed (the viewer only answers to localhost)")
            url = urlsplit(self.path)
            path = url.path
            if path in ("/", "/index.html"):
                self._static("index.html", head)
            elif path.startswith("/static/") and path[8:] in STATIC_FILES:
                self._static(path[8:], head)
            elif path.startswith("/api/"):
                status, body = self.server.api(path.rstrip("/"), url.query)
                self._send(status, json_bytes(body), head)
            else:
                raise not_found(f"no such path: {path}")
        except HttpError as exc:
            self._send(exc.status, json_bytes({"error": exc.message}), head)
        except Exception as exc:
            log.exception("viewer request %s failed", self.path)
            status, body = _server_error(exc)
            self._send(status, json_bytes(body), head)

    def _static(self, name: str, head: bool) -> None:
        body = (STATIC_DIR / name).read_bytes()
        self._send(200, body, head, content_type=STATIC_FILES[name])

    def _send(
        self, status: int, body: bytes, head: bool, content_type: str = "application/json"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)
        if status == 405:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found while parsing a request are JSON too."""
        self.close_connection = True
        text = message or HTTPStatus(code).phrase
        self._send(code, json_bytes({"error": text}), head=self.command == "HEAD")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class ViewerServer(ThreadingHTTPServer):
    """The viewer's HTTP server; ``url`` is where it listens, ``source`` what it shows."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], source: Source) -> None:
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.source = source
        self.check_host = host in LOOPBACK
        self._hosts = LOOPBACK | {host.lower()}
        super().__init__(address, ViewerHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = str(host)
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def host_allowed(self, header: str | None) -> bool:
        """Refuse other ``Host`` names on a loopback bind (DNS rebinding)."""
        if not self.check_host or not header:
            return True
        name = header.strip().lower()
        if name.startswith("["):
            name = name[1 : name.find("]")]
        elif name.count(":") == 1:
            name = name.split(":")[0]
        return name in self._hosts

    def api(self, path: str, query: str) -> tuple[int, Any]:
        """Answer one API request: (status, JSON body); raises ``HttpError``."""
        src = self.source
        if path == "/api/runs":
            q = parse_query(query, ("workflow", "status", "limit", "offset"))
            workflow = _text(q.get("workflow"), "workflow", 200)
            statuses = _choices(q.get("status"), RUN_STATUSES, "status")
            limit = _int(q.get("limit"), "limit", 200, 1, MAX_RUNS)
            offset = _int(q.get("offset"), "offset", 0, 0, 10**9)
            body = src.runs(workflow, statuses, limit, offset)
            body["source"] = {"kind": src.kind, "label": src.label}
            return 200, body
        if path.startswith("/api/runs/"):
            parse_query(query, ())
            run_id = unquote(path[len("/api/runs/") :])
            detail = src.run(run_id) if 0 < len(run_id) <= 64 and "/" not in run_id else None
            if detail is None:
                raise not_found(f"run {run_id!r} not found")
            return 200, detail
        if path == "/api/events":
            q = parse_query(query, ("run", "workflow", "type", "since", "limit"))
            events, truncated = src.events(
                _text(q.get("run"), "run", 64),
                _text(q.get("workflow"), "workflow", 200),
                _choices(q.get("type"), EVENT_TYPES, "type"),
                _since(q.get("since")),
                _int(q.get("limit"), "limit", 500, 1, MAX_EVENTS),
            )
            return 200, {"events": events, "truncated": truncated}
        raise not_found(f"no such API path: {path}")

    def server_close(self) -> None:
        super().server_close()
        self.source.close()


def create_server(
    trace_file: str | os.PathLike[str] | None = None,
    db_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 4280,
) -> ViewerServer:
    """A viewer server for a trace file or a database (exactly one); not yet serving.

    ``port=0`` picks a free port (see ``server.url``). A SQLite URL whose file does not
    exist raises ``FileNotFoundError`` rather than creating an empty database.
    """
    if (trace_file is None) == (db_url is None):
        raise ValueError("give exactly one of trace_file (an NDJSON trace) or db_url")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer between 0 and 65535, got {port!r}")
    source: Source = FileSource(trace_file) if trace_file is not None else DbSource(str(db_url))
    try:
        return ViewerServer((host, port), source)
    except BaseException:
        source.close()
        raise


def serve(
    trace_file: str | os.PathLike[str] | None = None,
    db_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 4280,
    open_browser: bool = False,
) -> None:
    """Serve the viewer until Ctrl-C, printing its URL first."""
    server = create_server(trace_file=trace_file, db_url=db_url, host=host, port=port)
    what = "trace file" if trace_file is not None else "database"
    print(f"fluxcelery trace viewer: {server.url}  ({what}: {server.source.label})", flush=True)
    if host not in LOOPBACK:
        print(f"warning: listening on {host}; anyone who can reach it can read the traces")
    print("Press Ctrl-C to stop.", flush=True)
    if open_browser:
        webbrowser.open(server.url)
    previous = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops cleanly too
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        print("\nstopped", flush=True)
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


__all__ = ["ViewerServer", "attempt_log", "create_server", "derive_run_status", "serve"]
