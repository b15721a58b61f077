"""NUFFT projector pair: exact adjoint, the analytic phantom's sinogram, and the geometry
(orientation, CoR, even/odd sizes) shared with ``fourier_fbp``."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from stages.recon.fourier import fourier_fbp
from stages.recon.projector import Projector, window_geometry
from streamer.errors import StageError
from tests.stages.phantoms import ASYMMETRIC, Float32, sinogram, truth, uniform_angles


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
    """<A x, y> = <x, Aᵀ y> to 1e-4 relative on random x and y (measured: < 1e-6)."""
    rng = np.random.default_rng(size)
    projector = Projector(angles, cols, size, center, rows, eps=1e-3)
    x = rng.standard_normal((rows, size, size)).astype(np.float32)
    y = rng.standard_normal((rows, len(angles), cols)).astype(np.float32)
    left = float(np.vdot(projector.forward(x).astype(np.float64), y))
    right = float(np.vdot(x.astype(np.float64), projector.adjoint(y)))
    assert abs(left - right) <= 1e-4 * abs(left)


@pytest.mark.parametrize("size", [64, 65])
def test_split_and_complete_nufft_agree(size: int) -> None:
    """The numpy default (finufft spreading + scipy FFT + fourier_fbp's deconvolution) and
    finufft's complete transforms (the path cupy/cufinufft takes) give the same A and Aᵀ
    within the NUFFT tolerance, and both are exact pairs."""
    angles = uniform_angles(33)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, size, size)).astype(np.float32)
    y = rng.standard_normal((2, 33, 70)).astype(np.float32)
    split = Projector(angles, 70, size, 33.3, 2, eps=1e-4, split=True)
    plain = Projector(angles, 70, size, 33.3, 2, eps=1e-4, split=False)
    assert _rel(split.forward(x), plain.forward(x)) < 1e-3
    assert _rel(split.adjoint(y), plain.adjoint(y)) < 1e-3
    left = float(np.vdot(plain.forward(x).astype(np.float64), y))
    assert abs(left - float(np.vdot(x.astype(np.float64), plain.adjoint(y)))) < 1e-4 * abs(left)


def test_forward_matches_the_analytic_sinogram() -> None:
    """A(voxelised phantom) against the exact line integrals of its ellipses: 0.6 % rel. L2
    (the difference is the voxelisation of the edges)."""
    n = 128
    angles = uniform_angles(90)
    exact = sinogram(ASYMMETRIC, angles, n, radius=0.45 * n)
    image = truth(ASYMMETRIC, n, radius=0.45 * n)
    projector = Projector(angles, n, n, (n - 1) / 2, image.shape[0])
    assert _rel(projector.forward(image), exact) < 0.01


@pytest.mark.parametrize(("n", "cor"), [(128, None), (128, 70.3), (97, 44.0)])
def test_forward_inverts_fourier_fbp(n: int, cor: float | None) -> None:
    """A · fourier_fbp(sino) ≈ sino (0.3 % measured) and the slice flipped vertically or
    horizontally does not (> 10 %): the projector's orientation, CoR and pixel centres are
    fourier_fbp's. If the reconstructors change orientation, this fails until
    ``projector.ROW_SIGN`` follows."""
    angles = uniform_angles(180)
    exact = sinogram(ASYMMETRIC, angles, n, radius=0.4 * n, cor=cor)
    center = (n - 1) / 2 if cor is None else cor
    slices: Float32 = fourier_fbp(exact, angles_deg=angles, center=center)
    projector = Projector(angles, n, n, center, exact.shape[0])
    assert _rel(projector.forward(slices), exact) < 0.01
    for flipped in (slices[:, ::-1], slices[:, :, ::-1]):
        assert _rel(projector.forward(np.ascontiguousarray(flipped)), exact) > 0.1


def test_window_covers_the_slice_shadow() -> None:
    start, length = window_geometry(100, 60.2)
    reach = 99 / np.sqrt(2)
    assert length % 2 == 0
    assert start <= 60.2 - reach - 8 and start + length - 1 >= 60.2 + reach + 8


def test_bad_shapes_and_tolerance_are_refused() -> None:
    projector = Projector(uniform_angles(10), 16, 16, 7.5, 2)
    with pytest.raises(StageError, match=r"image: expected shape \(2, 16, 16\)"):
        projector.forward(np.zeros((1, 16, 16), dtype=np.float32))
    with pytest.raises(StageError, match=r"sinogram: expected shape \(2, 10, 16\)"):
        projector.adjoint(np.zeros((2, 11, 16), dtype=np.float32))
    with pytest.raises(StageError, match="eps: expected"):
        Projector(uniform_angles(10), 16, 16, 7.5, 2, eps=0.5)
    with pytest.raises(StageError, match="eps: expected"):
        Projector(uniform_angles(10), 16, 16, 7.5, 2, eps=1e-6)
