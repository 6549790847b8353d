"""Every YAML file the project ships parses as Kubernetes' own parser would: a mapping key
given twice is an error there (`yaml: unmarshal errors: mapping key "drift" already
defined`), so it is one here too, instead of PyYAML's silent last-one-wins."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice."""


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f'mapping key "{key}" already defined at line {seen[key] + 1}', key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def shipped_yaml_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.yaml", "*.yml"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout.strip():
        return [ROOT / line for line in listed.stdout.splitlines() if (ROOT / line).is_file()]
    return sorted(p for p in ROOT.rglob("*.y*ml") if ".venv" not in p.parts and ".git" not in p.parts)


def test_the_loader_refuses_a_duplicate_key() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match='mapping key "drift" already defined at line 2'):
        list(yaml.load_all("spec:\n  drift: {a: 1}\n  other: 2\n  drift: {b: 2}\n", Loader=UniqueKeyLoader))


def test_there_are_yaml_files_to_check() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in shipped_yaml_files()}
    assert "examples/breast-cancer/inferenceservice.yaml" in names
    assert any(name.startswith("manifests/") for name in names)


@pytest.mark.parametrize("path", shipped_yaml_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shipped_yaml_file_parses_without_duplicate_keys(path: Path) -> None:
    list(yaml.load_all(path.read_text(), Loader=UniqueKeyLoader))
