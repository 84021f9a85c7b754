"""Table, goals and Markdown of ``gpu_compare.py`` (reads only its state dictionary, so a partial run renders too).

The state holds ``steps`` (one record per step: ``rc``, ``wall_s``, ``timed_out``, ``limit_s``,
``skipped``, ``gpu_smi_peak_mib``, ``metrics``), ``plans``, ``big_dice``, ``env`` and ``settings``.
A value that was not measured renders as ``-`` with the step's fate (skipped, failed, timed out).
"""

from __future__ import annotations

from collections.abc import Callable

NAMES = {"vessel_seg": "vessel_seg", "nnunet": "nnU-Net v2"}
TTA_LIMIT_S = 20.0  # the absolute goal for the large volume with TTA (ours, wall)


def _metric(state: dict, step: str, key: str):
    return state.get("steps", {}).get(step, {}).get("metrics", {}).get(key)


def _wall(state: dict, step: str):
    s = state.get("steps", {}).get(step, {})
    return s.get("wall_s") if s.get("rc") == 0 else None


def _big_dice(state: dict, step: str):
    """Dice of a prediction step's output (``vs_predict_tta`` -> ``big_dice["vs_tta"]``)."""
    framework, _, variant = step.split("_")
    return state.get("big_dice", {}).get(f"{framework}_{variant}", {}).get("dice")


def same_step(state: dict) -> str:
    """nnU-Net's run at our patch and batch: ``nn_train_same``, or ``nn_train`` when both plans agree."""
    return "nn_train" if state.get("same_is_default") else "nn_train_same"


def _fate(state: dict, step: str) -> str:
    s = state.get("steps", {}).get(step)
    if s is None:
        return "-"
    if s.get("skipped"):
        return "skipped"
    if s.get("timed_out"):
        return f">{s.get('limit_s', 0):.0f} (timeout)"
    return f"failed rc {s['rc']}" if s.get("rc") else "-"


def _rows(state: dict) -> list[tuple[str, str, str, Callable[[dict, str], object], int]]:
    """(metric, our step, nnU-Net step, getter, digits) for every row of the table."""
    n = state.get("settings", {}).get("iterations", "N")
    shape = "x".join(str(v) for v in reversed(state.get("settings", {}).get("big_shape", [])))  # x y z, as in the issue
    same = same_step(state)
    m = _metric
    rows = [
        ("plan+preprocess wall s", "vs_plan", "nn_plan", _wall, 1),
        ("train s/it, own default plans (median after warm-up)", "vs_train", "nn_train", lambda s, t: m(s, t, "s_per_it"), 4),
        ("train s/it, same patch and batch (ours' plan)", "vs_train", same, lambda s, t: m(s, t, "s_per_it"), 4),
        ("train s/it mean, own default plans", "vs_train", "nn_train", lambda s, t: m(s, t, "s_per_it_mean"), 4),
        ("data wait s/it (median), own default plans", "vs_train", "nn_train",
         lambda s, t: m(s, t, "data_wait_s_per_it"), 4),
        ("data wait s/it (median), same patch and batch", "vs_train", same, lambda s, t: m(s, t, "data_wait_s_per_it"), 4),
        ("train peak GPU GiB (torch max allocated)", "vs_train", "nn_train",
         lambda s, t: m(s, t, "cuda_peak_allocated_gib"), 3),
        ("train peak GPU MiB (nvidia-smi, whole GPU)", "vs_train", "nn_train",
         lambda s, t: s.get("steps", {}).get(t, {}).get("gpu_smi_peak_mib"), 0),
        (f"pseudo Dice after {n} its, own default plans", "vs_train", "nn_train", lambda s, t: m(s, t, "pseudo_dice"), 4),
        ("train process wall s (start-up, compile, its, validation)", "vs_train", "nn_train", _wall, 1),
    ]
    for variant, label in (("tta", "TTA"), ("notta", "no TTA")):
        rows += [
            (f"predict {shape} wall s, {label}", f"vs_predict_{variant}", f"nn_predict_{variant}", _wall, 1),
            (f"predict {shape} in-process s, {label}", f"vs_predict_{variant}", f"nn_predict_{variant}",
             lambda s, t: m(s, t, "predict_s"), 1),
            (f"predict peak GPU GiB (torch), {label}", f"vs_predict_{variant}", f"nn_predict_{variant}",
             lambda s, t: m(s, t, "cuda_peak_allocated_gib"), 3),
            (f"predict Dice vs label, {label}", f"vs_predict_{variant}", f"nn_predict_{variant}", _big_dice, 4),
        ]
    return rows


def build_table(state: dict) -> list[dict]:
    """One dictionary per row: metric, both values (``None`` if not measured), their text and the ratio ours/nnU-Net."""
    table = []
    for metric, ours_step, nn_step, get, digits in _rows(state):
        ours, theirs = get(state, ours_step), get(state, nn_step)
        ratio = round(ours / theirs, 3) if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) and theirs else None
        table.append({"metric": metric, "vessel_seg": ours, "nnunet": theirs, "ratio_ours_over_nnunet": ratio,
                      "vessel_seg_text": _text(state, ours_step, ours, digits),
                      "nnunet_text": _text(state, nn_step, theirs, digits)})
    return table


