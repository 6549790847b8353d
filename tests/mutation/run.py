"""Mutation testing of the decision logic and the artifact code, bounded in time.

    .venv/bin/python tests/mutation/run.py [--sample 100] [--store-sample 15] [--seed 15]
                                           [--workdir /tmp/mlops-mutation]
    make mutation

cosmic-ray (the `dev` extra) mutates files in place, so this works on a copy of the
checkout (the files git knows, as they are in the working tree) in WORKDIR, never on the
tree itself, with PYTHONPATH pointing at the copy. Every mutant of the modules in MODULES
is generated; a seeded random sample of them is run (a full run takes hours on one core), each against the
tests that cover the mutated module (the map below: the first failing test kills it).
Mutants inside type annotations are equivalent here (never evaluated) and not run.
Survivors are printed with their diff and written to WORKDIR/survivors.txt; the score is
killed / (killed + survived).

Scope: reconcile/, rollout/, search/, and the runtime's drift, model_io and store modules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["operator/mlops_operator/reconcile", "operator/mlops_operator/rollout", "operator/mlops_operator/search",
           "runtime/mlops_runtime/drift.py", "runtime/mlops_runtime/model_io.py", "runtime/mlops_runtime/store.py"]
EVERY_RECONCILER = [
    "tests/unit/test_reconcile_experiment.py", "tests/unit/test_experiment_lifecycle.py",
    "tests/unit/test_reconcile_training_run.py", "tests/unit/test_reconcile_model_version.py",
    "tests/unit/test_reconcile_inference_service.py", "tests/unit/test_retrain.py",
    "tests/unit/test_drift_status.py", "tests/unit/test_control_loop.py", "tests/unit/test_decision_boundaries.py",
    "tests/unit/test_inference_service_memory.py", "tests/unit/test_retrain_loop.py",
    "tests/unit/test_reconcile_edges.py",
]
# Module (relative path) -> the tests that cover it, fastest first.
EDGES = "tests/unit/test_reconcile_edges.py"
TESTS = {
    "operator/mlops_operator/reconcile/experiment.py": [
        EDGES, "tests/unit/test_reconcile_experiment.py", "tests/unit/test_experiment_lifecycle.py",
        "tests/unit/test_control_loop.py", "tests/unit/test_retrain_loop.py"],
    "operator/mlops_operator/reconcile/training_run.py": [
        EDGES, "tests/unit/test_reconcile_training_run.py", "tests/unit/test_decision_boundaries.py",
        "tests/unit/test_control_loop.py"],
    "operator/mlops_operator/reconcile/model_version.py": [
        EDGES, "tests/unit/test_reconcile_model_version.py", "tests/unit/test_control_loop.py",
        "tests/unit/test_inference_service_memory.py"],
    "operator/mlops_operator/reconcile/inference_service.py": [
        EDGES, "tests/unit/test_reconcile_inference_service.py", "tests/unit/test_inference_service_memory.py",
        "tests/unit/test_drift_status.py"],
    "operator/mlops_operator/reconcile/retrain.py": ["tests/unit/test_retrain.py", "tests/unit/test_retrain_loop.py"],
    "operator/mlops_operator/reconcile/drift.py": [
        EDGES, "tests/unit/test_drift_status.py", "tests/unit/test_reconcile_inference_service.py"],
    "operator/mlops_operator/reconcile/common.py": ["tests/unit/test_surviving_mutants.py", *EVERY_RECONCILER],
    "operator/mlops_operator/reconcile/plan.py": EVERY_RECONCILER,
    "runtime/mlops_runtime/store.py": [EDGES, "tests/runtime/test_store.py", "tests/runtime/test_store_seaweed.py"],
    "operator/mlops_operator/rollout/statistics.py": [
        "tests/unit/test_decision_boundaries.py", "tests/unit/test_rollout_statistics.py"],
    "operator/mlops_operator/rollout/analysis.py": [
        "tests/unit/test_decision_boundaries.py", "tests/unit/test_rollout_statistics.py",
        "tests/unit/test_rollout_state_machine.py"],
    "operator/mlops_operator/rollout/state_machine.py": [
        "tests/unit/test_rollout_state_machine.py", "tests/unit/test_rollout_readiness.py",
        "tests/unit/test_inference_service_memory.py"],
    **{f"operator/mlops_operator/search/{name}.py": ["tests/unit/test_search.py", "tests/unit/test_search_objectives.py"]
       for name in ("__init__", "bayesian", "grid", "pareto", "random_search", "space")},
    "runtime/mlops_runtime/drift.py": ["tests/unit/test_decision_boundaries.py", "tests/unit/test_surviving_mutants.py",
                                       "tests/runtime/test_drift.py"],
    "runtime/mlops_runtime/model_io.py": ["tests/runtime/test_artifact_checks.py", "tests/runtime/test_store.py"],
}
STORE = "runtime/mlops_runtime/store.py"
PRISTINE = ".pristine"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_checkout(workdir: Path) -> None:
    """The files git knows, as they are now, plus pristine copies of the modules to mutate."""
    if workdir.exists():
        shutil.rmtree(workdir)
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = workdir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for module in TESTS:
        target = workdir / PRISTINE / module
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(workdir / module, target)


def environment(workdir: Path) -> dict[str, str]:
    """The copy's packages ahead of the editable install (PYTHONPATH precedes site-packages)."""
    return {**os.environ, "PYTHONPATH": f"{workdir / 'operator'}{os.pathsep}{workdir / 'runtime'}",
            "PYTHONDONTWRITEBYTECODE": "1"}


