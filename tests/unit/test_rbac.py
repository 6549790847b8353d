"""The operator's ClusterRole grants exactly what the operator uses: no more, no less.

What the operator uses has two sources:
- kopf, derived from its handler registry: every watched resource needs list and watch;
  resources with change handlers, timers or daemons are also patched (finalizers, kopf's
  annotations) and have their status patched; cluster-wide, kopf lists and watches CRDs and
  namespaces; it posts Events. The registry is the real one, filled by importing
  `mlops_operator.kopf_handlers`.
- the cluster port, as `RecordingCluster(InMemoryCluster()).calls` records them while the
  four controllers' `sync` run through two small scenarios (an Experiment to its end; an
  InferenceService through a canary that is rolled back). `rules_cover`/`extra_rules`
  compare any such set with the rules.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import kopf
import pytest
import yaml

from mlops_operator.cluster.memory import InMemoryCluster
from mlops_operator.cluster.recording import RecordingCluster
from mlops_operator.cluster.resources import Resource, all_resources

ROOT = Path(__file__).resolve().parents[2]
RBAC = ROOT / "manifests" / "base" / "rbac.yaml"

Permission = tuple[str, str, str]  # (api group, resource, verb); "" is the core group
GROUP = "mlops.seed.io"
OUR_PLURALS = ("experiments", "trainingruns", "modelversions", "inferenceservices")
HANDLERS_MODULE = "mlops_operator.kopf_handlers"
# Verbs that amount to power over RBAC or other identities: never granted.
FORBIDDEN_VERBS = {"escalate", "bind", "impersonate", "*"}


# --- comparing rules with calls ------------------------------------------------------------

def granted(rules: Iterable[dict]) -> set[Permission]:
    """Every (group, resource, verb) a list of PolicyRules grants, wildcards kept as '*'."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def _allows(permissions: set[Permission], call: Permission) -> bool:
    group, resource, verb = call
    return any(
        g in (group, "*") and r in (resource, "*") and v in (verb, "*")
        for g, r, v in permissions
    )


def uncovered(rules: Iterable[dict], calls: Iterable[Permission]) -> set[Permission]:
    """The calls the rules do not allow."""
    permissions = granted(rules)
    return {call for call in calls if not _allows(permissions, call)}


def rules_cover(rules: Iterable[dict], calls: Iterable[Permission]) -> bool:
    """Whether every call is allowed by the rules."""
    return not uncovered(rules, calls)


def extra_rules(rules: Iterable[dict], calls: Iterable[Permission]) -> set[Permission]:
    """What the rules grant that no call uses; a wildcard entry is always extra."""
    used = set(calls)
    return {permission for permission in granted(rules) if "*" in permission or permission not in used}


def test_granted_expands_each_rule() -> None:
    rules = [{"apiGroups": ["", "apps"], "resources": ["a", "b"], "verbs": ["get"]}]
    assert granted(rules) == {("", "a", "get"), ("", "b", "get"), ("apps", "a", "get"), ("apps", "b", "get")}


def test_rules_cover_exact_and_wildcard_grants() -> None:
    rules = [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list"]},
             {"apiGroups": ["apps"], "resources": ["*"], "verbs": ["watch"]}]
    assert rules_cover(rules, {("batch", "jobs", "get"), ("apps", "deployments", "watch")})
    assert not rules_cover(rules, {("batch", "jobs", "delete")})
    assert uncovered(rules, {("batch", "jobs", "delete"), ("batch", "jobs", "list")}) == {("batch", "jobs", "delete")}
    # a subresource is its own resource for RBAC
    assert not rules_cover(rules, {("batch", "jobs/status", "get")})
    assert rules_cover(rules, set())


def test_extra_rules_names_unused_grants_and_every_wildcard() -> None:
    rules = [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "delete"]},
             {"apiGroups": ["apps"], "resources": ["*"], "verbs": ["watch"]}]
    calls = {("batch", "jobs", "get"), ("apps", "deployments", "watch")}
    assert extra_rules(rules, calls) == {("batch", "jobs", "delete"), ("apps", "*", "watch")}
    assert extra_rules([{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]}],
                       {("batch", "jobs", "get")}) == set()


# --- what kopf needs -----------------------------------------------------------------------

def _resource(group: str, name: str) -> Resource:
    """The resource a kopf selector names (plural, kind or singular), from the port's table."""
    for resource in all_resources():
        if resource.group == group and name in (resource.plural, resource.kind, resource.kind.lower()):
            return resource
    raise AssertionError(f"kopf handler on unknown resource {group}/{name}")


