"""How many background augmentation processes to start: chosen from the machine unless overridden.

Overrides, highest first:

1. ``TrainingSettings.num_workers`` / ``vs_train --num-workers`` (not None);
2. environment variable ``VS_N_PROC_DA``;
3. environment variable ``nnUNet_n_proc_DA`` (nnU-Net v2's, so existing job scripts carry over).

Each must be a whole number ``>= 0`` (0 runs loading and augmentation in the training process); an
empty variable counts as unset, anything else not a whole number ``>= 0`` is a
:class:`~vessel_seg.errors.VesselSegError`. Explicit values are used as given, even above the CPU count.

Automatic choice (:func:`default_num_workers`), per training process, from ``cpus`` = usable logical
CPUs (the scheduler affinity mask, further limited by a cgroup CPU quota where one is set) and
``processes`` = training processes on this node (``LOCAL_WORLD_SIZE`` under ``torchrun``, else 1);
``share = max(1, cpus // processes)`` CPUs per process:

- accelerator (CUDA, MPS): ``share - 1`` workers (one CPU is left to the training process, which
  feeds the device), at least 1 and at most :data:`MAX_ACCELERATOR_WORKERS`. A GPU step of a few
  tens of milliseconds needs many workers: nnU-Net v2's default 3d_fullres step takes 0.038 s on an
  H200, so with 16 CPUs and one GPU this gives 15 workers.
- CPU only: the network's own threads use the same cores, so augmentation gets a small share:
  ``clip(share // 8, 2, 4)`` workers, 1 when ``share`` is 1. On a 2-CPU machine that is 2, the
  setting all CPU numbers in docs/benchmarks.md were measured with.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vessel_seg.errors import VesselSegError

log = logging.getLogger(__name__)

ENV_VAR = "VS_N_PROC_DA"
NNUNET_ENV_VAR = "nnUNet_n_proc_DA"
FLAG = "--num-workers"
MAX_ACCELERATOR_WORKERS = 32  # beyond this the single result queue and the memory of the workers dominate
CPU_MIN_WORKERS, CPU_MAX_WORKERS = 2, 4
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class WorkerChoice:
    """The resolved number of augmentation processes and where it came from.

    ``source`` is ``"--num-workers"``, ``"VS_N_PROC_DA"``, ``"nnUNet_n_proc_DA"`` or ``"auto"``;
    ``detail`` says what the automatic rule saw (empty for overrides).
    """

    count: int
    source: str
    detail: str = ""

    def describe(self) -> str:
        """One line for the training log, e.g. ``15 data workers (auto: 16 usable CPUs, ...)``."""
        why = f"auto: {self.detail}" if self.source == "auto" else f"from {self.source}"
        return f"{self.count} data augmentation worker(s) ({why})"


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by a cgroup CFS quota (e.g. ``docker --cpus 3.5`` gives 3.5), or None without a quota.

    Reads cgroup v2 ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``) or cgroup v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: none), in the root of ``root`` (where a
    container's own cgroup is mounted) and in ``root/cpu``, ``root/cpu,cpuacct`` for v1. Unreadable
    or malformed files count as no quota.
    """
    try:
        quota_text, period_text = (root / "cpu.max").read_text().split()[:2]
        return int(quota_text) / int(period_text) if quota_text != "max" and int(period_text) > 0 else None
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def usable_cpu_count(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Logical CPUs this process may run on: the affinity mask (``os.cpu_count()`` where there is
    none), lowered to a cgroup CPU quota rounded up; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def processes_per_node(env: Mapping[str, str] | None = None) -> int:
    """Training processes on this node: ``LOCAL_WORLD_SIZE`` (set by ``torchrun``), else 1."""
    env = os.environ if env is None else env
    try:
        return max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_num_workers(cpus: int, processes: int = 1, accelerator: bool = True) -> int:
    """Augmentation workers per training process (the rule in the module docstring).

    Parameters
    ----------
    cpus : int
        Usable logical CPUs of the node.
    processes : int
        Training processes on the node (one per GPU under DDP).
    accelerator : bool
        Whether the network runs on a GPU/accelerator (True) or on the same CPUs (False).
    """
    share = max(1, cpus // max(1, processes))
    if accelerator:
        return min(MAX_ACCELERATOR_WORKERS, max(1, share - 1))
    if share <= 1:
        return 1
    return min(CPU_MAX_WORKERS, max(CPU_MIN_WORKERS, share // 8))


def _env_workers(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise VesselSegError(
            f"{name}={env[name]!r} is not a number of data augmentation workers: set it to a whole number "
            f">= 0 (0 loads batches in the training process) or unset it to choose from the CPU count"
        )
    return value


def env_override(env: Mapping[str, str] | None = None) -> WorkerChoice | None:
    """The worker count set by ``VS_N_PROC_DA`` (first) or ``nnUNet_n_proc_DA``, or None when neither is set.

    Raises :class:`~vessel_seg.errors.VesselSegError` for a value that is not a whole number >= 0.
    """
    env = os.environ if env is None else env
    for name in (ENV_VAR, NNUNET_ENV_VAR):
        value = _env_workers(env, name)
        if value is not None:
            return WorkerChoice(value, name)
    return None


def resolve_num_workers(
    requested: int | None,
    device_type: str,
    *,
    env: Mapping[str, str] | None = None,
    cpus: int | None = None,
) -> WorkerChoice:
    """Number of augmentation workers for one training process, with its source.

    Parameters
    ----------
    requested : int or None
        ``--num-workers`` / ``TrainingSettings.num_workers``; None means automatic.
    device_type : str
        torch device type of the network (``"cuda"``, ``"mps"``, ``"cpu"``).
    env : mapping, optional
        Environment to read (default ``os.environ``).
    cpus : int, optional
        Usable CPUs (default :func:`usable_cpu_count`).
    """
    env = os.environ if env is None else env
    if requested is not None:
        if requested < 0:
            raise VesselSegError(f"{FLAG} must be 0 or more, got {requested}")
        return WorkerChoice(int(requested), FLAG)
    override = env_override(env)
    if override is not None:
        return override
    cpus = usable_cpu_count() if cpus is None else cpus
    processes = processes_per_node(env)
    accelerator = device_type != "cpu"
    count = default_num_workers(cpus, processes, accelerator)
    detail = (f"{cpus} usable CPU(s), {processes} training process(es) on this node, "
              f"{'accelerator' if accelerator else 'CPU-only'} training")
    return WorkerChoice(count, "auto", detail)
