"""Every example and every resource in tests/data/valid/ is accepted, and every broken
resource in tests/data/invalid/ is refused, by both gates a user meets: the pydantic models
(what the operator and local mode enforce) and the CRD (what the apiserver enforces on
`kubectl apply`). The two layers must agree: one verdict, naming the same field.

The CRD side is emulated without an apiserver: its OpenAPI v3.0 schema is turned into a
JSON Schema (`nullable` -> null allowed, unknown fields refused as the apiserver's strict
field validation does, `x-kubernetes-*` markers dropped), defaults are applied as the
apiserver applies them, and the `x-kubernetes-validations` CEL rules are evaluated with
cel-python (plus the few Kubernetes CEL library functions the rules use).

Each invalid file names, in its annotations, the field the error must name
(`mlops.seed.io/expect-error-field`) and which part of the CRD refuses it
(`mlops.seed.io/expect-rejected-by`: `schema`, or `cel` for cross-field rules).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pydantic
import pytest
import yaml
from celpy import celtypes

from mlops_operator import crdgen
from mlops_operator.api import KINDS_BY_NAME, parse_manifest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))
INVALID = sorted((ROOT / "tests" / "data" / "invalid").glob("*.yaml"))
VALID = sorted((ROOT / "tests" / "data" / "valid").glob("*.yaml"))
EXPECT_FIELD = "mlops.seed.io/expect-error-field"
EXPECT_REJECTED_BY = "mlops.seed.io/expect-rejected-by"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def example_docs() -> list[Any]:
    return [
        pytest.param(doc, id=f"{path.relative_to(ROOT / 'examples')}:{doc['kind']}/{doc['metadata']['name']}")
        for path in EXAMPLES
        for doc in documents(path)
    ]


def invalid_docs() -> list[Any]:
    return corpus_docs(INVALID)


def valid_docs() -> list[Any]:
    return corpus_docs(VALID)


def corpus_docs(paths: list[Path]) -> list[Any]:
    params = []
    for path in paths:
        (doc,) = documents(path)
        params.append(pytest.param(doc, id=path.stem))
    return params


# --------------------------------------------------------------------------- the CRD as a validator


@dataclass(frozen=True)
class Refusal:
    path: str  # dotted, e.g. spec.rollout.steps.1
    message: str
    by: str  # "schema" or "cel"


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI v3.0 as Kubernetes reads it -> JSON Schema draft 4 (which shares the
    boolean exclusiveMinimum/exclusiveMaximum)."""
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k not in ("nullable", "default")}
    if "properties" in node:
        out["properties"] = {name: to_json_schema(child) for name, child in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False  # the apiserver's strict field validation: unknown field
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"])
    if "items" in node:
        out["items"] = to_json_schema(node["items"])
    for junctor in ("anyOf", "oneOf", "allOf"):
        if junctor in node:
            out[junctor] = [to_json_schema(branch) for branch in node[junctor]]
    if node.get("nullable"):
        return {"anyOf": [{"type": "null"}, out]}
    return out


def with_defaults(node: dict[str, Any], value: Any) -> Any:
    """`value` with the schema's defaults filled in, as the apiserver defaults a request
    before it validates it (only inside objects that are present)."""
    if isinstance(value, dict) and "properties" in node:
        out = dict(value)
        for name, child in node["properties"].items():
            if name not in out and "default" in child:
                out[name] = copy.deepcopy(child["default"])
            if name in out:
                out[name] = with_defaults(child, out[name])
        return out
    if isinstance(value, dict) and isinstance(node.get("additionalProperties"), dict):
        return {k: with_defaults(node["additionalProperties"], v) for k, v in value.items()}
    if isinstance(value, list) and "items" in node:
        return [with_defaults(node["items"], v) for v in value]
    return value


def typed_as_in_the_schema(node: dict[str, Any], value: Any) -> Any:
    """`value` as the apiserver hands it to CEL: a `number` field is a double even when the
    YAML wrote an integer (cel-python would otherwise see an int, and `0 > 0.0` has no
    overload there)."""
    if node.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        if "properties" in node:
            return {k: typed_as_in_the_schema(node["properties"].get(k, {}), v) for k, v in value.items()}
        if isinstance(node.get("additionalProperties"), dict):
            return {k: typed_as_in_the_schema(node["additionalProperties"], v) for k, v in value.items()}
    if isinstance(value, list) and "items" in node:
        return [typed_as_in_the_schema(node["items"], v) for v in value]
    return value


def _is_sorted(values: celtypes.ListType) -> celtypes.BoolType:
    items = list(values)
    return celtypes.BoolType(all(a <= b for a, b in zip(items, items[1:])))


# The Kubernetes CEL list library functions that our rules use (not part of standard CEL).
K8S_CEL_FUNCTIONS = {"isSorted": _is_sorted}
CEL = celpy.Environment()


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path and name else path or name


def cel_refusals(node: dict[str, Any], value: Any, path: str) -> list[Refusal]:
    refusals = []
    if value is None:
        return refusals
    for rule in node.get("x-kubernetes-validations", []):
        program = CEL.program(CEL.compile(rule["rule"]), functions=K8S_CEL_FUNCTIONS)
        result = program.evaluate({"self": celpy.json_to_cel(value)})
        assert isinstance(result, celtypes.BoolType), f"{path}: rule {rule['rule']!r} gave {result!r}"
        if not result:
            field = rule.get("fieldPath", "").lstrip(".")
            refusals.append(Refusal(join(path, field), rule["message"], "cel"))
    if isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            refusals += cel_refusals(child, value.get(name), join(path, name))
        if isinstance(node.get("additionalProperties"), dict):
            for key, item in value.items():
                refusals += cel_refusals(node["additionalProperties"], item, join(path, key))
    if isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            refusals += cel_refusals(node["items"], item, join(path, str(i)))
    return refusals


def innermost(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The errors inside a `nullable` wrapper's anyOf, which name the nested field, rather
    than "... is not valid under any of the given schemas" on its parent."""
    if error.validator != "anyOf" or not error.context:
        return [error]
    inner = [e for e in error.context if not (e.validator == "type" and e.validator_value == "null")]
    if len(inner) == len(error.context):  # not a nullable wrapper (int-or-string): keep the summary
        return [error]
    return [leaf for e in inner for leaf in innermost(e)] or [error]


def crd_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / crdgen.crd_filename(KINDS_BY_NAME[kind])).read_text())
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def crd_refusals(doc: dict[str, Any]) -> list[Refusal]:
    """Everything the CRD of `doc`'s kind refuses in it: schema first, then CEL (the
    apiserver evaluates the rules only on a schema-valid, defaulted object)."""
    schema = crd_schema(doc["kind"])
    validator = jsonschema.Draft4Validator(to_json_schema(schema))
    refusals = [
        Refusal(".".join(str(p) for p in error.absolute_path), error.message, "schema")
        for top in validator.iter_errors(doc)
        for error in innermost(top)
    ]
    if refusals:
        return refusals
    return cel_refusals(schema, typed_as_in_the_schema(schema, with_defaults(schema, doc)), "")


def names_field(path: str, message: str, expected: str) -> bool:
    """An error at `path` names `expected` if it is that field, or an enclosing object
    whose message mentions the rest (cross-field rules, unknown or missing fields)."""
    if path == expected:
        return True
    prefix = f"{path}." if path else ""
    return expected.startswith(prefix) and expected[len(prefix) :].split(".")[-1] in message


# --------------------------------------------------------------------------- examples


def test_there_are_examples_for_every_dataset():
    folders = {p.parent.name for p in EXAMPLES}
    assert {"iris", "breast-cancer", "diabetes"} <= folders


@pytest.mark.parametrize("doc", example_docs())
def test_example_is_valid_for_the_model(doc):
    resource = parse_manifest(doc)
    assert resource.to_manifest()["metadata"]["name"] == doc["metadata"]["name"]


@pytest.mark.parametrize("doc", example_docs())
def test_example_is_valid_for_the_crd(doc):
    assert crd_refusals(doc) == []


def test_iris_example_is_small_enough_for_the_local_demo():
    (experiment,) = [d for d in documents(ROOT / "examples" / "iris" / "experiment.yaml")]
    search = parse_manifest(experiment).spec.search
    assert search.max_trials <= 8 and 2 <= search.parallelism <= 3
    assert search.algorithm in ("random", "bayesian")


# --------------------------------------------------------------------------- invalid resources


def test_the_corpus_is_large_and_covers_every_kind():
    kinds = {d["kind"] for p in INVALID for d in documents(p)}
    assert len(INVALID) >= 60 and kinds == set(KINDS_BY_NAME)
    assert len(VALID) >= 10 and {d["kind"] for p in VALID for d in documents(p)} == set(KINDS_BY_NAME)
    by = {d["metadata"]["annotations"][EXPECT_REJECTED_BY] for p in INVALID for d in documents(p)}
    assert by == {"schema", "cel"}


@pytest.mark.parametrize("doc", valid_docs())
def test_valid_resource_is_accepted_by_the_model(doc):
    assert parse_manifest(doc).to_manifest()["metadata"]["name"] == doc["metadata"]["name"]


@pytest.mark.parametrize("doc", valid_docs())
def test_valid_resource_is_accepted_by_the_crd(doc):
    assert crd_refusals(doc) == []


@pytest.mark.parametrize("doc", invalid_docs())
def test_invalid_resource_is_refused_by_the_model_naming_the_field(doc):
    expected = doc["metadata"]["annotations"][EXPECT_FIELD]
    with pytest.raises(pydantic.ValidationError) as caught:
        parse_manifest(doc)
    errors = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in caught.value.errors()]
    assert any(names_field(path, msg, expected) for path, msg in errors), f"expected {expected}, got {errors}"


@pytest.mark.parametrize("doc", invalid_docs())
def test_invalid_resource_is_refused_by_the_crd_naming_the_field(doc):
    expected = doc["metadata"]["annotations"][EXPECT_FIELD]
    refusals = crd_refusals(doc)
    assert any(names_field(r.path, r.message, expected) for r in refusals), f"expected {expected}, got {refusals}"
    assert {r.by for r in refusals} == {doc["metadata"]["annotations"][EXPECT_REJECTED_BY]}


# --------------------------------------------------------------------------- the emulation itself


def test_nullable_and_int_or_string_are_understood():
    schema = crd_schema("Experiment")
    doc = {
        "apiVersion": "mlops.seed.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "x"},
        "spec": {
            "model": "x",
            "dataset": {"uri": "sklearn://iris", "target": None},
            "estimator": "sklearn.tree.DecisionTreeClassifier",
            "resources": {"requests": {"cpu": "100m", "memory": 268435456}},
        },
    }
    assert jsonschema.Draft4Validator(to_json_schema(schema)).is_valid(doc)
    doc["spec"]["resources"]["requests"]["cpu"] = 0.5
    assert not jsonschema.Draft4Validator(to_json_schema(schema)).is_valid(doc)


def test_defaults_are_applied_before_the_cel_rules():
    schema = crd_schema("Experiment")
    spec = {"model": "x", "dataset": {"uri": "sklearn://iris"}, "estimator": "a.B", "search": {"maxTrials": 1}}
    defaulted = with_defaults(schema["properties"]["spec"], spec)
    assert defaulted["search"]["maxFailedTrials"] == 3
    # parallelism has no default in the schema (it follows maxTrials), so a search of one
    # trial is valid as written; a written parallelism above maxTrials is refused.
    assert "parallelism" not in defaulted["search"]
    assert cel_refusals(schema["properties"]["spec"], defaulted, "spec") == []
    spec["search"]["parallelism"] = 2
    refusals = cel_refusals(schema["properties"]["spec"], with_defaults(schema["properties"]["spec"], spec), "spec")
    assert [r.path for r in refusals] == ["spec.search.parallelism"]
