"""Label selectors as the Kubernetes API reads them, parsed once and matched many times.

Three spellings are accepted and mean the same thing:

- the string syntax of `?labelSelector=`: `a=b`, `a==b`, `a!=b`, `a in (x,y)`,
  `a notin (x)`, `a` (exists), `!a` (does not exist); a comma means AND;
- a mapping of equalities: `{"app": "iris"}`;
- a `metav1.LabelSelector` dict: `{"matchLabels": {...}, "matchExpressions":
  [{"key": ..., "operator": "In"|"NotIn"|"Exists"|"DoesNotExist", "values": [...]}]}`.

Bad syntax raises `ValueError` naming the selector and the problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

Operator = Literal["=", "!=", "in", "notin", "exists", "!"]

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_LABEL_NAME = re.compile(rf"^{_NAME}$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TOKEN = re.compile(r"\s*(?:(?P<op>!=|==|=|!|\(|\)|,)|(?P<word>[^\s!=(),]+))")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        match self.operator:
            case "=" | "in":
                return labels.get(self.key) in self.values
            case "!=" | "notin":
                # As in the API: a missing label satisfies "not equal" and "not in".
                return labels.get(self.key) not in self.values
            case "exists":
                return self.key in labels
            case _:
                return self.key not in labels

    def __str__(self) -> str:
        match self.operator:
            case "=" | "!=":
                return f"{self.key}{self.operator}{next(iter(self.values))}"
            case "in" | "notin":
                return f"{self.key} {self.operator} ({','.join(sorted(self.values))})"
            case "exists":
                return self.key
            case _:
                return f"!{self.key}"


Selector = tuple[Requirement, ...]


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a valid label key, or None: `[prefix/]name`, name <= 63 characters."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"prefix {prefix!r} must be a lower-case DNS subdomain of at most 253 characters"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return ("name part must be 1-63 alphanumeric characters, '-', '_' or '.', "
                "starting and ending with an alphanumeric character")
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a valid label value, or None (empty is valid)."""
    if value == "":
        return None
    if len(value) > 63 or not _LABEL_NAME.match(value):
        return ("must be at most 63 alphanumeric characters, '-', '_' or '.', "
                "starting and ending with an alphanumeric character")
    return None


def _requirement(selector: object, key: str, operator: Operator, values: frozenset[str]) -> Requirement:
    if problem := label_key_problem(key):
        raise ValueError(f"label selector {selector!r}: key {key!r}: {problem}")
    for value in values:
        if problem := label_value_problem(value):
            raise ValueError(f"label selector {selector!r}: value {value!r} of {key!r}: {problem}")
    if operator in ("in", "notin") and not values:
        raise ValueError(f"label selector {selector!r}: {key!r} {operator} needs at least one value")
    return Requirement(key, operator, values)


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        match = _TOKEN.match(stripped, pos)
        if match is None:  # pragma: no cover  # every character is either a token or a word
            raise ValueError(f"label selector {text!r}: cannot read at position {pos}")
        tokens.append(match.group("op") or match.group("word"))
        pos = match.end()
    return tokens