def kopf_needs(registry: kopf.OperatorRegistry, clusterwide: bool = True) -> set[Permission]:
    """The permissions kopf itself uses to serve the handlers in `registry`."""
    needs: set[Permission] = {("", "events", "create")}
    if clusterwide:
        needs |= {("", "namespaces", "list"), ("", "namespaces", "watch")}
    needs |= {("apiextensions.k8s.io", "customresourcedefinitions", verb) for verb in ("list", "watch")}
    patched = registry._changing.get_all_handlers() + registry._spawning.get_all_handlers()
    watched = patched + registry._watching.get_all_handlers() + registry._indexing.get_all_handlers()
    for handler in watched:
        resource = _resource(handler.selector.group or "", handler.selector.any_name)
        needs |= {(resource.group, resource.plural, verb) for verb in ("list", "watch")}
    for handler in patched:
        resource = _resource(handler.selector.group or "", handler.selector.any_name)
        needs.add((resource.group, resource.plural, "patch"))
        if resource.has_status_subresource:
            needs.add((resource.group, f"{resource.plural}/status", "patch"))
    return needs


def operator_registry() -> kopf.OperatorRegistry:
    """kopf's registry with the operator's handlers in it (importing them registers them)."""
    importlib.import_module(HANDLERS_MODULE)
    return kopf.get_default_registry()


def test_kopf_needs_follows_the_registry() -> None:
    registry = kopf.OperatorRegistry()
    kopf.on.create(GROUP, "v1alpha1", "experiments", registry=registry)(lambda **_: None)
    kopf.on.event("batch", "v1", "jobs", registry=registry)(lambda **_: None)
    needs = kopf_needs(registry, clusterwide=False)
    assert (GROUP, "experiments", "patch") in needs and (GROUP, "experiments/status", "patch") in needs
    assert ("batch", "jobs", "watch") in needs and ("batch", "jobs", "patch") not in needs
    assert ("", "namespaces", "watch") not in needs
    assert ("", "namespaces", "watch") in kopf_needs(registry, clusterwide=True)


# --- what the controllers do through the cluster port --------------------------------------

def training_scenario() -> set[Permission]:
    """An Experiment run to the end by the experiment, training-run and model-version
    controllers, one trial failing with a user error; the test plays the Job controller and
    the kubelet (tests/unit/_training_world.py). Its retrain schedule then comes due, which
    starts a retrain Experiment, and a second Experiment fails with a trial still running (it
    deletes that trial). Then each kind once more from a stale copy, as after a lost race,
    which makes the controllers read the object again."""
    from _training_world import SETTINGS, World, experiment_manifest, score, success_summary

    from mlops_operator.controllers import experiment, model_version, training_run

    world = World()
    cluster = RecordingCluster(world.cluster)
    created = world.create(experiment_manifest(retrain={"schedule": "0 * * * *"}))
    failures = [(2, json.dumps({"status": "Failed", "reason": "UnknownParameter", "message": "no parameter x"}))]

    def outcome(run: dict) -> tuple[int, str]:
        if failures:
            return failures.pop()
        return 0, json.dumps(success_summary(run, score(run["spec"]["params"])))

    for _ in range(20):
        for _ in range(5):
            world.sync_all(cluster)
        if world.get("Experiment", "iris")["status"].get("phase") in ("Succeeded", "Failed"):
            break
        world.tick()
        world.finish_running_jobs(outcome)
        world.tick()
    assert world.get("Experiment", "iris")["status"]["phase"] == "Succeeded", "the scenario did not finish"
    assert not failures, "no trial failed"
    world.clock += timedelta(hours=1)
    experiment.sync(cluster, world.get("Experiment", "iris"), world.clock, SETTINGS)
    assert world.get("Experiment", "iris-r1"), "the retrain did not start"
    experiment.sync(cluster, created, world.clock, SETTINGS)
    # A second Experiment fails while a trial still runs: it stops (deletes) that trial.
    world.create(experiment_manifest(name="doomed", search={
        "maxTrials": 2, "parallelism": 2, "maxFailedTrials": 0,
        "space": {"C": {"min": 0.01, "max": 100, "distribution": "logUniform"}}}))
    for _ in range(3):
        world.sync_all(cluster)
    world.finish_job("doomed-t001-trainer", exit_code=2, message=json.dumps(
        {"status": "Failed", "reason": "UnknownParameter", "message": "no parameter x"}))
    for _ in range(3):
        world.sync_all(cluster)
    assert world.get("Experiment", "doomed")["status"]["phase"] == "Failed"
    assert [r["metadata"]["name"] for r in world.objects("TrainingRun", **{"mlops.seed.io/experiment": "doomed"})] \
        == ["doomed-t001"]
    training_run.sync(cluster, _stale(world.objects("TrainingRun")[0]), world.clock, SETTINGS)
    model_version.sync(cluster, _stale(world.objects("ModelVersion")[0]), world.clock)
    return cluster.calls


