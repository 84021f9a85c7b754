"""Metrics against hand-built cases and independent scikit-image / scipy computations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from skimage.morphology import skeletonize

from vessel_seg.evaluation.metrics import (
    METRIC_NAMES,
    assd,
    betti_errors,
    betti_numbers,
    cldice,
    component_stats,
    compute_metrics,
    dice,
    hd95,
    precision,
    recall,
    skeleton,
    vessel_weight_map,
    vscore,
)

SHAPE = (24, 20, 20)


def tube(shape=SHAPE, centre=(10, 10), width=5, z=(2, 22)) -> np.ndarray:
    """A straight square-section tube along z (odd widths: scikit-image thins even ones to nothing)."""
    mask = np.zeros(shape, bool)
    lo = [c - width // 2 for c in centre]
    mask[z[0] : z[1], lo[0] : lo[0] + width, lo[1] : lo[1] + width] = True
    return mask


def capsule(shape, a, b, radius) -> np.ndarray:
    """Voxels within ``radius`` of the segment ``a``-``b`` (voxel units)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    a, b = np.asarray(a, float), np.asarray(b, float)
    t = np.clip(((grid - a) @ (b - a)) / np.dot(b - a, b - a), 0, 1)
    return np.linalg.norm(grid - (a + t[..., None] * (b - a)), axis=-1) <= radius


def y_tree(shape=(40, 40, 40)) -> np.ndarray:
    trunk = capsule(shape, (20, 20, 2), (20, 20, 20), 3.0)
    left = capsule(shape, (20, 20, 20), (20, 8, 36), 1.5)
    right = capsule(shape, (20, 20, 20), (20, 32, 36), 1.5)
    return trunk | left | right


def surface_ref(mask: np.ndarray) -> np.ndarray:
    """Independent surface: mask minus its 6-connected erosion, border counted as background."""
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))


def directed_ref(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """Scipy EDT distances from a's surface voxels to b's surface."""
    return ndimage.distance_transform_edt(~surface_ref(b), sampling=spacing)[surface_ref(a)]


def cldice_ref(p: np.ndarray, l: np.ndarray) -> float:
    sp, sl = skeletonize(p), skeletonize(l)
    tprec, tsens = (sp & l).sum() / sp.sum(), (sl & p).sum() / sl.sum()
    return 2 * tprec * tsens / (tprec + tsens)


def test_identical_tube_is_perfect():
    t = tube()
    m = compute_metrics(t.astype(np.uint8), t.astype(np.uint8), (0.5, 0.5, 0.5))
    assert list(m) == [1] and list(m[1]) == list(METRIC_NAMES)
    r = m[1]
    assert r["dice"] == r["recall"] == r["precision"] == r["cldice"] == r["vscore"] == 1.0
    assert r["hd95_mm"] == r["assd_mm"] == 0.0
    assert r["betti0_error"] == r["betti1_error"] == 0 and r["components_pred"] == 1
    assert r["largest_component_share"] == 1.0


def test_shifted_tube_overlap_and_distances_agree_with_scipy():
    ref, pred = tube(), np.roll(tube(), 1, axis=2)  # 5x5 section shifted by one voxel in x
    spacing = (2.0, 0.7, 0.5)
    n = ref.sum()
    assert dice(pred, ref) == pytest.approx(2 * (n * 4 / 5) / (2 * n))
    assert recall(pred, ref) == precision(pred, ref) == pytest.approx(0.8)
    d_pl, d_lp = directed_ref(pred, ref, spacing), directed_ref(ref, pred, spacing)
    assert hd95(pred, ref, spacing) == pytest.approx(max(np.percentile(d_pl, 95), np.percentile(d_lp, 95)))
    assert assd(pred, ref, spacing) == pytest.approx((d_pl.sum() + d_lp.sum()) / (d_pl.size + d_lp.size))
    assert cldice(pred, ref) == pytest.approx(cldice_ref(pred, ref))


def test_hd95_uses_spacing_in_array_order():
    a, b = np.zeros((10, 10, 10), bool), np.zeros((10, 10, 10), bool)
    a[2, 5, 5], b[5, 5, 5] = True, True  # three voxels apart along z
    assert hd95(a, b, (2.0, 1.0, 0.5)) == pytest.approx(6.0)
    assert assd(a, b, (2.0, 1.0, 0.5)) == pytest.approx(6.0)
    c = np.zeros((10, 10, 10), bool)
    c[2, 5, 9] = True  # four voxels apart along x
    assert hd95(a, c, (2.0, 1.0, 0.5)) == pytest.approx(2.0)


def test_broken_tube_topology_and_centreline():
    ref = tube()
    pred = ref.copy()
    pred[11:13] = False  # a 2-slice gap
    m = compute_metrics(pred.astype(np.uint8), ref.astype(np.uint8))[1]
    assert m["recall"] == pytest.approx(18 / 20) and m["precision"] == 1.0
    assert m["betti0_error"] == 1 and m["betti1_error"] == 0
    assert m["components_pred"] == 2 and m["components_ref"] == 1
    assert m["largest_component_share"] == pytest.approx(9 / 18)
    assert m["cldice"] == pytest.approx(cldice_ref(pred, ref))
    assert m["cldice"] < 1.0
    assert m["hd95_mm"] > 0


def test_y_bifurcation_missing_branch():
    ref = y_tree()
    assert betti_numbers(ref) == (1, 0, 0)
    pred = ref & ~capsule(ref.shape, (20, 20, 24), (20, 32, 36), 2.5)  # drop most of one branch
    # The prediction lies inside the reference: topological precision is 1.
    assert precision(pred, ref) == 1.0
    assert cldice(pred, ref) == pytest.approx(cldice_ref(pred, ref))
    sl = skeletonize(ref)
    tsens = (sl & pred).sum() / sl.sum()
    assert cldice(pred, ref) == pytest.approx(2 * tsens / (1 + tsens), rel=0.05)


def test_empty_mask_conventions():
    empty, t = np.zeros(SHAPE, bool), tube()
    diagonal = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(SHAPE, (1.0, 2.0, 3.0), strict=True))))
    for f in (dice, recall, precision, cldice, vscore):
        assert f(empty, empty) == 1.0
        assert f(empty, t) == 0.0
        assert f(t, empty) == 0.0
    assert hd95(empty, empty) == assd(empty, empty) == 0.0
    assert hd95(t, empty, (1.0, 2.0, 3.0)) == pytest.approx(diagonal)
    assert assd(empty, t, (1.0, 2.0, 3.0)) == pytest.approx(diagonal)
    assert betti_errors(empty, empty) == (0, 0)
    assert betti_errors(empty, t) == (1, 0)
    assert component_stats(empty) == (0, 0.0)
    m = compute_metrics(np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8))
    assert list(m) == [1] and m[1]["dice"] == 1.0 and m[1]["hd95_mm"] == 0.0
    assert all(np.isfinite(v) for v in m[1].values())


