"""TomoPy's ``shift_images`` against its scikit-image path written out (the inverse map
``(r + sx, c + sy)`` sampled by ``scipy.ndimage.map_coordinates``, order 5, prefiltered,
``grid-constant`` 0, then clipped to the input's range widened to 0, around TomoPy's
``scale`` round trip), an exact integer shift, and each projection getting its own shift
through the executor whatever the block size (darks and flats interleaved)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from stages.prep.alignment import shift_images
from stages.registry import REGISTRY
from streamer.errors import StageError
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import ProcessedBlock, process_reader
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig


def _tomopy_shift(prj: np.ndarray[Any, Any], sx: list[float], sy: list[float]) -> Any:
    prj = prj.astype(np.float32).copy()
    scl = max(abs(prj.max()), abs(prj.min()))  # tomopy.prep.alignment.scale
    prj /= scl
    for m in range(prj.shape[0]):
        rows, cols = np.mgrid[: prj.shape[1], : prj.shape[2]].astype(np.float64)
        image = prj[m].astype(np.float64)
        out = ndimage.map_coordinates(image, [rows + sx[m], cols + sy[m]], order=5,
                                      mode="grid-constant", cval=0.0, prefilter=True)
        prj[m] = np.clip(out, min(image.min(), 0.0), max(image.max(), 0.0))
    return prj * scl


def _frames(n: int) -> np.ndarray[Any, Any]:
    rows, cols = np.mgrid[:20, :24]
    return np.stack([np.exp(-((rows - 9.5 - k) ** 2 + (cols - 11.0) ** 2) / 18.0)
                     for k in range(n)]).astype(np.float32) + 0.1


def test_shift_images_equals_tomopys_warp() -> None:
    data = _frames(3)
    sx, sy = [0.5, -1.25, 3.0], [2.0, 0.75, -0.4]
    result = shift_images(data, sx=tuple(sx), sy=tuple(sy),
                          projection_indices=np.arange(3, dtype=np.int64))
    np.testing.assert_allclose(result, _tomopy_shift(data, sx, sy), rtol=1e-5, atol=1e-6)


def test_an_integer_shift_moves_the_image_up_and_left() -> None:
    data = _frames(1)
    result = shift_images(data, sx=(2.0,), sy=(3.0,), projection_indices=np.array([0]))
    np.testing.assert_allclose(result[0, :-2, :-3], data[0, 2:, 3:], atol=1e-5)
    assert np.abs(result[0, -2:, :]).max() < 1e-5  # zeros came in


def test_each_projection_gets_its_own_shift_through_the_executor() -> None:
    scan = SimulatedScan(SimulationConfig(rows=8, cols=24, projections=10, flats=3, darks=2,
                                          seed=3))
    sx = [0.0] * 10
    sy = [float(k) for k in range(10)]  # projection m moves m columns left
    steps = parse_pipeline(f"pipeline:\n  - method: shift_images\n    parameters: "
                           f"{{sx: {sx}, sy: {sy}}}\n", REGISTRY, source="t").steps
    out: dict[int, np.ndarray[Any, Any]] = {}

    def keep(block: ProcessedBlock) -> None:
        out.update(zip(block.indices.tolist(), block.data, strict=True))

    process_reader(steps, scan, start_header(scan.layout, "s"), block_frames=3,
                   on_projections=keep)
    keys = scan.layout.image_keys
    projections = [int(i) for i in np.flatnonzero(keys == 0)]
    assert len(projections) == 10 and projections[0] > 0  # references come first
    raw = scan.read(0, len(keys)).astype(np.float32)
    for m, index in enumerate(projections):
        frame = raw[index]
        np.testing.assert_allclose(out[index][:, : 24 - m], frame[:, m:], rtol=1e-4)


def test_shifts_must_cover_every_projection() -> None:
    with pytest.raises(StageError, match="got 2 for projection number 2"):
        shift_images(_frames(3), sx=(0.0, 0.0), sy=(0.0, 0.0),
                     projection_indices=np.arange(3, dtype=np.int64))
    with pytest.raises(ValueError, match="one value per projection"):
        REGISTRY["shift_images"].params(sx=[0.0], sy=[0.0, 1.0])
    spec = REGISTRY["shift_images"]
    with pytest.raises(StageError, match="projection number"):
        spec.run(_frames(1), spec.params(sx=[0.0], sy=[0.0]))
