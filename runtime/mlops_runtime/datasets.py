"""Datasets: the ones that ship inside scikit-learn (`sklearn://iris`), and CSV or Parquet
files on S3 (`s3://bucket/key.csv`) with a target column. Every dataset becomes a pandas
frame of features plus a target series, and a content hash for lineage.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    import pandas as pd

    from .store import ArtifactStore

BUILTIN_DATASETS = ("iris", "wine", "breast_cancer", "diabetes", "digits", "linnerud")
DEFAULT_TARGET = "target"
FORMATS = ("csv", "parquet")
# Integer targets with at most this many distinct values are class labels.
MAX_CLASSES_FOR_INTEGER_TARGET = 20


@dataclass(frozen=True)
class DatasetSpec:
    uri: str
    target: str | None = None
    test_size: float = 0.2
    format: str | None = None


@dataclass(frozen=True)
class Dataset:
    uri: str
    X: pd.DataFrame
    y: pd.Series
    sha256: str
    target: str

    @property
    def rows(self) -> int:
        return len(self.X)


def dataset_format(uri: str, declared: str | None) -> str:
    if declared:
        if declared not in FORMATS:
            raise UserError("InvalidConfig", f"dataset.format must be one of {list(FORMATS)}, got {declared!r}")
        return declared
    key = uri.lower().split("?", 1)[0]
    for suffix, fmt in ((".csv", "csv"), (".csv.gz", "csv"), (".parquet", "parquet"), (".pq", "parquet")):
        if key.endswith(suffix):
            return fmt
    raise UserError(
        "InvalidDataset",
        f"dataset {uri}: cannot tell the format from the key; name it .csv or .parquet, "
        "or set dataset.format to csv or parquet",
    )


def load_builtin(name: str, target: str | None) -> tuple[pd.DataFrame, str, str]:
    """(frame with features and target, target column, sha256 of the frame's bytes)."""
    import pandas as pd
    from sklearn import datasets

    if name not in BUILTIN_DATASETS:
        raise UserError(
            "InvalidDataset",
            f"unknown built-in dataset sklearn://{name}; available: "
            + ", ".join(f"sklearn://{n}" for n in BUILTIN_DATASETS),
        )
    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    frame: pd.DataFrame = bunch.frame
    target_names = [bunch.target.name] if isinstance(bunch.target, pd.Series) else list(bunch.target.columns)
    if target is None or (target == DEFAULT_TARGET and target not in target_names):
        target = target_names[0]  # linnerud has three targets; the first is the default
    if target not in target_names:
        raise UserError(
            "MissingTarget",
            f"sklearn://{name} has no target {target!r}; its targets are {target_names}",
        )
    # The other targets of a multi-target dataset are not features.
    frame = frame.drop(columns=[t for t in target_names if t != target])
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes()).hexdigest()
    return frame, target, digest


def parse_table(data: bytes, fmt: str, uri: str) -> pd.DataFrame:
    import pandas as pd

    try:
        if fmt == "parquet":
            return pd.read_parquet(io.BytesIO(data))
        return pd.read_csv(io.BytesIO(data), compression="infer" if not uri.endswith(".gz") else "gzip")
    except pd.errors.EmptyDataError:
        raise UserError("EmptyDataset", f"dataset {uri} is empty: the file has no header and no rows") from None
    except Exception as error:
        raise UserError("InvalidDataset", f"dataset {uri} is not valid {fmt}: {type(error).__name__}: {error}"[:500]) from None


