"""The Open Inference Protocol (V2) on the wire: request tensors in, response tensors out,
with the binary tensor data extension (Triton's `binary_tensor_data`, which tritonclient
uses by default).

A request body is a JSON header, optionally followed by raw tensor bytes; the request header
`Inference-Header-Content-Length` says where the JSON ends. An input whose bytes are in the
binary part carries `parameters.binary_data_size` instead of `data`. Outputs come back as JSON
`data`, or as raw bytes after the JSON header when the request asks for them
(`parameters.binary_data_output` for all, `outputs[i].parameters.binary_data` for one).
Fixed-size types are little-endian; each BYTES element is a 4-byte little-endian length and
the bytes.

Every check here names the tensor (and the feature, once tensors become features) so a 400
tells the caller what to change: `name`, `datatype` and `shape` are required, the data must
fit the datatype (BYTES holds strings, INT8 holds -128..127, FP32 holds what float32 can), and
the element count must equal the shape's product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from mlops_runtime.serving_model import (
    CATEGORICAL,
    NUMERIC,
    Batch,
    InputError,
    Signature,
)

BINARY_CONTENT_TYPE = b"application/octet-stream"

# datatype -> little-endian numpy dtype of its binary form
FIXED_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
FLOAT64 = np.dtype(np.float64)
INTEGER_TYPES = frozenset(t for t, d in FIXED_DTYPES.items() if d.kind in "iu")
FLOAT_TYPES = frozenset(("FP16", "FP32", "FP64"))
NUMERIC_TYPES = INTEGER_TYPES | FLOAT_TYPES
DATATYPES = frozenset(FIXED_DTYPES) | {"BYTES"}


class ElementError(InputError):
    """One element of a tensor does not fit its datatype; `located` names its row and feature
    once the tensor's layout against the model's features is known."""

    def __init__(self, where: str, index: int, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where, self.index, self.problem = where, index, problem

    def located(self, name: str, shape: list[int], features: tuple[str, ...]) -> InputError:
        if len(shape) == 2 and features and shape[1] == len(features):  # one [rows, features] tensor
            row, column = divmod(self.index, shape[1])
            return InputError(f"{self.where}: row {row}, feature {features[column]!r}: {self.problem}")
        if name in features:  # one tensor per feature
            return InputError(f"{self.where}: row {self.index}, feature {name!r}: {self.problem}")
        return self


# Slotted, not frozen: a frozen dataclass costs ~1.2 us to build (object.__setattr__ per field)
# against ~0.3 us, and a request builds three or four of these.
@dataclass(slots=True)
class Tensor:
    """One decoded input: `values` is a numeric array (missing values NaN) for numeric
    datatypes, booleans for BOOL, an object array of str (or None) for BYTES."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray
    where: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None   # None: every output, in the model's order
    binary_outputs: bool                    # the default for outputs not listed


# -- the request --------------------------------------------------------------------------------


