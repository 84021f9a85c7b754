"""Simulation-ready outputs: surface meshes, centreline graphs and MIP previews."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial import cKDTree
from training_helpers import read_vtp

from vessel_seg.dataset_conversion.synthetic import generate_case
from vessel_seg.errors import VesselSegError
from vessel_seg.imageio import ImageGeometry
from vessel_seg.inference.centerline import extract_centerline, save_centerline
from vessel_seg.inference.preview import make_mip_figure, save_mip_preview
from vessel_seg.inference.surface_mesh import mask_to_surface, write_surface

# Anisotropic, off-origin, with two flipped axes: index -> physical is not a plain scaling.
GEOMETRY = ImageGeometry(shape=(24, 40, 36), spacing=(1.5, 0.7, 0.5), origin=(10.0, -20.0, 5.0),
                         direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))


def _physical_box(mask: np.ndarray, geometry: ImageGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Physical bounding box of the mask's voxels grown by half a voxel (its true outer faces)."""
    idx = np.argwhere(mask)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=float)
    lo, hi = idx.min(0) - 0.5, idx.max(0) + 0.5
    pts = geometry.index_to_physical(lo + corners * (hi - lo))
    return pts.min(0), pts.max(0)


def _cylinder() -> np.ndarray:
    z, y, x = np.mgrid[:24, :40, :36]
    mask = ((y - 20) * 0.7) ** 2 + ((x - 15) * 0.5) ** 2 <= 5.0**2
    mask[:3] = mask[-4:] = False
    return mask


