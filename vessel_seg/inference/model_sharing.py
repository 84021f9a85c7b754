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
import stat
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from vessel_seg.atomic import atomic_open, check_writable_location
from vessel_seg.checkpoint import load_checkpoint
from vessel_seg.errors import CheckpointError, VesselSegError
from vessel_seg.paths import DATASET_NAME_RE, preprocessed_root, raw_root, resolve_dataset, results_root

log = logging.getLogger(__name__)

MAX_UNCOMPRESSED_BYTES = 16 * 1024**3  # the whole archive
MAX_CHECKPOINT_BYTES = 4 * 1024**3  # one checkpoint (the largest GPU plans stay far below)
MAX_JSON_BYTES = 64 * 1024**2  # one plans / dataset / fingerprint / recipe / summary file
MAX_ENTRIES = 2000  # files in an archive: a few configurations x folds x checkpoints
MAX_FOLDS = 20  # per model folder (5-fold CV plus "all" in practice)
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
    check_writable_location(Path(output_zip).parent, "choose another -o")  # before reading any model file
    dirs = _model_dirs(dataset_name, configurations, plans_name)
    files: list[Path] = []
    for folder in dirs:
        files += [folder / name for name in MODEL_FILES if (folder / name).is_file()]
        for fold in sorted(p for p in folder.iterdir() if p.is_dir() and FOLD_RE.match(p.name)):
            files += [fold / name for name in CHECKPOINTS if (fold / name).is_file()]
            if (fold / "validation" / "summary.json").is_file():
                files.append(fold / "validation" / "summary.json")
    _refuse_links(files, results_root() / dataset_name)
    for folder in dirs:  # what import would refuse is not exported
        validate_model_folder(folder, folder)
    if not any(f.suffix == ".pt" for f in files):
        wanted = f" for {', '.join(configurations)}" if configurations else ""
        raise VesselSegError(f"{results_root() / dataset_name}: no trained model{wanted} to export; train one with vs_train")
    recipe = results_root() / dataset_name / RECIPE_FILE
    if recipe.is_file():
        files.append(recipe)
    output_zip = Path(output_zip)
    try:
        with atomic_open(output_zip) as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, path.relative_to(results_root()).as_posix())
    except OSError as exc:  # the temporary is gone (atomic_open): nothing partial is left
        raise VesselSegError(f"{output_zip}: cannot write the archive ({exc.strerror or exc}); check free space and "
                             "permissions") from exc
    log.info("exported %d model folder(s) of %s (%d files) to %s", len(dirs), dataset_name, len(files), output_zip)
    return output_zip


def _refuse_links(files: list[Path], root: Path) -> None:
    """Export carries what lies inside the model folders only: a file or folder that is a symbolic link is refused."""
    for path in files:
        for part in [path, *path.parents]:
            if part == root:
                break
            if part.is_symlink():
                raise VesselSegError(f"{part}: is a symbolic link (to {os.readlink(part)}); vs_export_model packs only "
                                     "files inside the model folder: replace the link by the file itself")


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


def _size_limit(rel: PurePosixPath) -> int:
    return MAX_CHECKPOINT_BYTES if rel.suffix == ".pt" else MAX_JSON_BYTES


def _check_declared_sizes(files: list[tuple[zipfile.ZipInfo, PurePosixPath]], source: Path) -> None:
    """Refuse by the central directory alone: encryption, compression methods, sizes, fold counts."""
    folds: dict[str, set[str]] = {}
    for info, rel in files:
        if info.flag_bits & 0x1:
            raise VesselSegError(f"{source}: entry {info.filename!r} is encrypted; refused (model archives are plain zips)")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise VesselSegError(
                f"{source}: entry {info.filename!r} uses compression method {info.compress_type}; refused "
                "(vs_export_model writes stored or deflated entries)"
            )
        if info.file_size > _size_limit(rel):
            raise VesselSegError(f"{source}: entry {info.filename!r} declares {info.file_size} bytes, over the "
                                 f"{_size_limit(rel)} allowed for such a file; refused")
        if len(rel.parts) >= 4:
            folds.setdefault(rel.parts[1], set()).add(rel.parts[2])
    if sum(info.file_size for info, _ in files) > MAX_UNCOMPRESSED_BYTES:
        raise VesselSegError(f"{source}: the archive unpacks to more than {MAX_UNCOMPRESSED_BYTES} bytes; refused")
    for model, names in folds.items():
        if len(names) > MAX_FOLDS:
            raise VesselSegError(f"{source}: model folder {model} holds {len(names)} folds (at most {MAX_FOLDS}); refused")