def split_body(body: bytes, header_length: bytes | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensor bytes) of a request body."""
    if header_length is None:
        return body, b""
    text = header_length.decode("latin-1").strip()
    if not text.isdigit() or int(text) > len(body):
        raise InputError(f"Inference-Header-Content-Length must be the byte length of the JSON header "
                         f"(at most the body's {len(body)} bytes), got {text[:40]!r}")
    size = int(text)
    return body[:size], body[size:]


def parse_document(body: bytes, header_length: bytes | None) -> tuple[dict[str, Any], bytes]:
    """(the JSON header as an object, the binary tensor bytes after it)."""
    head, binary = split_body(body, header_length)
    if not head:
        raise InputError("request body is empty; send a JSON object with inputs")
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as error:
        hint = "" if header_length is not None or not _looks_binary(head) else (
            "; binary tensor data needs the Inference-Header-Content-Length header giving the JSON "
            "header's length")
        raise InputError(f"request body is not valid JSON: {error}{hint}") from None
    if not isinstance(doc, dict):
        raise InputError("request body must be a JSON object")
    return doc, binary


def request_id_in(doc: dict[str, Any]) -> str | None:
    """The request's own `id`, echoed exactly as sent (the protocol's rule); an empty one is
    no id (feedback could not tell such requests apart)."""
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(f"id must be a string, got {type(request_id).__name__}")
    return request_id or None


def read_request(doc: dict[str, Any], binary: bytes, features: tuple[str, ...] = ()) -> InferRequest:
    """Checked, decoded tensors and the outputs asked for (InputError naming the problem, and
    the row and feature of an element that does not fit its datatype, given the model's
    `features`)."""
    if "inputs" not in doc:
        raise InputError("missing field 'inputs': send {\"inputs\": [tensors]}")
    parameters = _parameters(doc)
    binary_outputs = _flag(parameters, "binary_data_output", "parameters")
    inputs = _decode_inputs(doc["inputs"], binary, features)
    return InferRequest(id=request_id_in(doc), inputs=inputs,
                        outputs=_requested_outputs(doc.get("outputs"), binary_outputs), binary_outputs=binary_outputs)


def parse_request(body: bytes, header_length: bytes | None, features: tuple[str, ...] = ()) -> InferRequest:
    """A V2 infer request body -> InferRequest."""
    return read_request(*parse_document(body, header_length), features)


def _looks_binary(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


NO_PARAMETERS: dict[str, Any] = {}   # shared, only ever read


def _parameters(doc: dict[str, Any], owner: str = "") -> dict[str, Any]:
    """`doc`'s parameters object; `owner` names `doc` in an error ("" for the request itself)."""
    parameters = doc.get("parameters")
    if parameters is None:
        return NO_PARAMETERS
    if not isinstance(parameters, dict):
        raise InputError(f"{owner}.parameters must be an object" if owner else "parameters must be an object")
    return parameters


def _flag(parameters: dict[str, Any], key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InputError(f"{where}.{key} must be true or false, got {value!r:.40}")
    return value


def _requested_outputs(outputs: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise InputError("outputs must be a list of {\"name\": ...} objects")
    requested = []
    for k, output in enumerate(outputs):
        where = f"outputs[{k}]"
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InputError(f"{where} must be an object with a name")
        parameters = _parameters(output, where)
        binary = _flag(parameters, "binary_data", f"{where}.parameters") if "binary_data" in parameters \
            else binary_default
        requested.append(RequestedOutput(output["name"], binary))
    return requested or None


def _decode_inputs(inputs: Any, binary: bytes, features: tuple[str, ...]) -> list[Tensor]:
    if not isinstance(inputs, list) or not inputs:
        raise InputError("inputs must be a non-empty list of tensors")
    offset = 0
    tensors = []
    seen: set[str] = set()
    for k, tensor in enumerate(inputs):
        where = f"inputs[{k}]"
        if not isinstance(tensor, dict):
            raise InputError(f"{where} must be an object with name, datatype, shape and data")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"{where}: missing field 'name' (every tensor is named)")
        where = f"{where} {name!r}"
        if name in seen:
            raise InputError(f"{where}: two inputs have this name")
        seen.add(name)
        datatype = tensor.get("datatype")
        if datatype is None:
            raise InputError(f"{where}: missing field 'datatype' (one of {', '.join(sorted(DATATYPES))})")
        if datatype not in DATATYPES:
            raise InputError(f"{where}: unknown datatype {datatype!r:.40}; one of {', '.join(sorted(DATATYPES))}")
        shape = tensor.get("shape")
        if shape is None:
            raise InputError(f"{where}: missing field 'shape'")
        if not isinstance(shape, list) or not _dimensions(shape):
            raise InputError(f"{where}: shape must be a list of non-negative integers, got {shape!r:.60}")
        size = math.prod(shape)
        parameters = _parameters(tensor, where)
        binary_size = parameters.get("binary_data_size")
        if binary_size is not None:
            if "data" in tensor:
                raise InputError(f"{where}: has both data and parameters.binary_data_size; send one")
            if isinstance(binary_size, bool) or not isinstance(binary_size, int) or binary_size < 0:
                raise InputError(f"{where}: parameters.binary_data_size must be a byte count")
            if offset + binary_size > len(binary):
                raise InputError(f"{where}: binary_data_size {binary_size} runs past the {len(binary)} bytes "
                                 "of binary data after the JSON header")
            try:
                values = _from_binary(binary[offset:offset + binary_size], datatype, size, where)
            except ElementError as error:
                raise error.located(name, shape, features) from None
            offset += binary_size
        elif "data" in tensor:
            try:
                values = _from_json(tensor["data"], datatype, size, where)
            except ElementError as error:
                raise error.located(name, shape, features) from None
        else:
            raise InputError(f"{where}: missing field 'data' (or parameters.binary_data_size)")
        tensors.append(Tensor(name, datatype, tuple(shape), values, where))
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} bytes of binary data after the JSON header belong to no input "
                         "(check each input's parameters.binary_data_size)")
    return tensors