@lru_cache(maxsize=1024)
def parse_string(text: str) -> Selector:
    """Parse the API's string syntax; the empty string selects everything."""
    tokens = _tokens(text)
    requirements: list[Requirement] = []
    i = 0

    def expect_value(at: int) -> str:
        if at >= len(tokens) or tokens[at] in ("!=", "==", "=", "!", "(", ")", ","):
            found = repr(tokens[at]) if at < len(tokens) else "the end"
            raise ValueError(f"label selector {text!r}: expected a value, found {found}")
        return tokens[at]

    while i < len(tokens):
        if tokens[i] == "!":
            key = expect_value(i + 1)
            requirements.append(_requirement(text, key, "!", frozenset()))
            i += 2
        else:
            key = expect_value(i)
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ","
            if nxt == ",":
                requirements.append(_requirement(text, key, "exists", frozenset()))
                i += 1
            elif nxt in ("=", "==", "!="):
                # `a=` is valid: the label equals the empty string.
                after = tokens[i + 2] if i + 2 < len(tokens) else ","
                value = "" if after == "," else expect_value(i + 2)
                operator: Operator = "!=" if nxt == "!=" else "="
                requirements.append(_requirement(text, key, operator, frozenset((value,))))
                i += 2 if after == "," else 3
            elif nxt in ("in", "notin"):
                if i + 2 >= len(tokens) or tokens[i + 2] != "(":
                    raise ValueError(f"label selector {text!r}: expected '(' after {key!r} {nxt}")
                values: list[str] = []
                j = i + 3
                while True:
                    if j >= len(tokens):
                        raise ValueError(f"label selector {text!r}: missing ')' after {key!r} {nxt}")
                    if tokens[j] == ")":
                        break
                    values.append(expect_value(j))
                    j += 1
                    if j < len(tokens) and tokens[j] == ",":
                        j += 1
                    elif j >= len(tokens) or tokens[j] != ")":
                        found = repr(tokens[j]) if j < len(tokens) else "the end"
                        raise ValueError(f"label selector {text!r}: expected ',' or ')', found {found}")
                requirements.append(_requirement(text, key, nxt, frozenset(values)))
                i = j + 1
            else:
                raise ValueError(
                    f"label selector {text!r}: unexpected {nxt!r} after {key!r} "
                    f"(operators: =, ==, !=, in, notin, !)"
                )
        if i < len(tokens):
            if tokens[i] != ",":
                raise ValueError(f"label selector {text!r}: expected ',' before {tokens[i]!r}")
            i += 1
            if i == len(tokens):
                raise ValueError(f"label selector {text!r}: trailing ','")
    return tuple(requirements)


_EXPRESSION_OPERATORS: dict[str, Operator] = {
    "In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!",
}


def _parse_label_selector(selector: Mapping[str, Any]) -> Selector:
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise ValueError(f"label selector {dict(selector)!r}: unknown fields {sorted(unknown)}")
    requirements: list[Requirement] = []
    for key, value in (selector.get("matchLabels") or {}).items():
        if not isinstance(value, str):
            raise ValueError(f"label selector: matchLabels[{key!r}] must be a string, not {value!r}")
        requirements.append(_requirement(selector, key, "=", frozenset((value,))))
    for n, expression in enumerate(selector.get("matchExpressions") or ()):
        where = f"matchExpressions[{n}]"
        if not isinstance(expression, Mapping) or "key" not in expression or "operator" not in expression:
            raise ValueError(f"label selector: {where} needs 'key' and 'operator', got {expression!r}")
        operator = _EXPRESSION_OPERATORS.get(expression["operator"])
        if operator is None:
            raise ValueError(
                f"label selector: {where}.operator {expression['operator']!r} is not one of "
                f"{', '.join(_EXPRESSION_OPERATORS)}"
            )
        values = expression.get("values") or ()
        if isinstance(values, str) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"label selector: {where}.values must be a list of strings, got {values!r}")
        if operator in ("exists", "!") and values:
            raise ValueError(f"label selector: {where}.values must be empty for {expression['operator']}")
        requirements.append(_requirement(selector, expression["key"], operator, frozenset(values)))
    return tuple(requirements)


def parse(selector: str | Mapping[str, Any] | None) -> Selector:
    """Any accepted spelling -> a tuple of requirements (all must hold). None selects everything."""
    if selector is None:
        return ()
    if isinstance(selector, str):
        return parse_string(selector)
    if not isinstance(selector, Mapping):
        raise ValueError(f"label selector must be a string or a mapping, not {type(selector).__name__}")
    if selector and set(selector) <= {"matchLabels", "matchExpressions"} and not any(
        isinstance(v, str) for v in selector.values()
    ):
        return _parse_label_selector(selector)
    requirements: list[Requirement] = []
    for key, value in selector.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"label selector {dict(selector)!r}: keys and values must be strings")
        requirements.append(_requirement(selector, key, "=", frozenset((value,))))
    return tuple(requirements)


def matches(selector: Selector, labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    for requirement in selector:
        if not requirement.matches(labels):
            return False
    return True


def to_string(selector: str | Mapping[str, Any] | None) -> str:
    """The `?labelSelector=` form of any accepted spelling (validated on the way)."""
    return ",".join(str(requirement) for requirement in parse(selector))
