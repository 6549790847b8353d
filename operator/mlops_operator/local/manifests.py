"""Reading resources for `mlops local up/apply -f`: the YAML one would `kubectl apply`.

A path is a file or a folder of `.yaml`/`.yml`/`.json` files (not recursive, as
`kubectl apply -f DIR`); a file may hold several documents and `kind: List`. Our four kinds
are validated with the API models, other kinds must be ones the cluster adapters know.
Every problem is reported with its file, document and field; on any problem nothing is
loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml

from mlops_operator.api import API_VERSION, parse_manifest
from mlops_operator.cluster.resources import UnknownResource, resource_for

Obj = dict[str, Any]
SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Problem:
    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


class ManifestError(ValueError):
    """One or more resources are invalid; `problems` lists each, nothing was loaded."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def files_of(paths: Iterable[Path]) -> tuple[list[Path], list[Problem]]:
    files: list[Path] = []
    problems: list[Problem] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
            if not found:
                problems.append(Problem(str(path), f"no {'/'.join(SUFFIXES)} files in this folder"))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(str(path), "no such file or folder"))
    return files, problems


def load(paths: Iterable[Path]) -> list[Obj]:
    """The resources in `paths`, namespaced and validated; raises ManifestError."""
    files, problems = files_of(paths)
    objects: list[Obj] = []
    for file in files:
        try:
            documents = list(yaml.safe_load_all(file.read_text()))
        except (OSError, yaml.YAMLError) as error:
            problems.append(Problem(str(file), f"not readable as YAML: {error}"))
            continue
        documents = _expand_lists(documents)
        if not documents:  # an empty file is a mistake (a wrong path, an unsaved editor), not "nothing to do"
            problems.append(Problem(str(file), "no resources in this file"))
        for index, document in enumerate(documents, start=1):
            source = f"{file} (document {index})"
            try:
                objects.append(check(document, source))
            except ManifestError as error:
                problems += error.problems
    seen: dict[tuple[str, str, str, str], str] = {}
    for obj in objects:
        identity = _identity(obj)
        if identity in seen:
            problems.append(Problem(f"{identity[1]}/{identity[3]}", "defined twice in the given files"))
        seen[identity] = ""
    if problems:
        raise ManifestError(problems)
    return objects


def check(document: Any, source: str) -> Obj:
    """One resource, with `metadata.namespace` defaulted; raises ManifestError."""
    if not isinstance(document, dict):
        raise ManifestError([Problem(source, "a resource must be a mapping with apiVersion, kind and metadata")])
    kind, api_version = document.get("kind"), document.get("apiVersion")
    metadata = document.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("name"):
        raise ManifestError([Problem(_where(source, document), "metadata.name: required")])
    obj = {**document, "metadata": {**metadata, "namespace": metadata.get("namespace") or DEFAULT_NAMESPACE}}
    where = _where(source, obj)
    if api_version == API_VERSION:
        try:
            parse_manifest(obj)
        except pydantic.ValidationError as error:
            raise ManifestError([Problem(where, _field_message(e)) for e in error.errors()]) from None
        except ValueError as error:
            raise ManifestError([Problem(where, str(error))]) from None
        return obj
    try:
        resource_for(str(api_version), str(kind))
    except UnknownResource:
        raise ManifestError([Problem(where, f"kind {kind!r} of apiVersion {api_version!r} is not "
                                            "supported by local mode")]) from None
    return obj


def _field_message(error: Any) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error.get("msg", "invalid"))
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    return f"{location}: {message}" if location else message


def _where(source: str, document: Obj) -> str:
    name = (document.get("metadata") or {}).get("name", "?")
    return f"{source} {document.get('kind', '?')}/{name}"


def _expand_lists(documents: list[Any]) -> list[Any]:
    expanded: list[Any] = []
    for document in documents:
        if document is None:
            continue
        if isinstance(document, dict) and document.get("kind") == "List" and isinstance(document.get("items"), list):
            expanded += document["items"]
        else:
            expanded.append(document)
    return expanded


def _identity(obj: Obj) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return (str(obj.get("apiVersion")), str(obj.get("kind")), str(meta["namespace"]), str(meta["name"]))
