"""Ports our services listen on stay below the kernel's ephemeral range (a client connecting to
a not-yet-listening port inside it can be given that port as its source and talk to itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops_operator.local import proxy
from mlops_runtime import serving_process


def test_free_ports_are_below_the_ephemeral_range_and_bindable() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {serving_process.free_port() for _ in range(50)} | {proxy.free_port() for _ in range(50)}
    assert all(serving_process.LOWEST_LISTEN_PORT <= p < low for p in ports)
    assert len(ports) > 10  # picked at random, not one port handed out again and again
    assert all(serving_process.port_is_free(p) for p in ports)


def test_the_range_follows_the_kernel_setting_and_leaves_room(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    setting = tmp_path / "ip_local_port_range"
    monkeypatch.setattr(serving_process, "EPHEMERAL_RANGE", setting)
    setting.write_text("40000\t60999\n")
    assert serving_process.listen_port_range() == (10000, 40000)
    assert serving_process.listen_port_range(room=10000) == (10000, 30000)
    setting.write_text("15000 60999\n")
    with pytest.raises(RuntimeError, match="ephemeral port range starts at 15000"):
        serving_process.listen_port_range(room=10000)
    setting.unlink()  # unreadable: Linux's default
    assert serving_process.listen_port_range() == (10000, 32768)
