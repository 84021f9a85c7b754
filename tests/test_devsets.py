"""The zero-shot dev sets: an independent tree generator, appearances with label-0 look-alikes, frozen splits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

DEVSETS = Path(__file__).resolve().parents[1] / "benchmarks" / "devsets"


@pytest.fixture(scope="module")
def devsets():
    sys.path.insert(0, str(DEVSETS))
    import appearance
    import colonization
    import make_devsets

    yield make_devsets, colonization, appearance
    sys.path.remove(str(DEVSETS))
    for name in ("appearance", "colonization", "make_devsets"):
        sys.modules.pop(name, None)


def _fake_svv_trees(folder: Path, count: int = 6) -> list[Path]:
    """Tiny stand-ins for cached svv trees (a root and two children in the unit cube)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        tree = {"proximal": [[0.5, 0.5, 0.0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]],
                "distal": [[0.5, 0.5, 0.5], [0.2, 0.3 + 0.05 * k, 0.9], [0.8, 0.7, 0.9]], "radius": [0.02, 0.015, 0.015]}
        (folder / f"tree_{k:03d}.json").write_text(json.dumps(tree))
    return sorted(folder.glob("tree_*.json"))


def test_colonization_trees_are_trees_with_murray_radii(devsets):
    _, colonization, _ = devsets
    params = colonization.ColonizationParams(attractors=200, max_iterations=120)
    nodes, parents = colonization._grow(np.random.default_rng(1), colonization._region(np.random.default_rng(1), 200),
                                        params)
    assert parents[0] == -1 and np.all(parents[1:] < np.arange(1, len(parents)))  # parents come first
    radii = colonization._pipe_radii(parents, 3.0)
    children = {}
    for node, parent in enumerate(parents[1:], 1):
        children.setdefault(int(parent), []).append(node)
    for parent, kids in children.items():
        assert radii[parent] ** 3 == pytest.approx(sum(radii[k] ** 3 for k in kids) + (0 if kids else 1))
    table = colonization.colonization_tree(np.random.default_rng(2), params)
    assert len(table["proximal"]) == len(table["distal"]) == len(table["radius"]) > 10
    assert min(table["radius"]) == 1.0 and max(table["radius"]) > 2.0


@pytest.mark.parametrize("app", ["ct", "mr", "microscopy"])
def test_appearances_keep_label_0_look_alikes_off_the_lumen(devsets, app):
    make_devsets, _, appearance = devsets
    rng = np.random.default_rng(3)
    image, label, spacing = make_devsets.render_case("colonization", app, rng, [], 0)
    assert image.dtype == np.float32 and np.isfinite(image).all() and label.any()
    assert image.shape == label.shape and spacing == appearance.SPACING_MM[app]
    lumen = label > 0
    background = ~ndimage.binary_dilation(lumen, iterations=3)
    assert image[lumen].mean() > np.median(image[background])  # vessels bright in every appearance


def test_unlabelled_veins_never_take_labelled_voxels(devsets):
    _, _, appearance = devsets
    shape, spacing = (24, 32, 32), (1.0, 1.0, 1.0)
    sd = np.full(shape, 3.0, np.float32)
    sd[10:14, 14:18, :] = -1.0  # a labelled straight vessel
    veins = appearance.vein_tubes(np.random.default_rng(0), shape, spacing, sd, 3, (1.0, 2.0))
    assert (veins < 0).any() and not (veins[sd < 0] < 0).any()


def test_svv_splits_are_disjoint(devsets):
    make_devsets, _, _ = devsets
    picks = {split: {make_devsets.svv_pick(split, k, 16) for k in range(20)} for split in make_devsets.SPLITS}
    assert not picks["train"] & picks["tune"] and not picks["tune"] & picks["report"]
    assert not picks["train"] & picks["report"]


def test_a_written_set_is_frozen_and_a_changed_file_refused(devsets, tmp_path):
    make_devsets, _, _ = devsets
    trees = _fake_svv_trees(tmp_path / "svv_trees")
    counts = {"train": 1, "tune": 1, "report": 1}
    target = make_devsets.write_set(tmp_path, 801, "svv", "mr", counts, trees)
    manifest = json.loads((target / "manifest.json").read_text())
    expected = {f"{folder}/{split}_000{suffix}.nii.gz" for split, (images, labels) in make_devsets.FOLDERS.items()
                for folder, suffix in ((images, "_0000"), (labels, ""))}
    assert set(manifest["sha256"]) == expected
    assert make_devsets.write_set(tmp_path, 801, "svv", "mr", counts, trees) == target  # verified, reused
    label = target / "labelsTs" / "report_000.nii.gz"
    label.write_bytes(label.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(SystemExit, match="frozen dev set changed"):
        make_devsets.write_set(tmp_path, 801, "svv", "mr", counts, trees)
