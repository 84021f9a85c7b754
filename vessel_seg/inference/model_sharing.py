"""Sharing trained models as one zip file (``vs_export_model`` / ``vs_import_model``).

Archive layout (paths relative to ``VS_RESULTS``)::

    DatasetNNN_Name/inference_recipe.json                                   (optional)
    DatasetNNN_Name/<trainer>__<plans>__<config>/{plans,dataset,fingerprint}.json
    DatasetNNN_Name/<trainer>__<plans>__<config>/fold_K/checkpoint_{final,best}.pt
    DatasetNNN_Name/<trainer>__<plans>__<config>/fold_K/validation/summary.json

An archive is untrusted input. Import refuses absolute paths, ``..`` parts, symbolic links (the
Unix mode in the entry's external attributes), anything outside the layout above and archives
whose content would exceed :data:`MAX_UNCOMPRESSED_BYTES`; every checkpoint must load with
``weights_only=True``. It unpacks into a temporary folder next to the destination and renames each
model folder into place, so a failed import changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from vessel_seg.atomic import atomic_open
from vessel_seg.checkpoint import load_checkpoint
from vessel_seg.errors import CheckpointError, VesselSegError
from vessel_seg.paths import DATASET_NAME_RE, resolve_dataset, results_root

log = logging.getLogger(__name__)

MAX_UNCOMPRESSED_BYTES = 16 * 1024**3
RECIPE_FILE = "inference_recipe.json"
MODEL_FILES = ("plans.json", "dataset.json", "fingerprint.json")
CHECKPOINTS = ("checkpoint_final.pt", "checkpoint_best.pt")
_PART = r"[A-Za-z0-9_\-.]+"
MODEL_DIR_RE = re.compile(rf"^{_PART}__{_PART}__{_PART}$")
FOLD_RE = re.compile(r"^fold_(\d+|all)$")


def _model_dirs(dataset_name: str, configurations: Sequence[str] | None, plans_name: str | None) -> list[Path]:
    root = results_root() / dataset_name
    dirs = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not (folder.is_dir() and MODEL_DIR_RE.match(folder.name) and (folder / "plans.json").is_file()):
            continue
        _, plans, config = folder.name.split("__")
        if (configurations and config not in configurations) or (plans_name and plans != plans_name):
            continue
        dirs.append(folder)
    return dirs


def export_model(
    dataset: str | int, output_zip: str | Path, configurations: Sequence[str] | None = None, plans_name: str | None = None,
) -> Path:
    """Pack the trained models of a dataset (optionally only some configurations / one plans) into a zip.

    Returns the path of the zip, written atomically. Raises :class:`VesselSegError` when nothing matches.
    """
    dataset_name = resolve_dataset(dataset)
    dirs = _model_dirs(dataset_name, configurations, plans_name)
    files: list[Path] = []
    for folder in dirs:
        files += [folder / name for name in MODEL_FILES if (folder / name).is_file()]
        for fold in sorted(p for p in folder.iterdir() if p.is_dir() and FOLD_RE.match(p.name)):
            files += [fold / name for name in CHECKPOINTS if (fold / name).is_file()]
            if (fold / "validation" / "summary.json").is_file():
                files.append(fold / "validation" / "summary.json")
    if not any(f.suffix == ".pt" for f in files):
        wanted = f" for {', '.join(configurations)}" if configurations else ""
        raise VesselSegError(f"{results_root() / dataset_name}: no trained model{wanted} to export; train one with vs_train")
    recipe = results_root() / dataset_name / RECIPE_FILE
    if recipe.is_file():
        files.append(recipe)
    output_zip = Path(output_zip)
    with atomic_open(output_zip) as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, path.relative_to(results_root()).as_posix())
    log.info("exported %d model folder(s) of %s (%d files) to %s", len(dirs), dataset_name, len(files), output_zip)
    return output_zip


def _check_entry(info: zipfile.ZipInfo, source: Path) -> PurePosixPath | None:
    """The entry's relative path if it is allowed (``None`` for folder entries); raises otherwise."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise VesselSegError(f"{source}: entry {name!r} is a symbolic link; refused (model archives hold plain files only)")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or "\\" in name:
        raise VesselSegError(f"{source}: entry {name!r} has an absolute or Windows path; refused")
    path = PurePosixPath(name)
    if any(part in ("..", ".", "") for part in path.parts) or not path.parts:
        raise VesselSegError(f"{source}: entry {name!r} leaves the archive's folder ('..'); refused")
    if info.is_dir():
        return None
    parts = path.parts
    ok = bool(DATASET_NAME_RE.match(parts[0])) and (
        (len(parts) == 2 and parts[1] == RECIPE_FILE)
        or (len(parts) == 3 and MODEL_DIR_RE.match(parts[1]) and parts[2] in MODEL_FILES)
        or (len(parts) == 4 and MODEL_DIR_RE.match(parts[1]) and FOLD_RE.match(parts[2]) and parts[3] in CHECKPOINTS)
        or (len(parts) == 5 and MODEL_DIR_RE.match(parts[1]) and FOLD_RE.match(parts[2])
            and parts[3:] == ("validation", "summary.json"))
    )
    if not ok:
        raise VesselSegError(f"{source}: entry {name!r} is not part of a vessel_seg model archive; refused")
    return path


