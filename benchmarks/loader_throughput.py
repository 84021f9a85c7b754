"""Training data loader throughput: vessel_seg against nnU-Net v2, batches per second per worker count.

Usage::

    .venv/bin/python benchmarks/loader_throughput.py --workers 1 2 4 --nnunet-python /tmp/nnunet_venv/bin/python
    .venv/bin/python benchmarks/loader_throughput.py --skip-nnunet --workers 1 2     # our side only

One synthetic dataset (``--cases`` of ``--size``^3 voxels at ``--spacing`` mm, vessel_seg's
generator, written and copied to nnU-Net's raw layout by ``compare_nnunet.prepare_dataset``) is
preprocessed by each framework for its *default GPU plans*: ours ``vs_plans`` 3d_fullres, nnU-Net
``nnUNetPlans`` 3d_fullres (``bench_plan.ensure_*_preprocessed``). For every worker count:

- ours: :class:`~vessel_seg.trainers.dataloading.PatchLoader` over all cases with
  :func:`~vessel_seg.trainers.augmentation.training_transforms`, behind
  :class:`~vessel_seg.trainers.background.BackgroundBatches` (unordered, tensors made in the
  consumer), built as the trainer builds its training batches;
- nnU-Net: ``nnunet_loader.py`` in a fresh process of nnU-Net's interpreter (``nnUNetDataLoader``
  with the transforms of ``nnUNetTrainer.get_training_transforms`` behind its
  ``NonDetMultiThreadedAugmenter``).

Both are timed by ``nnunet_loader.time_batches``: ``--warmup`` batches (default ``max(4, 2 x
workers)``) are consumed untimed, then ``--batches`` as fast as they arrive. Reported per run:
batches/s, CPU seconds of the workers per batch (cost of producing one) and of the consuming process
per batch (cost of receiving one). ``ratio`` is ours / nnU-Net batches/s (above 1: ours delivers more).

Feeding a GPU: a GPU step of ``--gpu-step-s`` seconds (default 0.038, nnU-Net v2's default 3d_fullres
step on an H200) consumes ``1 / step`` batches/s; the check asks for ``--margin`` (1.5) times that
at the worker count vessel_seg chooses automatically for a ``--target-cpus`` (16) CPU machine with
one GPU. On a machine with fewer cores than that the rate is projected from this machine's costs:
``min(workers / worker CPU s per batch, 1 / consumer CPU s per batch)``, taken from the run with the
fewest workers (least contention). The projection assumes cores as fast as these, free of other
load; it says so in the report.

Results: ``<out>/<date>-<host>-loader.json`` and ``.md``; scratch data under ``<work>``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules; benchmarks/ is not a package
from vessel_seg.cli import run_cli, sleep_idle_openmp_threads  # noqa: E402

sleep_idle_openmp_threads()  # as vs_train does, before torch loads: spinning idle threads cost the consumer 10x
from bench_common import HERE, BenchmarkContext, machine_info, nnunet_command, ours_command, probe_nnunet  # noqa: E402
from bench_plan import ensure_nnunet_preprocessed, ensure_ours_preprocessed  # noqa: E402
from compare_nnunet import prepare_dataset  # noqa: E402
from nnunet_loader import time_batches  # noqa: E402  (imports nnunetv2 only inside its functions)

from vessel_seg.atomic import write_text_atomic  # noqa: E402
from vessel_seg.case_store import list_cases  # noqa: E402
from vessel_seg.errors import VesselSegError  # noqa: E402
from vessel_seg.planners.plans import Plans  # noqa: E402
from vessel_seg.trainers.augmentation import training_transforms  # noqa: E402
from vessel_seg.trainers.background import BackgroundBatches  # noqa: E402
from vessel_seg.trainers.dataloading import PatchLoader  # noqa: E402
from vessel_seg.trainers.workers import default_num_workers  # noqa: E402

OURS_PLANS, NNUNET_PLANS, CONFIGURATION = "vs_plans", "nnUNetPlans", "3d_fullres"
NNUNET_DEFAULT_WORKERS = 12  # nnunetv2.utilities.default_n_proc_DA for an unknown host


def ours_batches(ctx: BenchmarkContext, workers: int, seed: int) -> tuple[BackgroundBatches, dict]:
    """Our training batches for the default plans' 3d_fullres, as ``trainer._batches`` builds them (all cases)."""
    pre = ctx.work / "vs_preprocessed" / ctx.dataset
    config = Plans.load(pre / f"{OURS_PLANS}.json").configuration(CONFIGURATION)
    data_dir = pre / config.data_identifier
    aug = training_transforms(config.patch_size, config.spacing[-len(config.patch_size):])
    loader = PatchLoader(data_dir, list_cases(data_dir), config.patch_size, config.batch_size,
                         sample_patch_size=aug.sample_patch_size, seed=seed)
    batches = BackgroundBatches(loader, aug.transform, workers, pin_memory=False, seed=seed, deterministic=False)
    return batches, {"patch_size": list(config.patch_size), "batch_size": config.batch_size,
                     "sample_patch_size": list(aug.sample_patch_size)}


