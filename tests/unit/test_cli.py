"""The `mlops` command line: help, version, run's options, and subcommand groups."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from mlops_operator import cli
from mlops_runtime.serving_process import free_port

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str, entry: str = "module") -> subprocess.CompletedProcess[str]:
    script = [str(Path(sys.executable).with_name("mlops"))]
    command = script if entry == "script" else [sys.executable, "-m", "mlops_operator"]
    return subprocess.run([*command, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("entry", ["script", "module"])
def test_help_lists_the_commands(entry):
    result = run("--help", entry=entry)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mlops ")
    for command in ("version", "crds", "run"):
        assert f"\n    {command} " in result.stdout


def test_script_and_module_are_the_same_command():
    assert run("--help", entry="script").stdout == run("--help", entry="module").stdout


def test_version_prints_the_installed_version():
    result = run("version")
    assert result.returncode == 0
    assert result.stdout == f"mlops-operator {version('mlops-operator')} (API mlops.seed.io/v1alpha1)\n"
    assert run("--version").stdout == f"mlops-operator {version('mlops-operator')}\n"


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: mlops" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error():
    result = run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr


def test_run_needs_a_scope():
    result = run("run")
    assert result.returncode == 2
    assert "one of the arguments --namespace/-n --all-namespaces/-A is required" in result.stderr
    both = run("run", "-n", "a", "-A")
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr


def parse(*argv: str):
    return cli.build_parser(modules=()).parse_args(argv)


def test_run_options_for_namespaces():
    options = cli.kopf_run_options(parse("run", "--namespace", "team-a", "-n", "team-*"))
    assert options == {
        "clusterwide": False,
        "namespaces": ("team-a", "team-*"),
        "standalone": None,
        "liveness_endpoint": "http://0.0.0.0:8081/healthz",
        "memo": {"metrics_port": 9090, "metrics_host": "0.0.0.0"},
    }


def test_run_options_cluster_wide_on_loopback_without_liveness():
    options = cli.kopf_run_options(
        parse("run", "--all-namespaces", "--liveness-port", "0", "--host", "127.0.0.1", "--standalone")
    )
    assert options == {
        "clusterwide": True,
        "namespaces": (),
        "standalone": True,
        "memo": {"metrics_port": 9090, "metrics_host": "127.0.0.1"},
    }


def test_run_defaults_match_the_ports_contract():
    args = parse("run", "-A")
    assert (args.metrics_port, args.liveness_port) == (9090, 8081)


# --------------------------------------------------------------------------- subcommand groups


def write_module(root: Path, dotted: str, body: str) -> None:
    *packages, name = dotted.split(".")
    folder = root
    for package in packages:
        folder = folder / package
        folder.mkdir(exist_ok=True)
        (folder / "__init__.py").touch()
    (folder / f"{name}.py").write_text(body)


REGISTER_HELLO = """
def register(subparsers):
    hello = subparsers.add_parser("hello", help="say hello")
    hello.add_argument("--status", type=int, default=0)
    hello.set_defaults(func=lambda args: print("hello") or args.status)
"""


def test_subcommand_modules_register_their_groups(tmp_path, monkeypatch, capsys):
    write_module(tmp_path, "cli_plugins_ok.hello", REGISTER_HELLO)
    monkeypatch.syspath_prepend(str(tmp_path))
    parser = cli.build_parser(modules=("cli_plugins_ok.hello",))
    args = parser.parse_args(["hello", "--status", "3"])
    assert args.func(args) == 3
    assert capsys.readouterr().out == "hello\n"


def test_missing_subcommand_module_is_skipped(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "cli_plugins_partial.present", REGISTER_HELLO)
    parser = cli.build_parser(modules=("cli_plugins_partial.absent", "cli_plugins_partial.present"))
    assert parser.parse_args(["hello"]).status == 0


def test_import_error_inside_a_subcommand_module_is_not_hidden(tmp_path, monkeypatch):
    write_module(tmp_path, "cli_plugins_broken.group", "import a_dependency_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as caught:
        cli.build_parser(modules=("cli_plugins_broken.group",))
    assert caught.value.name == "a_dependency_that_is_not_installed"


def test_help_lists_the_groups_of_the_declared_subcommand_modules():
    assert cli.SUBCOMMAND_MODULES == (
        "mlops_operator.local.commands", "mlops_operator.clusterctl", "mlops_operator.devcluster.commands")
    help_text = run("--help").stdout
    for group in ("local", "cluster", "dev"):
        assert f"\n    {group} " in help_text


# --------------------------------------------------------------------------- mlops run, for real


@pytest.fixture
def api_server(tmp_path):
    """kmock's Kubernetes emulator on 127.0.0.1 (its own thread and loop), with a
    kubeconfig that points at it: what `mlops run` finds as the current context."""
    import asyncio
    import threading

    import kmock

    from mlops_operator.cluster.resources import all_resources

    state: dict = {}
    started = threading.Event()

    async def serve() -> None:
        state["stop"], state["loop"] = asyncio.Event(), asyncio.get_running_loop()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
            for r in all_resources():
                emulator.resources[f"{r.api_version}/{r.plural}"] = kmock.ResourceInfo(
                    kind=r.kind,
                    singular=r.kind.lower(),
                    namespaced=r.namespaced,
                    verbs={"list", "watch", "get", "patch", "create", "delete", "update"},
                    subresources={"status"} if r.has_status_subresource else set(),
                )
            state["url"] = str(server.url).rstrip("/")
            started.set()
            await state["stop"].wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), name="api-server", daemon=True)
    thread.start()
    assert started.wait(15), "the emulator did not start"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: emulator, cluster: {{server: '{state['url']}'}}}}]\n"
        "users: [{name: tester, user: {token: not-checked}}]\n"
        "contexts: [{name: emulator, context: {cluster: emulator, user: tester, namespace: default}}]\n"
        "current-context: emulator\n"
    )
    yield kubeconfig
    state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(10)


def get(url: str) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, response.read().decode()


def test_run_serves_liveness_and_metrics_and_stops_on_sigterm(api_server):
    import importlib.util
    import os
    import signal
    import time

    if importlib.util.find_spec(cli.HANDLERS_MODULE) is None:
        pytest.skip(f"{cli.HANDLERS_MODULE} does not exist yet")
    liveness, metrics = free_port(), free_port()
    # MLOPS_METRICS_ADDRESS: kopf_handlers reads the metrics address from it (loopback in tests).
    env = {**os.environ, "KUBECONFIG": str(api_server), "MLOPS_METRICS_ADDRESS": "127.0.0.1"}
    argv = ["run", "--all-namespaces", "--standalone", "--host", "127.0.0.1",
            "--liveness-port", str(liveness), "--metrics-port", str(metrics)]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "mlops_operator", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"mlops run exited: {process.communicate()[0][-3000:]}"
            try:
                status, _ = get(f"http://127.0.0.1:{liveness}/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline, "no /healthz within 60 s"
                time.sleep(0.2)
        assert status == 200
        status, text = get(f"http://127.0.0.1:{metrics}/metrics")
        assert status == 200
        assert "# TYPE mlops_reconcile_total counter" in text  # the operator's own metrics are registered
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output[-3000:]
        assert "login_via_client' succeeded" in output  # it used the kubeconfig's cluster
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
