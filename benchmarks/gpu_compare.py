"""Side-by-side GPU benchmark of vessel_seg and nnU-Net v2: one command, one process tree, one table.

Usage::

    # GPU machine, after gpu_bench_pack.py install (see benchmarks/README.md): at most 440 s of steps
    PYTHONPATH=$PWD:/tmp/site python3 benchmarks/gpu_compare.py --out $OUT
    # CPU smoke run with tiny sizes (our side only, or both with nnU-Net's interpreter)
    .venv/bin/python benchmarks/gpu_compare.py --smoke --device cpu --skip-nnunet --out /tmp/gpu_smoke
    .venv/bin/python benchmarks/gpu_compare.py --smoke --device cpu --nnunet-python /tmp/nnunet_venv/bin/python

Steps, in this order (each a fresh process; names for ``--steps`` and ``--step-limit``):

1. ``data``, ``big``: twelve synthetic 96^3 cases at 0.8/0.5/0.5 mm for both frameworks, and one
   600x512x512 (z, y, x) volume tiled from held-out synthetic cases (``gpu_data.py``).
2. ``vs_plan``, ``nn_plan``: each framework's default plans (ours ``vs_plans``, the GPU preset, or
   ``--ours-plans``; nnU-Net ``nnUNetPlans``) and 3d_fullres preprocessing, both with
   ``--preprocess-workers``.
3. ``vs_train``, ``nn_train``: each default 3d_fullres plan for ``--iterations`` (default 150 =
   3 epochs x 50) on ``--device``: seconds per iteration (median after ``--warmup``), data wait,
   peak GPU memory (torch's allocator in-process and nvidia-smi for the whole GPU) and the pseudo
   Dice of the last epoch (both frameworks: global Dice over the epoch's validation patches).
4. ``nn_add_same``, ``nn_train_same``: nnU-Net at our patch, batch, spacing and topology
   (``nnunet_driver.py add-config``: configuration ``3d_vs``) for ``--same-iterations``; skipped when
   both default plans already share patch and batch (then ``nn_train`` is that comparison).
5. ``vs_predict_tta``, ``nn_predict_tta``, ``dice_tta``, then the same without TTA: the trained
   default models segment the large volume (both with tile step 0.5 where ours has
   ``--step-size``), wall time of the process and Dice against the volume's label.

Every step runs under its own time limit (``STEP_LIMITS``, ``--step-limit NAME=S``) and within the
overall ``--budget-s``: a step that would not fit is skipped, one that overruns is killed with its
process tree (``--smoke`` multiplies the limits by four: a shared CPU is slow). ``--steps`` reruns a
subset on an existing ``--work`` folder (steps left out count as done). ``<out>/<date>-<card>-gpu.json``
and ``.md`` are rewritten after every step, so a run killed from outside keeps what was measured.
The table gives ours / nnU-Net ratios and the issue's goals PASS/MISS (``gpu_report.py``). Each framework keeps its own defaults unless told otherwise:
nnU-Net compiles its network on CUDA and uses min(12, CPUs) augmentation workers; ours uses
``--compile auto`` and its automatic worker count (``--ours-compile``, ``--nnunet-compile``,
``--workers`` override). Logs of every step: ``<work>/logs/``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules; benchmarks/ is not a package
from bench_common import HERE, BenchmarkContext, nnunet_command, ours_command, read_json, run_measured  # noqa: E402
from bench_plan import nnunet_plan_command, ours_plan_command, plans_summary  # noqa: E402
from bench_training import iteration_stats  # noqa: E402
from gpu_report import build_table, check_goals, render_markdown  # noqa: E402

from vessel_seg.atomic import write_text_atomic  # noqa: E402
from vessel_seg.cli import run_cli  # noqa: E402
from vessel_seg.errors import VesselSegError  # noqa: E402
from vessel_seg.model_folder import DEFAULT_TRAINER  # noqa: E402

DEFAULT_OURS_PLANS = "vs_plans"  # the GPU preset
NN_PLANS = "nnUNetPlans"
SAME_CONFIGURATION = "3d_vs"
NN_PREDICT_PROCESSES = 3  # nnUNetv2_predict's -npp / -nps defaults
STEP_LIMITS = {"data": 120, "big": 90, "vs_plan": 90, "nn_plan": 150, "vs_train": 180, "nn_train": 210,
               "nn_add_same": 120, "nn_train_same": 150, "vs_predict_tta": 120, "nn_predict_tta": 240, "dice_tta": 60,
               "vs_predict_notta": 90, "nn_predict_notta": 150, "dice_notta": 60}
FULL = {"cases": 12, "size": 96, "iterations": 150, "epochs": 3, "val_iterations": 10, "same_iterations": 60,
        "warmup": 10, "big_shape": [600, 512, 512], "budget_s": 440.0, "ours_plans": DEFAULT_OURS_PLANS}
SMOKE = {"cases": 5, "size": 32, "iterations": 4, "epochs": 2, "val_iterations": 1, "same_iterations": 3,
         "warmup": 1, "big_shape": [16, 28, 28], "budget_s": 1800.0, "ours_plans": "cpu"}
SMOKE_LIMIT_SCALE = 4.0  # a shared 2-core CPU is slow: smoke steps get four times the GPU limits
RESERVE_S = 3.0  # kept back from the budget for the last report
ENV_PROBE = r"""
import json, os, platform
out = {"python": platform.python_version(), "cpus": os.cpu_count()}
import torch
out.update(torch=torch.__version__, cuda_available=torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    out.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
               cudnn=torch.backends.cudnn.version())
