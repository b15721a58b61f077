"""The non-negative pixel-driven projector pair: exact adjoint, non-negative entries that
keep each pixel's mass, and the geometry of the NUFFT pair (orientation, CoR, sizes)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from stages.recon import pixel_projector
from stages.recon.pixel_projector import PixelProjector, pixel_matrix
from stages.recon.projector import Projector
from streamer.errors import StageError
from tests.stages.phantoms import ASYMMETRIC, sinogram, truth, uniform_angles


def _rel(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize(
    ("size", "cols", "angles", "center", "rows"),
    [
        (64, 64, uniform_angles(50), 31.5, 1),  # even, centred
        (65, 70, uniform_angles(37, 360.0), 36.2, 3),  # odd, off-centre, 360°
        (48, 80, np.sort(np.random.default_rng(1).uniform(0, 180, 29)), 45.7, 2),  # irregular
        (96, 40, uniform_angles(20), 19.5, 2),  # slice wider than the detector
    ],
)
def test_adjoint_is_exact(size: int, cols: int, angles: npt.NDArray[np.float64],
                          center: float, rows: int) -> None:
    """<A x, y> = <x, Aᵀ y> to 1e-4 relative (measured: < 1e-5, float32 sums)."""
    rng = np.random.default_rng(size)
    projector = PixelProjector(angles, cols, size, center, rows)
    x = rng.standard_normal((rows, size, size)).astype(np.float32)
    y = rng.standard_normal((rows, len(angles), cols)).astype(np.float32)
    left = float(np.vdot(projector.forward(x).astype(np.float64), y))
    right = float(np.vdot(x.astype(np.float64), projector.adjoint(y)))
    assert abs(left - right) <= 1e-4 * abs(left)


def test_entries_are_non_negative_and_keep_each_pixels_mass() -> None:
    """Two entries in [0, 1] per pixel and angle; a pixel the detector sees whole at an
    angle puts exactly its value on it (its column of A sums to 1 per angle)."""
    n, cols, angles = 32, 48, uniform_angles(24)
    matrix = pixel_matrix(angles, cols, n, (cols - 1) / 2)
    assert matrix.data.min() >= 0.0 and matrix.data.max() <= 1.0
    assert matrix.nnz <= 2 * len(angles) * n * n
    per_angle = np.asarray(matrix.sum(axis=0)).ravel() / len(angles)
    np.testing.assert_allclose(per_angle, 1.0, atol=1e-6)  # every pixel inside the detector
    # a narrow detector loses the pixels that project beside it, never adds mass
    narrow = pixel_matrix(angles, 16, n, 7.5)
    assert np.asarray(narrow.sum(axis=0)).max() <= len(angles) + 1e-4


@pytest.mark.parametrize(("n", "cor"), [(128, None), (128, 70.3), (97, 44.0)])
def test_forward_agrees_with_the_nufft_projector(n: int, cor: float | None) -> None:
    """A(phantom) against the NUFFT A(phantom) within 1.5 % rel. L2 (measured 0.8-0.9 %)
    and against the exact line integrals within 2 % (measured 1.1-1.3 %); the slice
    flipped vertically is 24 % off: same orientation, CoR and pixel centres."""
    angles = uniform_angles(180)
    center = (n - 1) / 2 if cor is None else cor
    image = truth(ASYMMETRIC, n, radius=0.4 * n)
    exact = sinogram(ASYMMETRIC, angles, n, radius=0.4 * n, cor=cor)
    pixel = PixelProjector(angles, n, n, center, image.shape[0])
    nufft = Projector(angles, n, n, center, image.shape[0])
    ours = pixel.forward(image)
    assert ours.min() >= 0.0
    assert _rel(ours, nufft.forward(image)) < 0.015
    assert _rel(ours, exact) < 0.02
    flipped = pixel.forward(np.ascontiguousarray(image[:, ::-1]))
    assert _rel(flipped, exact) > 0.1


def test_bad_shapes_and_oversized_matrices_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    projector = PixelProjector(uniform_angles(10), 16, 16, 7.5, 2)
    with pytest.raises(StageError, match=r"image: expected shape \(2, 16, 16\), got"):
        projector.forward(np.zeros((1, 16, 16), dtype=np.float32))
    with pytest.raises(StageError, match=r"sinogram: expected shape \(2, 10, 16\)"):
        projector.adjoint(np.zeros((2, 11, 16), dtype=np.float32))
    monkeypatch.setattr(pixel_projector, "MAX_ENTRIES", 1000)
    with pytest.raises(StageError, match="expected at most 1,000 matrix entries"):
        PixelProjector(uniform_angles(10), 16, 16, 7.5, 1)


def test_a_matrix_built_in_chunks_of_pixel_rows_is_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    angles = uniform_angles(25, 360.0)
    whole = pixel_matrix(angles, 30, 24, 14.2)
    monkeypatch.setattr(pixel_projector, "CHUNK_ENTRIES", 2 * 25 * 24 * 3)  # 3 pixel rows
    chunked = pixel_matrix(angles, 30, 24, 14.2)
    assert chunked.shape == whole.shape == (25 * 30, 24 * 24)
    assert abs(chunked - whole).max() == 0.0


GEOMETRIES = [
    (64, 64, uniform_angles(50), 31.5, 2),  # even, centred (the corners leave the detector)
    (65, 70, uniform_angles(37, 360.0), 36.2, 3),  # odd, off-centre, 360°
    (96, 40, uniform_angles(20), 19.5, 2),  # slice wider than the detector
]


@pytest.mark.parametrize(("size", "cols", "angles", "center", "rows"), GEOMETRIES)
def test_matrix_free_pair_is_the_matrix_pair_with_an_exact_adjoint(
        size: int, cols: int, angles: npt.NDArray[np.float64], center: float,
        rows: int) -> None:
    """Angle by angle without the matrix: the same entries, so ``A x`` equals the matrix
    product exactly (same summation order) and ``Aᵀ y`` to float32 rounding (measured
    < 1e-6 of its maximum); ``<A x, y> = <x, Aᵀ y>`` to 1e-4 relative (measured < 2e-6);
    ``forward_adjoint`` is ``Aᵀ f(A x)`` with each angle built once."""
    rng = np.random.default_rng(size)
    matrix = PixelProjector(angles, cols, size, center, rows, matrix_free=False)
    free = PixelProjector(angles, cols, size, center, rows, matrix_free=True)
    assert free.matrix_free and not matrix.matrix_free
    x = rng.standard_normal((rows, size, size)).astype(np.float32)
    y = rng.standard_normal((rows, len(angles), cols)).astype(np.float32)
    np.testing.assert_array_equal(free.forward(x), matrix.forward(x))
    expected = matrix.adjoint(y)
    np.testing.assert_allclose(free.adjoint(y), expected, rtol=0,
                               atol=1e-5 * np.abs(expected).max())
    left = float(np.vdot(free.forward(x).astype(np.float64), y))
    right = float(np.vdot(x.astype(np.float64), free.adjoint(y)))
    assert abs(left - right) <= 1e-4 * abs(left)
    squared = free.forward_adjoint(x, lambda ax, _: ax * ax)
    reference = matrix.adjoint(matrix.forward(x) ** 2)
    np.testing.assert_allclose(squared, reference, rtol=0,
                               atol=1e-5 * np.abs(reference).max())
    with pytest.raises(StageError, match=r"projections at angle 0: expected shape"):
        free.forward_adjoint(x, lambda ax, _: ax[:1])


def test_the_matrix_is_left_out_above_its_limit_at_n_1024() -> None:
    """N = 1024 with 1200 angles (2.5 billion entries, 30 GB as a matrix, refused by
    ``pixel_matrix``) goes angle by angle: nothing is built up front, and one angle's
    forward and adjoint equal its own matrix's."""
    angles = uniform_angles(1200)
    projector = PixelProjector(angles, 1024, 1024, 511.5, 1)
    assert projector.matrix_free
    assert pixel_projector.MAX_ENTRIES < 2 * 1200 * 1024**2
    one = PixelProjector(angles[7:8], 1024, 1024, 511.5, 1, matrix_free=True)
    reference = PixelProjector(angles[7:8], 1024, 1024, 511.5, 1, matrix_free=False)
    x = np.random.default_rng(3).random((1, 1024, 1024), dtype=np.float32)
    np.testing.assert_array_equal(one.forward(x), reference.forward(x))
    y = one.forward(x)
    np.testing.assert_allclose(one.adjoint(y), reference.adjoint(y), rtol=1e-6, atol=1e-6)


def test_the_cache_builds_each_matrix_once_per_geometry() -> None:
    from stages.recon.pixel_projector import PixelMatrixCache

    cache = PixelMatrixCache()
    angles = uniform_angles(12)
    first = PixelProjector(angles, 20, 16, 9.5, 2, cache=cache)
    again = PixelProjector(angles, 20, 16, 9.5, 3, cache=cache)  # another band's rows
    assert (cache.misses, cache.hits) == (1, 1)
    x = np.ones((2, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(first.forward(x), PixelProjector(angles, 20, 16, 9.5, 2)
                                  .forward(x))
    assert again.shape_sinogram == (3, 12, 20)
    PixelProjector(angles, 20, 16, 9.0, 2, cache=cache)  # another CoR: built anew
    assert (cache.misses, cache.hits) == (2, 1)