def _read_stl(path) -> np.ndarray:
    raw = path.read_bytes()
    count = int(np.frombuffer(raw[80:84], "<u4")[0])
    assert len(raw) == 84 + 50 * count
    record = np.dtype([("normal", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    return np.frombuffer(raw[84:], record)


@pytest.mark.parametrize("shape_name", ["cylinder", "sphere"])
def test_mesh_lies_on_the_mask_in_physical_space(shape_name, tmp_path):
    if shape_name == "cylinder":
        mask = _cylinder()
    else:
        z, y, x = np.mgrid[:24, :40, :36]
        mask = ((z - 12) * 1.5) ** 2 + ((y - 20) * 0.7) ** 2 + ((x - 18) * 0.5) ** 2 <= 8.0**2
    mesh = mask_to_surface(mask, GEOMETRY)
    lo, hi = _physical_box(mask, GEOMETRY)
    voxel_xyz = np.asarray(GEOMETRY.spacing[::-1])
    assert np.all(np.abs(mesh.vertices.min(0) - lo) <= voxel_xyz)
    assert np.all(np.abs(mesh.vertices.max(0) - hi) <= voxel_xyz)
    # Closed, outward-wound, volume close to the voxel count despite the axis flips and smoothing.
    voxel_volume = mask.sum() * np.prod(GEOMETRY.spacing)
    assert mesh.volume() == pytest.approx(voxel_volume, rel=0.08)
    centre = mesh.vertices.mean(0)
    tri_centres = mesh.vertices[mesh.triangles].mean(1)
    outward = np.einsum("ij,ij->i", mesh.face_normals(), tri_centres - centre)
    assert np.mean(outward > 0) > 0.95

    vtp = write_surface(mesh, tmp_path / "out" / "surface.vtp")
    arrays = read_vtp(vtp)
    np.testing.assert_allclose(arrays["Points"], mesh.vertices, atol=1e-4)
    np.testing.assert_array_equal(arrays["connectivity"].reshape(-1, 3), mesh.triangles)
    stl = _read_stl(write_surface(mesh, tmp_path / "surface.stl"))
    np.testing.assert_allclose(stl["v"], mesh.vertices[mesh.triangles], atol=1e-4)
    assert not list(tmp_path.rglob("*.tmp"))


def test_vtk_reads_the_files(tmp_path):
    pytest.importorskip("vtkmodules")
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOGeometry import vtkSTLReader
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

    mesh = mask_to_surface(_cylinder(), GEOMETRY)
    for reader_type, name in ((vtkXMLPolyDataReader, "s.vtp"), (vtkSTLReader, "s.stl")):
        reader = reader_type()
        reader.SetFileName(str(write_surface(mesh, tmp_path / name)))
        reader.Update()
        assert reader.GetOutput().GetNumberOfPolys() == len(mesh.triangles)
    case = generate_case(np.random.default_rng(1), size=32)
    graph = extract_centerline(case.label, case.geometry)
    save_centerline(graph, None, tmp_path / "cl.vtp")
    reader = vtkXMLPolyDataReader()
    reader.SetFileName(str(tmp_path / "cl.vtp"))
    reader.Update()
    out = reader.GetOutput()
    assert out.GetNumberOfLines() == len(graph.branches)
    radius = vtk_to_numpy(out.GetPointData().GetArray("radius"))
    np.testing.assert_allclose(radius, np.concatenate([b.radii_mm for b in graph.branches]), rtol=1e-5)


def test_mesh_rejects_empty_mask_and_unknown_format(tmp_path):
    with pytest.raises(VesselSegError, match="empty"):
        mask_to_surface(np.zeros(GEOMETRY.shape, bool), GEOMETRY)
    mesh = mask_to_surface(_cylinder(), GEOMETRY, smoothing_iterations=0)
    with pytest.raises(VesselSegError, match="unsupported surface format"):
        write_surface(mesh, tmp_path / "surface.obj")


def _tube(mask: np.ndarray, start, end, radius: float) -> None:
    """Set voxels within ``radius`` (voxels) of the segment ``start``-``end`` (voxel indices)."""
    idx = np.indices(mask.shape).reshape(3, -1).T.astype(float)
    a, b = np.asarray(start, float), np.asarray(end, float)
    t = np.clip((idx - a) @ (b - a) / np.dot(b - a, b - a), 0, 1)
    dist = np.linalg.norm(idx - (a + t[:, None] * (b - a)), axis=1)
    mask.reshape(-1)[dist <= radius] = True


def test_y_shape_gives_one_branch_point_and_root_at_thickest_end(tmp_path):
    geometry = ImageGeometry(shape=(48, 40, 40), spacing=(1.0, 0.8, 0.8), origin=(-5.0, 3.0, 7.0))
    mask = np.zeros(geometry.shape, bool)
    _tube(mask, (4, 20, 20), (24, 20, 20), 4.0)  # thick trunk
    _tube(mask, (24, 20, 20), (43, 8, 10), 2.2)
    _tube(mask, (24, 20, 20), (43, 32, 30), 2.2)
    graph = extract_centerline(mask, geometry)
    assert len(graph.branch_points()) == 1
    assert len(graph.end_points()) == 3
    assert len(graph.branches) == 3
    root = graph.nodes[graph.root]
    assert root.kind == "root" and root.index_zyx[0] < 12  # the trunk's free end
    bp = graph.nodes[graph.branch_points()[0]]
    assert np.linalg.norm(np.subtract(bp.index_zyx, (24, 20, 20))) < 4
    trunk = next(b for b in graph.branches if graph.root in (b.start, b.end))
    assert trunk.mean_radius_mm > 1.4 * max(b.mean_radius_mm for b in graph.branches if b is not trunk)

    save_centerline(graph, tmp_path / "cl.json", tmp_path / "cl.vtp")
    data = json.loads((tmp_path / "cl.json").read_text())
    assert sorted(n["kind"] for n in data["nodes"]) == ["branch", "end", "end", "root"]
    for b in data["branches"]:
        points = np.asarray(b["points_mm"])
        length = np.linalg.norm(np.diff(points, axis=0), axis=1).sum()
        assert b["length_mm"] == pytest.approx(length, rel=1e-3)
        np.testing.assert_allclose(points[0], data["nodes"][b["start"]]["position_mm"], atol=1e-3)
    arrays = read_vtp(tmp_path / "cl.vtp")
    assert len(arrays["radius"]) == len(arrays["Points"]) == sum(len(b["points_mm"]) for b in data["branches"])


@pytest.mark.parametrize("seed", [1, 2])
def test_branch_points_match_the_synthetic_tree(seed):
    case = generate_case(np.random.default_rng(seed), size=48)
    graph = extract_centerline(case.label, case.geometry)
    truth = case.tree.positions_mm()[case.tree.branch_points()]
    found = np.array([graph.nodes[i].position_mm for i in graph.branch_points()])
    tolerance = 3 * max(case.geometry.spacing)
    recall = np.mean(cKDTree(found).query(truth)[0] <= tolerance)
    precision = np.mean(cKDTree(truth).query(found)[0] <= tolerance)
    assert recall >= 0.7 and precision >= 0.9, (recall, precision)
    assert 0.6 * len(truth) <= len(found) <= 1.3 * len(truth)
    # The inlet is the tree's root (the thickest vessel), found within a few voxels.
    root = np.asarray(graph.nodes[graph.root].position_mm)
    assert np.linalg.norm(root - case.tree.nodes[0].position_mm) <= 2 * tolerance


def test_closed_ring_is_kept_as_one_loop_branch():
    geometry = ImageGeometry(shape=(12, 30, 30), spacing=(1.0, 1.0, 1.0))
    z, y, x = np.mgrid[:12, :30, :30]
    ring = (np.hypot(y - 15, x - 15) - 9) ** 2 + (z - 6) ** 2 <= 2.5**2
    graph = extract_centerline(ring, geometry)
    assert [n.kind for n in graph.nodes] == ["loop"] and graph.root == -1
    assert graph.branches[0].length_mm == pytest.approx(2 * np.pi * 9, rel=0.1)


def test_centerline_rejects_empty_mask():
    with pytest.raises(VesselSegError, match="empty"):
        extract_centerline(np.zeros(GEOMETRY.shape, np.uint8), GEOMETRY)


def test_mip_preview_has_three_panels_with_physical_aspect(tmp_path):
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    case = generate_case(np.random.default_rng(0), size=(24, 32, 32), spacing=(1.6, 0.5, 0.5))
    fig = make_mip_figure(case.image, case.label, case.geometry, title="synth")
    assert len(fig.axes) == 3
    # Rows z (1.6 mm) vs columns x (0.5 mm): the z-rows panel is drawn 3.2x taller per pixel.
    assert fig.axes[1].get_aspect() == pytest.approx(3.2)
    assert fig.axes[0].get_aspect() == pytest.approx(1.0)
    assert len(fig.axes[0].images) == 2  # grey MIP + colour overlay
    plt.close(fig)
    path = save_mip_preview(case.image, case.label.astype(np.float32), case.geometry, tmp_path / "p" / "mip.png")
    pixels = mpimg.imread(path)
    assert pixels.shape[1] > 2 * pixels.shape[0]
    assert not list(tmp_path.rglob("*.tmp"))
