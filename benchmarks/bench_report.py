"""Summary, ours / nnU-Net ratios, target checks and the JSON + Markdown report of the comparison."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from bench_common import BenchmarkReport, Measurement

from vessel_seg.atomic import write_text_atomic

# (ours, nnU-Net) measurement names whose ratios are reported.
RATIO_PAIRS = (("ours_cpu", "nnunet"), ("ours_gpu", "nnunet"), ("ours_cpu_verify", "nnunet_verify"),
               ("ours_train_same", "nnunet_train_same"), ("ours_train_default", "nnunet_train_default"),
               ("ours_infer_tta", "nnunet_infer_tta"), ("ours_infer_notta", "nnunet_infer_notta"))
RATIO_FIELDS = ("wall_s", "cpu_s", "peak_rss_mb", "peak_pss_mb")
# Metrics left out of the ratios: counts, and secondary variants of a reported quantity.
NO_RATIO = ("iterations_timed", "num_cases", "s_per_it_mean", "data_wait_mean_s", "train_total_s", "wall_s_per_case")
# (what, pair, quantity, comparison, limit): the targets for the ratio ours / nnU-Net.
TARGETS = (
    ("plan+preprocess wall time", "ours_cpu/nnunet", "wall_s", "<=", 0.5),
    ("plan+preprocess peak RSS", "ours_cpu/nnunet", "peak_rss_mb", "<=", 1.0),
    ("training s/iteration, same patch/batch/width", "ours_train_same/nnunet_train_same", "s_per_it", "<=", 1.0),
    ("training peak RSS, same patch/batch/width", "ours_train_same/nnunet_train_same", "peak_rss_mb", "<=", 1.0),
    ("inference s/case with TTA", "ours_infer_tta/nnunet_infer_tta", "s_per_case", "<=", 0.5),
    ("Dice with TTA (equal or better)", "ours_infer_tta/nnunet_infer_tta", "dice", ">=", 1.0),
    ("inference peak RSS with TTA", "ours_infer_tta/nnunet_infer_tta", "peak_rss_mb", "<=", 1.0),
    ("inference peak RSS without TTA", "ours_infer_notta/nnunet_infer_notta", "peak_rss_mb", "<=", 1.0),
)


def summarise(measurements: list[Measurement]) -> dict[str, dict[str, float]]:
    """Per measurement name, over successful repeats: median wall and CPU seconds and metrics, largest peaks."""
    by_name: dict[str, list[Measurement]] = {}
    for m in measurements:
        if m.returncode == 0:
            by_name.setdefault(m.name, []).append(m)
    summary = {}
    for name, ms in by_name.items():
        row = {"runs": len(ms), "wall_s": round(statistics.median(m.wall_s for m in ms), 3),
               "cpu_s": round(statistics.median(m.cpu_s for m in ms), 3),
               "peak_rss_mb": max(m.peak_rss_mb for m in ms), "peak_pss_mb": max(m.peak_pss_mb for m in ms)}
        for key in sorted({k for m in ms for k in m.metrics}):
            values = [m.metrics[key] for m in ms if key in m.metrics]
            row[key] = round(statistics.median(values), 4)
        summary[name] = row
    return summary


def compute_ratios(summary: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """``ours / nnU-Net`` for each pair in :data:`RATIO_PAIRS` that both ran (below 1: ours is cheaper).

    Covers :data:`RATIO_FIELDS` and every metric both runs have (for Dice and clDice above 1 means
    ours scores higher).
    """
    ratios = {}
    for ours, theirs in RATIO_PAIRS:
        if ours in summary and theirs in summary:
            keys = [k for k in summary[theirs] if k in summary[ours] and k != "runs" and k not in NO_RATIO]
            ratios[f"{ours}/{theirs}"] = {k: round(summary[ours][k] / summary[theirs][k], 3)
                                          for k in keys if summary[theirs][k] > 0}
    return ratios


def check_targets(ratios: dict[str, dict[str, float]]) -> list[dict[str, object]]:
    """One row per :data:`TARGETS` entry: the ratio and ``PASS``, ``MISS`` or ``n/a`` (not measured)."""
    rows = []
    for what, pair, quantity, comparison, limit in TARGETS:
        value = ratios.get(pair, {}).get(quantity)
        if value is None:
            status = "n/a"
        else:
            status = "PASS" if (value <= limit if comparison == "<=" else value >= limit) else "MISS"
        rows.append({"target": what, "pair": pair, "quantity": quantity, "ratio": value,
                     "limit": f"{comparison} {limit}", "status": status})
    return rows


def _fmt(value: object, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else ("" if value is None else str(value))


def _plan_table(ms: list[Measurement]) -> list[str]:
    lines = ["## Plan and preprocess", "",
             "| run | # | wall s | CPU s | peak RSS MiB (tree sum) | peak PSS MiB | processes | load before | output MiB | configurations |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in ms:
        rc = "" if m.returncode == 0 else f" (FAILED rc {m.returncode})"
        lines.append(f"| {m.name}{rc} | {m.repeat} | {m.wall_s:.1f} | {m.cpu_s:.1f} | {m.peak_rss_mb:.0f} | "
                     f"{m.peak_pss_mb:.0f} | {m.max_processes} | {m.load_before:.1f} | {m.output_mb:.1f} | {', '.join(m.configurations)} |")
    return lines


def _training_table(ms: list[Measurement]) -> list[str]:
    lines = ["## Training", "", "Seconds per iteration: median over the iterations after warm-up (batch wait + step); "
             "data wait: median seconds per iteration spent waiting for the batch.", "",
             "| run | patch | batch | features | s/it (median) | s/it (mean) | data wait s/it | iterations timed | "
             "peak RSS MiB | peak PSS MiB | wall s | load before |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in ms:
        rc = "" if m.returncode == 0 else f" (FAILED rc {m.returncode})"
        plan = next(iter(m.plans.values()), {})
        x = m.metrics
        lines.append(f"| {m.name}{rc} | {plan.get('patch_size', '')} | {plan.get('batch_size', '')} | "
                     f"{plan.get('features', '')} | {_fmt(x.get('s_per_it'))} | {_fmt(x.get('s_per_it_mean'))} | "
                     f"{_fmt(x.get('data_wait_s_per_it'), 3)} | {_fmt(x.get('iterations_timed'))} | {m.peak_rss_mb:.0f} | "
                     f"{m.peak_pss_mb:.0f} | {m.wall_s:.1f} | {m.load_before:.1f} |")
    return lines


def _inference_table(ms: list[Measurement]) -> list[str]:
    lines = ["## Inference", "", "Seconds per case: model set-up plus prediction inside the process, divided by the "
             "number of cases (start-up excluded; wall s/case includes it). Dice and clDice: vessel_seg's evaluator, "
             "mean over test cases.", "",
             "| run | cases | s/case | wall s/case | peak RSS MiB | peak PSS MiB | Dice | clDice | load before |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in ms:
        rc = "" if m.returncode == 0 else f" (FAILED rc {m.returncode})"
        x = m.metrics
        lines.append(f"| {m.name}{rc} | {_fmt(x.get('num_cases'))} | {_fmt(x.get('s_per_case'))} | "
                     f"{_fmt(x.get('wall_s_per_case'))} | {m.peak_rss_mb:.0f} | {m.peak_pss_mb:.0f} | "
                     f"{_fmt(x.get('dice'), 4)} | {_fmt(x.get('cldice'), 4)} | {m.load_before:.1f} |")
    return lines


def render_markdown(report: BenchmarkReport) -> str:
    mach, sett = report.machine, report.settings
    lines = [f"# vessel_seg vs nnU-Net v2 ({report.date}, {report.host})", "",
             f"Machine: {mach['cpu']}, {mach['cpus']} CPUs, {mach['memory_gib']} GiB; vessel_seg {mach['vessel_seg']}, "
             f"torch {mach['torch']}; nnU-Net env: {sett.get('nnunet_versions') or 'not run'}.",
             f"Data: {sett['cases']} synthetic cases of {sett['size']}^3 at {tuple(sett['spacing'])} mm (z, y, x), "
             f"{sett.get('test_cases', 0)} test cases, {sett['num_processes']} worker processes, seed {sett['seed']}; "
             f"sections {', '.join(sett.get('sections', ['plan']))}.", ""]
    for section, table in (("plan_and_preprocess", _plan_table), ("train", _training_table), ("infer", _inference_table)):
        ms = [m for m in report.measurements if m.section == section]
        if ms:
            lines += [*table(ms), ""]
    if report.ratios:
        lines += ["## Ratios ours / nnU-Net", "", "Median times and metrics, largest peaks; below 1 means ours is "
                  "cheaper (for Dice and clDice above 1 means ours scores higher).", "",
                  "| pair | quantity | ours | nnU-Net | ratio |", "|---|---|---|---|---|"]
        for pair, r in report.ratios.items():
            ours, theirs = pair.split("/")
            for key, value in r.items():
                lines.append(f"| {pair} | {key} | {_fmt(report.summary[ours][key], 3)} | "
                             f"{_fmt(report.summary[theirs][key], 3)} | {value:.2f} |")
        lines.append("")
    if report.targets:
        lines += ["## Targets", "", "| target | ratio | limit | status |", "|---|---|---|---|"]
        lines += [f"| {t['target']} | {_fmt(t['ratio'])} | {t['limit']} | {t['status']} |" for t in report.targets]
        lines.append("")
    plans = {(m.name, c): p for m in report.measurements if m.repeat == 1 and m.section == "plan_and_preprocess"
             for c, p in m.plans.items()}
    if plans:
        lines += ["## Plans", "", "| run | configuration | spacing mm | patch | batch | features |", "|---|---|---|---|---|---|"]
        for (name, config), p in plans.items():
            lines.append(f"| {name} | {config} | {p['spacing']} | {p['patch_size']} | {p['batch_size']} | {p['features']} |")
        lines.append("")
    lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines).rstrip() + "\n"


def write_report(report: BenchmarkReport, out_dir: Path) -> tuple[Path, Path]:
    """Write ``<date>-<host>.json`` and ``.md`` into ``out_dir`` and return both paths."""
    stem = out_dir / f"{report.date}-{report.host}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    write_text_atomic(json_path, json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    write_text_atomic(md_path, render_markdown(report))
    return json_path, md_path
