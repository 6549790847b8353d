"""The committed CRDs in crds/: current, structural, and valid apiextensions.k8s.io/v1.

The structural lint below is written from the Kubernetes documentation ("Specifying a
structural schema"), independently of the generator, so a generator bug cannot hide itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mlops_operator import crdgen
from mlops_operator.api import ALL_KINDS

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
KIND_IDS = [k.kind for k in ALL_KINDS]


def committed(kind_cls) -> dict[str, Any]:
    return yaml.safe_load((CRDS / crdgen.crd_filename(kind_cls)).read_text())


def root_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


# --------------------------------------------------------------------------- (1) current


@pytest.mark.parametrize("name", sorted(crdgen.render_all()))
def test_committed_files_are_generated_from_the_models(name):
    path = CRDS / name
    expected = crdgen.render_all()[name]
    assert path.is_file(), f"crds/{name} is missing: run `mlops crds`"
    assert path.read_text() == expected, f"crds/{name} is stale: run `mlops crds` (python -m mlops_operator crds)"


def test_no_extra_files_in_crds():
    extra = sorted(p.name for p in CRDS.glob("*.yaml") if p.name not in crdgen.render_all())
    assert not extra, f"crds/ holds files the generator does not produce: {extra}; run `mlops crds`"


# --------------------------------------------------------------------------- (2) structural

JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
FORBIDDEN_IN_JUNCTORS = ("type", "description", "default", "nullable", "additionalProperties")
# The fields of apiextensions.k8s.io/v1 JSONSchemaProps that a generated schema may use.
SCHEMA_KEYS = {
    "type", "format", "description", "default", "nullable", "enum", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems", "multipleOf",
    "maxProperties", "minProperties", "required", "items", "properties", "additionalProperties",
    "allOf", "anyOf", "oneOf", "not", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource", "x-kubernetes-validations", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
}  # fmt: skip
INT_OR_STRING_ANYOF = [{"type": "integer"}, {"type": "string"}]


def structural_problems(node: dict[str, Any], path: str = "") -> list[str]:
    """Every violation of the structural-schema rules under `node` (a specified field)."""
    problems = []
    unknown = set(node) - SCHEMA_KEYS
    if unknown:
        problems.append(f"{path}: keys that are not JSONSchemaProps: {sorted(unknown)}")
    if "$ref" in node:
        problems.append(f"{path}: $ref")
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    # Rule 1: a non-empty type on every specified field, except these two extensions.
    if not node.get("type") and not (int_or_string or preserve):
        problems.append(f"{path}: no type")
    if int_or_string and "type" in node:
        problems.append(f"{path}: x-kubernetes-int-or-string with a type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties together")
    if node.get("additionalProperties") is False:
        problems.append(f"{path}: additionalProperties: false (pruning does that)")
    if node.get("uniqueItems"):
        problems.append(f"{path}: uniqueItems (refused by the apiserver)")
    if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(node["exclusiveMinimum"], bool):
        problems.append(f"{path}: numeric exclusiveMinimum (OpenAPI v3.0 wants a boolean)")
    if node.get("type") == "array" and "items" not in node and not preserve:
        problems.append(f"{path}: array without items")
    if node.get("type") == "object" and not ({"properties", "additionalProperties"} & set(node) or preserve):
        if path.split(".")[-1] != "metadata":
            problems.append(f"{path}: object with no fields and no x-kubernetes-preserve-unknown-fields")
    if node.get("default") is None and "default" in node:
        problems.append(f"{path}: default null")
    for name, child in node.get("properties", {}).items():
        problems += structural_problems(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        problems += structural_problems(node["items"], f"{path}[*]")
    for junctor in JUNCTORS:
        if junctor in node:
            branches = node[junctor] if isinstance(node[junctor], list) else [node[junctor]]
            if int_or_string and junctor == "anyOf" and branches == INT_OR_STRING_ANYOF:
                continue  # the one allowed pattern
            for i, branch in enumerate(branches):
                problems += junctor_problems(branch, node, f"{path}.{junctor}[{i}]")
    return problems


def junctor_problems(branch: dict[str, Any], outer: dict[str, Any], path: str) -> list[str]:
    """Rule 3: only value validation inside a junctor; rule 2: every field it names is
    specified outside it too."""
    problems = [f"{path}: {key} inside a junctor" for key in FORBIDDEN_IN_JUNCTORS if key in branch]
    for name in [*branch.get("required", []), *branch.get("properties", {})]:
        if name not in outer.get("properties", {}):
            problems.append(f"{path}: names {name!r}, which is not specified outside the junctor")
    for name, child in branch.get("properties", {}).items():
        problems += junctor_problems(child, outer.get("properties", {}).get(name, {}), f"{path}.{name}")
    if "items" in branch:
        problems += junctor_problems(branch["items"], outer.get("items", {}), f"{path}[*]")
    for junctor in JUNCTORS:
        if junctor in branch:
            inner = branch[junctor] if isinstance(branch[junctor], list) else [branch[junctor]]
            for i, nested in enumerate(inner):
                problems += junctor_problems(nested, outer, f"{path}.{junctor}[{i}]")
    return problems


@pytest.mark.parametrize("kind_cls", ALL_KINDS, ids=KIND_IDS)
def test_schema_is_structural(kind_cls):
    schema = root_schema(committed(kind_cls))
    assert structural_problems(schema) == []
    assert schema["properties"]["metadata"] == {"type": "object"}, "only name restrictions allowed on metadata"


def test_the_lint_catches_what_kubernetes_refuses():
    bad = {
        "type": "object",
        "properties": {
            "a": {"$ref": "#/definitions/A"},
            "b": {"type": "integer", "exclusiveMinimum": 0},
            "c": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "d": {"type": "object", "properties": {"x": {"type": "string"}}, "oneOf": [{"required": ["y"]}]},
            "e": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        },
    }
    found = "\n".join(structural_problems(bad))
    for expected in (
        ".a: $ref",
        ".a: no type",
        ".b: numeric exclusiveMinimum",
        ".c: no type",
        ".c.anyOf[0]: type inside a junctor",
        ".d.oneOf[0]: names 'y', which is not specified outside the junctor",
        ".e: uniqueItems",
    ):
        assert expected in found


@pytest.mark.parametrize("kind_cls", ALL_KINDS, ids=KIND_IDS)
def test_crd_has_status_subresource_printer_columns_and_names(kind_cls):
    crd = committed(kind_cls)
    (version,) = crd["spec"]["versions"]
    assert crd["metadata"]["name"] == f"{kind_cls.plural}.mlops.seed.io"
    assert version["subresources"] == {"status": {}}
    assert version["served"] and version["storage"]
    assert crd["spec"]["names"]["categories"] == ["mlops"]
    assert crd["spec"]["names"]["shortNames"]
    schema = root_schema(crd)
    assert schema["required"] == ["spec"]
    assert schema["properties"]["status"]["type"] == "object"
    assert "x-kubernetes-preserve-unknown-fields" not in schema["properties"]["status"]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert "Ready" in names and "Age" in names


def resolve_json_path(schema: dict[str, Any], json_path: str) -> dict[str, Any] | None:
    """The schema node a printer column's simple JSONPath points at (None if it points nowhere)."""
    node = schema
    for part in re.findall(r"\.([A-Za-z0-9_]+)|\[\?\([^)]*\)\]", json_path):
        if part == "":  # a filter: step into the list's items
            node = node.get("items")
        elif part == "metadata" and node is schema:
            return {"type": "object"}
        else:
            node = node.get("properties", {}).get(part)
        if node is None:
            return None
    return node


