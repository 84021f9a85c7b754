"""``vs_convert_dataset``: turn a downloaded public dataset or a pair of folders into a raw dataset.

Subcommands: ``msd-hepatic``, ``topcow``, ``vmr`` and ``folder``; each writes
``VS_RAW/DatasetNNN_Name`` in nnU-Net v2's layout. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys

from vessel_seg.cli import run_cli
from vessel_seg.dataset_conversion.generic import convert_folder
from vessel_seg.dataset_conversion.msd_hepatic import convert_msd_hepatic
from vessel_seg.dataset_conversion.topcow import convert_topcow
from vessel_seg.dataset_conversion.vmr import convert_vmr


def _common(sub: argparse.ArgumentParser, default_name: str | None) -> None:
    sub.add_argument("-d", "--dataset-id", type=int, required=True, help="output dataset id, 0..999")
    if default_name is not None:
        sub.add_argument("--name", default=default_name, help=f"short dataset name (default {default_name})")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing dataset of the same name")
    sub.add_argument("-np", "--num-workers", type=int, default=2, help="cases converted in parallel (default 2)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vs_convert_dataset",
        description="Convert an already-downloaded dataset into VS_RAW/DatasetNNN_Name (nnU-Net v2 layout).",
    )
    subs = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")

    msd = subs.add_parser("msd-hepatic", help="Medical Segmentation Decathlon Task08_HepaticVessel")
    msd.add_argument("source", help="unpacked Task08_HepaticVessel folder")
    msd.add_argument("--with-tumour", action="store_true", help="keep the tumour as label 2 (default: vessel only)")
    msd.add_argument("--no-test", action="store_true", help="skip the unlabelled imagesTs volumes")
    _common(msd, "HepaticVessel")

    topcow = subs.add_parser("topcow", help="TopCoW Circle of Willis challenge release (2023 or 2024)")
    topcow.add_argument("source", help="unpacked release folder holding imagesTr/")
    topcow.add_argument("--modality", choices=("ct", "mr"), default="ct", help="which track to convert (default ct)")
    topcow.add_argument("--multiclass", action="store_true", help="keep the CoW classes (default: binary vessel)")
    topcow.add_argument("--roi", action="store_true", help="use the 2023 release's ROI crops instead of whole volumes")
    _common(topcow, None)
    topcow.add_argument("--name", help="short dataset name (default TopCoW_CT or TopCoW_MR)")

    vmr = subs.add_parser("vmr", help="Vascular Model Repository volumes as used by SeqSeg (images/ + truths/)")
    vmr.add_argument("source", help="data folder with images/ and truths/, or one folder per model")
    vmr.add_argument("--split-file", help="test models (json list, json {'test': [...], 'train': [...]}, or txt)")
    vmr.add_argument("--modality", choices=("ct", "mr"), default="ct", help="channel type (default ct)")
    vmr.add_argument("--scale", type=float, default=1.0, help="multiply spacing and origin (10: cm -> mm; default 1)")
    _common(vmr, "VMR")

    folder = subs.add_parser("folder", help="a folder of images and a folder of masks matched by file name")
    folder.add_argument("--images", required=True, help="folder of images")
    folder.add_argument("--masks", required=True, help="folder of masks (same file stems)")
    folder.add_argument("--name", required=True, help="short dataset name, e.g. LiverVessels")
    folder.add_argument("--channel-name", default="image", help="channel name; CT selects CT normalisation (default image)")
    folder.add_argument("--binarise", action="store_true", help="every non-zero mask value becomes vessel (1)")
    _common(folder, None)
    return parser


def _command(args: argparse.Namespace) -> int:
    common = {"overwrite": args.overwrite, "workers": max(1, args.num_workers)}
    if args.format == "msd-hepatic":
        target = convert_msd_hepatic(
            args.source, args.dataset_id, with_tumour=args.with_tumour, name=args.name,
            include_test=not args.no_test, **common,
        )
    elif args.format == "topcow":
        target = convert_topcow(
            args.source, args.dataset_id, modality=args.modality, multiclass=args.multiclass,
            region="roi" if args.roi else "whole", name=args.name, **common,
        )
    elif args.format == "vmr":
        target = convert_vmr(
            args.source, args.dataset_id, split_file=args.split_file, modality=args.modality,
            scale=args.scale, name=args.name, **common,
        )
    else:
        target = convert_folder(
            args.images, args.masks, args.dataset_id, args.name, channel_name=args.channel_name,
            binarise_masks=args.binarise, **common,
        )
    print(f"wrote {target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