def load_dataset(spec: DatasetSpec, store: ArtifactStore | None) -> Dataset:
    """Read the dataset, check the target column and that there is data to learn from."""
    from .store import ArtifactNotFound

    if spec.uri.startswith("sklearn://"):
        frame, target, digest = load_builtin(spec.uri[len("sklearn://"):], spec.target)
    elif spec.uri.startswith("s3://"):
        if store is None:
            raise UserError("InvalidConfig", f"dataset {spec.uri} is on S3 but no S3 endpoint is configured")
        fmt = dataset_format(spec.uri, spec.format)
        target = spec.target or DEFAULT_TARGET
        try:
            data = store.get_bytes(spec.uri)
        except ArtifactNotFound:
            raise UserError("DatasetNotFound", f"dataset {spec.uri} does not exist: check the bucket and key") from None
        digest = hashlib.sha256(data).hexdigest()
        frame = parse_table(data, fmt, spec.uri)
    else:
        raise UserError(
            "InvalidDataset",
            f"dataset.uri {spec.uri!r} is not supported: use sklearn://<name> or s3://bucket/key.csv|parquet",
        )
    return split_target(spec.uri, frame, target, digest)


def split_target(uri: str, frame: pd.DataFrame, target: str, digest: str) -> Dataset:
    if target not in frame.columns:
        raise UserError(
            "MissingTarget",
            f"dataset {uri} has no target column {target!r}; its columns are {list(frame.columns)[:50]}; "
            "set dataset.target to the label column",
        )
    frame = frame[frame[target].notna()]
    if len(frame) == 0:
        raise UserError("EmptyDataset", f"dataset {uri} has no rows with a value in the target column {target!r}")
    X = frame.drop(columns=[target])
    if X.shape[1] == 0:
        raise UserError("EmptyDataset", f"dataset {uri} has no feature columns besides the target {target!r}")
    X.columns = [str(c) for c in X.columns]
    return Dataset(uri=uri, X=X.reset_index(drop=True), y=frame[target].reset_index(drop=True),
                   sha256=digest, target=target)


def numeric_and_categorical(X: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Numbers (and booleans) are numeric; strings and pandas categories are categorical.
    Anything else (dates, mixed objects of non-strings) is refused with the column named."""
    numeric, categorical = [], []
    for name in X.columns:
        kind = X[name].dtype.kind
        if kind in "biuf":
            numeric.append(name)
        elif kind == "O" or str(X[name].dtype) in ("category", "string", "str"):
            values = X[name].dropna()
            if not all(isinstance(v, str) for v in values.head(1000)):
                raise UserError(
                    "InvalidDataset",
                    f"column {name!r} mixes strings with other values; make it all numbers or all strings",
                )
            categorical.append(name)
        else:
            raise UserError(
                "InvalidDataset",
                f"column {name!r} has type {X[name].dtype}, which is not supported; "
                "convert it to numbers or strings (for dates, e.g. to a timestamp or a weekday)",
            )
    return numeric, categorical


def infer_task(y: pd.Series, declared: str | None = None) -> str:
    """Strings, booleans and categories are labels; integers with few distinct values too;
    other numbers are a regression target. `declared` ("classification"/"regression") wins."""
    if declared:
        if declared not in ("classification", "regression"):
            raise UserError("InvalidConfig", f"task must be classification or regression, got {declared!r}")
        return declared
    kind = y.dtype.kind
    if kind in "bOSU" or str(y.dtype) in ("category", "string", "str"):
        return "classification"
    if kind in "iu" and y.nunique() <= MAX_CLASSES_FOR_INTEGER_TARGET:
        return "classification"
    return "regression"


def train_test_split_frame(
    X: pd.DataFrame, y: pd.Series, test_size: float, seed: int, task: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """A deterministic split from the seed, stratified for classification when every class
    has at least two rows."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise UserError("InvalidConfig", f"dataset.testSize must be between 0 and 1 (exclusive), got {test_size}")
    n_test = int(round(len(X) * test_size))
    if n_test < 1 or len(X) - n_test < 2:
        raise UserError(
            "EmptyDataset",
            f"dataset has {len(X)} rows: too few to split into training and test sets with testSize={test_size}",
        )
    stratify: Any = None
    if task == "classification":
        counts = y.value_counts()
        if counts.min() >= 2 and n_test >= len(counts):
            stratify = y
    return train_test_split(X, y, test_size=test_size, random_state=seed, stratify=stratify)
