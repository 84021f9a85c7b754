import json
import time

import cc3d
import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import euler_number

from vessel_seg.cli.generate_synthetic import main
from vessel_seg.dataset import DatasetInfo, list_cases, training_cases
from vessel_seg.dataset_conversion.synthetic import case_rng, generate_case, generate_dataset
from vessel_seg.dataset_conversion.synthetic_growth import TreeParams
from vessel_seg.dataset_conversion.synthetic_render import vessel_distance
from vessel_seg.dataset_conversion.synthetic_tree import VesselTree
from vessel_seg.errors import DatasetError
from vessel_seg.imageio import read_array
from vessel_seg.planners.cropping import nonzero_bbox

SPACING = (0.8, 0.5, 0.5)


@pytest.fixture(scope="module")
def ct_case():
    return generate_case(case_rng(0, 0), size=40, modality="ct")


@pytest.fixture(scope="module")
def mr_case():
    return generate_case(case_rng(0, 1), size=40, modality="mr")


def test_case_arrays_geometry_and_label_statistics(ct_case):
    image, label, geometry = ct_case.image, ct_case.label, ct_case.geometry
    assert image.shape == label.shape == (40, 40, 40) == geometry.shape
    assert image.dtype == np.float32 and label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
    assert geometry.spacing == SPACING and np.any(np.asarray(geometry.origin) != 0)
    assert 0.005 < label.mean() < 0.15
    components = cc3d.connected_components(label, connectivity=26)
    sizes = np.bincount(components.ravel())[1:]
    assert sizes.max() / sizes.sum() > 0.9
    assert abs(euler_number(label, connectivity=3) - 1) <= 2  # tree-like: vessels keep apart, few loops
    # Outside the body ellipse the image is exactly zero, so cropping to non-zero trims y or x.
    box = nonzero_bbox(image[None])
    assert box[0] == [0, 40] and (box[1] != [0, 40] or box[2] != [0, 40])
    assert not label[image == 0].any()


def test_label_radii_span_one_to_four_voxels(ct_case):
    label, tree = ct_case.label, ct_case.tree
    depth_vox = ndimage.distance_transform_edt(label, sampling=SPACING) / SPACING[1]  # in in-plane voxels
    assert 3.0 <= depth_vox.max() <= 5.0
    radii_vox = tree.radii_mm() / SPACING[1]
    assert radii_vox.min() == pytest.approx(1.0, abs=0.05) and radii_vox.max() > 3.5
    # The label's depth at the centreline follows the tree's radius: thin where thin, thick where thick.
    idx = np.round(tree.indices_zyx()).astype(int)
    inside = np.all((idx >= 0) & (idx < label.shape), axis=1)
    depth_at_nodes = depth_vox[tuple(idx[inside].T)]
    thin, thick = radii_vox[inside] <= 1.2, radii_vox[inside] >= 3.0
    assert np.median(depth_at_nodes[thin]) <= 1.5 and np.median(depth_at_nodes[thick]) >= 2.5


def test_tree_structure_and_json_round_trip(ct_case, tmp_path):
    tree, geometry = ct_case.tree, ct_case.geometry
    assert tree.bifurcations() and tree.end_points() and tree.kinds()[0] == "root"
    assert all(parent < child for parent, child in tree.edges)
    np.testing.assert_allclose(tree.positions_mm(), geometry.index_to_physical(tree.indices_zyx()), atol=1e-3)
    path = tree.save(tmp_path / "tree.json")
    data = json.loads(path.read_text())
    assert data["bifurcations"] == tree.bifurcations() and len(data["edges"]) == len(tree.nodes) - 1
    assert {n["kind"] for n in data["nodes"]} >= {"root", "bifurcation", "end", "segment"}
    back = VesselTree.load(path)
    assert back.edges == tree.edges and back.kinds() == tree.kinds()
    np.testing.assert_allclose(back.radii_mm(), tree.radii_mm())
    # The saved tree alone reproduces the label: voxel centres within the local radius of the centreline.
    sd, _ = vessel_distance(back, ct_case.label.shape, SPACING, band=1.0)
    np.testing.assert_array_equal(sd < 0, ct_case.label.astype(bool))
    data["nodes"][3]["parent"] = 7
    with pytest.raises(DatasetError, match="parents before children"):
        VesselTree.from_json(data, "bad.json")


