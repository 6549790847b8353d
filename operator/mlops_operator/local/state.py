"""The local instance's folder (`.mlops/` by default) and what survives a restart.

    .mlops/
      s3/             SeaweedFS data (the artifacts)
      s3.json         the running S3 server: pid and endpoint
      state.json      every object of the in-memory cluster and the Services' local ports,
                      written after each pass of the loop that changed something
      instance.json   the running instance: pid, control port
      pids.json       every process the instance started (pid, start time, command)
      progress.log    the progress lines `mlops local up` follows
      pods/           one working folder per pod (termination log, mounted ConfigMaps)
      logs/           one log per pod process, and the instance's own log

A second `up` reloads the objects with their uids and resourceVersions, so owner
references and the operator's bookkeeping hold; pods that were running are started again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from mlops_operator.cluster.memory import InMemoryCluster
from mlops_operator.cluster.resources import all_resources
from mlops_operator.local.processes import atomic_write

Obj = dict[str, Any]
STATE_FORMAT = 1
# Events are a journal, not state: only the most recent ones are kept across restarts.
KEPT_EVENTS = 500


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def s3_data(self) -> Path:
        return self.root / "s3"

    @property
    def s3_record(self) -> Path:
        return self.root / "s3.json"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def instance_file(self) -> Path:
        return self.root / "instance.json"

    @property
    def pids_file(self) -> Path:
        return self.root / "pids.json"

    @property
    def progress_log(self) -> Path:
        return self.root / "progress.log"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def instance_log(self) -> Path:
        return self.logs / "instance.log"


@dataclass
class SavedState:
    objects: list[Obj]
    ports: dict[str, int]
    credentials: dict[str, str]


class LocalCluster(InMemoryCluster):
    """The in-memory cluster, plus a snapshot of every object for saving; the base class's
    `restore` puts them back with their uids, resourceVersions and generations."""

    def snapshot(self) -> list[Obj]:
        objects: list[Obj] = []
        for resource in all_resources():
            items = self.list(resource.api_version, resource.kind)
            if (resource.api_version, resource.kind) == ("v1", "Event"):
                items = sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))[-KEPT_EVENTS:]
            objects += items
        return objects


def save(path: Path, state: SavedState) -> None:
    document = {
        "format": STATE_FORMAT,
        "ports": state.ports,
        "credentials": state.credentials,
        "objects": state.objects,
    }
    atomic_write(path, orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


def load(path: Path) -> SavedState | None:
    """The saved state, or None when there is none; raises ValueError for a file that is
    not ours (kept as it is, for the user to look at)."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not readable as local state: {error}") from None
    if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a local state file of format {STATE_FORMAT}")
    return SavedState(
        objects=list(document.get("objects") or []),
        ports={str(k): int(v) for k, v in (document.get("ports") or {}).items()},
        credentials={str(k): str(v) for k, v in (document.get("credentials") or {}).items()},
    )


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
