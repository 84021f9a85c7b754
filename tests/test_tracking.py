"""Seeded tracking on synthetic trees with a hand-built model: follows the branches, stops at the border, never loops,
agrees with full-volume prediction, and costs less than it on a sparse tree."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from training_helpers import threshold_model

from vessel_seg.errors import VesselSegError
from vessel_seg.imageio import ImageGeometry
from vessel_seg.inference.predictor import labels_from_original_probabilities, predict_original_probabilities
from vessel_seg.inference.tracking import TrackingSeed, physical_to_index, read_seeds, track_vessels
from vessel_seg.morphology import skeleton

SHAPE = (24, 96, 112)


def _segment(mask: np.ndarray, start, end, radius: float) -> None:
    """Add the tube of ``radius`` voxels from ``start`` to ``end`` (indices z, y, x) to ``mask``."""
    z, y, x = np.indices(mask.shape, dtype=np.float32)
    p = np.stack([z, y, x], axis=-1)
    a, b = np.asarray(start, np.float32), np.asarray(end, np.float32)
    t = np.clip(((p - a) @ (b - a)) / float((b - a) @ (b - a)), 0, 1)
    mask |= np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1) <= radius


def _tree(reach_border: bool = False) -> np.ndarray:
    """A trunk along x that forks into two branches; a far, separate vessel the tracker must not reach."""
    tree = np.zeros(SHAPE, bool)
    _segment(tree, (12, 48, 4), (12, 48, 50), 2.5)
    _segment(tree, (12, 48, 50), (12, 18, 100 if not reach_border else 111), 2.0)
    _segment(tree, (12, 48, 50), (12, 80, 100), 2.0)
    return tree


def _image(tree: np.ndarray, other: bool = True) -> np.ndarray:
    image = np.where(tree, 150.0, 0.0).astype(np.float32)
    if other:
        image[2:6, 88:92, 10:40] = 150.0  # another vessel, not connected to the tree
    return image[None]


GEOMETRY = ImageGeometry(SHAPE, (1.0, 1.0, 1.0))
ROOT = TrackingSeed((5.0, 48.0, 12.0))  # physical (x, y, z) = index (z, y, x) reversed at 1 mm, origin 0


def _centreline_capture(mask: np.ndarray, tree: np.ndarray) -> float:
    line = skeleton(tree)
    return float((mask[line] > 0).mean())


def test_tracking_from_the_root_follows_every_branch_and_leaves_other_vessels_alone():
    tree = _tree()
    result = track_vessels(threshold_model(order=1), _image(tree), GEOMETRY, [ROOT])
    assert _centreline_capture(result.mask, tree) >= 0.95
    assert not result.mask[2:6, 88:92, 10:40].any()  # the separate vessel was never reached
    assert result.branches >= 2 and len(result.steps) >= 8
    centres = np.array([s.centre for s in result.steps])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(centres)) * 1e9
    assert gaps.min() > 2.0  # no step was taken twice: no loops
    assert all(2.0 <= s.radius_mm <= 3.5 for s in result.steps)  # the local radius is measured


def test_tracking_stops_at_the_border_and_agrees_with_full_volume_prediction():
    tree = _tree(reach_border=True)
    model = threshold_model(order=1)
    image = _image(tree, other=False)
    result = track_vessels(model, image, GEOMETRY, [ROOT])
    assert all(0 <= c <= n - 1 for s in result.steps for c, n in zip(s.centre, SHAPE, strict=True))
    full = labels_from_original_probabilities(predict_original_probabilities([model], image, GEOMETRY, use_tta=False),
                                              model.label_values)
    tracked = result.mask > 0
    # Patches overlap differently than the full volume's tiles, so the vessel wall may move by a voxel; no more.
    assert not (tracked & ~ndimage.binary_dilation(full > 0, np.ones((3, 3, 3)))).any()
    dice = 2 * (tracked & (full > 0)).sum() / (tracked.sum() + (full > 0).sum())
    assert dice >= 0.9 and _centreline_capture(result.mask, tree) >= 0.95


def test_tracking_costs_the_tree_not_the_volume():
    big = (24, 96, 112)
    tree = np.zeros(big, bool)
    _segment(tree, (12, 48, 4), (12, 48, 60), 2.5)  # one short vessel in an otherwise empty image
    result = track_vessels(threshold_model(order=1), _image(tree, other=False), GEOMETRY, [ROOT])
    assert result.predicted_voxels < 0.5 * np.prod(big)
    assert _centreline_capture(result.mask, tree) >= 0.95


def test_seeds_from_files_and_their_errors(tmp_path):
    plain = tmp_path / "seeds.json"
    plain.write_text(json.dumps([[1.0, 2.0, 3.0], [4, 5, 6, 1.5]]))
    assert read_seeds(plain) == [TrackingSeed((1.0, 2.0, 3.0)), TrackingSeed((4.0, 5.0, 6.0), 1.5)]
    seqseg = tmp_path / "seqseg.json"  # SeqSeg's seeds.json: per case [[start], [direction], radius]
    seqseg.write_text(json.dumps({"case_a": [[1.0, 2.0, 3.0], [1.0, 2.0, 5.0], 0.8]}))
    assert read_seeds(seqseg) == [TrackingSeed((1.0, 2.0, 3.0), 0.8)]
    for bad in ("{}", "[[1, 2]]", '[["a", 2, 3]]', "[[1, 2, 3, -1]]", "not json", "[[1, 2, NaN]]"):
        plain.write_text(bad)
        with pytest.raises(VesselSegError):
            read_seeds(plain)
    with pytest.raises(VesselSegError, match="outside the image"):
        track_vessels(threshold_model(order=1), _image(_tree()), GEOMETRY, [TrackingSeed((500.0, 0.0, 0.0))])


def test_physical_to_index_inverts_index_to_physical_for_oblique_geometry():
    geometry = ImageGeometry((10, 20, 30), (2.0, 0.5, 0.7), (10.0, -5.0, 3.0), (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    index = np.array([3.0, 7.5, 12.25])
    assert np.allclose(physical_to_index(geometry, geometry.index_to_physical(index[None])[0]), index)


def test_track_cases_writes_the_outputs_of_full_volume_prediction(tmp_path):
    from vessel_seg.imageio import read_array, write_image
    from vessel_seg.inference.prediction_run import PredictionOptions, track_cases

    tree = _tree()
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(_image(tree)[0], GEOMETRY, folder / "tree_0000.nii.gz")
    options = PredictionOptions(use_tta=False, centerline=True)
    seconds = track_cases([threshold_model(order=1)], folder, tmp_path / "out", [ROOT], options)
    assert list(seconds) == ["tree"]
    mask, geometry = read_array(tmp_path / "out" / "tree.nii.gz")
    assert geometry.mismatch(GEOMETRY) is None and _centreline_capture(mask, tree) >= 0.95
    graph = json.loads((tmp_path / "out" / "tree_centerline.json").read_text())
    assert graph["nodes"] and graph["branches"]
    from vessel_seg.inference.provenance import ProvenanceLog, run_identity

    record = ProvenanceLog(tmp_path / "out")  # tracking leaves a record; a full-volume run would not reuse the mask
    assert "tree" in record._cases
    assert not record.made_by("tree", run_identity([threshold_model(order=1)], False, 0.5, "default"))
    write_image(_image(tree)[0], GEOMETRY, folder / "other_0000.nii.gz")
    with pytest.raises(VesselSegError, match="one image"):
        track_cases([threshold_model(order=1)], folder, tmp_path / "out2", [ROOT], options)


def test_tracking_follows_a_vessel_beyond_a_break_the_network_left():
    tree = _tree()
    image = _image(tree, other=False)
    image[0, :, :, 24:27] = 0.0  # a 3-voxel break in the trunk: the model predicts background across 1-2 voxels
    result = track_vessels(threshold_model(order=1), image, GEOMETRY, [ROOT])
    beyond = tree.copy()
    beyond[:, :, :40] = False  # the tree past the break
    assert _centreline_capture(result.mask, beyond) >= 0.95
