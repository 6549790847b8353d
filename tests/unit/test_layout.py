"""`operator/` is a folder, never a package: `import operator` must stay the standard library's."""

from __future__ import annotations

import operator
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_operator_is_the_standard_library_module():
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(operator.__file__).resolve().parent == stdlib
    assert operator.add(2, 3) == 5


def test_operator_folder_is_not_a_package():
    assert (ROOT / "operator" / "mlops_operator" / "__init__.py").is_file()
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_import_operator_from_the_repository_root_is_still_the_standard_library():
    # The working directory comes first on sys.path for `python -c`: the folder must not shadow the module.
    code = "import operator, sysconfig; print(operator.__file__); print(sysconfig.get_paths()['stdlib'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    module_file, stdlib = out.stdout.split("\n")[:2]
    assert Path(module_file).resolve().parent == Path(stdlib).resolve()


def test_the_packages_import_from_their_folders():
    import mlops_operator
    import mlops_runtime

    assert Path(mlops_operator.__file__).resolve().parent == ROOT / "operator" / "mlops_operator"
    assert Path(mlops_runtime.__file__).resolve().parent == ROOT / "runtime" / "mlops_runtime"
