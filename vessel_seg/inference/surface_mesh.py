"""Surface meshes of binary masks, in physical millimetres, written as VTK XML PolyData or STL.

Coordinate convention: vertices are physical points ``(x, y, z)`` in mm in ITK's LPS frame, the
same frame as the image's origin and direction (what SimpleITK, ITK-SNAP and ParaView use for a
``.nii``/``.mha`` file). VTP and STL carry no coordinate header, so they are written in that frame
as-is: in ParaView the mesh overlays the image directly, and 3D Slicer (>= 4.11) assumes LPS for
model files that do not name a coordinate system (it converts to its internal RAS on load), so the
mesh overlays the volume read from the same image there too. The STL header also says
``SPACE=LPS``, the marker Slicer itself writes.

The VTP and STL writers are plain numpy (no VTK needed); VTP files use inline base64 binary data
arrays with a ``UInt64`` header, which VTK >= 6 and ParaView read.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import scipy.sparse as sp
from skimage.measure import marching_cubes

from vessel_seg import atomic
from vessel_seg.errors import ImageWriteError, VesselSegError
from vessel_seg.imageio import ImageGeometry
from vessel_seg.morphology import bounding_box

log = logging.getLogger(__name__)

SURFACE_EXTENSIONS = (".vtp", ".stl")


@dataclass
class SurfaceMesh:
    """A triangle mesh.

    Attributes:
        vertices: ``(N, 3)`` float64 physical points ``(x, y, z)`` in mm (ITK/LPS frame).
        triangles: ``(M, 3)`` int64 vertex indices, wound so that normals point out of the object.
    """

    vertices: np.ndarray
    triangles: np.ndarray

    def face_normals(self) -> np.ndarray:
        """``(M, 3)`` unit normals of the triangles (right-hand rule on their winding)."""
        v = self.vertices[self.triangles]
        n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        norm = np.linalg.norm(n, axis=1, keepdims=True)
        return n / np.where(norm > 0, norm, 1.0)

    def volume(self) -> float:
        """Enclosed volume in mm^3 (divergence theorem; exact for a closed, consistently wound mesh)."""
        v = self.vertices[self.triangles]
        return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; failures are :class:`ImageWriteError` naming the path."""
    try:
        return atomic.write_bytes_atomic(path, data)
    except OSError as exc:
        raise ImageWriteError(f"{path}: cannot write ({exc.strerror or exc}); check the folder and free space") from exc


def _vertex_adjacency(triangles: np.ndarray, num_vertices: int) -> sp.csr_matrix:
    """Row-normalised vertex adjacency (uniform Laplacian weights) of a triangle mesh."""
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    adj = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(num_vertices,) * 2).tocsr()
    adj.data[:] = 1.0  # duplicates (edges shared by two triangles) summed above
    degree = np.asarray(adj.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.maximum(degree, 1.0)) @ adj


def taubin_smooth(vertices: np.ndarray, triangles: np.ndarray, iterations: int = 10,
                  lam: float = 0.5, mu: float = -0.53) -> np.ndarray:
    """Taubin's lambda|mu smoothing: a low-pass filter that removes staircase noise without shrinking.

    Each iteration is a Laplacian step with weight ``lam`` followed by one with the negative weight
    ``mu`` (``|mu| > lam``), which undoes the shrinkage of the first (Taubin, SIGGRAPH 1995). Uniform
    weights make it commute with affine maps, so smoothing in voxel or physical space is the same.
    """
    if iterations <= 0 or len(triangles) == 0:
        return vertices
    mean_of_neighbours = _vertex_adjacency(triangles, len(vertices))
    v = vertices.copy()
    for _ in range(iterations):
        for weight in (lam, mu):
            v = v + weight * (mean_of_neighbours @ v - v)
    return v