def inference_scenario() -> set[Permission]:
    """An InferenceService serving a champion, then a challenger that fails its canary and is
    rolled back (its Deployment and Service removed), with metrics read from pods; the test
    plays the Deployment controller. Then the service once more from a stale copy."""
    from _inference_world import NS, inference_service, model_version
    from _rollout_world import Behaviour, World

    from mlops_operator.controllers import inference_service as controller
    from mlops_operator.reconcile.common import Settings

    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    inner = InMemoryCluster(now=lambda: clock[0], seed=0)
    cluster = RecordingCluster(inner)
    world = World(challenger=Behaviour(error_rate=0.5))
    reader = ScenarioReader(world)

    def add_version(number: int) -> None:
        doc = model_version(number)
        status = doc.pop("status")
        inner.create(doc)
        inner.patch_status(f"{GROUP}/v1alpha1", "ModelVersion", NS, doc["metadata"]["name"], status)

    def sync(obj: dict | None = None) -> dict:
        obj = obj or inner.get(f"{GROUP}/v1alpha1", "InferenceService", NS, "iris")
        controller.sync(cluster, obj, clock[0], metrics_reader=reader, settings=Settings(s3_endpoint="http://s3:9000"))
        for deployment in inner.list("apps/v1", "Deployment", NS):
            replicas = deployment["spec"].get("replicas", 1)
            inner.patch_status("apps/v1", "Deployment", NS, deployment["metadata"]["name"], {
                "observedGeneration": deployment["metadata"].get("generation", 1), "replicas": replicas,
                "readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas})
        world.serve(SimpleNamespace(challenger=50, mode="canary"), 5)
        clock[0] += timedelta(seconds=5)
        return inner.get(f"{GROUP}/v1alpha1", "InferenceService", NS, "iris")

    add_version(1)
    created = inner.create(inference_service(
        champion={"policy": "bestValidated"}, challenger={"policy": "latestValidated"},
        rollout={"steps": [50, 100], "interval": "10s", "analysis": {"minSampleSize": 10}}))
    for _ in range(3):
        sync()
    add_version(2)
    phases = [sync()["status"].get("phase") for _ in range(30)]
    assert "RolledBack" in phases, f"the canary did not roll back: {phases}"
    for _ in range(5):
        sync()
    sync(_stale(created))
    return cluster.calls


class ScenarioReader:
    """The controller's metrics reader over the scenario's traffic (no I/O). Like the
    operator's own reader it wants pod IPs, so the controller lists the pods."""

    use_pod_ips = True

    def __init__(self, world: object) -> None:
        self.world = world

    def read(self, target: object, time: str) -> object:
        from mlops_operator.rollout.state_machine import parse_time

        return self.world.snapshot(parse_time(time))

    def router_configs(self, target: object) -> list[dict]:
        return [{"challenger": None}]


def _stale(obj: dict) -> dict:
    """`obj` as an outdated copy: no status, an old resourceVersion."""
    return {**obj, "status": {}, "metadata": {**obj["metadata"], "resourceVersion": "1"}}


@pytest.fixture(scope="module")
def recorded_calls() -> set[Permission]:
    return training_scenario() | inference_scenario()


def test_the_scenarios_reach_every_controller(recorded_calls: set[Permission]) -> None:
    """Each kind's status was written, children were created and removed, objects re-read."""
    for plural in OUR_PLURALS:
        assert (GROUP, f"{plural}/status", "patch") in recorded_calls, plural
        assert (GROUP, plural, "get") in recorded_calls, plural
    assert {("batch", "jobs", "create"), ("apps", "deployments", "delete"), ("", "pods", "list"),
            (GROUP, "modelversions", "create"), (GROUP, "experiments", "create")} <= recorded_calls


# --- the ClusterRole -----------------------------------------------------------------------

def _documents() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(RBAC.read_text()) if doc]


def _cluster_role() -> dict:
    return next(doc for doc in _documents() if doc["kind"] == "ClusterRole")


def test_rules_have_no_wildcards_secret_listing_or_identity_powers() -> None:
    rules = _cluster_role()["rules"]
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, f"unexpected keys in {rule}"
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {rule}"
        assert not set(rule["verbs"]) & FORBIDDEN_VERBS, rule
    resources = {resource for _, resource, _ in granted(rules)}
    # Secrets: the router admin tokens the operator makes; never listed, never watched.
    assert {verb for _, resource, verb in granted(rules) if resource == "secrets"} == {"get", "create", "patch"}
    assert not {"leases", "kopfpeerings", "clusterkopfpeerings"} & resources, "--standalone needs no peering"
    assert len(granted(rules)) == sum(len(r["apiGroups"]) * len(r["resources"]) * len(r["verbs"]) for r in rules), \
        "rules overlap: a permission is granted twice"


def test_rules_cover_what_kopf_needs() -> None:
    missing = uncovered(_cluster_role()["rules"], kopf_needs(operator_registry()))
    assert not missing, f"kopf ({HANDLERS_MODULE}) needs {sorted(missing)}"


def test_rules_equal_what_the_operator_uses(recorded_calls: set[Permission]) -> None:
    used = kopf_needs(operator_registry()) | recorded_calls
    rules = _cluster_role()["rules"]
    assert not uncovered(rules, used), f"missing from the ClusterRole: {sorted(uncovered(rules, used))}"
    assert not extra_rules(rules, used), f"granted but unused: {sorted(extra_rules(rules, used))}"


def test_the_binding_gives_the_role_to_the_operators_service_account() -> None:
    documents = _documents()
    account = next(doc for doc in documents if doc["kind"] == "ServiceAccount")
    binding = next(doc for doc in documents if doc["kind"] == "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": _cluster_role()["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "mlops-system"}]


# --- the namespaced overlay ----------------------------------------------------------------

NAMESPACED_OVERLAY = ROOT / "manifests" / "overlays" / "namespaced"


@pytest.fixture(scope="module")
def namespaced() -> list[dict]:
    import subprocess
    import sys

    beside = Path(sys.executable).with_name("kubectl")
    kubectl = str(beside) if beside.is_file() else "kubectl"
    result = subprocess.run([kubectl, "kustomize", str(NAMESPACED_OVERLAY)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {NAMESPACED_OVERLAY} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _namespaced_calls(calls: Iterable[Permission]) -> tuple[set[Permission], set[Permission]]:
    """(calls on namespaced resources, calls on cluster-scoped ones), by the port's table."""
    scoped = {(r.group, r.plural) for r in all_resources() if not r.namespaced}
    inside, outside = set(), set()
    for group, resource, verb in calls:
        (outside if (group, resource.split("/")[0]) in scoped else inside).add((group, resource, verb))
    return inside, outside


def watched_namespaces(objects: list[dict]) -> list[str]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlops-operator"]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--all-namespaces" not in command and "-A" not in command, command
    return [command[i + 1] for i, part in enumerate(command) if part in ("--namespace", "-n")]


def test_the_namespaced_operator_watches_a_list_and_holds_a_role_in_each(namespaced: list[dict]) -> None:
    watched = watched_namespaces(namespaced)
    assert watched and len(set(watched)) == len(watched)
    roles = {o["metadata"]["namespace"] for o in namespaced if o["kind"] == "Role"}
    bindings = {o["metadata"]["namespace"]: o for o in namespaced if o["kind"] == "RoleBinding"}
    assert roles == set(bindings) == set(watched)
    for binding in bindings.values():
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mlops-operator"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mlops-operator",
                                        "namespace": "mlops-system"}]


def test_the_namespaced_roles_equal_what_the_operator_uses(namespaced: list[dict],
                                                           recorded_calls: set[Permission]) -> None:
    """In namespaced mode kopf needs no namespace watch; every namespaced call is granted
    by each Role, and the ClusterRole keeps only kopf's cluster-scoped CRD discovery."""
    used = kopf_needs(operator_registry(), clusterwide=False) | recorded_calls
    inside, outside = _namespaced_calls(used)
    for role in (o for o in namespaced if o["kind"] == "Role"):
        where = role["metadata"]["namespace"]
        assert not uncovered(role["rules"], inside), f"{where}: missing {sorted(uncovered(role['rules'], inside))}"
        assert not extra_rules(role["rules"], inside), f"{where}: unused {sorted(extra_rules(role['rules'], inside))}"
    (cluster_role,) = [o for o in namespaced if o["kind"] == "ClusterRole"]
    assert granted(cluster_role["rules"]) == outside - {("", "namespaces", "list"), ("", "namespaces", "watch")}
    assert {resource for _, resource, _ in granted(cluster_role["rules"])} == {"customresourcedefinitions"}


def test_the_cluster_wide_rules_are_the_union_of_the_namespaced_ones(namespaced: list[dict]) -> None:
    """The two modes grant the same things, one cluster-wide, one per namespace."""
    (role, *_) = [o for o in namespaced if o["kind"] == "Role"]
    inside, _ = _namespaced_calls(granted(_cluster_role()["rules"]))
    assert granted(role["rules"]) == inside
