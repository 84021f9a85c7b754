"""Shared machinery of the nnU-Net comparison: data classes, process-tree sampler, tool discovery.

Measured quantities (one :class:`Measurement` per command run):

- ``wall_s``: elapsed seconds from launch to exit (interpreter start-up included).
- ``cpu_s``: user + system CPU seconds of the command and every descendant it reaped.
- ``peak_rss_mb``: maximum, over samples every 50 ms, of the summed resident set size (MiB) of the
  launched process and all its descendants. Pages shared between processes (libraries) count
  once per process, so this overstates the physical footprint of many workers.
- ``peak_pss_mb``: the same with the proportional set size (shared pages split among sharers),
  the fairer estimate of physical memory. Spikes shorter than the sampling interval can be missed.
- ``metrics``: section-specific numbers (seconds per iteration, seconds per case, Dice...), named
  with their unit where they have one.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from vessel_seg.errors import VesselSegError
from vessel_seg.paths import dataset_name

DATASET_SHORT_NAME = "Synthetic"
SAMPLE_INTERVAL_S = 0.05
MIB = 1024 * 1024
HERE = Path(__file__).resolve().parent
NNUNET_ENTRY = "nnUNetv2_plan_and_preprocess"
NNUNET_MODULE = "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints"


@dataclass
class Measurement:
    """One timed, memory-sampled command run (units in the field names: seconds, MiB)."""

    name: str
    tool: str
    section: str
    repeat: int
    command: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    peak_pss_mb: float
    max_processes: int
    load_before: float = 0.0
    output_mb: float = 0.0
    configurations: list[str] = field(default_factory=list)
    plans: dict[str, dict] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    log: str = ""
    error_tail: str = ""


@dataclass
class BenchmarkContext:
    """Everything a section needs: folders, dataset id, worker count and the two tools' commands.

    ``nnunet_python`` is the interpreter of nnU-Net's environment (``None``: our side only);
    ``nnunet_command`` its planning command.
    """

    work: Path
    dataset_id: int
    num_processes: int
    ours_command: list[str]
    nnunet_command: list[str] | None
    nnunet_python: str | None = None

    @property
    def dataset(self) -> str:
        return dataset_name(self.dataset_id, DATASET_SHORT_NAME)

    def ours_env(self) -> dict[str, str]:
        """Environment with our three data roots under ``work``."""
        return {**os.environ, "VS_RAW": str(self.work / "vs_raw"), "VS_PREPROCESSED": str(self.work / "vs_preprocessed"),
                "VS_RESULTS": str(self.work / "vs_results")}

    def nnunet_env(self) -> dict[str, str]:
        """Environment with nnU-Net's three data roots under ``work`` and its augmentation workers set to ``-np``."""
        return {**os.environ, "nnUNet_raw": str(self.work / "nnUNet_raw"),
                "nnUNet_preprocessed": str(self.work / "nnUNet_preprocessed"),
                "nnUNet_results": str(self.work / "nnUNet_results"), "nnUNet_n_proc_DA": str(self.num_processes)}


