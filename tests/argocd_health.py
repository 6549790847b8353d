"""Argo CD's health check for our kinds, as Argo CD runs it: the kind's script from
docs/argocd/ with the live object as the global `obj`, its returned table read. Used by the
unit tier (sample objects) and the control-plane tier (objects read back from the server).

Lua 5.4 comes from the `lupa` wheel (Argo CD uses gopher-lua, Lua 5.1; the scripts use
nothing beyond it), so no system interpreter is needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lupa.lua54 import LuaRuntime

ARGOCD = Path(__file__).resolve().parents[1] / "docs" / "argocd"
LUA_KINDS = {"Experiment": "experiment", "TrainingRun": "trainingrun", "ModelVersion": "modelversion",
             "InferenceService": "inferenceservice"}


def health(obj: dict[str, Any], kind: str | None = None) -> tuple[str, str]:
    """(status, message) of `obj`'s health, by the script of `kind` (default: obj's kind).
    The object becomes Lua tables as Argo CD converts JSON: lists 1-based, null as nil."""
    lua = LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute((ARGOCD / f"{LUA_KINDS[kind or obj['kind']]}.lua").read_text())
    return hs["status"], hs["message"] or ""
