"""The import rules of .importlinter hold, and each contract really bites.

Layers: wiring (kopf_handlers, local, cli, controllers) > reconcile, search, rollout > api;
the API and the decision logic import no cluster/storage/metrics client; the runtime
never imports the operator.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = (
    "Wiring above decisions above the API",
    "The API and the decision logic use no cluster, storage or metrics client",
    "The runtime image does not depend on the operator",
)


def lint_imports(pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        # Ahead of the editable install, whose finder comes after sys.path.
        env["PYTHONPATH"] = str(pythonpath)
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--config", str(ROOT / ".importlinter"), "--no-cache", "--no-logo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_every_contract():
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    for name in CONTRACTS:
        assert f"{name} KEPT" in result.stdout
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout


def test_each_contract_catches_a_violation(tmp_path):
    # A copy of both packages with one violation per contract.
    shutil.copytree(ROOT / "operator" / "mlops_operator", tmp_path / "mlops_operator")
    shutil.copytree(ROOT / "runtime" / "mlops_runtime", tmp_path / "mlops_runtime")
    naming = tmp_path / "mlops_operator" / "api" / "naming.py"
    naming.write_text(naming.read_text() + "\nimport kopf  # noqa\nfrom mlops_operator import reconcile  # noqa\n")
    runtime_init = tmp_path / "mlops_runtime" / "__init__.py"
    runtime_init.write_text(runtime_init.read_text() + "\nimport mlops_operator.api  # noqa\n")

    result = lint_imports(pythonpath=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    for name in CONTRACTS:
        assert f"{name} BROKEN" in result.stdout
    assert "mlops_operator.api.naming -> kopf" in result.stdout
    assert "mlops_operator.api.naming -> mlops_operator.reconcile" in result.stdout
    assert "mlops_runtime -> mlops_operator.api" in result.stdout
