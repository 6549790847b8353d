"""Progress lines from status changes and Events, `kubectl get`-like tables, and loading
the YAML one would `kubectl apply`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mlops_operator.local import display, manifests
from mlops_operator.local.state import LocalCluster

API = "mlops.seed.io/v1alpha1"


def experiment() -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Experiment", "metadata": {"name": "iris", "namespace": "default"},
            "spec": {"model": "iris", "dataset": {"uri": "sklearn://iris"},
                     "estimator": "sklearn.tree.DecisionTreeClassifier",
                     "search": {"algorithm": "grid", "maxTrials": 2, "parallelism": 1},
                     "objective": {"metric": "accuracy", "goal": "maximize"}}}


def trial(name: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "TrainingRun", "metadata": {"name": name, "namespace": "default"},
            "spec": {"model": "iris", "experiment": "iris", "dataset": {"uri": "sklearn://iris"},
                     "estimator": "sklearn.tree.DecisionTreeClassifier", "params": {"max_depth": 3},
                     "objective": {"metric": "accuracy"}}}


def test_progress_tells_trials_leaderboard_versions_and_canary() -> None:
    cluster = LocalCluster()
    lines: list[str] = []
    progress = display.Progress(lines.append, lambda ns, name: "http://127.0.0.1:4000",
                                lambda svc: "curl -s http://127.0.0.1:4000/predict")
    cluster.create(experiment())
    cluster.create(trial("iris-t001"))
    progress.observe(cluster)
    assert lines == ["experiment iris: grid search over sklearn.tree.DecisionTreeClassifier, up to 2 trials, "
                     "1 at a time, maximize accuracy"]

    lines.clear()
    cluster.patch_status(API, "TrainingRun", "default", "iris-t001", {"phase": "Running"})
    cluster.create({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "iris-t001-trainer-abcde", "namespace": "default",
                                 "labels": {"mlops.seed.io/trainingrun": "iris-t001"}},
                    "spec": {"containers": [{"name": "trainer"}]}})
    progress.observe(cluster)
    assert lines == []  # its pod waits for a CPU: queued, not running yet
    cluster.patch_status("v1", "Pod", "default", "iris-t001-trainer-abcde", {"phase": "Running"})
    progress.observe(cluster)
    cluster.patch_status(API, "TrainingRun", "default", "iris-t001", {
        "phase": "Succeeded", "metrics": {"f1_macro": 0.9, "accuracy": 0.95}, "durationSeconds": 2.5})
    cluster.patch_status(API, "Experiment", "default", "iris", {
        "phase": "Succeeded", "bestObjectiveValue": 0.95, "modelVersion": "iris-v1",
        "bestTrial": {"name": "iris-t001"},
        "leaderboard": [{"name": "iris-t001", "objectiveValue": 0.95, "params": {"max_depth": 3},
                         "metrics": {"accuracy": 0.95, "f1_macro": 0.9}}]})
    progress.observe(cluster)
    assert lines[0] == "  trial iris-t001 running   max_depth=3"
    assert lines[1] == "  trial iris-t001 succeeded accuracy=0.95 f1_macro=0.9  (2.5s)"
    assert lines[2] == "leaderboard of iris:"
    assert lines[3].split() == ["#", "TRIAL", "ACCURACY", "PARAMS", "OTHER", "METRICS"]
    assert lines[4].split() == ["1", "iris-t001", "0.95", "max_depth=3", "f1_macro=0.9"]
    assert lines[5] == "experiment iris succeeded: best trial iris-t001 (accuracy=0.95), registered as iris-v1"

    lines.clear()
    cluster.create({"apiVersion": API, "kind": "ModelVersion", "metadata": {"name": "iris-v1", "namespace": "default"},
                    "spec": {"model": "iris", "version": 1, "metrics": {"accuracy": 0.95},
                             "lineage": {"trainingRun": "iris-t001"}}})
    progress.observe(cluster)
    cluster.patch_status(API, "ModelVersion", "default", "iris-v1", {"phase": "Rejected", "gates": [
        {"metric": "accuracy", "passed": False, "value": 0.95, "threshold": 0.99, "message": "below 0.99"}]})
    cluster.create({"apiVersion": API, "kind": "InferenceService", "metadata": {"name": "iris", "namespace": "default"},
                    "spec": {"model": "iris", "rollout": {"steps": [50, 100], "interval": "3s"}}})
    progress.observe(cluster)
    assert lines == [
        "model version iris-v1 registered: iris v1 from iris-t001 (accuracy=0.95)",
        "model version iris-v1 REJECTED: accuracy FAIL: below 0.99",
    ]

    lines.clear()
    cluster.patch_status(API, "InferenceService", "default", "iris", {
        "phase": "Stable", "champion": "iris-v1", "conditions": [{"type": "Available", "status": "True"}]})
    progress.observe(cluster)
    assert lines == ["service iris: champion iris-v1 answers at http://127.0.0.1:4000",
                     "  try: curl -s http://127.0.0.1:4000/predict"]

    lines.clear()
    cluster.patch_status(API, "InferenceService", "default", "iris", {
        "phase": "Progressing", "challenger": "iris-v2", "currentStep": 0,
        "traffic": {"champion": 50, "challenger": 50}})
    progress.observe(cluster)
    cluster.patch_status(API, "InferenceService", "default", "iris", {
        "phase": "RolledBack", "challenger": None, "traffic": {"champion": 100, "challenger": 0},
        "lastAnalysis": {"time": "t", "step": 0, "weight": 50, "verdict": "Fail", "message": "worse", "checks": [
            {"name": "onlineAccuracy", "verdict": "Fail", "champion": 0.97, "challenger": 0.66, "samples": 30}]},
        "history": [{"time": "t", "action": "RolledBack", "version": "iris-v2", "reason": "worse"}]})
    cluster.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "iris.1", "namespace": "default"},
                    "involvedObject": {"kind": "InferenceService", "name": "iris"}, "type": "Warning",
                    "reason": "RolledBack", "message": "rolled back iris-v2", "count": 1})
    progress.observe(cluster)
    assert lines == [
        "canary iris: challenger iris-v2 against champion iris-v1, steps 50 -> 100 % every 3s",
        "canary iris: step 1/2: 50% of traffic to iris-v2",
        "canary iris: analysis at 50%: Fail - worse",
        "    onlineAccuracy: Fail (champion 0.97 vs challenger 0.66, n=30)",
        "canary iris: iris-v2 ROLLED BACK: worse; iris-v1 keeps serving",
        "warning: InferenceService/iris: RolledBack: rolled back iris-v2",
    ]


def test_a_quiet_observation_only_takes_note() -> None:
    cluster = LocalCluster()
    lines: list[str] = []
    cluster.create(experiment())
    progress = display.Progress(lines.append)
    progress.observe(cluster, quiet=True)
    progress.observe(cluster)
    assert lines == []


def test_json_paths_of_printer_columns() -> None:
    obj = {"status": {"phase": "Stable", "conditions": [{"type": "Available", "status": "False"},
                                                        {"type": "Ready", "status": "True"}]},
           "spec": {"steps": [10, 50]}}
    assert display.json_path(obj, '.status.conditions[?(@.type=="Ready")].status') == "True"
    assert display.json_path(obj, ".status.phase") == "Stable"
    assert display.json_path(obj, ".spec.steps[1]") == 50
    assert display.json_path(obj, ".status.missing") is None


def test_tables_use_the_printer_columns() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    mv = {"metadata": {"name": "iris-v1", "namespace": "default", "creationTimestamp": "2026-01-01T11:57:00Z"},
          "spec": {"model": "iris", "version": 1, "artifact": {"servingFormat": "onnx"}, "lineage": {"trainingRun": "t"}},
          "status": {"phase": "Validated", "role": "champion", "conditions": [{"type": "Ready", "status": "True"}]}}
    table = display.render_table(API, "ModelVersion", [mv], wide=False, all_namespaces=False, now=now)
    assert [line.split() for line in table.splitlines()] == [
        ["NAME", "MODEL", "VERSION", "PHASE", "ROLE", "FORMAT", "READY", "AGE"],
        ["iris-v1", "iris", "1", "Validated", "champion", "onnx", "True", "3m"],
    ]
    wide = display.render_table(API, "ModelVersion", [mv], wide=True, all_namespaces=True, now=now)
    assert wide.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"] and "RUN" in wide.splitlines()[0]


def test_kind_names_as_kubectl_takes_them() -> None:
    assert display.resolve_kinds("isvc") == [(API, "InferenceService")]
    assert display.resolve_kinds("TrainingRuns") == [(API, "TrainingRun")]
    assert len(display.resolve_kinds("mlops")) == 4
    assert display.resolve_kinds("deploy") == [("apps/v1", "Deployment")]
    with pytest.raises(ValueError, match="doesn't have a resource type"):
        display.resolve_kinds("widgets")


def test_manifests_from_a_folder_get_a_namespace_and_lists_are_expanded(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: one}\n"
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: two, namespace: team}\n")
    (tmp_path / "notes.txt").write_text("not a manifest")
    objects = manifests.load([tmp_path])
    assert [(o["metadata"]["name"], o["metadata"]["namespace"]) for o in objects] == [("one", "default"), ("two", "team")]


def test_manifest_problems_are_all_reported_and_duplicates_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\n---\n"
                                     "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\n---\n- a list\n")
    with pytest.raises(manifests.ManifestError) as error:
        manifests.load([tmp_path / "a.yaml", tmp_path / "missing.yaml"])
    messages = [str(p) for p in error.value.problems]
    assert any("missing.yaml: no such file or folder" in m for m in messages)
    assert any("(document 3): a resource must be a mapping" in m for m in messages)
    assert any("ConfigMap/one: defined twice" in m for m in messages)


def test_a_gate_lost_against_the_champion_says_so_not_that_the_threshold_failed() -> None:
    from mlops_operator.api.ml import ValidationGate
    from mlops_operator.reconcile.model_version import ChampionFacts, evaluate_gate

    gate = ValidationGate.model_validate({"metric": "roc_auc", "threshold": 0.95, "minAbsoluteChange": 0.0})
    result = evaluate_gate(gate, {"roc_auc": 0.9757}, ChampionFacts("iris-v1", "iris", {"roc_auc": 0.997}))
    line = display.fmt_gate(result.dump())
    assert line == ("roc_auc FAIL: roc_auc=0.9757 lost against champion iris-v1 0.997 "
                    "(improvement -0.0213, required +0); roc_auc=0.9757 >= 0.95")
    passed = evaluate_gate(gate, {"roc_auc": 0.999}, ChampionFacts("iris-v1", "iris", {"roc_auc": 0.997}))
    assert display.fmt_gate(passed.dump()) == "roc_auc=0.999 pass threshold 0.95 champion iris-v1 0.997"


@pytest.mark.parametrize("search, says", [({"maxTrials": 1}, "1 at a time"), ({"maxTrials": 8}, "2 at a time"),
                                          ({"maxTrials": 8, "parallelism": 4}, "4 at a time")])
def test_the_experiment_line_shows_the_parallelism_the_reconciler_uses(search, says) -> None:
    cluster = LocalCluster()
    lines: list[str] = []
    progress = display.Progress(lines.append, lambda namespace, name: None, lambda obj: None)
    cluster.create({"apiVersion": "mlops.seed.io/v1alpha1", "kind": "Experiment",
                    "metadata": {"name": "iris", "namespace": "default"},
                    "spec": {"model": "iris", "dataset": {"uri": "sklearn://iris"},
                             "estimator": "sklearn.tree.DecisionTreeClassifier", "search": search}})
    progress.observe(cluster)
    assert any(says in line for line in lines), lines


def test_a_failed_trial_is_told_once_not_again_by_each_warning_event() -> None:
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
    from _training_world import World, experiment_manifest

    world = World()
    lines: list[str] = []
    progress = display.Progress(lines.append)
    world.create(experiment_manifest(search={"maxTrials": 2, "parallelism": 1, "maxFailedTrials": 0, "space": {}}))
    world.settle()
    progress.observe(world.cluster)
    world.finish_running_jobs(lambda run: (2, json.dumps(
        {"status": "Failed", "reason": "InvalidParameter", "message": "C must be > 0", "metrics": {}})))
    world.settle()
    progress.observe(world.cluster)
    assert sum("C must be > 0" in line for line in lines) == 1, lines
    assert sum("more than maxFailedTrials=0" in line for line in lines) == 1, lines
    # A Warning that tells something new is still shown.
    world.cluster.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "x.1", "namespace": "team-a"},
                          "type": "Warning", "reason": "ModelVersionNotFound", "message": "no Validated version",
                          "involvedObject": {"kind": "InferenceService", "name": "iris"}})
    progress.observe(world.cluster)
    assert lines[-1] == "warning: InferenceService/iris: ModelVersionNotFound: no Validated version"
