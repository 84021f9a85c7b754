"""``vs_export_model`` / ``vs_import_model``: share trained models as one zip file."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vessel_seg.cli import run_cli


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vs_export_model",
        description="Pack the trained models of a dataset (plans, dataset.json, fingerprint, fold checkpoints, "
        "validation summaries, inference recipe) into one zip file.",
    )
    parser.add_argument("dataset", help="dataset id or name")
    parser.add_argument("-o", required=True, type=Path, dest="output", help="zip file to write")
    parser.add_argument("-c", nargs="+", default=None, dest="configurations", help="configurations (default: all)")
    parser.add_argument("-pl", default=None, dest="plans", help="plans name (default: all)")
    return parser


def build_import_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vs_import_model",
        description="Unpack a model zip made by vs_export_model into VS_RESULTS after checking every entry "
        "(no absolute paths, '..', links or foreign files; checkpoints must hold tensors only).",
    )
    parser.add_argument("zip", type=Path, help="model archive")
    parser.add_argument("--overwrite", action="store_true", help="replace model folders that already exist")
    return parser


def _export(args: argparse.Namespace) -> int:
    from vessel_seg.inference.model_sharing import export_model

    path = export_model(args.dataset, args.output, args.configurations, args.plans)
    print(f"model exported to {path}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from vessel_seg.inference.model_sharing import import_model

    installed = import_model(args.zip, args.overwrite)
    print("imported: " + ", ".join(str(p) for p in installed))
    return 0


def export_main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_export_parser(), _export, argv)


def import_main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_import_parser(), _import, argv)
