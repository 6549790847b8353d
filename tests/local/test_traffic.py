"""The traffic helper the walkthrough and the tests use: what it counts and says."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlops_operator.local.proxy import free_port
from mlops_operator.local.traffic import Traffic, iris_rows, main


def answer_json(handler: BaseHTTPRequestHandler, body: object) -> None:
    data = json.dumps(body).encode()
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class FakeService(BaseHTTPRequestHandler):
    """Answers /predict as the router does (version iris-v1, then iris-v2 after a switch)
    and accepts /feedback."""

    version = "iris-v1"
    feedback: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/predict":
            answer = {"predictions": [0], "version": FakeService.version, "request_id": f"r{time.monotonic_ns()}"}
        else:
            FakeService.feedback.append(body)
            answer = {"request_id": body["request_id"], "outcomes": ["correct"]}
        answer_json(self, answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_answers_are_kept_with_their_send_time_and_version(url: str) -> None:
    rows, labels = iris_rows()
    traffic = Traffic(url, rows, labels, rate=100).start()
    deadline = time.monotonic() + 20
    while traffic.snapshot().answered < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    switched = time.time()
    FakeService.version = "iris-v2"
    while traffic.snapshot().versions_sent_after(switched)["iris-v2"] < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    report = traffic.stop()
    FakeService.version = "iris-v1"
    assert report.failures == [] and report.answered == report.sent == len(report.answers)
    assert report.by_version["iris-v1"] >= 10 and report.by_version["iris-v2"] >= 10
    # Requests sent after the switch were answered by the new version only.
    assert set(report.versions_sent_after(switched + 0.5)) <= {"iris-v2"}
    assert report.feedback > 0 and FakeService.feedback[0]["label"] in (0, 1, 2)


def test_the_command_reports_progress_and_fails_on_refused_requests(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([url, "--rate", "50", "--seconds", "1", "--every", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "failed 0" in out and "iris-v1" in out
    nobody = f"http://127.0.0.1:{free_port()}"
    assert main([nobody, "--rate", "50", "--seconds", "0.5", "--every", "0.5"]) == 1
    assert "failed: " in capsys.readouterr().out


def test_traffic_stops_by_itself_at_its_bounds(url: str) -> None:
    rows, labels = iris_rows()
    traffic = Traffic(url, rows, labels, rate=200, max_requests=15).start()
    assert traffic.wait(20) and traffic.snapshot().sent == 15
    traffic = Traffic(url, rows, labels, rate=5, max_seconds=0.5).start()
    assert traffic.wait(20) and 1 <= traffic.snapshot().sent <= 5
    # Several clients share the bound on requests exactly.
    traffic = Traffic(url, rows, labels, rate=400, max_requests=15, workers=4).start()
    assert traffic.wait(20) and traffic.snapshot().sent == 15


def test_the_status_watch_keeps_each_change_and_rides_out_an_instance_that_is_down(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    from mlops_operator.local.processes import start_ticks
    from mlops_operator.local.traffic import StatusWatch

    statuses = [{"phase": "Progressing", "rolloutStage": "Analysing", "champion": "iris-v1"}]

    class FakeInstance(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = {"settled": False} if self.path == "/status" else {"items": [
                {"metadata": {"name": "other"}, "status": {"phase": "Stable"}},
                {"metadata": {"name": "iris"}, "status": statuses[-1]}]}
            answer_json(self, body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeInstance)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    record = tmp_path / "instance.json"
    watch = StatusWatch(tmp_path, "iris", period=0.02).start()
    try:
        deadline = time.monotonic() + 20
        time.sleep(0.1)  # no instance yet: nothing seen, no error
        assert watch.sightings == []
        record.write_text(json.dumps({"pid": os.getpid(), "startTicks": start_ticks(os.getpid()),
                                      "controlPort": server.server_address[1]}))
        while not watch.sightings and time.monotonic() < deadline:
            time.sleep(0.02)
        statuses.append({"phase": "Progressing", "rolloutStage": "Promoting", "champion": "iris-v1"})
        statuses.append({"phase": "Promoted", "rolloutStage": "Finalizing", "champion": "iris-v2"})
        while watch.first(phase="Promoted") is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sightings = watch.stop()
        server.shutdown()
    assert [(s.phase, s.stage, s.champion) for s in sightings][0] == ("Progressing", "Analysing", "iris-v1")
    assert sightings[-1].champion == "iris-v2" and len(sightings) == len({(s.phase, s.stage) for s in sightings})
    assert watch.first(stage="Analysing") <= watch.first(phase="Promoted")  # type: ignore[operator]


def test_status_watch_reads_any_source_and_keeps_each_change_of_the_challengers_weight() -> None:
    from mlops_operator.local.traffic import StatusWatch

    steps = iter([None, *[{"phase": "Progressing", "rolloutStage": "Analysing", "champion": "iris-v1",
                           "traffic": {"champion": 100 - w, "challenger": w}} for w in (10, 10, 25, 50, 50)],
                  {"phase": "Promoted", "rolloutStage": "Finalizing", "champion": "iris-v2",
                   "traffic": {"champion": 100, "challenger": 0}}])
    last: list[dict | None] = [None]

    def read() -> dict | None:
        last[0] = next(steps, last[0])
        return last[0]

    watch = StatusWatch(read=read, period=0.01).start()
    deadline = time.monotonic() + 20
    while watch.first(phase="Promoted") is None and time.monotonic() < deadline:
        time.sleep(0.01)
    sightings = watch.stop()
    assert [(s.weight, s.champion) for s in sightings] == [(10, "iris-v1"), (25, "iris-v1"), (50, "iris-v1"),
                                                           (0, "iris-v2")]


def test_workers_hold_the_rate_when_each_answer_takes_longer_than_its_share_of_a_second() -> None:
    in_flight, most = [0], {}
    lock = threading.Lock()

    class SlowService(FakeService):
        def do_POST(self) -> None:
            with lock:
                in_flight[0] += 1
                most[workers] = max(most.get(workers, 0), in_flight[0])
            time.sleep(0.1)  # the server's latency: 1 client at a time could send 10/s at most
            with lock:
                in_flight[0] -= 1
            super().do_POST()

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    rows, labels = iris_rows()
    try:
        for workers in (1, 8):
            traffic = Traffic(url, rows, labels, rate=20, workers=workers, max_requests=40).start()
            assert traffic.wait(timeout=120)  # the 40 requests' bound ends every client
            report = traffic.stop()
            assert report.failures == [] and report.sent == 40
            sent = sorted(a.sent_at for a in report.answers)
            assert len(set(sent)) == report.sent
            # Shared pacing: past each client's first request, never faster than the rate
            # (a loaded machine only slows it).
            assert sent[-1] - sent[0] >= (40 - workers) / 20 * 0.95, sent
    finally:
        server.shutdown()
    # One client waits for each answer; eight overlap while an answer takes 0.1 s.
    assert most[1] == 1 and most[8] > 1, most