def measure_ours(ctx: BenchmarkContext, workers: int, warmup: int, count: int, seed: int) -> dict:
    """Time our loader with ``workers`` processes (see the module docstring)."""
    batches, info = ours_batches(ctx, workers, seed)
    try:
        timing = time_batches(batches, warmup, count, lambda: batches.worker_pids)
    finally:
        batches.close()
    return {**timing, **info, "workers": workers, "load_before": round(os.getloadavg()[0], 2)}


def measure_nnunet(ctx: BenchmarkContext, workers: int, warmup: int, count: int, timeout_s: float) -> dict:
    """Time nnU-Net's loader in a fresh process of its interpreter; ``{"error": ...}`` when that fails."""
    assert ctx.nnunet_python is not None
    out = ctx.work / "timings" / f"nnunet_loader_{workers}.json"
    out.unlink(missing_ok=True)
    log = ctx.work / "logs" / f"nnunet_loader_{workers}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [ctx.nnunet_python, str(HERE / "nnunet_loader.py"), "-d", str(ctx.dataset_id), "-c", CONFIGURATION,
               "-p", NNUNET_PLANS, "--workers", str(workers), "--batches", str(count), "--warmup", str(warmup),
               "--out", str(out)]
    load = round(os.getloadavg()[0], 2)
    with open(log, "wb") as handle:
        try:
            done = subprocess.run(command, env=ctx.nnunet_env(), stdout=handle, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"workers": workers, "error": f"timed out after {timeout_s:.0f} s; log {log}"}
    if done.returncode != 0 or not out.is_file():
        return {"workers": workers, "error": f"rc {done.returncode}; log {log}"}
    return {**json.loads(out.read_text()), "load_before": load}


def projected_rate(row: dict, workers: int) -> float:
    """Batches/s that ``workers`` uncontended workers of this machine's speed would deliver (module docstring)."""
    produce = workers / row["worker_cpu_s_per_batch"] if row["worker_cpu_s_per_batch"] > 0 else float("inf")
    receive = 1 / row["consumer_cpu_s_per_batch"] if row["consumer_cpu_s_per_batch"] > 0 else float("inf")
    return round(min(produce, receive), 2)


def feed_check(rows: list[dict], gpu_step_s: float, margin: float, target_cpus: int) -> dict:
    """Whether ours reaches ``margin / gpu_step_s`` batches/s at the worker count auto-chosen for ``target_cpus``."""
    workers = default_num_workers(target_cpus, 1, accelerator=True)
    needed = margin / gpu_step_s
    check = {"gpu_step_s": gpu_step_s, "gpu_batches_per_s": round(1 / gpu_step_s, 2), "margin": margin,
             "needed_batches_per_s": round(needed, 2), "target_cpus": target_cpus, "auto_workers": workers,
             "this_machine_cpus": os.cpu_count()}
    for tool in ("ours", "nnunet"):
        ok = [r[tool] for r in rows if "error" not in r.get(tool, {"error": 1})]
        if not ok:
            continue
        measured = [r for r in ok if r["workers"] == workers]
        if measured and (os.cpu_count() or 1) > workers:
            check[f"{tool}_batches_per_s"], check[f"{tool}_how"] = measured[0]["batches_per_s"], "measured"
        else:
            base = min(ok, key=lambda r: r["workers"])
            check[f"{tool}_batches_per_s"] = projected_rate(base, workers)
            check[f"{tool}_how"] = f"projected from the {base['workers']}-worker run's CPU costs"
        if tool == "nnunet":
            check["nnunet_at_its_default_12"] = projected_rate(min(ok, key=lambda r: r["workers"]),
                                                                NNUNET_DEFAULT_WORKERS)
    if "ours_batches_per_s" in check:
        check["status"] = "PASS" if check["ours_batches_per_s"] >= needed else "MISS"
    return check