def _dimensions(shape: list[Any]) -> bool:
    """Every dimension a non-negative int (bool is not one)."""
    for d in shape:
        if type(d) is not int or d < 0:
            return False
    return True


def _from_binary(raw: bytes, datatype: str, size: int, where: str) -> np.ndarray:
    if datatype == "BYTES":
        return _bytes_elements(raw, size, where)
    dtype = FIXED_DTYPES[datatype]
    if len(raw) != size * dtype.itemsize:
        raise InputError(f"{where}: {datatype} of shape-size {size} needs {size * dtype.itemsize} bytes, "
                         f"binary_data_size gives {len(raw)}")
    values = np.frombuffer(raw, dtype=dtype)
    if datatype in ("FP16", "FP32"):  # FP64: Batch.check_range names the feature
        _check_float_range(values, datatype, where)
    return values


def _bytes_elements(raw: bytes, size: int, where: str) -> np.ndarray:
    values = np.empty(size, dtype=object)
    offset = 0
    for i in range(size):
        if offset + 4 > len(raw):
            raise InputError(f"{where}: BYTES data ends after {i} of {size} elements")
        length = int.from_bytes(raw[offset:offset + 4], "little")
        offset += 4
        if offset + length > len(raw):
            raise InputError(f"{where}: BYTES element {i} runs past the tensor's binary data")
        try:
            values[i] = raw[offset:offset + length].decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{where}: BYTES element {i} is not UTF-8 text") from None
        offset += length
    if offset != len(raw):
        raise InputError(f"{where}: {len(raw) - offset} bytes left over after {size} BYTES elements")
    return values


def _from_json(data: Any, datatype: str, size: int, where: str) -> np.ndarray:
    if datatype == "BYTES":  # element by element: numpy would turn [1, "a"] into text silently
        values = np.array([_text(v, where, i) for i, v in enumerate(_flatten(data))], dtype=object)
    else:
        try:
            values = np.asarray(data)
            if values.ndim != 1:
                values = values.reshape(-1)
        except ValueError:  # ragged nesting
            values = np.asarray(_flatten(data), dtype=object)
    if values.size != size:
        raise InputError(f"{where}: shape needs {size} values, got {values.size}")
    if datatype == "BYTES":
        return values
    kind = values.dtype.kind
    if datatype == "BOOL":
        if kind != "b" and size:
            raise InputError(f"{where}: datatype BOOL holds true/false, got {_kind_name(values)}")
        return values
    if kind not in "biuf":  # text, nulls, objects: look at what was sent, not numpy's reading of it
        values = np.array([_number(v, where, datatype, i) for i, v in enumerate(_flatten(data))], dtype=np.float64)
    if datatype in INTEGER_TYPES:
        _check_integers(values, datatype, where)
    elif datatype != "FP64":  # JSON cannot carry a float64 overflow; Batch.check_range covers the rest
        _check_float_range(values, datatype, where)
    return values


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [v for part in data for v in _flatten(part)]
    return [data]


