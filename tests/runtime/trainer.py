"""Train model versions with the real training runtime, as the tests of the serving side
need them: `python -m mlops_runtime.train` processes, all at once, against the test S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def train_all(s3: Any, tmp: Path, configs: dict[str, dict[str, Any]], timeout: float = 180) -> dict[str, dict[str, Any]]:
    """Run one trainer per config at once; their summaries (the last stdout line) by key."""
    running = {}
    for key, config in configs.items():
        path = tmp / f"{key}.json"
        path.write_text(json.dumps(config))
        running[key] = subprocess.Popen(
            [sys.executable, "-m", "mlops_runtime.train", "--config", str(path),
             "--termination-log", str(tmp / f"{key}.termination")],
            env={**os.environ, **s3.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    summaries = {}
    for key, process in running.items():
        out, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, f"training {key} failed: {err.decode()[-2000:]}"
        summaries[key] = json.loads(out.decode().strip().splitlines()[-1])
    return summaries