def _fmt(row: dict, key: str, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if not row or "error" in row or key not in row else f"{row[key] * scale:.{digits}f}"


def render_markdown(report: dict) -> str:
    """The report as Markdown: settings, one table (batches/s and costs per worker count) and the GPU check."""
    s, check = report["settings"], report["feed_check"]
    lines = [f"# Loader throughput {report['date']} ({report['host']})", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cpus']} CPUs. Data: {s['cases']} synthetic "
             f"cases of {s['size']}^3 at {s['spacing']} mm. Ours: {OURS_PLANS} {CONFIGURATION} patch "
             f"{report.get('ours_patch')} batch {report.get('ours_batch')}; nnU-Net: {NNUNET_PLANS} {CONFIGURATION} "
             f"patch {report.get('nnunet_patch')} batch {report.get('nnunet_batch')}. {s['batches']} timed batches "
             "per run after warm-up.", "",
             "| workers | ours batches/s | nnU-Net batches/s | ours / nnU-Net | ours worker CPU s/batch | "
             "nnU-Net worker CPU s/batch | ours consumer ms/batch | nnU-Net consumer ms/batch | load before |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        ours, theirs = row.get("ours", {}), row.get("nnunet", {})
        lines.append(f"| {row['workers']} | {_fmt(ours, 'batches_per_s')} | {_fmt(theirs, 'batches_per_s')} | "
                     f"{row.get('ratio', 'n/a')} | {_fmt(ours, 'worker_cpu_s_per_batch', digits=3)} | "
                     f"{_fmt(theirs, 'worker_cpu_s_per_batch', digits=3)} | "
                     f"{_fmt(ours, 'consumer_cpu_s_per_batch', 1000, 1)} | "
                     f"{_fmt(theirs, 'consumer_cpu_s_per_batch', 1000, 1)} | {ours.get('load_before', 'n/a')} |")
    lines += ["", f"GPU step {check['gpu_step_s']} s = {check['gpu_batches_per_s']} batches/s; needed "
              f"{check['margin']}x = {check['needed_batches_per_s']} batches/s at {check['auto_workers']} workers "
              f"(auto for {check['target_cpus']} CPUs, 1 GPU): ours {check.get('ours_batches_per_s', 'n/a')} "
              f"({check.get('ours_how', 'n/a')}) -> **{check.get('status', 'n/a')}**; nnU-Net "
              f"{check.get('nnunet_batches_per_s', 'n/a')} at {check['auto_workers']}, "
              f"{check.get('nnunet_at_its_default_12', 'n/a')} at its default 12."]
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def _median_run(runs: list[dict]) -> dict:
    """The run with the median batches/s among successful ``runs`` (the first error when all failed)."""
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["batches_per_s"])
    return ok[(len(ok) - 1) // 2] if ok else runs[0]


def run_rows(ctx: BenchmarkContext, args: argparse.Namespace) -> list[dict]:
    """Per worker count, ours then nnU-Net, ``--repeats`` times interleaved; the median run of each."""
    rows = []
    for workers in args.workers:
        warmup = args.warmup if args.warmup is not None else max(4, 2 * workers)
        ours_runs, nnunet_runs = [], []
        for repeat in range(args.repeats):
            print(f"[workers {workers} #{repeat + 1}] ours ...", flush=True)
            ours_runs.append(measure_ours(ctx, workers, warmup, args.batches, args.seed + repeat))
            print(f"    {ours_runs[-1]['batches_per_s']:.2f} batches/s", flush=True)
            if ctx.nnunet_python:
                print(f"[workers {workers} #{repeat + 1}] nnU-Net ...", flush=True)
                nnunet_runs.append(measure_nnunet(ctx, workers, warmup, args.batches, args.nnunet_timeout))
                print(f"    {nnunet_runs[-1].get('batches_per_s', nnunet_runs[-1].get('error'))} batches/s", flush=True)
        row = {"workers": workers, "ours": _median_run(ours_runs)}
        if nnunet_runs:
            row["nnunet"] = _median_run(nnunet_runs)
            if "error" not in row["nnunet"]:
                row["ratio"] = round(row["ours"]["batches_per_s"] / row["nnunet"]["batches_per_s"], 2)
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Training data loader batches/s: vessel_seg against nnU-Net v2.")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts (default 1 2 4)")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per run (default 40)")
    parser.add_argument("--warmup", type=int, help="untimed batches first (default max(4, 2 x workers))")
    parser.add_argument("--repeats", type=int, default=1, help="runs per worker count and tool; the median is kept")
    parser.add_argument("--gpu-step-s", type=float, default=0.038,
                        help="GPU step to keep up with, s/iteration (default 0.038: nnU-Net's 3d_fullres on an H200)")
    parser.add_argument("--margin", type=float, default=1.5, help="required batches/s as a multiple of 1/step (default 1.5)")
    parser.add_argument("--target-cpus", type=int, default=16, help="CPUs of the GPU machine for the check (default 16)")
    parser.add_argument("--cases", type=int, default=6, help="synthetic training cases (default 6)")
    parser.add_argument("--size", type=int, default=96, help="edge length of the cubic volumes in voxels (default 96)")
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.5, 0.5), help="voxel size z y x in mm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset-id", type=int, default=502)
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="preprocessing processes (default 2)")
    parser.add_argument("--nnunet-python", help="interpreter of an environment with nnunetv2 (default: nnU-Net on PATH)")
    parser.add_argument("--nnunet-timeout", type=float, default=300, help="seconds per nnU-Net run before it is killed")
    parser.add_argument("--skip-nnunet", action="store_true", help="measure our side only")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "loader", help="scratch folder")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder (default benchmarks/results)")
    return parser