import vessel_seg
from vessel_seg.cli import predict, train
out["vessel_seg_file"] = vessel_seg.__file__
def options(parser):
    return {s: {"choices": list(a.choices) if a.choices else None, "nargs": a.nargs}
            for a in parser._actions for s in a.option_strings}
out["vs_train_options"], out["vs_predict_options"] = options(train.build_parser()), options(predict.build_parser())
print("GPU_COMPARE_ENV " + json.dumps(out))
"""
NN_PROBE = r"""
import json, importlib.metadata as m
import nnunetv2
out = {}
for p in ("nnunetv2", "torch", "numpy", "blosc2", "batchgeneratorsv2", "dynamic_network_architectures", "acvl_utils"):
    try:
        out[p] = m.version(p)
    except m.PackageNotFoundError:
        pass
try:
    import distutils.file_util
    out["distutils"] = True
except ImportError:
    out["distutils"] = False
print("GPU_COMPARE_NN " + json.dumps(out))
"""
DISTUTILS_SHIM = '''"""Stand-in for distutils.file_util (gone in Python 3.12): the one function nnU-Net's preprocessing uses."""
import os
import shutil


def copy_file(src, dst, preserve_mode=1, preserve_times=1, update=0, link=None, verbose=1, dry_run=0):
    if os.path.isdir(dst):
        dst = os.path.join(dst, os.path.basename(src))
    if update and os.path.exists(dst) and os.path.getmtime(dst) >= os.path.getmtime(src):
        return dst, 0
    shutil.copy2(src, dst)
    return dst, 1
