"""The embedded SeaweedFS launcher that local mode and the test fixture use."""

from __future__ import annotations

import io
import random
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from minio import Minio

from mlops_operator.local.seaweed import GRPC_OFFSET, SeaweedServer, pick_ports, pid_alive, s3_answers


def test_ports_come_with_a_free_grpc_twin():
    ports = pick_ports(4, rng=random.Random(1))
    assert len(set(ports)) == 4
    twins = {p + GRPC_OFFSET for p in ports}
    assert not twins & set(ports)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in [*ports, *twins]:
        assert port < low  # below the ephemeral range: no client can be handed it as its source
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: binds


def test_a_port_that_answers_garbage_is_not_s3_yet():
    """What a client that connected to itself reads back is its own request, not a status line."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def echo_request() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(conn.recv(1024))  # "GET / HTTP/1.1 ..." comes straight back

        import threading

        threading.Thread(target=echo_request, daemon=True).start()
        assert s3_answers(f"http://127.0.0.1:{port}", timeout=5) is False


@pytest.mark.skipif(__import__("os").environ.get("AWS_ENDPOINT_URL") is not None,
                    reason="an external S3 server is configured; not starting SeaweedFS")
def test_start_attach_from_pid_file_and_stop(tmp_path):
    pid_file = tmp_path / "state" / "weed.json"
    server = SeaweedServer(tmp_path / "data", pid_file=pid_file).start(timeout=30)
    endpoint = server.endpoint
    try:
        assert s3_answers(server.endpoint) and pid_alive(server.pid)
        attached = SeaweedServer.attach(pid_file)
        assert attached is not None
        assert (attached.pid, attached.endpoint) == (server.pid, server.endpoint)
        attached.stop(grace=1)  # by pid, from a handle that did not start it: SIGTERM, then SIGKILL
        assert not pid_alive(server.pid)
        assert not pid_file.exists()
        assert SeaweedServer.attach(pid_file) is None
    finally:
        server.stop(grace=1)
    assert not s3_answers(endpoint)


@pytest.mark.skipif(__import__("os").environ.get("AWS_ENDPOINT_URL") is not None,
                    reason="an external S3 server is configured; not starting SeaweedFS")
def test_what_was_written_survives_a_stop_and_a_start_on_the_same_folder(tmp_path):
    """`stop` ends weed with SIGKILL after a short grace (its clean exit takes 15 s and more):
    every object it acknowledged must still be there when it starts again."""
    def client(server: SeaweedServer) -> Minio:
        # Without -s3.config the server takes any key pair.
        return Minio(urlsplit(server.endpoint).netloc, access_key="any-key", secret_key="any-secret", secure=False)

    objects = {f"runs/{i}/model.skops": random.randbytes(100_000 * i + 7) for i in range(1, 4)}
    server = SeaweedServer(tmp_path / "data").start(timeout=60)
    try:
        store = client(server)
        store.make_bucket("kept")
        for key, data in objects.items():
            store.put_object("kept", key, io.BytesIO(data), len(data))
        pid = server.pid
    finally:
        server.stop()
    assert not pid_alive(pid)
    again = SeaweedServer(tmp_path / "data").start(timeout=60)
    try:
        store = client(again)
        read = {key: store.get_object("kept", key).read() for key in objects}
        assert read == objects
    finally:
        again.stop()
