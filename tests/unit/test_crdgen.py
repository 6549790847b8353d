"""The CRD generator on small toy models: one test per rewriting rule, and the refusals."""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, ClassVar, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.alias_generators import to_camel

from mlops_operator import crdgen
from mlops_operator.crdgen import CRDGenerationError, structural_schema


class Toy(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def field_schema(annotation: Any, field: Any = ...) -> dict[str, Any]:
    """The structural schema of one field `x` of a throwaway model."""

    one = create_model("One", __base__=Toy, x=(annotation, field))
    return structural_schema(one)["properties"]["x"]


def walk(node: Any):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


# --------------------------------------------------------------------------- rules


def test_optional_becomes_nullable_and_keeps_constraints():
    assert field_schema(int | None, Field(None, ge=1, le=5)) == {
        "type": "integer",
        "minimum": 1,
        "maximum": 5,
        "nullable": True,
    }


def test_optional_with_a_default_keeps_it():
    assert field_schema(int | None, 3) == {"type": "integer", "default": 3, "nullable": True}


def test_literal_becomes_typed_enum():
    assert field_schema(Literal["grid", "random"], "grid") == {
        "type": "string",
        "enum": ["grid", "random"],
        "default": "grid",
    }
    assert field_schema(Literal["only"]) == {"type": "string", "enum": ["only"]}
    assert field_schema(Literal[1, 2, 3]) == {"type": "integer", "enum": [1, 2, 3]}


class Goal(str, enum.Enum):
    """Which way the objective goes."""

    maximize = "maximize"
    minimize = "minimize"


def test_enum_class_becomes_string_enum_with_its_docstring():
    assert field_schema(Goal, Goal.minimize) == {
        "type": "string",
        "enum": ["maximize", "minimize"],
        "default": "minimize",
        "description": "Which way the objective goes.",
    }


def test_dict_becomes_additional_properties():
    assert field_schema(dict[str, float]) == {"type": "object", "additionalProperties": {"type": "number"}}


class Inner(Toy):
    """An inner model."""

    some_value: int = 3
    label: str | None = None


class Outer(Toy):
    """The outer model.

    Second paragraph."""

    inner: Inner = Field(default_factory=Inner)
    described: Inner = Field(default=Inner(some_value=5), description="Says what this one is for.")
    items: list[Inner] = Field(default_factory=list, max_length=4)


def test_nested_models_are_inlined_with_descriptions_and_camel_case():
    schema = structural_schema(Outer)
    assert not any(isinstance(n, dict) and ("$ref" in n or "$defs" in n or "title" in n) for n in walk(schema))
    assert schema["description"] == "The outer model.\n\nSecond paragraph."
    inner = {
        "type": "object",
        "description": "An inner model.",
        "properties": {
            "someValue": {"type": "integer", "default": 3},
            "label": {"type": "string", "nullable": True},
        },
    }
    assert schema["properties"]["inner"] == inner
    # The field's description wins over the model's docstring; a model default is camelCase.
    assert schema["properties"]["described"] == {
        **inner,
        "description": "Says what this one is for.",
        "default": {"someValue": 5},
    }
    assert schema["properties"]["items"] == {"type": "array", "items": inner, "maxItems": 4}
    assert "required" not in schema


def test_required_fields_use_json_names():
    class Req(Toy):
        max_trials: int
        seed: int = 0

    assert structural_schema(Req)["required"] == ["maxTrials"]


def test_defaults_are_kept_only_when_not_none():
    assert field_schema(list[int], [10, 100]) == {"type": "array", "items": {"type": "integer"}, "default": [10, 100]}
    assert field_schema(str | None, None) == {"type": "string", "nullable": True}


def test_exclusive_bounds_become_openapi_v3_booleans():
    assert field_schema(float, Field(gt=0, lt=1)) == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 1,
        "exclusiveMaximum": True,
    }
    # ge and gt together: the stricter bound wins.
    assert field_schema(Annotated[float, Field(ge=0), Field(gt=0.5)]) == {
        "type": "number",
        "minimum": 0.5,
        "exclusiveMinimum": True,
    }


def test_string_and_list_constraints_are_kept():
    assert field_schema(str, Field(min_length=1, max_length=5, pattern="^[a-z]+$")) == {
        "type": "string",
        "minLength": 1,
        "maxLength": 5,
        "pattern": "^[a-z]+$",
    }
    assert field_schema(list[Annotated[int, Field(ge=1, le=100)]], Field(min_length=1, max_length=20)) == {
        "type": "array",
        "items": {"type": "integer", "minimum": 1, "maximum": 100},
        "minItems": 1,
        "maxItems": 20,
    }


def test_known_formats_are_kept_and_foreign_ones_dropped():
    from datetime import datetime, timedelta

    assert field_schema(datetime) == {"type": "string", "format": "date-time"}
    # pydantic's "duration" is ISO 8601; the apiserver's is Go's "5m": dropped, not mis-validated.
    assert field_schema(timedelta) == {"type": "string"}