def _notes(check: dict) -> list[str]:
    notes = ["Workers are processes of batchgenerators' NonDetMultiThreadedAugmenter on both sides; nnU-Net's workers "
             "also build its deep-supervision targets (ours downsample them in the loss, on the device), ours ship "
             "numpy arrays that the consumer turns into float32 tensors.",
             "Worker counts above this machine's CPU count share the cores: those rows measure contention, not scaling.",
             f"Our consumer ran with OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} (vs_train's setting); with "
             "spinning idle torch threads its CPU per batch was about 10x higher on 2 cores."]
    if check.get("ours_how", "measured") != "measured":
        notes.append(f"The {check['target_cpus']}-CPU check is a projection from this machine's per-batch CPU costs "
                     "(cores as fast as these and free of other load; consumer cost per batch independent of the "
                     "worker count); confirm it on the GPU machine.")
    return notes


def _command(args: argparse.Namespace) -> int:
    if min(args.workers) < 0 or args.batches < 1 or args.repeats < 1 or args.gpu_step_s <= 0 or args.cases < 1:
        raise VesselSegError("--workers must be 0 or more, --batches, --repeats and --cases at least 1, --gpu-step-s > 0")
    nn_python, nn_cmd = (None, None) if args.skip_nnunet else nnunet_command(args.nnunet_python)
    ctx = BenchmarkContext(work=args.work.resolve(), dataset_id=args.dataset_id, num_processes=args.num_processes,
                           ours_command=ours_command(), nnunet_command=nn_cmd, nnunet_python=nn_python)
    print(f"generating {args.cases} cases of {args.size}^3 into {ctx.work}", flush=True)
    prepare_dataset(ctx, args.cases, 0, args.size, args.seed, tuple(args.spacing))
    ensure_ours_preprocessed(ctx, OURS_PLANS)
    if nn_python:
        ensure_nnunet_preprocessed(ctx)
    rows = run_rows(ctx, args)
    check = feed_check(rows, args.gpu_step_s, args.margin, args.target_cpus)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "verbose"}
    report = {"date": datetime.date.today().isoformat(), "host": socket.gethostname(), "machine": machine_info(),
              "settings": settings, "rows": rows, "feed_check": check, "notes": _notes(check)}
    first_ours, first_nn = rows[0]["ours"], rows[0].get("nnunet", {})
    report.update(ours_patch=first_ours.get("patch_size"), ours_batch=first_ours.get("batch_size"),
                  nnunet_patch=first_nn.get("patch_size"), nnunet_batch=first_nn.get("batch_size"))
    if nn_python:
        report["nnunet_versions"] = probe_nnunet(nn_python)[0]
    stem = args.out / f"{report['date']}-{report['host']}-loader"
    write_text_atomic(stem.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    write_text_atomic(stem.with_suffix(".md"), markdown)
    print(markdown)
    print(f"wrote {stem}.json and {stem}.md")
    return 1 if any("error" in r.get("nnunet", {}) for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
