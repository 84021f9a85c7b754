"""Side-by-side benchmark of vessel_seg against nnU-Net v2 on the same synthetic data and machine.

Usage::

    .venv/bin/python benchmarks/compare_nnunet.py --cases 12 --size 96 \\
        --nnunet-python /tmp/nnunet_venv/bin/python [--verify] [--repeats 2] [--out benchmarks/results]
    .venv/bin/python benchmarks/compare_nnunet.py --skip-nnunet     # our side only

One synthetic dataset (vessel_seg's generator) is written to ``<work>/vs_raw`` and its training
files (``dataset.json``, ``imagesTr``, ``labelsTr``) are copied unchanged into ``<work>/nnUNet_raw``:
the layouts are identical. Every measured command runs in a fresh subprocess against a fresh,
empty preprocessed folder, and is timed and memory-sampled as a whole process tree.

Measured quantities (one :class:`Measurement` per command run):

- ``wall_s``: elapsed seconds from launch to exit (interpreter start-up included).
- ``cpu_s``: user + system CPU seconds of the command and every descendant it reaped.
- ``peak_rss_mb``: maximum, over samples every 50 ms, of the summed resident set size (MiB) of the
  launched process and all its descendants. Pages shared between processes (libraries) count
  once per process, so this overstates the physical footprint of many workers.
- ``peak_pss_mb``: the same with the proportional set size (shared pages split among sharers),
  the fairer estimate of physical memory. Spikes shorter than the sampling interval can be missed.

Each measured section is one function returning a list of measurements; later sections
(training seconds per iteration, inference seconds per case, Dice) plug in the same way.
Results go to ``<out>/<YYYY-MM-DD>-<hostname>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from vessel_seg.cli import run_cli
from vessel_seg.dataset_conversion.synthetic import generate_dataset
from vessel_seg.errors import VesselSegError
from vessel_seg.paths import dataset_name

DATASET_SHORT_NAME = "Synthetic"
SAMPLE_INTERVAL_S = 0.05
MIB = 1024 * 1024
NNUNET_ENTRY = "nnUNetv2_plan_and_preprocess"
NNUNET_MODULE = "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints"
# (ours, nnU-Net) measurement names whose ratios are reported.
RATIO_PAIRS = (("ours_cpu", "nnunet"), ("ours_gpu", "nnunet"), ("ours_cpu_verify", "nnunet_verify"))
RATIO_FIELDS = ("wall_s", "cpu_s", "peak_rss_mb", "peak_pss_mb")


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
    log: str = ""
    error_tail: str = ""


@dataclass
class BenchmarkContext:
    """Everything a section needs: folders, dataset id, worker count and the two tools' commands."""

    work: Path
    dataset_id: int
    num_processes: int
    ours_command: list[str]
    nnunet_command: list[str] | None

    @property
    def dataset(self) -> str:
        return dataset_name(self.dataset_id, DATASET_SHORT_NAME)


@dataclass
class BenchmarkReport:
    """The whole run: machine, settings, raw measurements, per-name summary and ours/nnU-Net ratios."""

    date: str
    host: str
    machine: dict[str, object]
    settings: dict[str, object]
    measurements: list[Measurement]
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    ratios: dict[str, dict[str, float]] = field(default_factory=dict)
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