def test_marked_free_form_fields_preserve_unknown_fields():
    marker = {"x-kubernetes-preserve-unknown-fields": True}
    assert field_schema(dict[str, Any], Field(default_factory=dict, json_schema_extra=marker)) == {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert field_schema(list[Annotated[Any, Field(json_schema_extra=marker)]]) == {
        "type": "array",
        "items": {"x-kubernetes-preserve-unknown-fields": True},
    }


def test_int_or_string():
    assert field_schema(int | str) == {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
    }
    assert field_schema(dict[str, int | str] | None) == {
        "type": "object",
        "nullable": True,
        "additionalProperties": {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
        },
    }


def test_int_or_float_is_a_number():
    assert field_schema(int | float) == {"type": "number"}


def test_set_of_scalars_is_a_set_list():
    assert field_schema(set[str]) == {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"}


def test_cel_validations_and_value_junctors_pass_through():
    rules = [{"rule": "self.low <= self.high", "message": "low must not exceed high"}]

    class Bounds(Toy):
        model_config = ConfigDict(
            json_schema_extra={
                "x-kubernetes-validations": rules,
                "oneOf": [{"required": ["low"]}, {"required": ["high"]}],
            }
        )
        low: float | None = None
        high: float | None = None

    schema = structural_schema(Bounds)
    assert schema["x-kubernetes-validations"] == rules
    assert schema["oneOf"] == [{"required": ["low"]}, {"required": ["high"]}]


class Range(Toy):
    kind: Literal["range"] = "range"
    low: float
    high: float


class Values(Toy):
    kind: Literal["values"]
    values: list[str] = Field(min_length=1)


def test_discriminated_union_becomes_one_object_with_a_oneof_of_tags():
    schema = field_schema(Annotated[Range | Values, Field(discriminator="kind")])
    assert schema == {
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": ["range", "values"]},
            "low": {"type": "number"},
            "high": {"type": "number"},
            "values": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
        "oneOf": [
            {"required": ["low", "high"], "properties": {"kind": {"enum": ["range"]}}},
            {"required": ["kind", "values"], "properties": {"kind": {"enum": ["values"]}}},
        ],
    }


def test_plain_union_of_models_becomes_anyof_of_required_fields():
    class A(Toy):
        a: int

    class B(Toy):
        b: str

    assert field_schema(A | B | None, None) == {
        "type": "object",
        "nullable": True,
        "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
        "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
    }


# --------------------------------------------------------------------------- refusals


def refusal(model: type[BaseModel]) -> CRDGenerationError:
    with pytest.raises(CRDGenerationError) as caught:
        structural_schema(model)
    return caught.value


def test_any_without_the_marker_is_refused_naming_the_field():
    class Holder(Toy):
        ok: int = 0
        anything_goes: Any = None

    error = refusal(Holder)
    assert (error.model, error.path) == ("Holder", "anythingGoes")
    assert "Holder" in str(error) and "'anythingGoes'" in str(error)
    assert "x-kubernetes-preserve-unknown-fields" in str(error)


def test_unmarked_free_form_dict_is_refused():
    class Holder(Toy):
        pod_overrides: dict[str, Any] = {}

    assert refusal(Holder).path == "podOverrides"


def test_nested_refusal_names_the_whole_path_and_the_inner_model():
    class Leaf(Toy):
        blob: Any = None

    class Branch(Toy):
        leaves: list[Leaf] = []

    class Root(Toy):
        branches: dict[str, Branch] = {}

    error = refusal(Root)
    assert (error.model, error.path) == ("Root", "branches.*.leaves[*].blob")
    assert "(in Leaf)" in str(error)


def test_tuple_is_refused():
    class Holder(Toy):
        pair: tuple[int, str] = (1, "a")

    error = refusal(Holder)
    assert error.path == "pair" and "tuple" in str(error)


def test_union_of_unrelated_scalars_is_refused():
    class Holder(Toy):
        flag: bool | str = False

    error = refusal(Holder)
    assert error.path == "flag" and "boolean | string" in str(error)


def test_recursive_model_is_refused():
    class Node(Toy):
        children: list[Node] = []

    Node.model_rebuild()
    error = refusal(Node)
    assert error.path == "children[*]" and "recursive model Node" in str(error)


def test_union_of_models_that_disagree_on_a_field_is_refused():
    class A(Toy):
        size: int

    class B(Toy):
        size: str

    class Holder(Toy):
        choice: A | B

    assert refusal(Holder).path == "choice.size"


def test_union_of_models_whose_variant_has_rules_is_refused():
    class A(Toy):
        model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{"rule": "self.a > 0"}]})
        a: int

    class B(Toy):
        b: str

    class Holder(Toy):
        choice: A | B

    error = refusal(Holder)
    assert error.path == "choice" and "x-kubernetes-validations" in str(error)