def mask_to_surface(mask: np.ndarray, geometry: ImageGeometry, smoothing_iterations: int = 10) -> SurfaceMesh:
    """Triangulate the boundary of a binary mask in physical coordinates.

    Parameters
    ----------
    mask : (Z, Y, X) array
        Foreground where non-zero.
    geometry : ImageGeometry
        Placement of ``mask`` in physical space; vertices come out in mm, ITK/LPS ``(x, y, z)``.
    smoothing_iterations : int
        Taubin smoothing iterations (0 keeps the raw marching-cubes staircase).

    Returns
    -------
    SurfaceMesh
        Closed mesh (the mask is padded by one background voxel before marching cubes at level 0.5)
        with outward-pointing normals whatever the handedness of ``geometry.direction``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise VesselSegError(f"surface mesh: mask has shape {mask.shape}; give a (Z, Y, X) volume")
    if tuple(mask.shape) != tuple(geometry.shape):
        raise VesselSegError(f"surface mesh: mask shape {mask.shape} does not match its geometry {tuple(geometry.shape)}")
    fg = mask > 0
    if not fg.any():
        raise VesselSegError("surface mesh: the mask is empty (no foreground voxel); nothing to triangulate")
    # Work on the bounding box only: marching cubes cost grows with the volume, vessels are sparse.
    box = bounding_box(fg)
    lo = np.array([b.start for b in box])
    crop = np.pad(fg[box], 1).astype(np.float32)
    verts, faces, _, _ = marching_cubes(crop, level=0.5, allow_degenerate=False)
    verts = verts.astype(np.float64) + (lo - 1)  # back to full-volume voxel indices (z, y, x)
    verts = taubin_smooth(verts, faces, smoothing_iterations)
    mesh = SurfaceMesh(vertices=geometry.index_to_physical(verts), triangles=faces.astype(np.int64))
    if mesh.volume() < 0:  # the index->physical map may be a reflection (zyx->xyz swap, flipped axes)
        mesh.triangles = mesh.triangles[:, ::-1].copy()
    # Smoothing shrinks the surface a little: say which volume is which, so the mesh's is not read as the vessels'.
    voxel_mm3 = float(np.count_nonzero(fg)) * float(np.prod(geometry.spacing))
    log.info("surface mesh: %d vertices, %d triangles; the mesh encloses %.1f mm^3 (the mask's voxels: %.1f mm^3)",
             len(mesh.vertices), len(mesh.triangles), mesh.volume(), voxel_mm3)
    return mesh


def _b64_array(array: np.ndarray) -> str:
    """VTK inline binary: base64 of a UInt64 byte count, then base64 of the little-endian data."""
    raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return (base64.b64encode(np.array([len(raw)], dtype="<u8").tobytes())
            + base64.b64encode(raw)).decode("ascii")


_VTK_TYPES = {"f4": "Float32", "f8": "Float64", "i4": "Int32", "i8": "Int64", "u1": "UInt8"}


def _data_array(array: np.ndarray, name: str | None = None, components: int = 1) -> str:
    vtk_type = _VTK_TYPES[array.dtype.str[1:]]
    label = f" Name={quoteattr(name)}" if name else ""
    return (f'<DataArray type="{vtk_type}"{label} NumberOfComponents="{components}" format="binary">'
            f"{_b64_array(array)}</DataArray>\n")


def _cell_block(tag: str, cells: np.ndarray | list[np.ndarray] | None) -> tuple[str, int]:
    """``<Polys>``/``<Lines>`` element: a ``(M, K)`` array of equal cells, or a list of index arrays."""
    if cells is None or len(cells) == 0:
        return "", 0
    if isinstance(cells, np.ndarray) and cells.ndim == 2:
        connectivity = cells.astype(np.int64).ravel()
        offsets = np.arange(1, len(cells) + 1, dtype=np.int64) * cells.shape[1]
    else:
        connectivity = np.concatenate([np.asarray(c, dtype=np.int64).ravel() for c in cells])
        offsets = np.cumsum([np.asarray(c).size for c in cells]).astype(np.int64)
    body = _data_array(connectivity, "connectivity") + _data_array(offsets, "offsets")
    return f"<{tag}>\n{body}</{tag}>\n", len(cells)


def _attribute_block(tag: str, data: dict[str, np.ndarray] | None) -> str:
    """``<PointData>``/``<CellData>``: float arrays as Float32, integer arrays as Int64."""
    if not data:
        return ""
    arrays = []
    for name, values in data.items():
        values = np.asarray(values)
        values = values[:, None] if values.ndim == 1 else values.reshape(len(values), -1)
        values = values.astype(np.float32 if values.dtype.kind == "f" else np.int64)
        arrays.append(_data_array(values, name, values.shape[1]))
    return f"<{tag}>\n{''.join(arrays)}</{tag}>\n"


def polydata_to_vtp(points: np.ndarray, polys: np.ndarray | list[np.ndarray] | None = None,
                    lines: np.ndarray | list[np.ndarray] | None = None,
                    point_data: dict[str, np.ndarray] | None = None,
                    cell_data: dict[str, np.ndarray] | None = None) -> bytes:
    """Serialise points, polygons and polylines as a VTK XML PolyData (``.vtp``) document.

    ``polys`` and ``lines`` are ``(M, K)`` index arrays or lists of index arrays (one per cell);
    ``point_data`` arrays have one row per point, ``cell_data`` one per cell (lines first, then
    polygons: VTK's cell order). Points are stored as Float32.
    """
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    lines_xml, num_lines = _cell_block("Lines", lines)
    polys_xml, num_polys = _cell_block("Polys", polys)
    doc = (
        '<?xml version="1.0"?>\n'
        '<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" header_type="UInt64">\n<PolyData>\n'
        f'<Piece NumberOfPoints="{len(points)}" NumberOfVerts="0" NumberOfLines="{num_lines}" '
        f'NumberOfStrips="0" NumberOfPolys="{num_polys}">\n'
        + _attribute_block("PointData", point_data) + _attribute_block("CellData", cell_data)
        + "<Points>\n" + _data_array(points, "Points", 3) + "</Points>\n"
        + lines_xml + polys_xml + "</Piece>\n</PolyData>\n</VTKFile>\n"
    )
    return doc.encode("ascii")


def mesh_to_stl(mesh: SurfaceMesh, header: str = "vessel_seg surface mesh, mm, SPACE=LPS") -> bytes:
    """Binary STL: 80-byte header, triangle count, then normal + 3 vertices (float32) per triangle."""
    record = np.dtype([("normal", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    data = np.zeros(len(mesh.triangles), dtype=record)
    data["normal"] = mesh.face_normals()
    data["v"] = mesh.vertices[mesh.triangles]
    head = header.encode("ascii")[:80].ljust(80, b" ")
    return head + np.array([len(data)], dtype="<u4").tobytes() + data.tobytes()


def write_surface(mesh: SurfaceMesh, path: str | Path) -> Path:
    """Write ``mesh`` atomically as ``.vtp`` (VTK XML PolyData) or binary ``.stl``, by extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".vtp":
        data = polydata_to_vtp(mesh.vertices, polys=mesh.triangles)
    elif suffix == ".stl":
        data = mesh_to_stl(mesh)
    else:
        raise ImageWriteError(f"{path}: unsupported surface format {suffix or '(none)'}; use one of "
                              f"{', '.join(SURFACE_EXTENSIONS)}")
    write_bytes_atomic(path, data)
    log.info("wrote %s", path)
    return path
