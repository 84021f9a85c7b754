"""Wheels for ``gpu_compare.py`` on an offline GPU machine: pack them here, install them there.

Usage::

    # here (network to the package registry): 67 MiB of wheels -> one 37 MiB archive
    .venv/bin/python benchmarks/gpu_bench_pack.py pack [--out benchmarks/work/gpu_pack] [--python-version 3.12]
    # there (no network; Python standard library and pip only)
    python3 benchmarks/gpu_bench_pack.py install --pack benchmarks/work/gpu_pack --target /tmp/site

The GPU machine has torch (CUDA), numpy, scipy, scikit-image, pandas, tqdm, matplotlib, networkx,
scikit-learn, seaborn, einops, requests, msgpack and py-cpuinfo, but neither vessel_seg's image
libraries nor nnU-Net v2. ``pack`` downloads binary wheels of :data:`REQUIREMENTS` for CPython
``--python-version`` on manylinux x86-64 without their dependencies (each needed one is listed),
builds acvl-utils from its sdist (the index has no wheel) and vessel_seg from this checkout, then
stores every wheel uncompressed in one tar archive compressed with xz (``xz -T0`` where installed):
the wheels are deflate-compressed (SimpleITK's alone is 53 MB); xz over the stored contents packs
all into 37 MiB, below the 64 MiB a device call carries (working tree included). ``MANIFEST.json``
lists the wheels with sizes and SHA-256. ``install`` unpacks the archive with Python's ``lzma`` and
runs ``pip install --no-index --no-deps --target``; it never needs the network. The versions are those tested with the project
(vessel_seg's own dependencies as in its venv, nnU-Net's as in ``/tmp/nnunet_venv``); blosc2 stays
at 3.12.x, whose import is lighter than 4.x's.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = "wheels.tar.xz"
REQUIREMENTS = (
    "SimpleITK==2.5.7", "nibabel==5.4.2", "batchgenerators==0.25.5", "batchgeneratorsv2==0.3.6",
    "connected-components-3d==4.1.1", "edt==3.1.2", "blosc2==3.12.2", "ndindex==1.10.1", "numexpr==2.14.2",
    "platformdirs==4.5.1", "dynamic-network-architectures==0.4.4", "nnunetv2==2.8.1",
)
FROM_SDIST = ("acvl-utils==0.2.6",)
PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
LIMIT_MIB = 60.0  # the device call carries 64 MiB with the working tree (about 1 MiB)


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        noise = "is ignored: it is neither a file nor a directory"  # a local index of this machine
        lines = [x for x in (done.stdout + done.stderr).splitlines() if noise not in x]
        sys.exit("pip failed:\n" + "\n".join(lines[-20:]))


def download(folder: Path, python_version: str) -> None:
    """Binary wheels of :data:`REQUIREMENTS`, acvl-utils built from its sdist, and vessel_seg from this checkout."""
    platforms = [x for p in PLATFORMS for x in ("--platform", p)]
    _pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
         "--implementation", "cp", *platforms, "-d", str(folder), *REQUIREMENTS)
    with tempfile.TemporaryDirectory() as sdists:
        _pip("download", "--quiet", "--no-deps", "--no-binary=:all:", "-d", sdists, *FROM_SDIST)
        for sdist in sorted(Path(sdists).iterdir()):
            _pip("wheel", "--quiet", "--no-deps", "-w", str(folder), str(sdist))
    with tempfile.TemporaryDirectory() as build:  # a copy: no build/ or egg-info folders in the checkout
        _copy_tracked(ROOT, Path(build))
        _pip("wheel", "--quiet", "--no-deps", "-w", str(folder), build)


def _copy_tracked(root: Path, target: Path) -> None:
    """Copy the files git knows (tracked and untracked-not-ignored) of ``root`` into ``target``."""
    listing = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listing):
        source = root / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(source.read_bytes())


def stored_copy(wheel: Path) -> bytes:
    """The wheel re-zipped without compression (pip does not care; xz compresses the raw files far better)."""
    out = io.BytesIO()
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)  # before the copy's compression is changed
            copy = zipfile.ZipInfo(info.filename, info.date_time)
            copy.external_attr, copy.compress_type = info.external_attr, zipfile.ZIP_STORED
            target.writestr(copy, data)
    return out.getvalue()


def compress(source: Path, target: Path, preset: int) -> None:
    """xz-compress ``source`` into ``target``: the ``xz`` program on all cores where it exists, else Python's lzma.

    Either way the result is a standard .xz file (several blocks when threaded) that ``lzma`` reads.
    """
    if shutil.which("xz"):
        with open(target, "wb") as out:
            subprocess.run(["xz", "-T0", f"-{preset}", "-c", str(source)], stdout=out, check=True)
        return
    with open(source, "rb") as raw, lzma.open(target, "wb", preset=preset) as xz:
        shutil.copyfileobj(raw, xz, 2**20)


def pack(args: argparse.Namespace) -> int:
    """Download and build the wheels, then write ``ARCHIVE`` and ``MANIFEST.json`` into ``--out``."""
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        download(folder, args.python_version)
        wheels = sorted(folder.glob("*.whl"))
        names = [w.name.split("-")[0].lower().replace("_", "-") for w in wheels]
        if len(set(names)) != len(names):
            sys.exit(f"two versions of one package: {names}")
        manifest = {"python_version": args.python_version, "wheels": []}
        with tarfile.open(folder / "wheels.tar", mode="w") as tar:
            for wheel in wheels:
                data = stored_copy(wheel)
                info = tarfile.TarInfo(wheel.name)
                info.size, info.mtime = len(data), int(time.time())
                tar.addfile(info, io.BytesIO(data))
                manifest["wheels"].append({"name": wheel.name, "bytes": wheel.stat().st_size,
                                           "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()})
        compress(folder / "wheels.tar", args.out / ARCHIVE, args.preset)
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file()) / 2**20
    raw = sum(w["bytes"] for w in manifest["wheels"]) / 2**20
    print(f"{len(manifest['wheels'])} wheels ({raw:.1f} MiB) -> {args.out} {size:.1f} MiB in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    if size > args.limit_mib:
        sys.exit(f"{args.out}: {size:.1f} MiB is over the {args.limit_mib:.0f} MiB that a device call may carry")
    return 0


def install(args: argparse.Namespace) -> int:
    """Unpack ``ARCHIVE`` and ``pip install --no-index --no-deps --target`` every wheel in it."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(args.pack / ARCHIVE, "r:xz") as tar:
        for member in tar.getmembers():  # plain files with plain names only
            if not member.isfile() or "/" in member.name or not member.name.endswith(".whl"):
                sys.exit(f"{args.pack / ARCHIVE}: unexpected member {member.name!r}")
            (Path(tmp) / member.name).write_bytes(tar.extractfile(member).read())
        wheels = sorted(str(p) for p in Path(tmp).glob("*.whl"))
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                   "--no-cache-dir", "--upgrade", "--target", str(args.target), *wheels]
        done = subprocess.run(command)
    if done.returncode != 0:
        return done.returncode
    print(f"installed {len(wheels)} wheels into {args.target} in {time.perf_counter() - started:.1f} s; "
          f"use PYTHONPATH={args.target}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="wheels for benchmarks/gpu_compare.py on an offline GPU machine")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="download/build the wheels here and write one xz archive")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "work" / "gpu_pack")
    p.add_argument("--python-version", default="3.12", help="CPython version of the GPU machine (default 3.12)")
    p.add_argument("--preset", type=int, default=9, help="xz preset 0-9 (default 9)")
    p.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    i = sub.add_parser("install", help="install the archive's wheels (offline)")
    i.add_argument("--pack", type=Path, default=ROOT / "benchmarks" / "work" / "gpu_pack")
    i.add_argument("--target", type=Path, default=Path("/tmp/site"))
    args = parser.parse_args(argv)
    return pack(args) if args.command == "pack" else install(args)


if __name__ == "__main__":
    sys.exit(main())