def _kind_name(values: np.ndarray) -> str:
    kind = values.dtype.kind
    if kind == "U":
        return "strings"
    if kind in "iuf":
        return "numbers"
    if kind == "b":
        return "booleans"
    return "mixed values"


def _text(value: Any, where: str, index: int) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ElementError(where, index, f"datatype BYTES holds strings, got {type(value).__name__} {value!r:.40}; "
                                     "send numeric features as FP64 (or FP32, INT64...)")


def _number(value: Any, where: str, datatype: str, index: int) -> float:
    if value is None:
        if datatype in INTEGER_TYPES:
            raise ElementError(where, index, f"datatype {datatype} cannot hold null; use FP64 for missing values")
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    raise ElementError(where, index, f"datatype {datatype} holds numbers, got {type(value).__name__} {value!r:.40}"
                       + ("; send text as BYTES" if isinstance(value, str) else ""))


def _check_integers(values: np.ndarray, datatype: str, where: str) -> None:
    if not values.size:
        return
    info = np.iinfo(FIXED_DTYPES[datatype])
    if values.dtype.kind == "f":
        fractional = ~np.isfinite(values) | (values != np.floor(values))
        if fractional.any():
            index = int(np.argmax(fractional))
            raise ElementError(where, index, f"datatype {datatype} holds integers, got {float(values[index])!r}")
    low, high = values.min(), values.max()
    if low < info.min or high > info.max:
        index = int(np.argmax((values < info.min) | (values > info.max)))
        raise ElementError(where, index, f"{values[index]} is outside the range of {datatype} "
                                         f"({info.min}..{info.max})")


def _check_float_range(values: np.ndarray, datatype: str, where: str) -> None:
    """Infinities are refused; NaN is a missing value (as null is in JSON)."""
    if not values.size:
        return
    limit = float(np.finfo(FIXED_DTYPES[datatype]).max)
    low, high = float(np.min(values)), float(np.max(values))
    if -limit <= low and high <= limit:
        return
    bad = ~np.isnan(values) & ~(np.abs(values) <= limit)
    if bad.any():
        index = int(np.argmax(bad))
        raise ElementError(where, index, f"{float(values[index])!r} is outside the range of {datatype}; "
                                         "send finite numbers (null for a missing value)")


# -- tensors -> the model's features ---------------------------------------------------------


def batch_from_tensors(tensors: list[Tensor], signature: Signature) -> Batch:
    """One 2-D tensor [rows, features] (a numeric model), or one tensor per feature named after
    it, shape [rows] or [rows, 1]."""
    if any(t.name in signature.name_set for t in tensors):
        return _batch_from_columns(tensors, signature)
    if len(tensors) != 1:
        raise InputError(f"send one 2-D tensor of all features, or one tensor per feature named "
                         f"{signature.describe()}; got tensors {[t.name for t in tensors]}")
    return _batch_from_matrix(tensors[0], signature)


def _batch_from_matrix(tensor: Tensor, signature: Signature) -> Batch:
    shape, width, where = list(tensor.shape), len(signature.features), tensor.where
    if len(shape) == 1 and shape[0] == width:
        shape = [1, width]
    if len(shape) != 2:
        raise InputError(f"{where}: expected shape [rows, {width}], got {shape}")
    if shape[1] != width:
        raise InputError(f"{where}: expected {width} features ({signature.describe()}), got shape {shape}")
    if shape[0] == 0:
        raise InputError(f"{where} is empty; send at least one row")
    if not signature.all_numeric:
        categorical = [f.name for f in signature.features if f.kind == CATEGORICAL]
        raise InputError(f"{where}: this model has categorical features ({', '.join(map(repr, categorical))}), "
                         "and one tensor has one datatype: send one tensor per feature, named after it")
    if tensor.datatype not in NUMERIC_TYPES:
        raise InputError(f"{where}: the features are numeric but the datatype is {tensor.datatype}; "
                         "send FP64 (or FP32, INT64...)")
    values = tensor.values
    if values.dtype is not FLOAT64:  # builtin dtypes are singletons; astype(copy=False) costs its argument parsing
        values = values.astype(np.float64)
    return Batch.of_matrix(values.reshape(shape[0], width))


