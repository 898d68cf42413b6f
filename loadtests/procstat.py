"""CPU and memory of processes, read from /proc (Linux): what the server and the load generator
cost, and how busy the rest of the machine was meanwhile (this host is shared: the noise is
measured, not guessed)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads; waited-for children excluded)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the ")" of comm: state is field 3, utime field 14, stime field 15 (1-based in proc(5)).
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_pids(pid: int) -> list[int]:
    """The process and all its descendants alive now (servers that fork workers: LitServe's API and
    inference processes, Triton's server and backend stubs)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its descendants (each one's own threads). A child that exits
    during a measurement takes its CPU with it: the servers measured keep their workers for good."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            continue
    return total


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        try:
            total += rss_bytes(p)
        except OSError:
            continue
    return total


def tree_peak_rss_bytes(pid: int) -> int:
    """The sum of each process's own peak: an upper bound of the tree's peak (the peaks of
    different processes need not have been at the same moment)."""
    total = 0
    for p in tree_pids(pid):
        try:
            total += peak_rss_bytes(p)
        except OSError:
            continue
    return total


def rss_bytes(pid: int) -> int:
    return _status_kb(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    return _status_kb(pid, "VmHWM") * 1024


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def thread_count(pid: int) -> int:
    return _status_kb(pid, "Threads")  # a plain count ("Threads:  12"), read the same way


def fd_count(pid: int) -> int:
    """Open file descriptors (sockets, pipes, files, eventfds): the entries of /proc/PID/fd."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    pid: int
    rss_bytes: int
    fds: int
    threads: int


def tree_usage(pid: int) -> list[ProcessUsage]:
    """RSS, open file descriptors and threads of a process and each of its descendants alive now
    (a server's API workers and model owner); one that exits meanwhile is left out."""
    found = []
    for p in tree_pids(pid):
        try:
            found.append(ProcessUsage(p, rss_bytes(p), fd_count(p), thread_count(p)))
        except OSError:
            continue
    return found


def machine_busy_seconds() -> tuple[float, float]:
    """(busy CPU seconds, total CPU seconds) of the whole machine since boot, from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first[:8]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return (sum(values) - idle) / _TICK, sum(values) / _TICK


@dataclass(frozen=True, slots=True)
class CpuUse:
    wall_s: float
    server_cores: float  # CPU seconds / wall seconds
    client_cores: float
    other_cores: float  # everything else on the machine: other processes (this host is shared)


class CpuMeter:
    """Measures the server's, the client's and everyone else's CPU over one load run."""

    def __init__(self, server_pid: int | None, *, tree: bool = False) -> None:
        self.server_pid = server_pid
        self.tree = tree  # count the server's descendants too (servers made of several processes)
        self._start: tuple[float, float, float] | None = None

    def start(self) -> None:
        self._start = (time.monotonic(), self._server(), machine_busy_seconds()[0])

    def stop(self, client_cpu_s: float) -> CpuUse:
        if self._start is None:
            raise RuntimeError("CpuMeter.stop before start")
        t0, s0, b0 = self._start
        wall = max(1e-9, time.monotonic() - t0)
        server = self._server() - s0
        busy = machine_busy_seconds()[0] - b0
        other = max(0.0, busy - server - client_cpu_s)
        return CpuUse(wall, server / wall, client_cpu_s / wall, other / wall)

    def _server(self) -> float:
        if self.server_pid is None:
            return 0.0
        try:
            return tree_cpu_seconds(self.server_pid) if self.tree else cpu_seconds(self.server_pid)
        except OSError:
            return 0.0
