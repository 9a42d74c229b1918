"""The worker's HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``, and
``/explain`` when the worker serves explanations."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["MetricsServer"]


class MetricsServer:
    """Serves the worker's registry and its health on a background thread.

    ``/healthz`` answers 200 while the process loop is alive (``is_alive``); ``/readyz`` answers
    200 once the worker has loaded the catalog and joined its group (``is_ready``).

    Examples
    --------
    >>> server = MetricsServer(CollectorRegistry(), host="127.0.0.1", port=0)
    >>> server.start(); server.port > 0
    True
    >>> server.stop()
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str = "0.0.0.0",
        port: int = 9108,
        is_alive: Callable[[], bool] = lambda: True,
        is_ready: Callable[[], bool] = lambda: True,
        explain: Callable[[str, str, int], dict[str, Any]] | None = None,
    ) -> None:
        self.registry = registry
        self.is_alive = is_alive
        self.is_ready = is_ready
        self.explain = explain
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = server.is_alive()
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"stalled\n")
                elif path == "/readyz":
                    ok = server.is_ready()
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                elif path == "/explain":
                    self._explain(parse_qs(self.path.partition("?")[2]))
                else:
                    self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

            def _explain(self, query: dict[str, list[str]]) -> None:
                if server.explain is None:
                    body = {"error": "this worker does not serve /explain (--explain-endpoint)"}
                    self._json(404, body)
                    return
                user, item = query.get("user", [""])[0], query.get("item", [""])[0]
                if not user or not item:
                    self._json(400, {"error": "give ?user=USER&item=ITEM"})
                    return
                try:
                    top = int(query.get("top", ["5"])[0])
                    self._json(200, server.explain(user, item, top))
                except ValueError as err:
                    self._json(400, {"error": str(err)})
                except KeyError as err:  # an item not in the catalog
                    self._json(404, {"error": str(err.args[0] if err.args else err)})

            def _json(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body, allow_nan=False, default=str).encode()
                self._reply(code, data + b"\n", "application/json")

            def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would drown the worker's own log

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._httpd.server_address[0])
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{self.port}/metrics"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="freshrec-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() would wait forever for a loop never started
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()
