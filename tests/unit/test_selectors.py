"""Label selectors: the three spellings parse to the same requirements and match as the API does."""

from __future__ import annotations

from typing import Any

import pytest

from mlops_operator.cluster.selectors import Requirement, matches, parse, to_string

LABELS = {"app": "iris", "tier": "champion", "mlops.seed.io/model": "iris", "empty": ""}


@pytest.mark.parametrize(("selector", "expected"), [
    ("app=iris", True),
    ("app==iris", True),
    ("app=wine", False),
    ("app!=wine", True),
    ("app!=iris", False),
    ("missing!=x", True),  # a missing label is "not equal"
    ("tier in (champion,challenger)", True),
    ("tier in (challenger)", False),
    ("tier notin (challenger)", True),
    ("tier notin (champion, challenger)", False),
    ("missing notin (x)", True),
    ("tier", True),
    ("missing", False),
    ("!missing", True),
    ("!tier", False),
    ("mlops.seed.io/model=iris", True),
    ("empty=", True),
    ("app=iris,tier=champion,!missing", True),
    ("app=iris,tier=challenger", False),
    ("  app = iris ,  tier in ( champion )  ", True),
    ("", True),
])
def test_string_selectors(selector: str, expected: bool) -> None:
    assert matches(parse(selector), LABELS) is expected


def test_no_labels_at_all() -> None:
    assert matches(parse("!app"), None)
    assert not matches(parse("app"), None)


@pytest.mark.parametrize(("mapping", "expected"), [
    ({"app": "iris"}, True),
    ({"app": "iris", "tier": "challenger"}, False),
    ({}, True),
])
def test_mapping_selectors(mapping: dict[str, str], expected: bool) -> None:
    assert matches(parse(mapping), LABELS) is expected


@pytest.mark.parametrize(("selector", "expected"), [
    ({"matchLabels": {"app": "iris"}}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["champion"]}]}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["champion"]}]}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, False),
    ({"matchLabels": {"app": "iris"},
      "matchExpressions": [{"key": "missing", "operator": "DoesNotExist", "values": []}]}, True),
])
def test_label_selector_dicts(selector: dict[str, Any], expected: bool) -> None:
    assert matches(parse(selector), LABELS) is expected


def test_the_three_spellings_agree() -> None:
    as_string = parse("app=iris,tier in (a,b),!gone")
    as_dict = parse({"matchLabels": {"app": "iris"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["b", "a"]},
        {"key": "gone", "operator": "DoesNotExist"}]})
    assert set(as_string) == set(as_dict)
    assert parse({"app": "iris"}) == (Requirement("app", "=", frozenset({"iris"})),)


def test_to_string_round_trips() -> None:
    text = to_string({"matchLabels": {"app": "iris"},
                      "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["b", "a"]}]})
    assert text == "app=iris,tier notin (a,b)"
    assert parse(text) == parse(text.replace(" ", "  "))
    assert to_string(None) == ""


@pytest.mark.parametrize(("selector", "problem"), [
    ("app in iris", "expected '\\(' after 'app' in"),
    ("app in (a,b", "missing '\\)'|expected ',' or '\\)'"),
    ("app in ()", "needs at least one value"),
    ("app=iris,", "trailing ','"),
    ("app iris", "unexpected 'iris' after 'app'"),
    ("=iris", "expected a value"),
    ("!", "expected a value"),
    ("app=iris tier=x", "expected ','"),
    ("app>3", "key 'app>3'"),
    ("bad key!=x", "unexpected"),
    ("app=" + "x" * 64, "at most 63"),
    ("Example.com/app=x", "prefix"),
])
def test_bad_strings_are_value_errors_naming_the_problem(selector: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse(selector)


@pytest.mark.parametrize(("selector", "problem"), [
    ({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}, "is not one of"),
    ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "must be empty"),
    ({"matchExpressions": [{"operator": "In", "values": ["x"]}]}, "needs 'key' and 'operator'"),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]}, "list of strings"),
    ({"matchLabels": {"a": 1}}, "must be a string"),
    ({"app": 3}, "must be strings"),
])
def test_bad_dicts_are_value_errors(selector: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse(selector)


def test_a_selector_of_another_type_is_refused() -> None:
    with pytest.raises(ValueError, match="string or a mapping"):
        parse(["app=iris"])  # type: ignore[arg-type]
