"""Seconds for the built-in model to segment one 256^3 volume on this machine, native grid and ``--vessel-scale multi``.

Usage::

    .venv/bin/python benchmarks/builtin_speed.py [--builtin DIR] [--size 256] [--out benchmarks/results]

A synthetic CT-like volume (``vs_generate_synthetic`` renderer) of ``--size``^3 voxels at 0.5 mm is predicted
in-process, without TTA, with the default postprocessing, twice per setting (the second time is reported; the
first warms caches). nnU-Net v2 has no model to run without training, so the comparison is between our own
settings: the table gives seconds and the ratio multi / native. Writes ``<out>/<date>-<host>-builtin-speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine_info, write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builtin", type=Path, default=None)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    import numpy as np

    from vessel_seg.builtin import builtin_model_dir
    from vessel_seg.dataset_conversion.synthetic import generate_case
    from vessel_seg.imageio import write_image
    from vessel_seg.inference.prediction_run import PredictionOptions, predict_cases
    from vessel_seg.inference.predictor import load_trained_model

    folder = args.builtin or builtin_model_dir()
    model = load_trained_model(folder, ["all"])
    case = generate_case(np.random.default_rng(5), args.size, (0.5, 0.5, 0.5), "ct")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "in").mkdir()
        write_image(case.image, case.geometry, Path(tmp) / "in" / "vol_0000.nii.gz")
        for scale in (1.0, "multi"):
            seconds = []
            for _ in range(2):
                started = time.perf_counter()
                predict_cases([model], Path(tmp) / "in", Path(tmp) / f"out_{scale}",
                              PredictionOptions(use_tta=False, overwrite=True, vessel_scale=scale))
                seconds.append(time.perf_counter() - started)
            rows.append({"vessel_scale": str(scale), "seconds": seconds[-1]})
    result = {"date": datetime.date.today().isoformat(), "host": socket.gethostname().split(".")[0],
              "machine": machine_info(), "size": args.size, "builtin": str(folder), "rows": rows}
    native = rows[0]["seconds"]
    lines = [f"# Built-in model on one {args.size}^3 volume ({result['date']}, {result['machine']['cpu']}, "
             f"{result['machine']['cpus']} CPUs)", "", "| --vessel-scale | seconds | ratio to native |", "|---|---:|---:|"]
    lines += [f"| {r['vessel_scale']} | {r['seconds']:.1f} | {r['seconds'] / native:.2f} |" for r in rows]
    write_results(args.out, result, "builtin-speed", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
