"""algotom's CPU FBP as an independent reference, made deterministic.

algotom's ``back_projection_cpu`` accumulates into one image from a numba ``prange`` over
the angles (``recon[y, x] += val``): with several numba threads, updates are lost at
random, whatever ``ncore`` says (measured on DIAD: pixels off by 40 % of the image's
range from run to run). The reference therefore runs with one numba thread, restored
afterwards.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from algotom.rec.reconstruction import fbp_reconstruction
from scipy import ndimage


def algotom_fbp(sinogram: np.ndarray, center: float, angles_rad: np.ndarray,
                **options: Any) -> np.ndarray:
    """``fbp_reconstruction`` of one ``(angles, cols)`` ``-log`` sinogram on the CPU, on
    one numba thread (``options``: ``filter_name``, ``ratio`` …)."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return np.asarray(fbp_reconstruction(
            np.ascontiguousarray(sinogram, dtype=np.float32), center, angles=angles_rad,
            apply_log=False, gpu=False, ncore=1, **options))
    finally:
        numba.set_num_threads(threads)


def smoothed_r(ours: np.ndarray, reference: np.ndarray, sigma: float) -> float:
    """Pearson r over the reconstruction circle (radius 0.45 N) of the two slices, each
    smoothed by a Gaussian of ``sigma`` px. Give the reference unmasked (algotom's
    ``ratio=None``): a mask on one side only would leak its edge into the circle."""
    size = ours.shape[-1]
    axis = np.arange(size) - (size - 1) / 2
    inside = np.hypot(*np.meshgrid(axis, axis)) < 0.45 * size
    a = ndimage.gaussian_filter(np.asarray(ours, dtype=np.float64), sigma)
    b = ndimage.gaussian_filter(np.asarray(reference, dtype=np.float64), sigma)
    return float(np.corrcoef(a[inside], b[inside])[0, 1])