@dataclass
class BenchmarkReport:
    """The whole run: machine, settings, raw measurements, per-name summary, ratios and target checks."""

    date: str
    host: str
    machine: dict[str, object]
    settings: dict[str, object]
    measurements: list[Measurement]
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    ratios: dict[str, dict[str, float]] = field(default_factory=dict)
    targets: list[dict[str, object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- process-tree sampling
def _parent_map() -> dict[int, int]:
    """``{pid: ppid}`` of every live process, read from ``/proc/<pid>/stat``."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:  # the process exited between listing and reading
            continue
        # the command name may hold spaces and parentheses; fields resume after the last ')'
        parents[int(entry.name)] = int(stat[stat.rfind(b")") + 2:].split()[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (found by scanning ``/proc``; no psutil needed)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parent_map().items():
        children.setdefault(ppid, []).append(pid)
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def memory_kib(pid: int) -> tuple[int, int]:
    """``(rss, pss)`` of one process in KiB; ``(0, 0)`` once it has gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return 0, 0
    rss = values.get("Rss", 0)
    return rss, values.get("Pss", rss)


def run_measured(command: list[str], env: dict[str, str], log_path: Path,
                 timeout_s: float | None = None, interval_s: float = SAMPLE_INTERVAL_S) -> dict[str, float | int]:
    """Run ``command`` to completion, sampling its process tree every ``interval_s`` (50 ms by default).

    The sampling is not free: reading ``smaps_rollup`` of a GiB-sized training process walks its page
    tables, which took ~0.6 of a core every 50 ms on the 2-core VM (2026-11-30). Long runs whose time
    comes from their own logs (learning curves) sample every few seconds instead.

    Returns ``returncode``, ``wall_s``, ``cpu_s``, ``peak_rss_mb``, ``peak_pss_mb``,
    ``max_processes`` (see the module docstring for the definitions) and ``timed_out``: after
    ``timeout_s`` seconds the whole process tree is killed (SIGKILL). Output goes to ``log_path``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_rss = peak_pss = max_processes = 0
    timed_out = False
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while process.poll() is None:
            pids = process_tree(process.pid)
            sizes = [memory_kib(pid) for pid in pids]
            peak_rss = max(peak_rss, sum(rss for rss, _ in sizes))
            peak_pss = max(peak_pss, sum(pss for _, pss in sizes))
            max_processes = max(max_processes, sum(1 for rss, _ in sizes if rss))
            if timeout_s is not None and not timed_out and time.perf_counter() - start > timeout_s:
                timed_out = True
                kill_tree(pids)
            time.sleep(interval_s)
        wall = time.perf_counter() - start
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    return {"returncode": process.returncode, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_rss / 1024,
            "peak_pss_mb": peak_pss / 1024, "max_processes": max_processes, "timed_out": timed_out}


def kill_tree(pids: list[int]) -> None:
    """SIGKILL every process in ``pids`` (a tree from :func:`process_tree`); ones already gone are skipped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def measure(ctx: BenchmarkContext, name: str, tool: str, section: str, command: list[str], env: dict[str, str],
            repeat: int = 1, interval_s: float = SAMPLE_INTERVAL_S) -> Measurement:
    """Run ``command`` through :func:`run_measured`, log to ``<work>/logs/<name>_<repeat>.log`` and print one line."""
    log = ctx.work / "logs" / f"{name}_{repeat}.log"
    print(f"[{name} #{repeat}] {' '.join(command)}", flush=True)
    load = os.getloadavg()[0]  # the machine may be shared: record how busy it was
    stats = run_measured(command, env, log, interval_s=interval_s)
    m = Measurement(name=name, tool=tool, section=section, repeat=repeat, command=command,
                    returncode=int(stats["returncode"]), wall_s=round(stats["wall_s"], 3), cpu_s=round(stats["cpu_s"], 3),
                    peak_rss_mb=round(stats["peak_rss_mb"], 1), peak_pss_mb=round(stats["peak_pss_mb"], 1),
                    max_processes=int(stats["max_processes"]), load_before=round(load, 2), log=os.path.relpath(log))
    if m.returncode != 0:
        m.error_tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    print(f"    rc {m.returncode}, {m.wall_s:.1f} s wall, {m.cpu_s:.1f} s CPU, peak RSS {m.peak_rss_mb:.0f} MiB, "
          f"PSS {m.peak_pss_mb:.0f} MiB, {m.max_processes} processes", flush=True)
    return m


def not_run(name: str, tool: str, section: str, reason: str) -> Measurement:
    """A failed placeholder (return code -1) for a command that could not start, e.g. without a trained model."""
    print(f"[{name}] not run: {reason}", flush=True)
    return Measurement(name=name, tool=tool, section=section, repeat=1, command=[], returncode=-1, wall_s=0.0,
                       cpu_s=0.0, peak_rss_mb=0.0, peak_pss_mb=0.0, max_processes=0, error_tail=reason)


def read_json(path: Path) -> dict:
    """A driver's timings file, or ``{}`` when the run failed before writing it."""
    return json.loads(path.read_text()) if path.is_file() else {}


def vessel_seg_roots(work: Path) -> dict[str, str]:
    """``VS_RAW`` / ``VS_PREPROCESSED`` / ``VS_RESULTS`` of a private tree under ``work``."""
    return {f"VS_{n.upper()}": str(work / n) for n in ("raw", "preprocessed", "results")}


# ---------------------------------------------------------------- tools and machine
def ours_command() -> list[str]:
    """``vs_plan_and_preprocess`` beside this interpreter, or the same CLI through ``-m``."""
    script = Path(sys.executable).parent / "vs_plan_and_preprocess"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vessel_seg.cli.plan_and_preprocess"]


def nnunet_command(nnunet_python: str | None) -> tuple[str, list[str]]:
    """``(interpreter, planning command)`` of nnU-Net's environment (found on ``PATH`` when omitted)."""
    if nnunet_python is None:
        found = shutil.which(NNUNET_ENTRY)
        if found is None or not (Path(found).parent / "python").is_file():
            raise VesselSegError(f"{NNUNET_ENTRY} is not on PATH in a virtual environment: pass --nnunet-python PATH "
                                 "or --skip-nnunet")
        nnunet_python = str(Path(found).parent / "python")
    python = Path(nnunet_python)
    probe = subprocess.run([str(python), "-c", "import nnunetv2"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise VesselSegError(f"{python}: cannot import nnunetv2 ({probe.stderr.strip().splitlines()[-1:]}); "
                             "install nnunetv2 there or pass --skip-nnunet")
    script = python.parent / NNUNET_ENTRY
    if script.is_file():
        return str(python), [str(script)]
    code = f"import sys; from {NNUNET_MODULE} import plan_and_preprocess_entry as e; sys.argv[0] = '{NNUNET_ENTRY}'; e()"
    return str(python), [str(python), "-c", code]


def probe_nnunet(python: str) -> tuple[dict[str, str], list[str]]:
    """Versions of nnU-Net's environment and notes on oddities (e.g. a torchvision that fails to import)."""
    code = ("import importlib.metadata as m\n"
            "for p in ('nnunetv2', 'torch', 'torchvision', 'timm', 'numpy'):\n"
            "    try: print(p, m.version(p))\n"
            "    except m.PackageNotFoundError: pass\n")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True).stdout
    versions = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    notes = []
    tv = subprocess.run([python, "-c", "import torchvision"], capture_output=True, text=True)
    if tv.returncode != 0:
        last = (tv.stderr.strip().splitlines() or ["?"])[-1]
        notes.append(f"nnU-Net's environment: `import torchvision` fails ({last}); its default planner, preprocessor "
                     "and nnUNetTrainer do not need it, and benchmarks/nnunet_driver.py never looks trainers up by name")
    return versions, notes


def machine_info() -> dict[str, object]:
    model = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as handle:
        total_kib = int(handle.readline().split()[1])
    threads = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS") if k in os.environ}
    return {"cpu": model, "cpus": os.cpu_count(), "memory_gib": round(total_kib / MIB, 1), "os": platform.platform(),
            "python": platform.python_version(), "vessel_seg": metadata.version("vessel_seg"),
            "torch": metadata.version("torch"), "thread_env": threads}


def write_results(out: Path, result: dict, name: str, text: str) -> Path:
    """``<out>/<date>-<host>-<name>.json`` (``result``) and ``.md`` (``text``), atomically; prints ``text``."""
    from vessel_seg.atomic import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{result['date']}-{result['host']}-{name}"
    write_text_atomic(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    write_text_atomic(stem.with_suffix(".md"), text)
    print(text)
    return stem