def test_betti_numbers_on_torus_shell_blobs_and_2d_ring():
    z, y, x = np.mgrid[:16, :40, :40]
    torus = (np.hypot(y - 20, x - 20) - 12) ** 2 + (z - 8) ** 2 <= 9
    assert betti_numbers(torus) == (1, 1, 0)
    r2 = (z - 8) ** 2 + (y - 20) ** 2 + (x - 20) ** 2
    assert betti_numbers((r2 <= 49) & (r2 > 9)) == (1, 0, 1)  # hollow ball: one cavity
    blobs = np.zeros((16, 40, 40), bool)
    blobs[2:6, 2:6, 2:6] = True
    blobs[8:14, 20:30, 20:30] = True
    assert betti_numbers(blobs) == (2, 0, 0)
    assert component_stats(blobs) == (2, pytest.approx(600 / 664))
    ring = (np.hypot(y[0] - 20, x[0] - 20) < 10) & (np.hypot(y[0] - 20, x[0] - 20) > 5)
    assert betti_numbers(ring) == betti_numbers(ring[None]) == (1, 1, 0)
    disk = np.hypot(y - 20, x - 20) < 14
    assert betti_errors(torus, disk & (np.abs(z - 8) <= 3)) == (0, 1)
    # β0 agrees with scipy's 26-connected labelling.
    labelled = ndimage.label(blobs | torus, structure=np.ones((3, 3, 3)))[1]
    assert betti_numbers(blobs | torus)[0] == labelled