def test_set_path_prefix_names_the_crd_location():
    class Holder(Toy):
        anything: Any = None

    with pytest.raises(CRDGenerationError, match=r"'spec\.anything'"):
        structural_schema(Holder, path="spec")


# --------------------------------------------------------------------------- the CRD


class GadgetSpec(Toy):
    size: int = Field(default=1, ge=0)


class GadgetStatus(Toy):
    phase: Literal["Pending", "Ready"] = "Pending"


class Gadget(BaseModel):
    """A gadget for the tests."""

    group: ClassVar[str] = "toys.example.io"
    version: ClassVar[str] = "v1beta1"
    kind: ClassVar[str] = "Gadget"
    plural: ClassVar[str] = "gadgets"
    singular: ClassVar[str] = "gadget"
    short_names: ClassVar[tuple[str, ...]] = ("gd",)
    categories: ClassVar[tuple[str, ...]] = ("toys",)
    printer_columns: ClassVar[tuple[dict[str, Any], ...]] = (
        {"jsonPath": ".status.phase", "name": "Phase", "type": "string"},
        {"name": "Size", "type": "integer", "jsonPath": ".spec.size", "priority": 1, "description": "How big."},
    )

    spec: GadgetSpec
    status: GadgetStatus | None = None


def test_crd_manifest_shape():
    crd = crdgen.crd_manifest(Gadget)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"] == {"name": "gadgets.toys.example.io"}
    spec = crd["spec"]
    assert spec["group"] == "toys.example.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "Gadget",
        "listKind": "GadgetList",
        "plural": "gadgets",
        "singular": "gadget",
        "shortNames": ["gd"],
        "categories": ["toys"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1beta1", True, True)
    assert version["subresources"] == {"status": {}}
    assert version["additionalPrinterColumns"] == [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Size", "type": "integer", "jsonPath": ".spec.size", "description": "How big.", "priority": 1},
    ]
    root = version["schema"]["openAPIV3Schema"]
    assert root["type"] == "object"
    assert root["required"] == ["spec"]
    assert root["description"] == "A gadget for the tests."
    assert set(root["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert root["properties"]["metadata"] == {"type": "object"}
    assert root["properties"]["spec"] == {
        "type": "object",
        "properties": {"size": {"type": "integer", "default": 1, "minimum": 0}},
    }
    status = root["properties"]["status"]
    assert status["properties"]["phase"]["enum"] == ["Pending", "Ready"]
    assert "nullable" not in status and "x-kubernetes-preserve-unknown-fields" not in status


def test_refusal_inside_a_kind_names_the_crd_path():
    class BadSpec(Toy):
        anything: Any = None

    class Bad(Gadget):
        spec: BadSpec

    with pytest.raises(CRDGenerationError, match=r"BadSpec: field 'spec\.anything'"):
        crdgen.crd_manifest(Bad)


def test_render_is_deterministic_yaml_with_the_header():
    text = crdgen.render_crd(Gadget)
    assert text.startswith("# Generated by `mlops crds` from operator/mlops_operator/api; do not edit.\n")
    assert text == crdgen.render_crd(Gadget)
    assert yaml.safe_load(text) == json.loads(json.dumps(crdgen.crd_manifest(Gadget)))
    # Keys inside the schema are sorted, so a model edit shows up as a small diff.
    schema_keys = list(yaml.safe_load(text)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert schema_keys == sorted(schema_keys)


def test_render_all_names_files_by_plural_and_group():
    files = crdgen.render_all([Gadget])
    assert sorted(files) == ["Kustomization", "gadgets.toys.example.io.yaml"]
    assert yaml.safe_load(files["Kustomization"])["resources"] == ["gadgets.toys.example.io.yaml"]


def test_compare_and_write_report_stale_missing_and_extra(tmp_path):
    files = crdgen.render_all([Gadget])
    assert crdgen.compare(tmp_path, files) == [
        ("Kustomization", "missing"),
        ("gadgets.toys.example.io.yaml", "missing"),
    ]
    assert crdgen.write(tmp_path, files) == crdgen.compare(tmp_path / "nowhere", files)
    assert crdgen.compare(tmp_path, files) == []

    (tmp_path / "gadgets.toys.example.io.yaml").write_text("# edited by hand\n")
    (tmp_path / "old.toys.example.io.yaml").write_text("kind: CustomResourceDefinition\n")
    (tmp_path / "README.txt").write_text("not YAML, not ours")
    assert crdgen.compare(tmp_path, files) == [
        ("gadgets.toys.example.io.yaml", "stale"),
        ("old.toys.example.io.yaml", "extra"),
    ]
    crdgen.write(tmp_path, files)
    assert crdgen.compare(tmp_path, files) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "Kustomization",
        "README.txt",
        "gadgets.toys.example.io.yaml",
    ]