def run_measured(command: list[str], env: dict[str, str], log_path: Path) -> dict[str, float | int]:
    """Run ``command`` to completion, sampling its process tree every 50 ms.

    Returns ``returncode``, ``wall_s``, ``cpu_s``, ``peak_rss_mb``, ``peak_pss_mb`` and
    ``max_processes`` (see the module docstring for the definitions). Output goes to ``log_path``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_rss = peak_pss = max_processes = 0
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while process.poll() is None:
            pids = process_tree(process.pid)
            sizes = [memory_kib(pid) for pid in pids]
            peak_rss = max(peak_rss, sum(rss for rss, _ in sizes))
            peak_pss = max(peak_pss, sum(pss for _, pss in sizes))
            max_processes = max(max_processes, sum(1 for rss, _ in sizes if rss))
            time.sleep(SAMPLE_INTERVAL_S)
        wall = time.perf_counter() - start
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    return {"returncode": process.returncode, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_rss / 1024,
            "peak_pss_mb": peak_pss / 1024, "max_processes": max_processes}


# ---------------------------------------------------------------- dataset and tools
def prepare_dataset(ctx: BenchmarkContext, cases: int, size: int, seed: int, spacing: tuple[float, float, float]) -> None:
    """Generate the synthetic dataset into ``<work>/vs_raw`` and copy it into ``<work>/nnUNet_raw``."""
    vs_dir = generate_dataset(ctx.dataset_id, cases, num_test_cases=0, size=size, seed=seed,
                              raw_root=ctx.work / "vs_raw", overwrite=True, spacing=spacing)
    nn_dir = ctx.work / "nnUNet_raw" / ctx.dataset
    shutil.rmtree(nn_dir, ignore_errors=True)
    nn_dir.mkdir(parents=True)
    shutil.copyfile(vs_dir / "dataset.json", nn_dir / "dataset.json")
    for sub in ("imagesTr", "labelsTr"):
        shutil.copytree(vs_dir / sub, nn_dir / sub)


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
        notes.append(f"nnU-Net's environment: `import torchvision` fails ({last}); its default planner and "
                     "preprocessor do not need it")
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


# ---------------------------------------------------------------- section: plan and preprocess
def _folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MIB if path.is_dir() else 0.0


def plans_summary(plans_path: Path) -> dict[str, dict]:
    """Spacing, patch size, batch size and features per configuration of an ours or nnU-Net plans file."""
    if not plans_path.is_file():
        return {}
    configurations = json.loads(plans_path.read_text()).get("configurations", {})
    summary = {}
    for name, config in configurations.items():
        if "patch_size" not in config:  # nnU-Net's cascade entry only inherits from another
            continue
        network = config.get("network") or config.get("architecture", {}).get("arch_kwargs", {})
        summary[name] = {"spacing": [round(s, 3) for s in config.get("spacing", [])], "patch_size": config["patch_size"],
                         "batch_size": config.get("batch_size"), "features": network.get("features_per_stage")}
    return summary


def _measure(ctx: BenchmarkContext, name: str, tool: str, repeat: int, command: list[str], env_roots: dict[str, str],
             preprocessed: Path, plans_file: str) -> Measurement:
    shutil.rmtree(preprocessed, ignore_errors=True)  # fresh: no reused fingerprint or cases
    preprocessed.mkdir(parents=True)
    env = {**os.environ, **env_roots}
    log = ctx.work / "logs" / f"{name}_{repeat}.log"
    print(f"[{name} #{repeat}] {' '.join(command)}", flush=True)
    load = os.getloadavg()[0]  # the machine may be shared: record how busy it was
    stats = run_measured(command, env, log)
    out_dir = preprocessed / ctx.dataset
    m = Measurement(name=name, tool=tool, section="plan_and_preprocess", repeat=repeat, command=command,
                    returncode=int(stats["returncode"]), wall_s=round(stats["wall_s"], 3), cpu_s=round(stats["cpu_s"], 3),
                    peak_rss_mb=round(stats["peak_rss_mb"], 1), peak_pss_mb=round(stats["peak_pss_mb"], 1),
                    max_processes=int(stats["max_processes"]), load_before=round(load, 2), output_mb=round(_folder_mb(out_dir), 2),
                    configurations=sorted(p.name for p in out_dir.iterdir() if p.is_dir()) if out_dir.is_dir() else [],
                    plans=plans_summary(out_dir / plans_file), log=os.path.relpath(log))
    if m.returncode != 0:
        m.error_tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    print(f"    rc {m.returncode}, {m.wall_s:.1f} s wall, {m.cpu_s:.1f} s CPU, peak RSS {m.peak_rss_mb:.0f} MiB, "
          f"PSS {m.peak_pss_mb:.0f} MiB, {m.max_processes} processes", flush=True)
    return m


def measure_ours_plan_and_preprocess(ctx: BenchmarkContext, name: str, repeat: int, extra: list[str]) -> Measurement:
    """Time ``vs_plan_and_preprocess -d ID -np N`` plus ``extra`` (e.g. ``-pl cpu``) from scratch."""
    command = [*ctx.ours_command, "-d", str(ctx.dataset_id), "-np", str(ctx.num_processes), *extra]
    roots = {"VS_RAW": str(ctx.work / "vs_raw"), "VS_PREPROCESSED": str(ctx.work / "vs_preprocessed"),
             "VS_RESULTS": str(ctx.work / "vs_results")}
    plans_file = f"{extra[extra.index('-pl') + 1]}.json" if "-pl" in extra else "vs_plans.json"
    return _measure(ctx, name, "vessel_seg", repeat, command, roots, ctx.work / "vs_preprocessed", plans_file)


def measure_nnunet_plan_and_preprocess(ctx: BenchmarkContext, name: str, repeat: int, extra: list[str]) -> Measurement:
    """Time ``nnUNetv2_plan_and_preprocess -d ID -np N -npfp N -c 3d_fullres 2d`` plus ``extra`` from scratch.

    ``-npfp`` (fingerprint workers, default 8 in nnU-Net) is set to the same count as ``-np`` so
    that both tools use the same number of worker processes in every step.
    """
    assert ctx.nnunet_command is not None
    command = [*ctx.nnunet_command, "-d", str(ctx.dataset_id), "-np", str(ctx.num_processes),
               "-npfp", str(ctx.num_processes), "-c", "3d_fullres", "2d", *extra]
    roots = {"nnUNet_raw": str(ctx.work / "nnUNet_raw"), "nnUNet_preprocessed": str(ctx.work / "nnUNet_preprocessed"),
             "nnUNet_results": str(ctx.work / "nnUNet_results")}
    return _measure(ctx, name, "nnunetv2", repeat, command, roots, ctx.work / "nnUNet_preprocessed", "nnUNetPlans.json")


def run_plan_and_preprocess_section(ctx: BenchmarkContext, repeats: int, verify: bool) -> list[Measurement]:
    """Ours (cpu and default gpu plans) and nnU-Net, interleaved per repeat so drifts in load hit both."""
    results = []
    for repeat in range(1, repeats + 1):
        results.append(measure_ours_plan_and_preprocess(ctx, "ours_cpu", repeat, ["-pl", "cpu"]))
        results.append(measure_ours_plan_and_preprocess(ctx, "ours_gpu", repeat, []))
        if ctx.nnunet_command:
            results.append(measure_nnunet_plan_and_preprocess(ctx, "nnunet", repeat, []))
        if verify:
            results.append(measure_ours_plan_and_preprocess(ctx, "ours_cpu_verify", repeat, ["-pl", "cpu", "--verify"]))
            if ctx.nnunet_command:
                results.append(measure_nnunet_plan_and_preprocess(ctx, "nnunet_verify", repeat, ["--verify_dataset_integrity"]))
    return results


# ---------------------------------------------------------------- report
def summarise(measurements: list[Measurement]) -> dict[str, dict[str, float]]:
    """Per measurement name: median wall and CPU seconds, largest peaks, over successful repeats."""
    by_name: dict[str, list[Measurement]] = {}
    for m in measurements:
        if m.returncode == 0:
            by_name.setdefault(m.name, []).append(m)
    return {name: {"runs": len(ms), "wall_s": round(statistics.median(m.wall_s for m in ms), 3),
                   "cpu_s": round(statistics.median(m.cpu_s for m in ms), 3),
                   "peak_rss_mb": max(m.peak_rss_mb for m in ms), "peak_pss_mb": max(m.peak_pss_mb for m in ms)}
            for name, ms in by_name.items()}


def compute_ratios(summary: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """``ours / nnU-Net`` for each pair in :data:`RATIO_PAIRS` that both ran (below 1: ours is cheaper)."""
    ratios = {}
    for ours, theirs in RATIO_PAIRS:
        if ours in summary and theirs in summary:
            ratios[f"{ours}/{theirs}"] = {k: round(summary[ours][k] / summary[theirs][k], 3)
                                          for k in RATIO_FIELDS if summary[theirs][k] > 0}
    return ratios


def render_markdown(report: BenchmarkReport) -> str:
    mach, sett = report.machine, report.settings
    lines = [f"# vessel_seg vs nnU-Net v2: plan and preprocess ({report.date}, {report.host})", "",
             f"Machine: {mach['cpu']}, {mach['cpus']} CPUs, {mach['memory_gib']} GiB; vessel_seg {mach['vessel_seg']}, "
             f"torch {mach['torch']}; nnU-Net env: {sett.get('nnunet_versions') or 'not run'}.",
             f"Data: {sett['cases']} synthetic cases of {sett['size']}^3 at {tuple(sett['spacing'])} mm (z, y, x), "
             f"{sett['num_processes']} worker processes, seed {sett['seed']}.", "",
             "| run | # | wall s | CPU s | peak RSS MiB (tree sum) | peak PSS MiB | processes | load before | output MiB | configurations |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in report.measurements:
        rc = "" if m.returncode == 0 else f" (FAILED rc {m.returncode})"
        lines.append(f"| {m.name}{rc} | {m.repeat} | {m.wall_s:.1f} | {m.cpu_s:.1f} | {m.peak_rss_mb:.0f} | "
                     f"{m.peak_pss_mb:.0f} | {m.max_processes} | {m.load_before:.1f} | {m.output_mb:.1f} | {', '.join(m.configurations)} |")
    if report.ratios:
        lines += ["", "Ratios ours / nnU-Net (median wall and CPU time, largest peaks; below 1 means ours is cheaper):", "",
                  "| pair | wall | CPU | peak RSS | peak PSS |", "|---|---|---|---|---|"]
        for pair, r in report.ratios.items():
            lines.append(f"| {pair} | " + " | ".join(f"{r.get(k, float('nan')):.2f}" for k in RATIO_FIELDS) + " |")
    plans = {(m.name, c): p for m in report.measurements if m.repeat == 1 for c, p in m.plans.items()}
    if plans:
        lines += ["", "Plans:", "", "| run | configuration | spacing mm | patch | batch | features |", "|---|---|---|---|---|---|"]
        for (name, config), p in plans.items():
            lines.append(f"| {name} | {config} | {p['spacing']} | {p['patch_size']} | {p['batch_size']} | {p['features']} |")
    lines += ["", *(f"- {note}" for note in report.notes)]
    return "\n".join(lines).rstrip() + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_report(report: BenchmarkReport, out_dir: Path) -> tuple[Path, Path]:
    """Write ``<date>-<host>.json`` and ``.md`` into ``out_dir`` and return both paths."""
    stem = out_dir / f"{report.date}-{report.host}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    _write_atomic(json_path, json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    _write_atomic(md_path, render_markdown(report))
    return json_path, md_path


# ---------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="Benchmark vs_plan_and_preprocess against nnUNetv2_plan_and_preprocess.")
    parser.add_argument("--cases", type=int, default=12, help="synthetic training cases (default 12)")
    parser.add_argument("--size", type=int, default=96, help="edge length of the cubic volumes in voxels (default 96)")
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.5, 0.5), help="voxel size z y x in mm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset-id", type=int, default=501)
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes for both tools (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="measure every command this many times (default 1)")
    parser.add_argument("--verify", action="store_true", help="also time the dataset-verification variants")
    parser.add_argument("--nnunet-python", help="interpreter of an environment with nnunetv2 (default: nnU-Net on PATH)")
    parser.add_argument("--skip-nnunet", action="store_true", help="measure our side only")
    parser.add_argument("--work", type=Path, default=here / "work", help="scratch folder (default benchmarks/work)")
    parser.add_argument("--out", type=Path, default=here / "results", help="results folder (default benchmarks/results)")
    return parser


def _command(args: argparse.Namespace) -> int:
    if args.cases < 1 or args.size < 16 or args.repeats < 1 or args.num_processes < 1:
        raise VesselSegError("--cases, --repeats and -np must be at least 1 and --size at least 16")
    nn_python, nn_cmd = (None, None) if args.skip_nnunet else nnunet_command(args.nnunet_python)
    work = args.work.resolve()
    ctx = BenchmarkContext(work=work, dataset_id=args.dataset_id, num_processes=args.num_processes,
                           ours_command=ours_command(), nnunet_command=nn_cmd)
    settings: dict[str, object] = {"cases": args.cases, "size": args.size, "spacing": list(args.spacing), "seed": args.seed,
                                   "dataset_id": args.dataset_id, "num_processes": args.num_processes,
                                   "repeats": args.repeats, "sample_interval_s": SAMPLE_INTERVAL_S}
    notes = []
    if nn_python:
        settings["nnunet_versions"], notes = probe_nnunet(nn_python)
    print(f"generating {args.cases} cases of {args.size}^3 into {work}", flush=True)
    prepare_dataset(ctx, args.cases, args.size, args.seed, tuple(args.spacing))
    measurements = run_plan_and_preprocess_section(ctx, args.repeats, args.verify)
    summary = summarise(measurements)
    report = BenchmarkReport(date=datetime.date.today().isoformat(), host=socket.gethostname(), machine=machine_info(),
                             settings=settings, measurements=measurements, summary=summary,
                             ratios=compute_ratios(summary), notes=notes)
    report.notes += [f"{m.name} #{m.repeat} failed (rc {m.returncode}); log {m.log}" for m in measurements if m.returncode]
    json_path, md_path = write_report(report, args.out)
    print(render_markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 1 if any(m.returncode for m in measurements) else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