def _batch_from_columns(tensors: list[Tensor], signature: Signature) -> Batch:
    by_name = {t.name: t for t in tensors}
    missing = [n for n in signature.names if n not in by_name]
    unknown = [n for n in by_name if n not in signature.names]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing feature tensor(s) {', '.join(map(repr, missing))}")
        if unknown:
            parts.append(f"unknown tensor(s) {', '.join(map(repr, unknown))}")
        raise InputError(f"{'; '.join(parts)}; the model takes {signature.describe()}")
    columns = []
    rows = None
    for feature in signature.features:
        tensor = by_name[feature.name]
        if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InputError(f"{tensor.where}: a feature tensor has shape [rows] or [rows, 1], got "
                             f"{list(tensor.shape)}")
        if rows is None:
            rows = tensor.size
        elif tensor.size != rows:
            raise InputError(f"feature tensors have different lengths ({feature.name!r} has {tensor.size}, "
                             f"the first has {rows}); each needs one value per row")
        columns.append(_feature_column(tensor, feature))
    if not rows:
        raise InputError("inputs are empty; send at least one row")
    if signature.all_numeric:
        return Batch.of_matrix(np.column_stack(columns))
    return Batch(rows=rows, columns=columns)


def _feature_column(tensor: Tensor, feature: Any) -> np.ndarray:
    if feature.kind == NUMERIC:
        if tensor.datatype not in NUMERIC_TYPES and tensor.datatype != "BOOL":
            raise InputError(f"{tensor.where}: feature {feature.name!r} is numeric but the datatype is "
                             f"{tensor.datatype}; send FP64 (or FP32, INT64...)")
        return tensor.values.astype(np.float64)
    if tensor.datatype == "BYTES":
        return tensor.values
    if feature.numeric_categories and tensor.datatype in NUMERIC_TYPES:
        return tensor.values.astype(object)
    raise InputError(f"{tensor.where}: categorical feature {feature.name!r} takes text: send it as BYTES, "
                     f"not {tensor.datatype}")


# -- the response -------------------------------------------------------------------------------


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    values: Any                      # a list (labels) or a numpy array
    parameters: dict[str, Any] | None = None


def choose_outputs(available: tuple[str, ...], request: InferRequest) -> list[tuple[str, bool]]:
    """(output name, as binary) in the order asked for, every output when none is named; an
    unknown name is refused before anything is predicted."""
    if request.outputs is None:
        return [(name, request.binary_outputs) for name in available]
    unknown = [r.name for r in request.outputs if r.name not in available]
    if unknown:
        raise InputError(f"unknown output(s) {', '.join(map(repr, unknown))}; this model has outputs "
                         f"{', '.join(map(repr, available))}")
    return [(r.name, r.binary) for r in request.outputs]


def output_names(has_probabilities: bool) -> tuple[str, ...]:
    return ("predict", "predict_proba") if has_probabilities else ("predict",)


def encode_response(header: dict[str, Any], outputs: list[tuple[OutputTensor, bool]],
                    options: int) -> tuple[bytes, int | None]:
    """(body, JSON header length when binary outputs follow it, else None)."""
    chunks: list[bytes] = []
    documents = []
    for output, binary in outputs:
        document: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        parameters = output.parameters
        if binary:
            raw = _to_binary(output.values, output.datatype)
            parameters = {**(parameters or {}), "binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            document["data"] = output.values
        if parameters:
            document["parameters"] = parameters
        documents.append(document)
    header["outputs"] = documents
    head = orjson.dumps(header, option=options)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def _to_binary(values: Any, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in values:
            raw = str(value).encode("utf-8")
            parts.append(len(raw).to_bytes(4, "little") + raw)
        return b"".join(parts)
    return np.ascontiguousarray(values, dtype=FIXED_DTYPES[datatype]).tobytes()