def run_tests(workdir: Path) -> int:
    """The test command cosmic-ray runs per mutant: the tests of whichever module differs
    from its pristine copy (all of them when none does: the baseline)."""
    mutated = [m for m in TESTS if digest(workdir / m) != digest(workdir / PRISTINE / m)]
    tests = sorted({t for m in (mutated or TESTS) for t in TESTS[m]})
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    return subprocess.call(command, cwd=workdir, env=environment(workdir),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_config(workdir: Path) -> Path:
    config = workdir / "cosmic-ray.toml"
    command = f"{sys.executable} {workdir / 'tests' / 'mutation' / 'run.py'} --test --workdir {workdir}"
    config.write_text("\n".join([
        "[cosmic-ray]",
        f"module-path = {json.dumps(MODULES)}",
        "timeout = 600.0",
        "excluded-modules = []",
        f"test-command = {json.dumps(command)}",
        "",
        "[cosmic-ray.distributor]",
        'name = "local"',
        "",
    ]))
    return config


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the type annotations of a module are: every module here starts with
    `from __future__ import annotations`, so they are never evaluated and a mutant inside
    one is equivalent by construction (cosmic-ray makes many: `str | None` -> `str & None`)."""
    import ast

    tree = ast.parse(path.read_text())
    nodes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            nodes.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            nodes.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            nodes.append(node.annotation)
    return [((n.lineno, n.col_offset), (n.end_lineno or n.lineno, n.end_col_offset or 0)) for n in nodes]


def in_annotation(workdir: Path, mutation: object, cache: dict[str, list]) -> bool:
    module = str(mutation.module_path)  # type: ignore[attr-defined]
    if module not in cache:
        cache[module] = annotation_spans(workdir / module)
    start = tuple(mutation.start_pos)  # type: ignore[attr-defined]
    return any(low <= start < high for low, high in cache[module])


def sample(session: Path, workdir: Path, reconcile_count: int, store_count: int, seed: int) -> tuple[int, int, int]:
    """Skip the equivalent mutants (inside annotations) and every other but a seeded random
    sample; (total, equivalent, sampled)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        every = list(db.pending_work_items)
        cache: dict[str, list] = {}
        items = [i for i in every if not in_annotation(workdir, i.mutations[0], cache)]
        # In source order (job ids are random per `init`), so that a seed picks the same mutants.
        items.sort(key=lambda i: (str(i.mutations[0].module_path), tuple(i.mutations[0].start_pos),
                                  i.mutations[0].operator_name, i.mutations[0].occurrence))
        store = [i.job_id for i in items if str(i.mutations[0].module_path).endswith(STORE)]
        others = [i.job_id for i in items if not str(i.mutations[0].module_path).endswith(STORE)]
        rng = random.Random(seed)
        keep = set(rng.sample(others, min(reconcile_count, len(others)))) | set(
            rng.sample(store, min(store_count, len(store))))
        db.set_multiple_results([i.job_id for i in every if i.job_id not in keep],
                                WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
        return len(every), len(every) - len(items), len(keep)


def report(session: Path, workdir: Path) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    outcomes: Counter[str] = Counter()
    per_module: dict[str, Counter[str]] = {}
    survivors: list[str] = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            mutation = item.mutations[0]
            module = str(Path(mutation.module_path))
            verdict = str(result.test_outcome) if result.worker_outcome == WorkerOutcome.NORMAL else str(
                result.worker_outcome)
            outcomes[verdict] += 1
            per_module.setdefault(module, Counter())[verdict] += 1
            if result.test_outcome == TestOutcome.SURVIVED:
                survivors.append(f"{module}:{mutation.start_pos[0]} {mutation.operator_name}\n{result.diff or ''}")
    killed, survived = outcomes[str(TestOutcome.KILLED)], outcomes[str(TestOutcome.SURVIVED)]
    summary = {"killed": killed, "survived": survived, "other": {k: v for k, v in outcomes.items()
                                                                 if k not in (str(TestOutcome.KILLED),
                                                                              str(TestOutcome.SURVIVED))},
               "score": round(killed / (killed + survived), 3) if killed + survived else None,
               "perModule": {m: dict(c) for m, c in sorted(per_module.items())}}
    (workdir / "survivors.txt").write_text("\n\n".join(survivors))
    (workdir / "report.json").write_text(json.dumps(summary, indent=2))
    return {**summary, "survivorsText": "\n\n".join(survivors)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=100, help="mutants to run outside store.py (seeded sample)")
    parser.add_argument("--store-sample", type=int, default=15, help="store.py mutants to run (each needs S3)")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mlops-mutation"))
    parser.add_argument("--test", action="store_true", help=argparse.SUPPRESS)  # what cosmic-ray runs per mutant
    args = parser.parse_args(argv)
    if args.test:
        return run_tests(args.workdir)
    workdir = args.workdir.resolve()
    copy_checkout(workdir)
    if run_tests(workdir) != 0:
        print("the covering tests fail before any mutation: fix them first", file=sys.stderr)
        return 1
    config, session = write_config(workdir), workdir / "session.sqlite"
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "cosmic-ray"), "init", str(config), str(session)], cwd=workdir, check=True)
    total, equivalent, sampled = sample(session, workdir, args.sample, args.store_sample, args.seed)
    print(f"{total} mutants generated, {equivalent} of them in type annotations (equivalent, not run); "
          f"running a sample of {sampled} of the rest (seed {args.seed})", flush=True)
    subprocess.run([str(bin_dir / "cosmic-ray"), "exec", str(config), str(session)], cwd=workdir, check=True,
                   env=environment(workdir))
    summary = report(session, workdir)
    print(summary.pop("survivorsText"))
    print(json.dumps(summary, indent=2))
    print(f"survivors with diffs: {workdir / 'survivors.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
