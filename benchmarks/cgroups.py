"""CPU caps for groups of benchmark processes: Linux control groups (cgroup v1 `cpu` or v2).

`make bench-capacity` runs the API, the workers and Redis each in a group of its own and caps
the jobs worker group at a fixed share of a core per process, so that the group, not the
shared machine, is what limits throughput (benchmarks/capacity.py). A process joins its group
before it runs anything (preexec), so every process it forks is in the group too.

Needs root (or a delegated cgroup tree); where no group can be made, Groups.available is False
and the benchmark says so and runs uncapped.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

V1_CPU = Path("/sys/fs/cgroup/cpu")
V2_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class Groups:
    """Control groups under one parent named after this process, removed by remove()."""

    def __init__(self, prefix: str = "vigil-bench") -> None:
        self.parent: Path | None = None
        self.v2 = False
        name = f"{prefix}-{os.getpid()}"
        for root, v2 in ((V1_CPU, False), (V2_ROOT, True)):
            marker = "cgroup.controllers" if v2 else "cpu.cfs_quota_us"
            if not (root / marker).exists():
                continue
            try:
                (root / name).mkdir()
                if v2:  # cpu.max in the children needs the cpu controller below the parent
                    (root / name / "cgroup.subtree_control").write_text("+cpu")
            except OSError:
                with contextlib.suppress(OSError):
                    (root / name).rmdir()
                continue
            self.parent, self.v2 = root / name, v2
            break
        self.children: list[Path] = []

    @property
    def available(self) -> bool:
        return self.parent is not None

    def make(self, name: str) -> Path | None:
        """A child group (uncapped), or None where groups are not available."""
        if self.parent is None:
            return None
        path = self.parent / name
        path.mkdir(exist_ok=True)
        self.children.append(path)
        return path

    def cap(self, group: Path | None, cores: float | None) -> None:
        """Limit the group to `cores` of CPU time (None: no limit), and let it have that much
        first: its weight against other work is raised eightfold (cgroup v1 cpu.shares,
        v2 cpu.weight), so that on a busy machine the cap, not the other work, is what holds
        the group back. The cap bounds what the weight can take from anyone else."""
        if group is None:
            return
        quota = -1 if cores is None else max(1000, round(cores * PERIOD_US))
        if self.v2:
            (group / "cpu.max").write_text(f"{'max' if quota < 0 else quota} {PERIOD_US}")
            (group / "cpu.weight").write_text("100" if quota < 0 else "800")
        else:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
            (group / "cpu.shares").write_text("1024" if quota < 0 else "8192")

    def throttled_s(self, group: Path | None) -> float:
        """Seconds the group's processes were held back by its cap so far."""
        if group is None:
            return 0.0
        with contextlib.suppress(OSError, ValueError):
            for line in (group / "cpu.stat").read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "throttled_time":  # v1, nanoseconds
                    return int(value) / 1e9
                if name == "throttled_usec":  # v2
                    return int(value) / 1e6
        return 0.0

    def remove(self) -> None:
        """Remove every group; a group is removable once its processes have exited (they
        are stopped before this is called)."""
        for path in [*reversed(self.children), self.parent]:
            if path is not None:
                with contextlib.suppress(OSError):
                    path.rmdir()


def joiner(group: Path | None):
    """A preexec_fn that puts the new process into `group` before it runs (None: no-op)."""
    if group is None:
        return None
    procs = str(group / "cgroup.procs")

    def join() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    return join
