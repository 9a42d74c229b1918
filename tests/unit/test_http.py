"""Specifications of serving.http: /metrics, /healthz and /readyz on a free port."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from serving.http import MetricsServer
from serving.metrics import STAGES, WorkerMetrics

pytestmark = pytest.mark.timeout(60)


def get(server: MetricsServer, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, error statuses included."""
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["Content-Type"], err.read().decode()


@pytest.fixture
def serve() -> Iterator[Callable[..., MetricsServer]]:
    """``serve(registry, **kwargs)``: a started server on 127.0.0.1, port 0; stopped after."""
    started: list[MetricsServer] = []

    def start(registry: Any, **kwargs: Any) -> MetricsServer:
        server = MetricsServer(registry, host="127.0.0.1", port=0, **kwargs)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_metrics_endpoint_serves_the_workers_freshrec_series(
    serve: Callable[..., MetricsServer],
) -> None:
    metrics = WorkerMetrics()
    metrics.events_consumed.inc(3)
    metrics.events_rejected.labels(reason="bad_ts").inc()
    server = serve(metrics.registry)
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"

    status, ctype, body = get(server, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    assert "freshrec_events_consumed_total 3.0" in body
    assert 'freshrec_events_rejected_total{reason="bad_ts"} 1.0' in body
    assert "# TYPE freshrec_stage_seconds histogram" in body
    assert "python_gc" not in body  # the worker's own registry, not the global one


def test_every_stage_is_exported_at_zero_before_the_first_batch(
    serve: Callable[..., MetricsServer],
) -> None:
    """rate() sees no increase in a series whose first scrape already counts a batch, so a run
    that falls between two scrapes would leave the stage panels empty (a CI failure, once)."""
    _, _, body = get(serve(WorkerMetrics().registry), "/metrics")
    for stage in STAGES:
        assert f'freshrec_stage_seconds_count{{stage="{stage}"}} 0.0' in body


def test_metrics_endpoint_ignores_query_strings(serve: Callable[..., MetricsServer]) -> None:
    server = serve(WorkerMetrics().registry)
    assert get(server, "/metrics?name[]=x")[0] == 200


def test_healthz_answers_200_while_alive_and_503_when_stalled(
    serve: Callable[..., MetricsServer],
) -> None:
    alive = {"value": True}
    server = serve(WorkerMetrics().registry, is_alive=lambda: alive["value"])
    assert get(server, "/healthz")[:1] == (200,)
    alive["value"] = False
    status, _, body = get(server, "/healthz")
    assert (status, body) == (503, "stalled\n")


def test_readyz_answers_503_before_the_worker_is_ready_and_200_after(
    serve: Callable[..., MetricsServer], make_worker: Callable[..., Any]
) -> None:
    rig = make_worker()
    server = serve(rig.metrics.registry, is_ready=lambda: rig.worker.ready)
    status, _, body = get(server, "/readyz")
    assert (status, body) == (503, "not ready\n")
    rig.worker.bootstrap()
    status, _, body = get(server, "/readyz")
    assert (status, body) == (200, "ready\n")
    assert "freshrec_ready 1.0" in get(server, "/metrics")[2]


def test_unknown_paths_answer_404(serve: Callable[..., MetricsServer]) -> None:
    server = serve(WorkerMetrics().registry)
    status, _, body = get(server, "/favicon.ico")
    assert status == 404
    assert "/metrics" in body


def test_stopped_server_releases_its_port() -> None:
    server = MetricsServer(WorkerMetrics().registry, host="127.0.0.1", port=0)
    server.start()
    port = server.port
    server.stop()
    again = MetricsServer(WorkerMetrics().registry, host="127.0.0.1", port=port)
    again.start()
    try:
        assert get(again, "/healthz")[0] == 200
    finally:
        again.stop()


def test_stop_without_start_returns() -> None:
    server = MetricsServer(WorkerMetrics().registry, host="127.0.0.1", port=0)
    stopper = threading.Thread(target=server.stop, daemon=True)
    stopper.start()
    stopper.join(timeout=1.0)  # a working stop() only closes a socket
    hung = stopper.is_alive()
    if hung:  # release the stuck shutdown() so that no thread is left behind
        server._httpd._BaseServer__is_shut_down.set()  # type: ignore[attr-defined]
        stopper.join(timeout=5)
        server._httpd.server_close()
    assert not hung
