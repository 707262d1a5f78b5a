"""What a model server holds, measured: its processes (the Cog server, its predictor) → resident
host bytes (psutil) + their GPU memory (NVML, where a GPU is) → the worker's budget in bytes
(:class:`builder.service.predictions.model_servers.ModelServers` keeps the sum under it).

Resident set sizes count a shared library once per process that maps it, so the sum over several
servers is an upper bound of what the machine holds (conservative: it never admits too many).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)
GPU_SHARE = 0.9  # of a GPU's memory, by default: the rest for CUDA's own context and fragmentation
HOST_SHARE = 0.5  # of the machine's memory, by default: the rest for the service, the trainer, the page cache


@dataclass(frozen=True)
class Memory:
    """Bytes on the host and on the GPU."""

    host: int = 0
    device: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.host + other.host, self.device + other.device)

    def within(self, budget: Memory) -> bool:
        return self.host <= budget.host and (not budget.device or self.device <= budget.device)

    def __str__(self) -> str:
        return f"{self.host / 2**30:.2f} GiB" + (f" + {self.device / 2**30:.2f} GiB on the GPU" if self.device else "")


def budget(host: int | None, device: int | None, gpu: str | None) -> Memory:
    """The worker's budget: as configured, else half the machine's memory and 90% of its GPU's
    (no GPU, or NVML unavailable: no device budget)."""
    if host is None:
        host = int(psutil.virtual_memory().total * HOST_SHARE)
    if device is None:
        total = _gpu_total(gpu)
        device = int(total * GPU_SHARE) if total else 0
    return Memory(host, device)


def processes(pid: int) -> list[psutil.Process]:
    """A process and its descendants (gone ones left out)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def resident(pid: int) -> Memory:
    """What the process tree at ``pid`` holds now."""
    tree = processes(pid)
    host = 0
    for process in tree:
        try:
            host += process.memory_info().rss
        except psutil.Error:
            continue
    return Memory(host, _gpu_used({p.pid for p in tree}))


def container_memory(container) -> Memory:
    """What a model container holds: the engine's count of its memory, and its processes' GPU
    memory (``top`` lists them by host pid)."""
    try:
        stats = container.stats(stream=False, one_shot=True)
        host = int((stats.get("memory_stats") or {}).get("usage") or 0)
        top = container.top()
        column = top["Titles"].index("PID")
        pids = {int(row[column]) for row in top["Processes"] or []}
    except Exception as exc:  # noqa: BLE001 - the engine's errors are many; an unmeasured container counts as empty
        log.warning("the memory of model container %s cannot be read: %s", getattr(container, "name", "?"), exc)
        return Memory()
    return Memory(host, _gpu_used(pids))


def peak_host(pid: int) -> int:
    """The largest resident set any process of the tree reached (Linux's VmHWM)."""
    peak = 0
    for process in processes(pid):
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, ValueError):
            continue
    return peak


@functools.cache
def _nvml():
    """NVIDIA's management library (``nvidia-ml-py``, the gpu extra), initialised; None without one."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - not installed, no driver, no GPU: the same answer
        return None


def _gpu_total(gpu: str | None) -> int:
    nvml = _nvml()
    if nvml is None:
        return 0
    try:
        if nvml.nvmlDeviceGetCount() == 0:
            return 0
        if gpu is not None and not gpu.isdigit():
            handle = nvml.nvmlDeviceGetHandleByUUID(gpu)
        else:
            handle = nvml.nvmlDeviceGetHandleByIndex(int(gpu or 0))  # the default device when the worker names none
        return int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
    except nvml.NVMLError as exc:
        log.warning("the GPU's memory cannot be read (%s): no device budget", exc)
        return 0


def _gpu_used(pids: set[int]) -> int:
    """GPU memory the processes hold, on every device (NVML sees host pids: a worker in a
    container with its own pid namespace reads none)."""
    nvml = _nvml()
    if nvml is None or not pids:
        return 0
    used = 0
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            for process in nvml.nvmlDeviceGetComputeRunningProcesses(nvml.nvmlDeviceGetHandleByIndex(index)):
                if process.pid in pids and process.usedGpuMemory:
                    used += int(process.usedGpuMemory)
    except nvml.NVMLError:
        return 0
    return used
