"""Per-namespace S3 credentials, for real: SeaweedFS started with the identities file of
docs/security.md ("Per-namespace S3 credentials"), read from the page itself so that the
documented option is the tested one. Each team's identity reads and writes its own
`<bucket>/<namespace>/` prefix and is refused the other team's."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio
from minio.error import S3Error

from mlops_operator.local.seaweed import SeaweedServer
from mlops_runtime.store import StoreSettings, make_client

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
KEYS = {"ADMIN_KEY": "admin-key-test", "ADMIN_SECRET": "admin-secret-test",
        "TEAM_A_KEY": "team-a-key-test", "TEAM_A_SECRET": "team-a-secret-test",
        "TEAM_B_KEY": "team-b-key-test", "TEAM_B_SECRET": "team-b-secret-test"}


def documented_identities() -> dict:
    """The first JSON block of the page that holds `identities`, placeholders filled in."""
    for block in re.findall(r"```json\n(.*?)```", DOC.read_text(), re.DOTALL):
        doc = json.loads(block)
        if "identities" in doc:
            text = json.dumps(doc)
            for placeholder, value in KEYS.items():
                text = text.replace(f'"{placeholder}"', json.dumps(value))
            return json.loads(text)
    raise AssertionError(f"{DOC.relative_to(ROOT)} has no identities block")


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("scoped-seaweedfs")
    config = data / "s3.json"
    config.write_text(json.dumps(documented_identities()))
    with SeaweedServer(data, s3_config=config) as server:
        yield server.endpoint


def client(endpoint: str, who: str) -> Minio:
    """The client the training and serving pods build from their Secret (a fixed region: no
    GetBucketLocation, which a prefix-scoped identity may not call)."""
    return make_client(StoreSettings(endpoint, KEYS[f"{who}_KEY"], KEYS[f"{who}_SECRET"]))


def put(store: Minio, key: str, data: bytes = b"rows") -> None:
    store.put_object("mlops", key, io.BytesIO(data), len(data))


def get(store: Minio, key: str) -> bytes:
    response = store.get_object("mlops", key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def refused(action) -> bool:
    try:
        action()
    except S3Error as error:
        return error.code == "AccessDenied"
    return False


def wait_until_writable(store: Minio, key: str) -> None:
    """The first write after the bucket exists can race SeaweedFS' volume growth."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return put(store, key)
        except S3Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_each_namespace_reads_and_writes_only_its_prefix(endpoint: str) -> None:
    admin = client(endpoint, "ADMIN")
    if not admin.bucket_exists("mlops"):
        admin.make_bucket("mlops")
    team_a, team_b = client(endpoint, "TEAM_A"), client(endpoint, "TEAM_B")
    wait_until_writable(team_a, "team-a/iris/run-1/model.skops")
    put(team_b, "team-b/data/iris.csv", b"secret rows")
    assert get(team_a, "team-a/iris/run-1/model.skops") == b"rows"
    assert get(team_b, "team-b/data/iris.csv") == b"secret rows"
    # Neither team reads, overwrites or adds to the other's prefix, nor writes outside its own.
    assert refused(lambda: get(team_a, "team-b/data/iris.csv"))
    assert refused(lambda: put(team_a, "team-b/data/iris.csv", b"poisoned"))
    assert refused(lambda: get(team_b, "team-a/iris/run-1/model.skops"))
    assert refused(lambda: put(team_b, "team-a/iris/run-1/model.skops", b"swapped"))
    assert refused(lambda: put(team_a, "shared/everyone.csv"))
    assert get(admin, "team-b/data/iris.csv") == b"secret rows"
    assert get(admin, "team-a/iris/run-1/model.skops") == b"rows"