@pytest.mark.parametrize("kind_cls", ALL_KINDS, ids=KIND_IDS)
def test_printer_columns_point_at_fields_of_the_schema(kind_cls):
    crd = committed(kind_cls)
    (version,) = crd["spec"]["versions"]
    schema = root_schema(crd)
    for column in version["additionalPrinterColumns"]:
        assert resolve_json_path(schema, column["jsonPath"]) is not None, f"{column['name']}: {column['jsonPath']}"


# --------------------------------------------------------------------------- (3) valid v1


@pytest.mark.parametrize("k8s_version", ["1.30", kubernetes_validate.utils.latest_version()])
@pytest.mark.parametrize("kind_cls", ALL_KINDS, ids=KIND_IDS)
def test_crd_validates_as_apiextensions_v1(kind_cls, k8s_version):
    kubernetes_validate.validate(committed(kind_cls), k8s_version, strict=True)


def test_validation_notices_a_broken_crd():
    # JSON Schema 2020-12's numeric exclusiveMinimum, which the generator must rewrite.
    crd = committed(ALL_KINDS[0])
    root_schema(crd)["properties"]["spec"]["exclusiveMinimum"] = 0
    with pytest.raises(kubernetes_validate.ValidationError, match="boolean"):
        kubernetes_validate.validate(crd, "1.30", strict=True)


# --------------------------------------------------------------------------- (4) --check


def mlops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlops_operator", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_check_passes_on_the_committed_crds():
    result = mlops("crds", "--check")
    assert result.returncode == 0, result.stderr
    assert "current" in result.stdout


def test_check_names_each_stale_missing_and_extra_file(tmp_path):
    copy = tmp_path / "crds"
    shutil.copytree(CRDS, copy)
    assert mlops("crds", "--check", "--output", str(copy)).returncode == 0

    stale = copy / crdgen.crd_filename(ALL_KINDS[0])
    stale.write_text(stale.read_text().replace("minimum: 1", "minimum: 2", 1))
    missing = copy / crdgen.crd_filename(ALL_KINDS[1])
    missing.unlink()
    (copy / "widgets.mlops.seed.io.yaml").write_text("kind: CustomResourceDefinition\n")

    result = mlops("crds", "--check", "--output", str(copy))
    assert result.returncode == 1
    assert f"{stale.name}: stale" in result.stderr
    assert f"{missing.name}: missing" in result.stderr
    assert "widgets.mlops.seed.io.yaml: extra" in result.stderr
    assert "run `mlops crds --output" in result.stderr

    # Regenerating repairs it; the check passes again and leaves no stray file behind.
    assert mlops("crds", "--output", str(copy)).returncode == 0
    assert mlops("crds", "--check", "--output", str(copy)).returncode == 0
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in CRDS.iterdir())