def _text(state: dict, step: str, value, digits: int) -> str:
    if value is None:
        return _fate(state, step)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _lower_bound(state: dict, step: str) -> float | None:
    """For a step killed at its time limit: the limit (its true time is longer)."""
    s = state.get("steps", {}).get(step, {})
    return s.get("limit_s") if s.get("timed_out") else None


def check_goals(state: dict) -> list[dict]:
    """The issue's four goals, each PASS, MISS or n/a (not measured), with the numbers behind it."""
    n = state.get("settings", {}).get("iterations", "N")
    same = same_step(state)
    s_ours, s_nn = _metric(state, "vs_train", "s_per_it"), _metric(state, same, "s_per_it")
    d_ours, d_nn = _metric(state, "vs_train", "pseudo_dice"), _metric(state, "nn_train", "pseudo_dice")
    t_ours, t_nn = _wall(state, "vs_predict_tta"), _wall(state, "nn_predict_tta")
    goals = []
    ratio = s_ours / s_nn if s_ours is not None and s_nn else None
    goals.append({"goal": "train s/it at the same patch and batch <= 1.0x nnU-Net", "value": ratio,
                  "status": _status(None if ratio is None else ratio <= 1.0)})
    ok = None if d_ours is None or d_nn is None else d_ours >= d_nn
    goals.append({"goal": f"pseudo Dice after {n} its >= nnU-Net's", "value": d_ours, "reference": d_nn,
                  "status": _status(ok)})
    goals.append({"goal": f"large volume with TTA < {TTA_LIMIT_S:.0f} s (ours, wall)", "value": t_ours,
                  "status": _status(None if t_ours is None else t_ours < TTA_LIMIT_S)})
    bound = _lower_bound(state, "nn_predict_tta")
    if t_ours is not None and t_nn:
        ratio, ok, note = t_ours / t_nn, t_ours / t_nn <= 0.5, ""
    elif t_ours is not None and bound and t_ours / bound <= 0.5:
        ratio, ok, note = t_ours / bound, True, f"nnU-Net timed out after {bound:.0f} s: ratio is an upper bound"
    else:
        ratio, ok, note = None, None, ""
    goals.append({"goal": "large volume with TTA <= 0.5x nnU-Net (wall)", "value": ratio, "status": _status(ok),
                  "note": note})
    return goals


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def _header(state: dict) -> list[str]:
    env, st = state.get("env", {}), state.get("settings", {})
    gpu = env.get("gpu") or "no GPU"
    return [f"# vessel_seg vs nnU-Net v2 on {gpu} ({state.get('date', '?')})", "",
            f"Device {st.get('device')}; torch {env.get('torch', '?')}, CUDA {env.get('cuda', '-')}, cuDNN "
            f"{env.get('cudnn', '-')}, Python {env.get('python', '?')}, {env.get('cpus', '?')} CPUs; nnU-Net env "
            f"{state.get('nnunet_env') or 'not run'}.",
            f"Data: {st.get('cases')} synthetic cases of {st.get('size')}^3 at {st.get('spacing')} mm (z, y, x); large "
            f"volume {st.get('big_shape')} (z, y, x) tiled from 4 held-out cases. Training {st.get('epochs')} x "
            f"{st.get('iterations_per_epoch')} iterations, {st.get('val_iterations')} validation batches per epoch, "
            f"medians after {st.get('warmup')} warm-up iterations; same-settings run {st.get('same_iterations')} "
            f"iterations. Total wall {_fmt(state.get('total_wall_s'), 1)} s of a {st.get('budget_s')} s budget.", ""]


def render_markdown(state: dict) -> str:
    """The whole report: header, table with ratios, goals, plans, steps and notes."""
    lines = _header(state)
    lines += ["| metric | vessel_seg | nnU-Net v2 | ours/nnU-Net |", "|---|---|---|---|"]
    for row in state.get("table") or build_table(state):
        lines.append(f"| {row['metric']} | {row['vessel_seg_text']} | {row['nnunet_text']} | "
                     f"{_fmt(row['ratio_ours_over_nnunet'])} |")
    lines += ["", "| goal | value | status |", "|---|---|---|"]
    for g in state.get("goals") or check_goals(state):
        extra = f" (nnU-Net {_fmt(g['reference'], 4)})" if g.get("reference") is not None else ""
        note = f"; {g['note']}" if g.get("note") else ""
        lines.append(f"| {g['goal']} | {_fmt(g['value'])}{extra}{note} | {g['status']} |")
    lines += ["", "| plans 3d_fullres | spacing | patch | batch | features |", "|---|---|---|---|---|"]
    for name, p in state.get("plans", {}).items():
        lines.append(f"| {name} | {p.get('spacing')} | {p.get('patch_size')} | {p.get('batch_size')} | {p.get('features')} |")
    lines += ["", "| step | framework | status | wall s | limit s | peak RSS MiB | GPU MiB (nvidia-smi) |",
              "|---|---|---|---|---|---|---|"]
    for name, s in state.get("steps", {}).items():
        status = s.get("skipped") or ("timed out" if s.get("timed_out") else ("ok" if s.get("rc") == 0 else f"rc {s.get('rc')}"))
        lines.append(f"| {name} | {s.get('framework', '')} | {status} | {_fmt(s.get('wall_s'), 1)} | "
                     f"{_fmt(s.get('limit_s'), 0)} | {_fmt(s.get('peak_rss_mb'), 0)} | {_fmt(s.get('gpu_smi_peak_mib'), 0)} |")
    lines += [""] + [f"- {note}" for note in state.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"