'''


class GpuSampler:
    """Memory in use on the GPU(s) in MiB, sampled by ``nvidia-smi`` every 100 ms while a step runs."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> GpuSampler:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "wb") as handle:  # the child keeps its own copy of the descriptor
                self.process = subprocess.Popen(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "100"],
                    stdout=handle, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def peak_mib(self) -> float | None:
        if not self.enabled or not self.path.is_file():
            return None
        values = [float(v) for v in re.findall(r"^\s*(\d+(?:\.\d+)?)\s*$", self.path.read_text(errors="replace"), re.M)]
        return max(values) if values else None


class GpuRun:
    """Settings, budget clock, the state that the report renders, and the step runner."""

    def __init__(self, args: argparse.Namespace, settings: dict):
        self.args, self.settings = args, settings
        self.work = args.work.resolve()
        self.started = time.perf_counter()
        scale = SMOKE_LIMIT_SCALE if args.smoke else 1.0
        self.limits = {**{k: v * scale for k, v in STEP_LIMITS.items()}, **parse_limits(args.step_limit)}
        self.selected = set(args.steps.split(",")) if args.steps else set(STEP_LIMITS)
        self.min_start_s = 2.0 if args.smoke else 10.0
        self.ctx = BenchmarkContext(work=self.work, dataset_id=args.dataset_id, num_processes=settings["preprocess_workers"],
                                    ours_command=ours_command(), nnunet_command=None)
        self.ours_env = self.ctx.ours_env()
        self.nn_pythonpath: list[str] = []
        self.ours_train_flags: list[str] = []
        self.ours_predict_flags: list[str] = []
        self.state: dict = {"date": datetime.date.today().isoformat(), "card": "unknown", "settings": settings,
                            "env": {}, "nnunet_env": None, "plans": {}, "steps": {}, "big_dice": {}, "notes": []}

    @property
    def nnunet(self) -> bool:
        return self.ctx.nnunet_command is not None

    def remaining(self) -> float:
        return self.settings["budget_s"] - (time.perf_counter() - self.started)

    def ok(self, name: str) -> bool:
        return self.state["steps"].get(name, {}).get("rc") == 0

    def nn_env(self, training: bool = False) -> dict[str, str]:
        """nnU-Net's data roots, augmentation workers, the distutils shim if needed, and ``nnUNet_compile`` when set."""
        env = {**self.ctx.nnunet_env(), "nnUNet_n_proc_DA": str(self.settings["nnunet_da_workers"])}
        if self.nn_pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([*self.nn_pythonpath, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if training and self.args.nnunet_compile:
            env["nnUNet_compile"] = "true" if self.args.nnunet_compile == "on" else "false"
        return env

    def skip(self, name: str, framework: str, reason: str) -> None:
        print(f"[{name}] skipped: {reason}", flush=True)
        self.state["steps"][name] = {"framework": framework, "skipped": reason}
        self.save()

    def run(self, name: str, framework: str, command: list[str], env: dict[str, str],
            requires: tuple[str, ...] = (), clean: tuple[Path, ...] = ()) -> dict | None:
        """Run one step under its limit (or skip it: not selected, a required step failed, no budget left).

        ``requires`` names earlier steps that must have succeeded (those left out by ``--steps`` are
        assumed done, for reruns on an existing work folder); ``clean`` lists folders and files to
        remove just before the step starts (its outputs from an earlier run).
        """
        if name not in self.selected:
            return None
        missing = [r for r in requires if r in self.selected and not self.ok(r)]
        if missing:
            self.skip(name, framework, f"needs {', '.join(missing)}")
            return None
        limit = min(self.limits[name], self.remaining() - RESERVE_S)
        if limit < self.min_start_s:
            self.skip(name, framework, f"budget: {max(0.0, self.remaining()):.0f} s left")
            return None
        for path in clean:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        log = self.work / "logs" / f"{name}.log"
        print(f"[{name}] (limit {limit:.0f} s) {' '.join(command)}", flush=True)
        with GpuSampler(self.work / "logs" / f"{name}.gpumem", self.args.device.startswith("cuda")) as sampler:
            stats = run_measured(command, env, log, timeout_s=limit)
        record = {"framework": framework, "rc": int(stats["returncode"]), "wall_s": round(stats["wall_s"], 2),
                  "cpu_s": round(stats["cpu_s"], 1), "peak_rss_mb": round(stats["peak_rss_mb"]),
                  "max_processes": stats["max_processes"], "timed_out": bool(stats["timed_out"]),
                  "limit_s": round(limit, 1), "gpu_smi_peak_mib": sampler.peak_mib(), "log": str(log), "metrics": {}}
        if record["rc"] != 0:
            record["error_tail"] = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        self.state["steps"][name] = record
        status = "TIMED OUT" if record["timed_out"] else f"rc {record['rc']}"
        print(f"    {status}, {record['wall_s']:.1f} s wall, peak RSS {record['peak_rss_mb']} MiB, "
              f"GPU {record['gpu_smi_peak_mib'] or '-'} MiB", flush=True)
        self.save()
        return record

    def timings(self, name: str) -> Path:
        return self.work / "timings" / f"{name}.json"

    def output_stem(self) -> Path:
        return self.args.out / f"{self.state['date']}-{self.state['card']}-gpu"

    def save(self) -> None:
        """Recompute table and goals and rewrite the JSON and Markdown reports."""
        self.state["total_wall_s"] = round(time.perf_counter() - self.started, 1)
        self.state["table"] = build_table(self.state)
        self.state["goals"] = check_goals(self.state)
        stem = self.output_stem()
        stem.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(stem.with_suffix(".json"), json.dumps(self.state, indent=2, default=str) + "\n")
        write_text_atomic(stem.with_suffix(".md"), render_markdown(self.state))


def parse_limits(items: list[str] | None) -> dict[str, float]:
    """``["vs_train=200", ...]`` -> ``{"vs_train": 200.0}``; unknown step names are a user error."""
    limits = {}
    for item in items or []:
        name, _, value = item.partition("=")
        if name not in STEP_LIMITS or not value:
            raise VesselSegError(f"--step-limit {item!r}: use NAME=SECONDS with NAME one of {', '.join(STEP_LIMITS)}")
        limits[name] = float(value)
    return limits


def _probe(command: list[str], env: dict[str, str], marker: str, timeout: float = 180) -> tuple[dict | None, str]:
    """Run a probe script; its JSON line after ``marker``, or ``None`` and the last error line."""
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    for line in done.stdout.splitlines():
        if line.startswith(marker + " "):
            return json.loads(line[len(marker) + 1:]), ""
    return None, (done.stderr.strip().splitlines() or ["no output"])[-1]


def probe_ours(run: GpuRun) -> None:
    """Versions, the GPU, and which of vs_train's / vs_predict's flags exist (they are being added)."""
    env, error = _probe([sys.executable, "-c", ENV_PROBE], run.ours_env, "GPU_COMPARE_ENV")
    if env is None:
        raise VesselSegError(f"cannot import torch and vessel_seg with {sys.executable}: {error}")
    run.state["env"] = env
    if run.args.device.startswith("cuda") and not env.get("cuda_available"):
        raise VesselSegError("--device cuda: torch sees no GPU here; use --device cpu (with --smoke for a quick run)")
    card = re.sub(r"[^a-z0-9]+", "-", str(env.get("gpu", "")).lower()).strip("-") if run.args.device != "cpu" else "cpu"
    run.state["card"] = (card or "cuda") + ("-smoke" if run.args.smoke else "")
    run.ours_train_flags, run.ours_predict_flags, notes = ours_flags(run.args, env)
    run.state["flags"] = {"vs_train": run.ours_train_flags, "vs_predict": run.ours_predict_flags}
    s = run.settings
    notes.append(f"ours: plans {s['ours_plans']}, extra vs_train arguments {run.ours_train_flags or 'none'} (worker count "
                 f"and compilation otherwise vs_train's own choice), vs_predict {run.ours_predict_flags or 'none'}; nnU-Net: "
                 f"{s['nnunet_da_workers']} augmentation workers, nnUNet_compile "
                 f"{s['nnunet_compile'] or 'unset (nnU-Net compiles on CUDA)'}, tile step 0.5, {NN_PREDICT_PROCESSES} "
                 f"preprocessing/export processes; both planners -np {s['preprocess_workers']}")
    run.state["notes"] += notes


def ours_flags(args: argparse.Namespace, env: dict) -> tuple[list[str], list[str], list[str]]:
    """Extra vs_train / vs_predict arguments for the chosen options, tolerating flags that do not exist yet."""
    train_opts, predict_opts = env.get("vs_train_options", {}), env.get("vs_predict_options", {})
    train, predict, notes = [], [], []
    if args.ours_compile:
        compile_opt = train_opts.get("--compile")
        if compile_opt is None:
            notes.append("vs_train has no --compile: --ours-compile ignored")
        elif compile_opt["choices"]:
            train += ["--compile", args.ours_compile]
        elif args.ours_compile == "on":
            train.append("--compile")
    if args.workers is not None:
        if "--num-workers" in train_opts:
            train += ["--num-workers", str(args.workers)]
        else:
            notes.append("vs_train has no --num-workers: ours used its default worker count")
    if "--step-size" in predict_opts:
        predict += ["--step-size", str(args.step_size)]
    else:
        notes.append("vs_predict has no --step-size: ours predicted with its default tile step")
    return train, predict, notes


def probe_nnunet(run: GpuRun) -> None:
    """nnU-Net's interpreter and versions; writes a distutils stand-in where Python 3.12 lacks distutils."""
    if run.args.skip_nnunet:
        run.state["notes"].append("nnU-Net side skipped (--skip-nnunet)")
        return
    python = run.args.nnunet_python or sys.executable
    info, error = _probe([python, "-c", NN_PROBE], dict(os.environ), "GPU_COMPARE_NN")
    if info is None:
        run.state["notes"].append(f"nnU-Net side skipped: {python} cannot import nnunetv2 ({error})")
        return
    if not info.pop("distutils"):
        shim = run.work / "shim"
        (shim / "distutils").mkdir(parents=True, exist_ok=True)
        (shim / "distutils" / "__init__.py").write_text("")
        (shim / "distutils" / "file_util.py").write_text(DISTUTILS_SHIM)
        run.nn_pythonpath = [str(shim)]
        run.state["notes"].append("nnU-Net's interpreter has no distutils: a copy_file stand-in was put on its path")
    run.state["nnunet_env"] = info
    run.ctx.nnunet_python, run.ctx.nnunet_command = nnunet_command(python)


def data_steps(run: GpuRun) -> None:
    """Training set for both frameworks, then the large volume."""
    a, script = run.args, str(HERE / "gpu_data.py")
    common = ["--work", str(run.work), "--spacing", *map(str, run.settings["spacing"]), "--seed", str(a.seed)]
    run.run("data", "setup", [sys.executable, script, "dataset", *common, "-d", str(a.dataset_id),
                              "--cases", str(run.settings["cases"]), "--size", str(run.settings["size"])], run.ours_env)
    run.run("big", "setup", [sys.executable, script, "big", *common, "--shape", *map(str, run.settings["big_shape"]),
                             "--tile", str(run.settings["size"])], run.ours_env)


def plan_steps(run: GpuRun) -> None:
    """Both default plans from scratch; records the 3d_fullres plans and whether their patch and batch agree."""
    dataset = run.ctx.dataset
    plans_name = run.settings["ours_plans"]
    extra = ["-c", "3d_fullres"] + ([] if plans_name == DEFAULT_OURS_PLANS else ["-pl", plans_name])
    run.run("vs_plan", "vessel_seg", ours_plan_command(run.ctx, extra), run.ours_env, requires=("data",),
            clean=(run.work / "vs_preprocessed" / dataset,))
    if run.nnunet:
        run.run("nn_plan", "nnunet", nnunet_plan_command(run.ctx, ["3d_fullres"], []), run.nn_env(), requires=("data",),
                clean=(run.work / "nnUNet_preprocessed" / dataset,))
    ours = plans_summary(run.work / "vs_preprocessed" / dataset / f"{plans_name}.json").get("3d_fullres")
    theirs = plans_summary(run.work / "nnUNet_preprocessed" / dataset / f"{NN_PLANS}.json").get("3d_fullres")
    run.state["plans"] = {k: v for k, v in (("vessel_seg", ours), ("nnunet", theirs)) if v}
    run.state["same_is_default"] = bool(ours and theirs and list(ours["patch_size"]) == list(theirs["patch_size"])
                                        and ours["batch_size"] == theirs["batch_size"])
    run.save()


def _last_pseudo_dice(fold_dir: Path) -> dict[str, object]:
    """Pseudo Dice of every epoch from our ``training_log.jsonl`` and the last one."""
    path = fold_dir / "training_log.jsonl"
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    if not records:
        return {}
    return {"pseudo_dice": records[-1]["pseudo_dice"], "pseudo_dice_per_epoch": [r["pseudo_dice"] for r in records],
            "epoch_seconds": [round(r["epoch_seconds"], 2) for r in records]}


def _cuda_metrics(timings: dict) -> dict:
    return {k: v for k, v in timings.items() if k.startswith("cuda_peak")}


def train_ours(run: GpuRun) -> None:
    """Our default 3d_fullres plan, fold 0, ``epochs x iterations`` from scratch through ``vs_driver.py``."""
    s, dataset = run.settings, run.ctx.dataset
    model = run.work / "vs_results" / dataset / f"{DEFAULT_TRAINER}__{s['ours_plans']}__3d_fullres"
    timings = run.timings("vs_train")
    command = [sys.executable, str(HERE / "vs_driver.py"), "--timings", str(timings), "train", str(run.args.dataset_id),
               "3d_fullres", "0", "-pl", s["ours_plans"], "--epochs", str(s["epochs"]),
               "--iterations-per-epoch", str(s["iterations_per_epoch"]), "--val-iterations", str(s["val_iterations"]),
               "--device", run.args.device, "--checkpoint-every", str(s["epochs"]), "--no-final-validation",
               "--no-validation-probabilities", *run.ours_train_flags]
    record = run.run("vs_train", "vessel_seg", command, run.ours_env, requires=("vs_plan",), clean=(model, timings))
    if record is not None:
        t = read_json(timings)
        record["metrics"] = {**iteration_stats(t, s["warmup"]), **_cuda_metrics(t), **_last_pseudo_dice(model / "fold_0")}
        run.save()


def train_nnunet(run: GpuRun, name: str, configuration: str, epochs: int, iterations: int, val_iterations: int,
                 requires: tuple[str, ...]) -> None:
    """``nnUNetTrainer`` on ``configuration``, fold 0, from scratch through ``nnunet_driver.py train``."""
    model = run.work / "nnUNet_results" / run.ctx.dataset / f"nnUNetTrainer__{NN_PLANS}__{configuration}"
    timings = run.timings(name)
    command = [run.ctx.nnunet_python, str(HERE / "nnunet_driver.py"), "train", "-d", str(run.args.dataset_id),
               "-c", configuration, "--epochs", str(epochs), "--iterations", str(iterations),
               "--val-iterations", str(val_iterations), "--timings", str(timings), "--device", run.args.device]
    record = run.run(name, "nnunet", command, run.nn_env(training=True), requires=requires, clean=(model, timings))
    if record is not None:
        t = read_json(timings)
        dice = t.get("pseudo_dice") or []
        record["metrics"] = {**iteration_stats(t, run.settings["warmup"]), **_cuda_metrics(t),
                             **({"pseudo_dice": round(dice[-1], 4), "pseudo_dice_per_epoch": dice} if dice else {})}
        run.save()


def train_same(run: GpuRun) -> None:
    """nnU-Net at our default plan's patch, batch, spacing and topology (``add-config``), unless the plans agree."""
    if run.state.get("same_is_default"):
        run.state["notes"].append("both default 3d_fullres plans have the same patch and batch: nn_train is the "
                                  "same-settings comparison (nn_add_same and nn_train_same not run)")
        return
    ours_plans = run.work / "vs_preprocessed" / run.ctx.dataset / f"{run.settings['ours_plans']}.json"
    command = [run.ctx.nnunet_python, str(HERE / "nnunet_driver.py"), "add-config", "-d", str(run.args.dataset_id),
               "--ours-plans", str(ours_plans), "--name", SAME_CONFIGURATION, "-np", str(run.settings["preprocess_workers"])]
    run.run("nn_add_same", "nnunet", command, run.nn_env(), requires=("vs_plan", "nn_plan"))
    same = plans_summary(run.work / "nnUNet_preprocessed" / run.ctx.dataset / f"{NN_PLANS}.json").get(SAME_CONFIGURATION)
    if same:
        run.state["plans"]["nnunet_same (3d_vs)"] = same
    iterations = run.settings["same_iterations"]
    train_nnunet(run, "nn_train_same", SAME_CONFIGURATION, 1, iterations, 1, ("nn_add_same",))


def _predict_metrics(timings: Path) -> dict:
    t = read_json(timings)
    return {**({"predict_s": round(t["predict_s"], 2)} if "predict_s" in t else {}), **_cuda_metrics(t)}


def predict_steps(run: GpuRun, variant: str) -> None:
    """Both default models segment the large volume (``tta`` or ``notta``), then Dice against its label."""
    flags = ["--disable-tta"] if variant == "notta" else []
    images, predictions = run.work / "big" / "images", run.work / "predictions"
    outputs = {"vs": predictions / f"vs_{variant}", "nn": predictions / f"nn_{variant}"}
    timings = run.timings(f"vs_predict_{variant}")
    command = [sys.executable, str(HERE / "vs_driver.py"), "--timings", str(timings), "predict", "-i", str(images),
               "-o", str(outputs["vs"]), "-d", str(run.args.dataset_id), "-c", "3d_fullres", "-pl", run.settings["ours_plans"],
               "-f", "0", "--device", run.args.device, *run.ours_predict_flags, *flags]
    record = run.run(f"vs_predict_{variant}", "vessel_seg", command, run.ours_env, requires=("vs_train", "big"),
                     clean=(outputs["vs"], timings))
    if record is not None:
        record["metrics"] = _predict_metrics(timings)
    if run.nnunet:
        timings = run.timings(f"nn_predict_{variant}")
        command = [run.ctx.nnunet_python, str(HERE / "nnunet_driver.py"), "predict", "-d", str(run.args.dataset_id),
                   "-c", "3d_fullres", "-i", str(images), "-o", str(outputs["nn"]), "-np", str(NN_PREDICT_PROCESSES),
                   "--timings", str(timings), "--device", run.args.device, *flags]
        record = run.run(f"nn_predict_{variant}", "nnunet", command, run.nn_env(), requires=("nn_train", "big"),
                         clean=(outputs["nn"], timings))
        if record is not None:
            record["metrics"] = _predict_metrics(timings)
    done = [f"{k}_{variant}={v / 'big.nii.gz'}" for k, v in outputs.items() if (v / "big.nii.gz").is_file()]
    if done:
        scores = run.work / "big_dice.json"
        command = [sys.executable, str(HERE / "gpu_data.py"), "dice", "--label", str(run.work / "big" / "labels" / "big.nii.gz"),
                   "--json", str(scores), *done]
        run.run(f"dice_{variant}", "setup", command, run.ours_env, requires=("big",))
        run.state["big_dice"] = read_json(scores)
    run.save()


def resolve_settings(args: argparse.Namespace) -> dict:
    """Sizes from ``--smoke`` or the full defaults, overridden by explicit arguments; validated."""
    base = SMOKE if args.smoke else FULL
    s = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in base.items()}
    if s["iterations"] % s["epochs"] or s["iterations"] <= s["warmup"] or s["same_iterations"] <= s["warmup"]:
        raise VesselSegError("--iterations must be a multiple of --epochs, and it and --same-iterations more than --warmup")
    if s["cases"] < 5 or s["size"] < 16 or min(s["big_shape"]) < 16 or s["budget_s"] <= 0:
        raise VesselSegError("use at least 5 cases (nnU-Net's 5-fold split), --size and --big-shape of 16 or more, "
                             "and a positive --budget-s")
    cpus = os.cpu_count() or 1
    s.update(iterations_per_epoch=s["iterations"] // s["epochs"], spacing=list(args.spacing), seed=args.seed,
             device=args.device, smoke=args.smoke, workers=args.workers, ours_compile=args.ours_compile,
             nnunet_compile=args.nnunet_compile, step_size=args.step_size,
             preprocess_workers=args.preprocess_workers or cpus,
             nnunet_da_workers=args.workers if args.workers is not None else min(12, cpus))
    return s


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="GPU side-by-side of vessel_seg and nnU-Net v2: training s/it, data "
                                     "wait, peak GPU memory, pseudo Dice, large-volume prediction with/without TTA.")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for a CPU check (5 cases of 32^3, 4 iterations, "
                        "a 16x28x28 'large' volume, our cpu plans)")
    parser.add_argument("--budget-s", type=float, help="overall time budget of the steps (default 440; smoke 1800)")
    parser.add_argument("--step-limit", action="append", metavar="NAME=S", help="time limit of one step (repeatable)")
    parser.add_argument("--steps", help=f"comma-separated subset of {','.join(STEP_LIMITS)} (default all)")
    parser.add_argument("--cases", type=int, help="synthetic training cases (default 12)")
    parser.add_argument("--size", type=int, help="edge of the cubic training volumes (default 96)")
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.5, 0.5), help="voxel size z y x in mm")
    parser.add_argument("--big-shape", type=int, nargs=3, help="large volume z y x (default 600 512 512)")
    parser.add_argument("--iterations", type=int, help="training iterations per framework (default 150)")
    parser.add_argument("--epochs", type=int, help="epochs the iterations are split into (default 3)")
    parser.add_argument("--val-iterations", type=int, help="validation batches per epoch, both (default 10)")
    parser.add_argument("--same-iterations", type=int, help="iterations of nnU-Net at our patch/batch (default 60)")
    parser.add_argument("--warmup", type=int, help="iterations left out of the medians (default 10)")
    parser.add_argument("--ours-plans", help="our plans: vs_plans (default, the GPU preset) or cpu (default with --smoke)")
    parser.add_argument("--workers", type=int, help="augmentation workers for both (default: each framework's own)")
    parser.add_argument("--preprocess-workers", type=int, help="-np of both planners (default: all CPUs)")
    parser.add_argument("--ours-compile", choices=("auto", "on", "off"), help="vs_train --compile (default: its own)")
    parser.add_argument("--nnunet-compile", choices=("on", "off"), help="nnUNet_compile (default: nnU-Net's, on for CUDA)")
    parser.add_argument("--step-size", type=float, default=0.5, help="our tile step where vs_predict has --step-size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset-id", type=int, default=501)
    parser.add_argument("--nnunet-python", help="interpreter with nnunetv2 (default: this one)")
    parser.add_argument("--skip-nnunet", action="store_true", help="our side only")
    here = Path(__file__).resolve().parent
    parser.add_argument("--work", type=Path, default=here / "work" / "gpu", help="scratch folder (default benchmarks/work/gpu)")
    parser.add_argument("--out", type=Path, default=here / "results", help="results folder (default benchmarks/results)")
    return parser


def _command(args: argparse.Namespace) -> int:
    if args.steps and set(args.steps.split(",")) - set(STEP_LIMITS):
        raise VesselSegError(f"--steps {args.steps!r}: use names from {','.join(STEP_LIMITS)}")
    run = GpuRun(args, resolve_settings(args))
    run.work.mkdir(parents=True, exist_ok=True)
    probe_ours(run)
    probe_nnunet(run)
    print(f"gpu_compare: {run.state['card']}, budget {run.settings['budget_s']:.0f} s, "
          f"report {run.output_stem()}.md", flush=True)
    run.save()
    data_steps(run)
    plan_steps(run)
    train_ours(run)
    if run.nnunet:
        train_nnunet(run, "nn_train", "3d_fullres", run.settings["epochs"], run.settings["iterations_per_epoch"],
                     run.settings["val_iterations"], ("nn_plan",))
        train_same(run)
    predict_steps(run, "tta")
    predict_steps(run, "notta")
    run.save()
    print("\n" + render_markdown(run.state), flush=True)
    print(f"wrote {run.output_stem()}.json and .md", flush=True)
    failed = [n for n, s in run.state["steps"].items() if not s.get("skipped") and s.get("rc") != 0]
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
