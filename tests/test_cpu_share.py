"""The thread governor: fewer llama.cpp threads while other processes use our cores."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aimo_infer.backends import cpu_share
from aimo_infer.backends.cpu_share import (
    GIVE_UP_AT,
    TAKE_BACK_BELOW,
    ThreadGovernor,
    cgroup_cpu_limit,
    read_own_cpu,
    read_proc_stat,
    threads_for,
    usable_cores,
)

linux_only = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads Linux /proc/stat")


@pytest.mark.parametrize(
    ("others", "cores", "current", "expected"),
    [
        (0.0, 2, 2, 2),  # idle: every thread
        (1.0, 2, 2, 1),  # one core busy elsewhere: one thread
        (0.7, 2, 2, 1),  # most of a core busy: give it up
        (1.9, 2, 2, 1),  # never below one
        (1.0, 2, 1, 1),  # still busy: stay
        (0.4, 2, 1, 1),  # between the thresholds: keep the count (no flapping)
        (0.4, 2, 2, 2),
        (0.1, 2, 1, 2),  # the other process stopped: take the thread back
        (2.0, 8, 8, 6),  # bigger machines give up as many cores as others use
        (2.0, 8, 6, 6),
        (0.0, 8, 6, 8),
    ],
)
def test_threads_for(others: float, cores: int, current: int, expected: int) -> None:
    assert threads_for(others, cores, cores, current) == expected


def test_thresholds_leave_a_gap() -> None:
    assert 0.0 < TAKE_BACK_BELOW < GIVE_UP_AT < 1.0


class FakeCpu:
    """Cumulative counters and a clock that the test advances."""

    def __init__(self) -> None:
        self.now = 0.0
        self.busy = 0.0
        self.own = 0.0

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.now += seconds
        self.own += own_cores * seconds
        self.busy += (own_cores + other_cores) * seconds

    def counters(self) -> tuple[float, float]:
        return self.busy, self.own


def test_governor_follows_a_busy_neighbour_down_and_back_up() -> None:
    cpu = FakeCpu()
    gov = ThreadGovernor(2, frozenset({0, 1}), 0.2, cpu.counters, lambda: cpu.now)
    cpu.run(0.1, own_cores=2.0, other_cores=0.0)
    assert gov.update() is None  # within the window: nothing read, nothing decided
    cpu.run(0.15, own_cores=2.0, other_cores=0.0)
    assert gov.update() is None and gov.threads == 2
    cpu.run(0.3, own_cores=1.3, other_cores=0.7)  # a sandbox cell starts on one core
    assert gov.update() == 1
    cpu.run(0.3, own_cores=1.0, other_cores=1.0)
    assert gov.update() is None and gov.threads == 1
    cpu.run(0.3, own_cores=1.0, other_cores=0.4)  # winding down: not yet
    assert gov.update() is None and gov.threads == 1
    cpu.run(0.3, own_cores=1.0, other_cores=0.05)
    assert gov.update() == 2
    assert gov.changes == 2


def test_own_work_is_not_mistaken_for_others() -> None:
    cpu = FakeCpu()
    gov = ThreadGovernor(2, frozenset({0, 1}), 0.2, cpu.counters, lambda: cpu.now)
    for _ in range(10):
        cpu.run(0.25, own_cores=2.0, other_cores=0.0)
        assert gov.update() is None
    assert gov.threads == 2


def test_proc_stat_sums_the_busy_time_of_the_given_cores(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    #          user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(
        "cpu  300 0 30 900 9 0 0 0 0 0\n"
        "cpu0 100 10 20 500 7 1 2 3 50 0\n"
        "cpu1 200 0 10 400 2 0 0 0 0 0\n"
        "cpu12 1000 0 0 0 0 0 0 0 0 0\n"
        "intr 123 4 5\n"
        "ctxt 999\n"
    )
    tick = os.sysconf("SC_CLK_TCK")
    # idle and iowait are not busy; guest time is already inside user
    assert read_proc_stat(frozenset({0}), str(stat)) == pytest.approx(136 / tick)
    assert read_proc_stat(frozenset({0, 1}), str(stat)) == pytest.approx(346 / tick)
    assert read_proc_stat(frozenset({12}), str(stat)) == pytest.approx(1000 / tick)
    assert read_proc_stat(frozenset({5}), str(stat)) == 0.0


def test_governor_only_where_threads_fill_the_cores() -> None:
    if not hasattr(os, "sched_getaffinity"):
        assert ThreadGovernor.for_this_process(2) is None
        return
    cores = len(os.sched_getaffinity(0))
    assert ThreadGovernor.for_this_process(1) is None  # one thread: nothing to give up
    if cores > 1:
        assert ThreadGovernor.for_this_process(cores) is not None
        assert ThreadGovernor.for_this_process(cores + 1) is None


@linux_only
def test_real_counters_see_a_busy_process() -> None:
    """A child spinning on a core counts as another's use; this idle process's does not."""
    cores = frozenset(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.1)  # let it start; the measurement below does not depend on this
        busy0, own0, t0 = read_proc_stat(cores), read_own_cpu(), time.monotonic()
        time.sleep(1.0)
        busy1, own1, t1 = read_proc_stat(cores), read_own_cpu(), time.monotonic()
    finally:
        hog.kill()
        hog.wait()
    others = ((busy1 - busy0) - (own1 - own0)) / (t1 - t0)
    assert others > GIVE_UP_AT  # the spinning child holds a whole core for the whole second
    assert own1 - own0 < 0.2  # this process slept


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    write(tmp_path / "kaggle" / "cpu.max", "250000 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/kaggle\n") == 2.5
    write(tmp_path / "kaggle" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/kaggle\n") is None
    write(tmp_path / "cpu.max", "400000 100000\n")  # a namespaced container sees its own root
    assert cgroup_cpu_limit(tmp_path, "0::/elsewhere\n") == 4.0


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    lines = "12:pids:/\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n"
    write(tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "200000\n")
    write(tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path, lines) == 2.0
    write(tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(tmp_path, lines) is None
    assert cgroup_cpu_limit(tmp_path / "nothing", lines) is None


def test_usable_cores_is_capped_by_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("Linux affinity masks")
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(cpu_share, "cgroup_cpu_limit", lambda: None)
    assert usable_cores() == cores
    monkeypatch.setattr(cpu_share, "cgroup_cpu_limit", lambda: 1.5)
    assert usable_cores() == 1  # a thread per whole CPU of quota, at least one
    monkeypatch.setattr(cpu_share, "cgroup_cpu_limit", lambda: 0.25)
    assert usable_cores() == 1
    monkeypatch.setattr(cpu_share, "cgroup_cpu_limit", lambda: cores + 8.0)
    assert usable_cores() == cores
