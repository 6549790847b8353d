"""Datasets: built-ins, CSV and Parquet from a real S3 server, and the checks on them."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from mlops_runtime.datasets import (
    BUILTIN_DATASETS,
    DatasetSpec,
    infer_task,
    load_dataset,
    numeric_and_categorical,
    train_test_split_frame,
)
from mlops_runtime.errors import UserError
from mlops_runtime.store import ArtifactStore

EXPECTED_SHAPES = {"iris": (150, 4), "wine": (178, 13), "breast_cancer": (569, 30), "diabetes": (442, 10),
                   "digits": (1797, 64), "linnerud": (20, 3)}


@pytest.fixture
def store(s3) -> ArtifactStore:
    return ArtifactStore.from_env(s3.env)


def mixed_frame(rows: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "size": rng.normal(10, 2, rows),
        "count": rng.integers(0, 5, rows),
        "color": rng.choice(["red", "green", "blue"], rows),
        "target": rng.choice(["yes", "no"], rows),
    })


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_every_builtin_loads_with_its_target(name):
    data = load_dataset(DatasetSpec(f"sklearn://{name}"), None)
    assert data.X.shape == EXPECTED_SHAPES[name]
    assert len(data.y) == data.rows and data.y.notna().all()
    assert len(data.sha256) == 64
    assert data.target not in data.X.columns


def test_linnerud_defaults_to_its_first_target_and_drops_the_others():
    data = load_dataset(DatasetSpec("sklearn://linnerud"), None)
    assert data.target == "Weight"
    assert list(data.X.columns) == ["Chins", "Situps", "Jumps"]
    assert load_dataset(DatasetSpec("sklearn://linnerud", target="Pulse"), None).target == "Pulse"


def test_unknown_builtin_lists_the_available_ones():
    with pytest.raises(UserError, match="sklearn://iris") as caught:
        load_dataset(DatasetSpec("sklearn://titanic"), None)
    assert caught.value.reason == "InvalidDataset"


def test_csv_from_s3_with_mixed_columns(store, bucket):
    frame = mixed_frame()
    store.put_bytes(f"s3://{bucket}/data/mixed.csv", frame.to_csv(index=False).encode())
    data = load_dataset(DatasetSpec(f"s3://{bucket}/data/mixed.csv", target="target"), store)
    assert data.rows == 60 and list(data.X.columns) == ["size", "count", "color"]
    assert numeric_and_categorical(data.X) == (["size", "count"], ["color"])
    assert infer_task(data.y) == "classification"


def test_parquet_from_s3_hashes_the_file_bytes(store, bucket):
    buffer = io.BytesIO()
    mixed_frame().to_parquet(buffer, index=False)
    payload = buffer.getvalue()
    digest = store.put_bytes(f"s3://{bucket}/data/mixed.parquet", payload)
    data = load_dataset(DatasetSpec(f"s3://{bucket}/data/mixed.parquet", target="target"), store)
    assert data.sha256 == digest
    assert data.X["color"].dtype.kind == "O"


def test_missing_target_column_names_the_columns(store, bucket):
    store.put_bytes(f"s3://{bucket}/d.csv", mixed_frame().to_csv(index=False).encode())
    with pytest.raises(UserError, match="no target column 'label'.*'size', 'count', 'color'") as caught:
        load_dataset(DatasetSpec(f"s3://{bucket}/d.csv", target="label"), store)
    assert caught.value.reason == "MissingTarget"


@pytest.mark.parametrize("content", [b"", b"size,target\n"])
def test_empty_csv_is_a_user_error(store, bucket, content):
    store.put_bytes(f"s3://{bucket}/empty.csv", content)
    with pytest.raises(UserError, match="empty|no rows") as caught:
        load_dataset(DatasetSpec(f"s3://{bucket}/empty.csv", target="target"), store)
    assert caught.value.reason == "EmptyDataset"


def test_absent_dataset_object_is_a_user_error(store, bucket):
    with pytest.raises(UserError, match="does not exist") as caught:
        load_dataset(DatasetSpec(f"s3://{bucket}/nope.csv", target="target"), store)
    assert caught.value.reason == "DatasetNotFound"


def test_unknown_extension_asks_for_a_format(store, bucket):
    with pytest.raises(UserError, match="dataset.format"):
        load_dataset(DatasetSpec(f"s3://{bucket}/data.txt", target="target"), store)


def test_task_inference():
    assert infer_task(pd.Series(["a", "b"])) == "classification"
    assert infer_task(pd.Series([0, 1, 2, 1])) == "classification"
    assert infer_task(pd.Series(np.arange(100))) == "regression"
    assert infer_task(pd.Series([0.5, 1.5])) == "regression"
    assert infer_task(pd.Series([0, 1]), "regression") == "regression"


def test_unsupported_column_type_is_named():
    frame = pd.DataFrame({"when": pd.to_datetime(["2024-01-01", "2024-01-02"]), "x": [1.0, 2.0]})
    with pytest.raises(UserError, match="'when'"):
        numeric_and_categorical(frame)


def test_split_is_deterministic_from_the_seed():
    data = load_dataset(DatasetSpec("sklearn://iris"), None)
    first = train_test_split_frame(data.X, data.y, 0.2, 7, "classification")
    again = train_test_split_frame(data.X, data.y, 0.2, 7, "classification")
    other = train_test_split_frame(data.X, data.y, 0.2, 8, "classification")
    assert first[1].index.equals(again[1].index)
    assert not first[1].index.equals(other[1].index)
    assert len(first[1]) == 30 and sorted(first[3].value_counts()) == [10, 10, 10]  # stratified


def test_too_few_rows_to_split():
    frame = pd.DataFrame({"x": [1.0, 2.0]})
    with pytest.raises(UserError, match="too few"):
        train_test_split_frame(frame, pd.Series([0, 1]), 0.2, 0, "classification")
