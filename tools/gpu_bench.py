"""GPU benchmark of ``tools/gpu_check.sh``: per-stage throughput on CuPy against the same
stage on NumPy (and against httomolibgpu where the stage has that adapter and it
imports), and ``recon --device gpu`` of a simulated 2048-wide scan end to end; writes
one JSON of results.

Every device-ready stage (``device=True`` in the registry) is run through the registry
(``spec.run``: parameter model and checks included) on the same float32 block on each
backend; the CuPy figure is the median of ``--runs`` synchronised runs after one
warm-up (kernel compilation, cuFFT plans), the NumPy one of one run (they are slow and
steady). Each CuPy result is compared with the NumPy one (``max_abs_diff``, relative to
the NumPy result's range). Peak device memory is CuPy's memory-pool size after the step
(the pool keeps freed blocks, so that is its high-water mark), reset between steps.

The ``overlap`` entry times eight projection blocks through ``normalize`` on the device
with the copies in turn and overlapped with the compute (pinned buffers, CUDA streams:
``stages.backends.device_queue``), with the transfers counted and timed.

Time on one H100 (an estimate: no run is recorded yet): the NumPy side dominates, about
3 min for the stages benchmarked before this issue's device work (as sized then;
H23's ten small ones add seconds), about 35 s for the 16 added with the
normalisations, Vo's stripe family (one sinogram each: algotom's 2048-wide sinogram
takes seconds), Titarenko's and Münch's methods, the resampler and the two httomo-named
FBPs (one slice from 60 angles each); those took about 65 s on the 2-core development
machine at load 3 to 9. The CuPy runs, the overlap entry and the recon of 32 rows add under a
minute: about 4 to 4.5 min. H40's sixteen (``fourier_fbp`` and the two methods on it
at two 2048-wide slices from 900 angles, Otsu's threshold, the stripe detection and
mask, the interpolation stripe remover, two 512² slices of ``remove_ring``, four shifted
frames, the 360° folds, the frame averaging and four frames through each distortion
correction) add about 40 s on NumPy, and the second end-to-end recon (``fourier_fbp``
on the device, 32 rows of 2048² from 1500 angles: the simulation and the corrections
dominate) about 30 s: about 5 to 5.5 min, which ``gpu_check.sh`` reserves (330 s) of
its 8 minutes. If a device run shows otherwise,
split it with ``--stages``.

``--dry-run`` (no device needed; what CI runs): tiny sizes, NumPy only, every device
figure ``null`` with the reason, and the same JSON layout, so the script, its stage
table and its JSON are tested on any machine. Usage::

    python tools/gpu_bench.py --out gpu_check.json            # on a CUDA machine
    python tools/gpu_bench.py --dry-run --out dry.json        # anywhere
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stages.backends.device import detect_device  # noqa: E402
from stages.backends.xp import gpu_available  # noqa: E402
from stages.registry import REGISTRY  # noqa: E402

#: stage → parameters for the benchmark (every device-ready stage must be here).
PARAMS: dict[str, dict[str, Any]] = {
    "remove_nan": {"val": 0.0},
    "remove_neg": {"val": 0.0},
    "adjust_range": {"dmin": 0.0, "dmax": 2.0},
    "median_filter": {"size": 3, "axis": 0},
    "gaussian_filter": {"sigma": 2.0, "axis": 0},
    "remove_outlier": {"dif": 0.5, "size": 3},
    "dezinger_temporal": {"dif": 0.5, "window": 3},
    "rescale": {"dtype": "uint16", "window": (0.0, 1.0)},
    "total_variation_rof": {"regularisation_parameter": 0.02, "iterations": 50},
    "total_variation_pd": {"regularisation_parameter": 0.02, "iterations": 50},
    "fbp": {"filter_name": "shepp"},
    "remove_stripe_based_sorting": {"size": 21, "dim": 1},
    "paganin": {"pixel_size": 1e-4, "dist": 50.0, "energy": 20.0, "alpha": 1e-3},
    "paganin_filter": {"pixel_size_um": 1.0, "distance_m": 0.5, "energy_kev": 20.0,
                       "ratio_delta_beta": 250.0},
    "paganin_filter_savu_legacy": {"pixel_size": 1.0, "distance": 0.5, "energy": 20.0,
                                   "ratio_delta_beta": 250.0},
    "paganin_filter_httomolib": {"pixel_size": 1e-4, "dist": 50.0, "energy": 20.0,
                                 "alpha": 1e-3},
    "circular_mask": {"ratio": 0.95},
    "downsample": {"level": 1, "axis": 2},
    "upsample": {"level": 1, "axis": 2},
    "binning": {"factor_rows": 2, "factor_cols": 2},
    "crop": {"rows": (1, 15), "cols": (1, 31)},  # fits the --dry-run frames too
    "dark_flat_field_correction": {},
    "remove_outlier3d": {"kernel_size": 3, "dif": 0.1},
    "median_filter3d": {"kernel_size": 3},
    "remove_stripe_ti_httomo": {"beta": 0.1},
    "raven_filter": {},
    # model-based reconstruction: few iterations (each costs a few FBPs on NumPy)
    "sirt": {"iterations": 20},
    "cgls": {"iterations": 10},
    "fista": {"iterations": 3, "regularisation_iterations": 20},
    "admm": {"iterations": 2, "subsets_number": 6, "regularisation_iterations": 10},
    "osem": {"iterations": 3, "subsets_number": 6, "regularisation_iterations": 10},
    # the normalisations (whole-block device path, repair on the device)
    "normalize": {"minus_log": True},
    "normalize_interpolated": {"minus_log": True},
    "normalize_nf": {"flat_loc": (0, 16)},  # the 8 benchmark flats: 2 groups of 4
    "normalize_bg": {"air": 8},
    "minus_log": {},
    # Vo's methods written from the algorithms (algotom on NumPy: one sinogram at a time)
    "remove_stripe_based_filtering": {"sigma": 3, "size": 21},
    "remove_stripe_based_fitting": {"order": 2, "sigma": 10},
    "remove_dead_stripe": {"snr": 3.0, "size": 51},
    "remove_large_stripe": {"snr": 3.0, "size": 51},
    "remove_all_stripe": {"snr": 3.0, "la_size": 51, "sm_size": 21},
    "remove_all_stripe_httomo": {"snr": 3.0, "la_size": 61, "sm_size": 21},
    "data_resampler": {"newshape": (512, 512)},
    "remove_stripe_ti": {"nblock": 0, "alpha": 1.5},  # every sinogram's CG at once
    "remove_stripe_fw": {"wname": "db5", "sigma": 2.0},  # filter banks, all sinograms
    # httomo-named reconstructors on our fbp (one slice, as fbp)
    "FBP3d_tomobar": {"filter_freq_cutoff": 0.35},
    "FBP2d_astra": {"filter_type": "shepp-logan"},
    # issue 16's remaining TomoPy/httomolib methods; sizes fit the --dry-run blocks too
    "median_filter3d_tomopy": {"size": 3},
    "remove_outlier3d_tomopy": {"dif": 0.1, "size": 3},
    "remove_outlier1d": {"dif": 0.5, "size": 3},
    "sobel_filter": {},
    "pad": {"axis": 2, "npad": 8},
    "trim_sinogram": {"center": 16.0, "x": 0, "y": 0, "diameter": 16},
    "normalize_roi": {"roi": (0, 0, 10, 10)},
    "data_checker": {"zeros_warning": True},
    "seam_blend_stitched_data": {"overlap": 4, "seam_index": 16},
    "remove_stripe_sf": {"size": 5},
    # H40: the Fourier-domain FBP on cufinufft and the methods on it; the rest of issue
    # 16's stages made device-ready (sizes fit the --dry-run blocks too)
    "fourier_fbp": {"filter_name": "shepp"},
    "LPRec3d_tomobar": {},
    "tomopy_recon": {},
    "binary_thresholding": {"otsu": True},
    "median_filter_nonfinite": {"size": 3},
    "shift_images": {"sx": tuple(0.25 * k for k in range(32)),
                     "sy": tuple(-0.5 * k for k in range(32))},
    "stripes_detect3d": {"size": 10, "radius": 3},
    "stripes_mask3d": {"min_stripe_depth": 1},
    "remove_ring": {"rwidth": 30},
    "remove_stripe_based_interpolation": {"size": 31},
    "sino_360_to_180": {"overlap": 20.0, "side": "left"},
    "sino_360_to_180_tomopy": {"overlap": 20.0, "rotation": "left"},
    "average_projection_frames": {"projection_averaging_factor": 2},
    "distortion_correction_proj": {"xcenter": 16.0, "ycenter": 8.0,
                                   "list_fact": (1.0, 0.0, 1e-8)},
    "distortion_correction_proj_discorpy": {"xcenter": 16.0, "ycenter": 8.0,
                                            "list_fact": (1.0, 0.0, 1e-8)},
}


#: Vo's methods: NumPy (algotom) runs one sinogram at a time, seconds each at 2048 wide.
ONE_SINOGRAM = frozenset({"remove_stripe_based_filtering", "remove_stripe_based_fitting",
                          "remove_dead_stripe", "remove_large_stripe", "remove_all_stripe",
                          "remove_all_stripe_httomo"})


def _sizes(dry_run: bool, width: int) -> dict[str, tuple[int, int, int]]:
    """Block shapes per pattern: projection (frames, rows, cols), sinogram (rows,
    angles, cols), reconstructed slices (rows, N, N) for the TV stages."""
    if dry_run:
        return {"projection": (4, 16, 32), "sinogram": (2, 24, 32), "slices": (2, 32, 32),
                "all": (4, 16, 32)}
    # sized so that the NumPy runs (one each) stay near 3 minutes in all on 16 cores
    return {"projection": (32, 512, width), "sinogram": (2, 900, width),
            "slices": (4, width, width), "all": (32, 512, width)}


def _shape_for(name: str, sizes: dict[str, tuple[int, int, int]]) -> tuple[int, int, int]:
    if name.startswith("total_variation"):
        return sizes["slices"]
    if name in ("FBP3d_tomobar", "FBP2d_astra"):  # as fbp's, from 60 angles: ~6 s each
        _, angles, cols = sizes["sinogram"]
        return (1, min(angles, 60), cols)
    if name in ONE_SINOGRAM:  # algotom works one sinogram at a time, ~1-4 s each
        _, angles, cols = sizes["sinogram"]
        return (1, angles, cols)
    if name == "fbp":  # one slice: NumPy back-projects 2048² pixels at ~10 angles/s
        _, angles, cols = sizes["sinogram"]
        return (1, min(angles, 360), cols)
    if name in ("shift_images", "distortion_correction_proj",
                "distortion_correction_proj_discorpy"):  # NumPy's splines: ~0.5 s a frame
        _, rows, cols = sizes["projection"]
        return (4, rows, cols)
    if name == "remove_ring":  # slices: NumPy's radial median is ~1 s per 512² slice
        rows, side, _ = sizes["slices"]
        return (2, min(side, 512), min(side, 512))
    if REGISTRY[name].reports_progress:  # iterative: 2 slices of 512² from 180 angles
        rows, angles, cols = sizes["sinogram"]
        return (rows, min(angles, 180), min(cols, 512))
    return sizes[REGISTRY[name].pattern.value]


def _time(call: Callable[[], Any], sync: Callable[[], None], runs: int) -> tuple[float, Any]:
    seconds, result = [], None
    for _ in range(runs):
        sync()
        began = time.perf_counter()
        result = call()
        sync()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds), result


def _stage_row(name: str, shape: tuple[int, int, int], runs: int, cupy: Any,
               httomolibgpu: bool) -> dict[str, Any]:
    spec = REGISTRY[name]
    params = spec.params(**PARAMS[name])
    rng = np.random.default_rng(0)
    block = rng.random(shape, dtype=np.float32)
    extra: dict[str, Any] = {}
    if spec.needs_references:
        extra["darks"] = np.full((4, *shape[1:]), 0.05, dtype=np.float32)
        extra["flats"] = np.full((8, *shape[1:]), 1.1, dtype=np.float32)
    if spec.needs_angles:
        extra["angles_deg"] = np.linspace(0.0, 180.0, shape[1], endpoint=False)
    if spec.needs_frame_indices:  # flats in two groups, before and after the projections
        extra["flat_indices"] = np.array([0, 1, 2, 3, 10_000, 10_001, 10_002, 10_003])
        extra["frame_indices"] = np.arange(shape[0], dtype=np.int64) + 100
    if spec.needs_projection_indices:
        extra["projection_indices"] = np.arange(shape[0], dtype=np.int64)
    numpy_s, expected = _time(lambda: spec.run(block, params, **extra), lambda: None, 1)
    row: dict[str, Any] = {"stage": name, "shape": list(shape), "numpy_s": numpy_s,
                           "numpy_mpix_s": block.size / numpy_s / 1e6, "cupy_s": None,
                           "cupy_mpix_s": None, "speedup": None, "max_abs_diff": None,
                           "relative_diff": None, "peak_device_bytes": None,
                           "httomolibgpu_s": None}
    if cupy is None:
        row["cupy_skipped"] = "no CUDA device"
        return row
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    device_block = cupy.asarray(block)
    on_device = {key: cupy.asarray(value) if key in ("darks", "flats") else value
                 for key, value in extra.items()}  # references live where the data are
    sync = cupy.cuda.Device().synchronize
    _time(lambda: spec.run(device_block, params, backend="cupy", **on_device), sync, 1)  # warm
    cupy_s, result = _time(lambda: spec.run(device_block, params, backend="cupy", **on_device),
                           sync, runs)
    got = cupy.asnumpy(result).astype(np.float64)
    reference = expected.astype(np.float64)
    diff = float(np.nanmax(np.abs(got - reference))) if got.size else 0.0
    span = float(np.nanmax(reference) - np.nanmin(reference)) or 1.0
    row.update(cupy_s=cupy_s, cupy_mpix_s=block.size / cupy_s / 1e6, speedup=numpy_s / cupy_s,
               max_abs_diff=diff, relative_diff=diff / span, peak_device_bytes=pool.total_bytes())
    if httomolibgpu and "httomolibgpu" in spec.backends:
        try:
            adapter_s, _ = _time(lambda: spec.run(device_block, spec.params(),
                                                  backend="httomolibgpu", **on_device), sync,
                                    runs)
            row["httomolibgpu_s"] = adapter_s
        except Exception as error:  # record, do not hide: the adapter's own failure
            row["httomolibgpu_error"] = f"{type(error).__name__}: {error}"
    return row


def _overlap_row(width: int, cupy: Any) -> dict[str, Any]:
    """Eight projection blocks through ``normalize`` (-log) on the device, copies done in
    turn (``to_device`` / ``to_host``) against overlapped with the compute
    (:class:`~stages.backends.device_queue.DeviceQueue`: pinned buffers, streams); both
    with their transfers counted and timed."""
    from stages.backends.device_queue import CupyStreams, DeviceQueue
    from stages.backends.xp import TransferStats, to_device, to_host

    shape = (16, 512, width)
    row: dict[str, Any] = {"blocks": 8, "shape": list(shape), "serial_s": None,
                           "overlapped_s": None, "speedup": None, "serial_transfers": None,
                           "overlapped_transfers": None}
    if cupy is None:
        row["skipped"] = "no CUDA device"
        return row
    spec = REGISTRY["normalize"]
    params = spec.params(minus_log=True)
    rng = np.random.default_rng(1)
    blocks = [rng.integers(100, 4000, size=shape).astype(np.float32) for _ in range(8)]
    darks = cupy.asarray(np.full((4, *shape[1:]), 90.0, dtype=np.float32))
    flats = cupy.asarray(np.full((8, *shape[1:]), 4100.0, dtype=np.float32))

    def work(block: Any) -> Any:
        return spec.run(block, params, darks=darks, flats=flats, backend="cupy")

    work(cupy.asarray(blocks[0]))  # warm-up: kernels compiled, pool filled
    cupy.cuda.Device().synchronize()
    serial = TransferStats()
    began = time.perf_counter()
    expected = [to_host(work(to_device(block, serial)), serial) for block in blocks]
    row["serial_s"] = time.perf_counter() - began
    overlapped = TransferStats()
    began = time.perf_counter()
    results = list(DeviceQueue(CupyStreams(), overlapped).map(blocks, work))
    row["overlapped_s"] = time.perf_counter() - began
    row.update(speedup=row["serial_s"] / row["overlapped_s"],
               serial_transfers=serial.describe(), overlapped_transfers=overlapped.describe(),
               equal=all(np.array_equal(a, b) for a, b in zip(expected, results, strict=True)))
    return row


def _recon_row(width: int, rows: int, angles: int, cupy: Any,
               reconstructor: str = "fbp") -> dict[str, Any]:
    """``recon --device gpu`` (in process) of a simulated scan with ``reconstructor`` on
    the device: ``fbp`` (the CUDA back-projection kernel) or ``fourier_fbp`` (cufinufft;
    its sinogram section streams through the DeviceQueue)."""
    from streamer.run.from_file import ReconSettings, run_recon
    from streamer.sources.simulate import SimulatedScan, SimulationConfig

    row: dict[str, Any] = {"width": width, "rows": rows, "angles": angles,
                           "reconstructor": reconstructor}
    with tempfile.TemporaryDirectory() as folder:
        pipeline = Path(folder) / "gpu.yaml"
        pipeline.write_text("pipeline:\n  - method: normalize\n  - method: minus_log\n"
                            "  - method: remove_outlier\n    parameters: {dif: 0.5}\n"
                            f"  - method: {reconstructor}\n"
                            "    parameters: {filter_name: shepp}\n")
        config = SimulationConfig.from_kwargs(rows=rows, cols=width, projections=angles,
                                              flats=4, darks=4)
        device_bytes = None
        if cupy is not None:
            cupy.get_default_memory_pool().free_all_blocks()
            info = detect_device()
            from stages.backends.device import device_budget_bytes

            device_bytes = device_budget_bytes(info.free_bytes) if info else None
        settings = ReconSettings(output=Path(folder) / "out.h5", pipeline=pipeline,
                                 center="auto", device="gpu" if cupy is not None else "cpu",
                                 device_bytes=device_bytes)
        plan: list[str] = []
        began = time.perf_counter()
        with SimulatedScan(config) as scan:
            result = run_recon(scan, settings, log=plan.append)
        seconds = time.perf_counter() - began
    row.update(device="gpu" if cupy is not None else "cpu", seconds=seconds,
               gvoxel_s=rows * width * width / seconds / 1e9, plan=plan,
               complete=result.complete, center=result.center,
               peak_device_bytes=(cupy.get_default_memory_pool().total_bytes()
                                  if cupy is not None else None))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON of results")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes, numpy only: checks the script anywhere")
    parser.add_argument("--width", type=int, default=2048, help="detector columns")
    parser.add_argument("--recon-rows", type=int, default=32)
    parser.add_argument("--recon-angles", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stages", nargs="*", default=None)
    args = parser.parse_args(argv)

    ready = sorted(name for name, spec in REGISTRY.items() if spec.device)
    missing = sorted(set(ready) - set(PARAMS))
    if missing:
        print(f"error: device-ready stages without benchmark parameters: {missing}",
              file=sys.stderr)
        return 2
    names = ready if args.stages is None else args.stages
    unknown = sorted(set(names) - set(ready))
    if unknown:
        print(f"error: --stages: expected device-ready stages ({', '.join(ready)}), got "
              f"{unknown}", file=sys.stderr)
        return 2
    cupy = None
    if not args.dry_run:
        if not gpu_available():
            print("error: no CUDA device (cupy absent or cupy.is_available() is False); "
                  "use --dry-run to check the script without one", file=sys.stderr)
            return 2
        import cupy as cupy_module

        cupy = cupy_module
    try:
        import httomolibgpu  # noqa: F401

        has_httomolibgpu = cupy is not None
    except ImportError:
        has_httomolibgpu = False
    width = 64 if args.dry_run else args.width
    sizes = _sizes(args.dry_run, width)
    info = detect_device() if cupy is not None else None
    report: dict[str, Any] = {
        "dry_run": args.dry_run,
        "device": None if info is None else {"name": info.name, "index": info.index,
                                             "total_bytes": info.total_bytes,
                                             "free_bytes": info.free_bytes},
        "cupy": None if cupy is None else cupy.__version__,
        "httomolibgpu": has_httomolibgpu,
        "numpy": np.__version__, "python": platform.python_version(),
        "stages": [], "recon": None, "recon_fourier": None, "overlap": None,
    }
    for name in names:
        row = _stage_row(name, _shape_for(name, sizes), args.runs, cupy, has_httomolibgpu)
        report["stages"].append(row)
        print(json.dumps(row), flush=True)
    report["overlap"] = _overlap_row(width, cupy)
    print(json.dumps(report["overlap"]), flush=True)
    rows = 2 if args.dry_run else args.recon_rows
    angles = 16 if args.dry_run else args.recon_angles
    report["recon"] = _recon_row(width, rows, angles, cupy)
    print(json.dumps(report["recon"]), flush=True)
    report["recon_fourier"] = _recon_row(width, rows, angles, cupy, "fourier_fbp")
    print(json.dumps(report["recon_fourier"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