def test_vscore_weights_proximal_more_than_distal():
    shape = (24, 24, 120)
    trunk = capsule(shape, (12, 12, 2), (12, 12, 40), 5.0)
    branch = capsule(shape, (12, 12, 40), (12, 12, 117), 1.5)
    ref = trunk | branch
    weights = vessel_weight_map(ref, (1.0, 1.0, 1.0))
    assert weights[12, 12, 20] == pytest.approx(5.0, abs=1.0)  # trunk radius
    assert weights[12, 12, 100] == pytest.approx(1.5, abs=1.0)  # branch radius
    assert (weights[ref] > 0).all() and (weights[~ref] == 0).all()
    # Remove the same number of voxels from the trunk (short piece) and from the branch (long piece).
    miss_trunk = ref.copy()
    miss_trunk[:, :, 10:14] &= ~trunk[:, :, 10:14]
    n_removed = (ref & ~miss_trunk).sum()
    per_slice = branch[:, :, 80].sum()
    length = int(np.ceil(n_removed / per_slice))
    miss_branch = ref.copy()
    miss_branch[:, :, 60 : 60 + length] = False
    assert (ref & ~miss_branch).sum() >= n_removed
    assert recall(miss_trunk, ref) >= recall(miss_branch, ref)
    assert vscore(miss_trunk, ref) < vscore(miss_branch, ref)
    assert vscore(ref, ref) == 1.0


def test_compute_metrics_per_label():
    ref = np.zeros(SHAPE, np.uint8)
    ref[tube()] = 1
    ref[tube(centre=(3, 3), width=3)] = 2
    pred = ref.copy()
    pred[pred == 2] = 0
    m = compute_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert sorted(m) == [1, 2]
    assert m[1]["dice"] == 1.0 and m[2]["dice"] == 0.0 and m[2]["recall"] == 0.0
    only = compute_metrics(pred, ref, labels=[2])
    assert list(only) == [2] and only[2] == m[2]
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(pred[:-1], ref)


def test_even_thickness_tubes_keep_a_centreline():
    # skimage's Lee thinning deletes these whole (its issue #3757); our skeleton keeps their core.
    z, y, x = np.mgrid[:30, :20, :20]
    for radius in (1.0, 2.5, 4.5):
        cylinder = (np.hypot(y - 9.5, x - 9.5) <= radius) & (z > 2) & (z < 27)
        assert skeletonize(cylinder).sum() == 0
        skel = skeleton(cylinder)
        core = np.argwhere(skel)
        assert skel.sum() > 0 and (skel <= cylinder).all()
        assert core[:, 1:].min() >= 9 and core[:, 1:].max() <= 10  # the central 2x2 voxels
        assert np.ptp(core[:, 0]) >= 22 - 2 * radius  # along the length, less the end caps
        assert cldice(cylinder, cylinder) == 1.0
    # A component that thins normally keeps the plain skimage skeleton.
    assert (skeleton(tube()) == skeletonize(tube())).all()


def test_2d_images_use_2d_skeleton():
    ref = np.zeros((1, 30, 30), bool)
    ref[0, 5:25, 13:18] = True
    pred = ref.copy()
    pred[0, 14:16] = False
    expected = cldice_ref(pred[0], ref[0])
    assert cldice(pred, ref) == pytest.approx(expected)
    m = compute_metrics(pred.astype(np.uint8), ref.astype(np.uint8), (999.0, 0.5, 0.5))[1]
    assert m["cldice"] == pytest.approx(expected) and m["betti0_error"] == 1
    assert m["hd95_mm"] < 5  # the 999 mm z spacing of 2D images plays no part


masks = arrays(np.bool_, (5, 6, 7), elements=st.booleans())
spacings = st.tuples(*[st.floats(0.3, 3.0)] * 3)


@settings(max_examples=30, deadline=None)
@given(a=masks, b=masks, spacing=spacings)
def test_symmetry_and_bounds(a, b, spacing):
    assert dice(a, b) == pytest.approx(dice(b, a))
    assert cldice(a, b) == pytest.approx(cldice(b, a))
    assert hd95(a, b, spacing) == pytest.approx(hd95(b, a, spacing))
    assert assd(a, b, spacing) == pytest.approx(assd(b, a, spacing))
    assert betti_errors(a, b) == betti_errors(b, a)
    assert recall(a, b) == pytest.approx(precision(b, a))
    for value in (dice(a, b), cldice(a, b), recall(a, b), precision(a, b), vscore(a, b, spacing)):
        assert 0.0 <= value <= 1.0
    assert hd95(a, b, spacing) >= 0 and assd(a, b, spacing) >= 0
    m = compute_metrics(a.astype(np.uint8), b.astype(np.uint8), spacing, labels=[1])[1]
    assert m["dice"] == pytest.approx(dice(a, b)) and m["cldice"] == pytest.approx(cldice(a, b))
    assert m["hd95_mm"] == pytest.approx(hd95(a, b, spacing)) and m["vscore"] == pytest.approx(vscore(a, b, spacing))