def _extract_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, source: Path) -> None:
    """Copy one entry, never more bytes than it declares (a lying size is a zip bomb); one line on damage."""
    try:
        with archive.open(info) as src, open(target, "wb") as dst:
            copied = 0
            while chunk := src.read(1 << 20):
                copied += len(chunk)
                if copied > info.file_size:
                    raise VesselSegError(f"{source}: entry {info.filename!r} holds more than its declared "
                                         f"{info.file_size} bytes; refused")
                dst.write(chunk)
    except VesselSegError:
        raise
    except OSError as exc:
        raise VesselSegError(
            f"{target.parent}: cannot unpack {info.filename!r} ({exc.strerror or exc}); check free space and permissions"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib and codecs raise many types on a damaged archive
        raise VesselSegError(f"{source}: entry {info.filename!r} is damaged ({type(exc).__name__}: "
                             f"{str(exc)[:120]}); refused") from exc


def _validate_file(path: Path, rel: PurePosixPath, source: Path) -> None:
    """A checkpoint must load with weights_only and hold network weights; other files must be JSON objects."""
    if path.suffix == ".pt":
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            raise CheckpointError(f"{source}: {rel} refused ({exc})") from exc
        weights = state.get("network_weights")
        if not isinstance(weights, dict) or not weights or not isinstance(state.get("metadata"), dict):
            raise CheckpointError(f"{source}: {rel} holds no vessel_seg network weights and metadata; refused")
        return
    try:
        content = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise VesselSegError(f"{source}: {rel} is not valid JSON; refused") from exc
    if not isinstance(content, dict):
        raise VesselSegError(f"{source}: {rel} must hold a JSON object; refused")
    if rel.name == RECIPE_FILE:
        _validate_recipe(path, rel, source)


def _validate_recipe(path: Path, rel: PurePosixPath, source: Path) -> None:
    from vessel_seg.inference.recipe import load_recipe  # the recipe module imports postprocessing (scipy)

    try:
        load_recipe(path)
    except VesselSegError as exc:
        raise VesselSegError(f"{source}: {rel} refused ({str(exc).split(': ', 1)[-1]})") from exc


def validate_model_folder(folder: Path, source: Path) -> None:
    """A model folder that prediction can use: plans and dataset.json present and valid, the configuration
    its name gives in the plans, at least one fold checkpoint, and every checkpoint's tensors those of the
    plans' network (checked on the meta device). One-line error naming ``source`` otherwise."""
    from vessel_seg.dataset import DatasetInfo
    from vessel_seg.model_check import check_weights_match_plans
    from vessel_seg.planners.plans import Plans

    for required in ("plans.json", "dataset.json"):
        if not (folder / required).is_file():
            raise VesselSegError(f"{source}: model folder {folder.name} has no {required}; refused (export it again "
                                 "with vs_export_model)")
    try:
        plans = Plans.load(folder / "plans.json")
        config = plans.configuration(folder.name.split("__")[-1])
        DatasetInfo.load(folder / "dataset.json")
    except VesselSegError as exc:
        raise VesselSegError(f"{source}: {folder.name} refused ({str(exc).split(': ', 1)[-1]})") from exc
    checkpoints = sorted(folder.glob("fold_*/checkpoint_*.pt"))
    if not checkpoints:
        raise VesselSegError(f"{source}: model folder {folder.name} holds no checkpoint; refused")
    for path in checkpoints:
        try:
            check_weights_match_plans(config.network, load_checkpoint(path), path.relative_to(folder.parent),
                                      Path(folder.name) / "plans.json")
        except VesselSegError as exc:
            raise VesselSegError(f"{source}: {exc}; refused") from exc


def _check_dataset_id_free(dataset_name: str, source: Path) -> None:
    """Refuse an archive whose dataset id another dataset folder already uses (every ``-d NNN`` would be ambiguous)."""
    dataset_id = int(DATASET_NAME_RE.match(dataset_name).group(1))
    for root in (results_root(), raw_root(), preprocessed_root()):
        for entry in sorted(root.iterdir()) if root.is_dir() else []:
            match = DATASET_NAME_RE.match(entry.name)
            if entry.is_dir() and match and int(match.group(1)) == dataset_id and entry.name != dataset_name:
                raise VesselSegError(f"{source}: dataset id {dataset_id} is taken by {entry}; refused (rename the "
                                     "dataset in the archive or import it where that id is free)")


def import_model(zip_path: str | Path, overwrite: bool = False) -> list[Path]:
    """Unpack a model archive into ``VS_RESULTS``; returns the model folders (and recipe) installed.

    Existing model folders are kept (a one-line error) unless ``overwrite``.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise VesselSegError(f"{zip_path}: model archive not found")
    try:
        archive = zipfile.ZipFile(zip_path)
    except Exception as exc:  # noqa: BLE001 - an untrusted archive: whatever zipfile raises means it is not a valid one
        raise VesselSegError(f"{zip_path}: not a valid zip archive ({type(exc).__name__}: {str(exc)[:120]}); export it "
                             "again with vs_export_model") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise VesselSegError(f"{zip_path}: {len(infos)} entries, more than a model archive holds ({MAX_ENTRIES}); refused")
        files = [(info, rel) for info in infos if (rel := _check_entry(info, zip_path)) is not None]
        if not files:
            raise VesselSegError(f"{zip_path}: the archive holds no model files")
        _check_declared_sizes(files, zip_path)
        datasets = {rel.parts[0] for _, rel in files}
        if len(datasets) != 1:
            raise VesselSegError(f"{zip_path}: the archive mixes datasets ({', '.join(sorted(datasets))}); refused")
        dataset_name = datasets.pop()
        _check_dataset_id_free(dataset_name, zip_path)
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
        for info, rel in files:  # each file is checked as soon as it is out: a bad one stops the rest
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _extract_entry(archive, info, target, zip_path)
            _validate_file(target, rel, zip_path)
        for name in targets:  # each model folder as a whole, as prediction will read it
            validate_model_folder(staging / dataset_name / name, zip_path)
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