def test_ct_contrast_and_unlabelled_bright_distractors(ct_case):
    image, label = ct_case.image, ct_case.label
    body = image != 0
    vessel_mean, background_mean = image[label == 1].mean(), image[body & (label == 0)].mean()
    assert 200 < vessel_mean < 500 and vessel_mean > background_mean + 150
    assert np.count_nonzero((image > 650) & (label == 0)) > 20  # bone-like blobs, not labelled


def test_mr_is_positive_with_bright_vessels(mr_case):
    image, label = mr_case.image, mr_case.label
    assert image.min() >= 0
    assert image[label == 1].mean() > 1.8 * image[(image != 0) & (label == 0)].mean()


def test_reproducible_and_seed_dependent_and_fast():
    start = time.perf_counter()
    a = generate_case(case_rng(5, 2), size=32)
    elapsed = time.perf_counter() - start
    b = generate_case(case_rng(5, 2), size=32)
    c = generate_case(case_rng(6, 2), size=32)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.tree.to_json() == b.tree.to_json()
    assert not np.array_equal(a.label, c.label)
    assert elapsed < 1.0


def test_pathologies_are_in_tree_and_label():
    params = TreeParams(aneurysm_probability=1.0, stenosis_probability=1.0)
    case = generate_case(case_rng(2, 1), size=48, params=params)
    (sac,), (stenosis,) = case.tree.aneurysms, case.tree.stenoses
    assert case.label[tuple(np.round(sac.index_zyx).astype(int))] == 1
    assert sac.radius_mm > case.tree.nodes[sac.node].radius_mm
    radii, parent = case.tree.radii_mm(), case.tree.nodes[stenosis.node].parent
    assert 0.3 < stenosis.severity < 0.7 and radii[stenosis.node] < 0.8 * radii[case.tree.nodes[parent].parent]


def test_random_flips_and_rejections():
    case = generate_case(case_rng(1, 0), size=24, random_flips=True, modality="mr")
    direction = np.asarray(case.geometry.direction).reshape(3, 3)
    assert np.allclose(np.abs(direction), np.eye(3))
    np.testing.assert_allclose(case.tree.positions_mm(), case.geometry.index_to_physical(case.tree.indices_zyx()), atol=1e-3)
    with pytest.raises(DatasetError, match="modality"):
        generate_case(case_rng(1, 0), size=24, modality="us")
    with pytest.raises(DatasetError, match="too small"):
        generate_case(case_rng(1, 0), size=4)


def test_dataset_layout_loads(data_roots):
    folder = generate_dataset(7, num_cases=2, num_test_cases=1, size=24, seed=3)
    assert folder == data_roots["raw"] / "Dataset007_Synthetic"
    info, cases = training_cases(folder)
    assert info.channel_names == {"0": "CT"} and info.labels == {"background": 0, "vessel": 1}
    assert info.num_training == 2 and info.file_ending == ".nii.gz" and info.is_ct(0)
    assert [c.case_id for c in cases] == ["synth_000", "synth_001"]
    test_cases = list_cases(folder / "imagesTs", info, folder / "labelsTs")
    assert [c.case_id for c in test_cases] == ["synth_002"]
    image, geometry = read_array(cases[0].images[0])
    label, label_geometry = read_array(cases[0].label)
    expected = generate_case(case_rng(3, 0), size=24)
    np.testing.assert_allclose(image, expected.image, atol=1e-3)
    np.testing.assert_array_equal(label, expected.label)
    assert geometry.matches(expected.geometry) and label_geometry.matches(expected.geometry)
    tree = VesselTree.load(folder / "trees" / "synth_000.json")
    assert len(tree.nodes) == len(expected.tree.nodes)
    assert sorted(p.name for p in data_roots["raw"].iterdir()) == ["Dataset007_Synthetic"]


def test_cli_writes_mr_and_refuses_overwrite(data_roots, capsys):
    args = ["-d", "8", "--cases", "1", "--test-cases", "0", "--size", "20", "--modality", "mr", "--name", "Tiny"]
    assert main(args) == 0
    folder = data_roots["raw"] / "Dataset008_Tiny"
    assert DatasetInfo.load(folder / "dataset.json").channel_names == {"0": "MRA"}
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already exists" in err and "--overwrite" in err and "Dataset008_Tiny" in err
    assert main([*args, "--overwrite", "--seed", "4"]) == 0
    assert main(["-d", "8", "--cases", "1", "--name", "Other"]) == 2
    assert "already used" in capsys.readouterr().err
