"""The artifact store and model loading against a real S3 server (SeaweedFS, or the server
named by AWS_ENDPOINT_URL)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from mlops_runtime.model_io import (
    TRUSTED_TYPES,
    UntrustedModelError,
    dump_skops,
    load_skops,
    load_verified_model,
    onnx_parity,
    to_onnx,
)
from mlops_runtime.serving_process import free_port
from mlops_runtime.store import (
    ArtifactNotFound,
    ArtifactStore,
    IntegrityError,
    StoreConfigError,
    StoreUnavailable,
    backoff_delays,
    parse_s3_uri,
)


@pytest.fixture
def store(s3) -> ArtifactStore:
    return ArtifactStore.from_env(s3.env)


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True, as_frame=True)


def closed_port() -> int:
    """A port nothing listens on, below the ephemeral range (where a connect could meet itself)."""
    return free_port()


def test_put_and_get_bytes_round_trip_with_sha256(store, bucket):
    data = b"model bytes \x00\x01" * 1000
    digest = store.put_bytes(f"s3://{bucket}/a/model.skops", data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.get_bytes(f"s3://{bucket}/a/model.skops") == data
    assert store.get_verified(f"s3://{bucket}/a/model.skops", digest) == data
    assert store.recorded_sha256(f"s3://{bucket}/a/model.skops") == digest


def test_put_file_streams_and_records_digest(store, bucket, tmp_path):
    path = tmp_path / "big.bin"
    payload = os.urandom(6 * 1024 * 1024 + 17)  # above minio's single-part threshold
    path.write_bytes(payload)
    digest = store.put_file(f"s3://{bucket}/big.bin", path)
    assert digest == hashlib.sha256(payload).hexdigest()
    assert store.get_verified(f"s3://{bucket}/big.bin", digest) == payload


def test_put_creates_missing_bucket(store, s3):
    name = f"made-{os.urandom(6).hex()}"
    store.put_bytes(f"s3://{name}/x.json", b"{}", content_type="application/json")
    assert s3.client().bucket_exists(name)
    store.ensure_bucket(name)  # idempotent
    assert store.exists(f"s3://{name}/x.json")


def test_exists_and_not_found(store, bucket):
    assert not store.exists(f"s3://{bucket}/nothing-here")
    with pytest.raises(ArtifactNotFound, match="nothing-here"):
        store.get_bytes(f"s3://{bucket}/nothing-here")


def test_tampered_bytes_are_refused_naming_uri_and_digests(store, bucket, s3):
    uri = f"s3://{bucket}/run/model.skops"
    digest = store.put_bytes(uri, b"original")
    s3.client().put_object(bucket, "run/model.skops", io.BytesIO(b"tampered"), 8)
    actual = hashlib.sha256(b"tampered").hexdigest()
    with pytest.raises(IntegrityError) as caught:
        store.get_verified(uri, digest)
    message = str(caught.value)
    assert uri in message and digest in message and actual in message
    assert (caught.value.expected, caught.value.actual) == (digest, actual)


def test_unreachable_s3_gives_up_after_bounded_retries():
    waits: list[float] = []
    settings_env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}", "AWS_ACCESS_KEY_ID": "a",
                    "AWS_SECRET_ACCESS_KEY": "b", "MLOPS_S3_RETRIES": "3", "MLOPS_S3_BACKOFF": "0.25"}
    store = ArtifactStore.from_env(settings_env)
    store._sleep = waits.append  # record the backoff instead of waiting it
    with pytest.raises(StoreUnavailable, match="gave up after 4 attempts"):
        store.put_bytes("s3://mlops/x", b"1")
    assert waits == [0.25, 0.5, 1.0]


def test_backoff_is_exponential_and_capped():
    assert backoff_delays(6, 1.0, cap=8.0) == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff_delays(0, 1.0) == []


def test_from_env_accepts_minio_names(s3, bucket):
    host = s3.endpoint.split("://", 1)[1]
    env = {"MINIO_ENDPOINT": host, "MINIO_ACCESS_KEY": s3.access_key, "MINIO_SECRET_KEY": s3.secret_key,
           "MINIO_SECURE": "true" if s3.endpoint.startswith("https") else "false"}
    store = ArtifactStore.from_env(env)
    store.put_bytes(f"s3://{bucket}/minio-names", b"ok")
    assert store.get_bytes(f"s3://{bucket}/minio-names") == b"ok"


def test_from_env_without_endpoint_says_what_to_set():
    with pytest.raises(StoreConfigError, match="AWS_ENDPOINT_URL"):
        ArtifactStore.from_env({})


@pytest.mark.parametrize("uri", ["mlops/key", "s3://ab/key", "s3://bucket", "s3://bucket/", "http://x/y"])
def test_bad_uris_are_refused(uri):
    with pytest.raises(StoreConfigError):
        parse_s3_uri(uri)


# -- loading models ---------------------------------------------------------------------


def test_forest_round_trips_through_the_trusted_list(store, bucket, iris):
    X, y = iris
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    data = dump_skops(model)
    digest = store.put_bytes(f"s3://{bucket}/rf.skops", data)
    loaded = load_verified_model(store, f"s3://{bucket}/rf.skops", digest)
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert "sklearn.tree._tree.Tree" in TRUSTED_TYPES


def test_substituted_model_is_refused_before_loading(store, bucket, iris):
    X, y = iris
    honest = dump_skops(LogisticRegression(max_iter=300).fit(X, y))
    digest = store.put_bytes(f"s3://{bucket}/m.skops", honest)
    other = dump_skops(LogisticRegression(C=0.01, max_iter=300).fit(X, y))
    store.put_bytes(f"s3://{bucket}/m.skops", other)
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        load_verified_model(store, f"s3://{bucket}/m.skops", digest)


def test_untrusted_types_are_refused_by_name(iris):
    X, y = iris
    # A model that would call os.system when used: the GHSA-w582 kind of payload.
    evil = make_pipeline(FunctionTransformer(os.system), LogisticRegression())
    with pytest.raises(UntrustedModelError, match="system"):
        load_skops(dump_skops(evil))


def test_pickle_is_never_loaded(iris):
    X, y = iris
    data = pickle.dumps(LogisticRegression(max_iter=300).fit(X, y))
    with pytest.raises(UntrustedModelError, match="pickle"):
        load_skops(data)


def test_onnx_parity_passes_for_a_linear_model(iris):
    X, y = iris
    model = LogisticRegression(max_iter=300).fit(X, y)
    onnx_bytes = to_onnx(model, X.head(3))
    assert onnx_bytes is not None
    parity = onnx_parity(model, onnx_bytes, X)
    assert parity["passed"] and parity["labelsIdentical"] and parity["maxAbsDiff"] <= 1e-4


def test_unconvertible_model_gives_none_and_the_real_reason(iris):
    from sklearn.neighbors import NearestCentroid

    from mlops_runtime.model_io import convert_to_onnx

    X, y = iris
    model = NearestCentroid().fit(X, y)  # skl2onnx has no converter for it
    assert to_onnx(model, X.head(3)) is None
    onnx_bytes, reason = convert_to_onnx(model, X.head(3))
    assert onnx_bytes is None and "MissingShapeCalculator" in reason and "NearestCentroid" in reason