def _validate_extracted(folder: Path, files: list[PurePosixPath], source: Path) -> None:
    for rel in files:
        path = folder / rel
        if path.suffix == ".pt":
            try:
                load_checkpoint(path)
            except CheckpointError as exc:
                raise CheckpointError(f"{source}: {rel} refused ({exc})") from exc
        else:
            try:
                json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise VesselSegError(f"{source}: {rel} is not valid JSON; refused") from exc


def import_model(zip_path: str | Path, overwrite: bool = False) -> list[Path]:
    """Unpack a model archive into ``VS_RESULTS``; returns the model folders (and recipe) installed.

    Existing model folders are kept (a one-line error) unless ``overwrite``.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise VesselSegError(f"{zip_path}: model archive not found")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise VesselSegError(f"{zip_path}: not a valid zip archive ({exc})") from exc
    with archive:
        infos = archive.infolist()
        files = [(info, rel) for info in infos if (rel := _check_entry(info, zip_path)) is not None]
        if not files:
            raise VesselSegError(f"{zip_path}: the archive holds no model files")
        if sum(info.file_size for info, _ in files) > MAX_UNCOMPRESSED_BYTES:
            raise VesselSegError(f"{zip_path}: the archive unpacks to more than {MAX_UNCOMPRESSED_BYTES} bytes; refused")
        datasets = {rel.parts[0] for _, rel in files}
        if len(datasets) != 1:
            raise VesselSegError(f"{zip_path}: the archive mixes datasets ({', '.join(sorted(datasets))}); refused")
        dataset_name = datasets.pop()
        targets = sorted({rel.parts[1] for _, rel in files if len(rel.parts) > 2})
        dest_root = results_root() / dataset_name
        existing = [dest_root / t for t in targets if (dest_root / t).exists()]
        if existing and not overwrite:
            raise VesselSegError(f"{existing[0]}: model folder already exists; use --overwrite to replace it")
        if not targets:
            raise VesselSegError(f"{zip_path}: the archive holds no model folder")
        created = not dest_root.exists()
        dest_root.mkdir(parents=True, exist_ok=True)
        try:
            installed = _install(archive, files, dest_root, dataset_name, targets, zip_path)
        except BaseException:
            if created and not any(dest_root.iterdir()):
                dest_root.rmdir()  # a refused archive leaves no trace
            raise
    log.info("imported %s into %s", ", ".join(targets), dest_root)
    return installed


def _install(
    archive: zipfile.ZipFile, files: list, dest_root: Path, dataset_name: str, targets: list[str], zip_path: Path
) -> list[Path]:
    """Extract into a temporary folder, validate, then rename each model folder into place."""
    with tempfile.TemporaryDirectory(prefix=".import-", dir=dest_root) as tmp_dir:
        staging = Path(tmp_dir)
        for info, rel in files:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        _validate_extracted(staging, [rel for _, rel in files], zip_path)
        installed = []
        for name in targets:
            final = dest_root / name
            old = staging / f".old-{name}"
            if final.exists():
                os.replace(final, old)
            os.replace(staging / dataset_name / name, final)
            installed.append(final)
        recipe = staging / dataset_name / RECIPE_FILE
        if recipe.is_file():
            os.replace(recipe, dest_root / RECIPE_FILE)
            installed.append(dest_root / RECIPE_FILE)
    return installed
