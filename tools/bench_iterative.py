"""Benchmark: model-based reconstruction, time per iteration against one Fourier FBP, and
the error reached per second of compute.

For each size ``N`` (detector columns = slice edge) and ``P = round(1200·N/1024)`` angles
over 180°, the exact line integrals of the 3-D Shepp–Logan phantom (the phantom of
``tools/bench_recon.py``) on a band of ``--rows`` identical rows are reconstructed, in the
same run and process, by

* ``fourier_fbp`` (one call on the band: the unit of cost), median of ``--runs`` calls;
* our projector's ``A`` and ``Aᵀ`` on the band (median of ``--runs``);
* our ``sirt``, ``cgls`` and ``fista`` (PD-TV, 6 subsets) stages: the setup (plans,
  weights, Lipschitz constant: the time to the first iteration minus the iterations)
  and each iteration (the median gap between ``on_iteration`` calls, the error
  evaluation excluded), and the error after every iteration;
* our ``osem`` (12 subsets, no TV: HTTomo's template with the regulariser off) with the
  pixel-driven projector, the same way (``--osem-iterations``, at least 6 so that the
  median has 5 gaps): at these sizes the projector goes angle by angle without its
  matrix (``2 × P × N²`` entries > ``pixel_projector.MATRIX_ENTRIES``); with ``--methods
  … osem-matrix`` also with the matrices held (the limit raised for that call; N = 512
  only: at 1024 the matrix would need 30 GB);
* astra-toolbox's CPU ``SIRT`` and ``CGLS`` (``linear`` projector, one slice per call)
  when importable, as a benchmark-only peer (its wheel needs the CUDA runtime and cuFFT
  libraries even on the CPU: ``pip install --target DIR astra-toolbox
  nvidia-cuda-runtime-cu12 nvidia-cufft-cu12`` and ``PYTHONPATH=DIR``,
  ``LD_LIBRARY_PATH=DIR/nvidia/cuda_runtime/lib:DIR/nvidia/cufft/lib``); run in chunks of
  iterations (it continues from its state), its error read between chunks.

Error: relative L2 inside the disc of radius 0.45·N against ``voxelise(…,
supersample=4)``, without any fit (our units are the phantom's); astra's slice is first
brought to our orientation (the one of the 8 flips/transposes that fits best on its last
iterate). Times are per slice (band time / rows) in seconds, on all cores for ours
(threads = cores), one core for astra (its CPU code is single-threaded).

Usage::

    python tools/bench_iterative.py                      # N = 512, 1024
    python tools/bench_iterative.py --sizes 512 --json out.json
    python tools/bench_iterative.py --quick              # N = 64: a smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stages.recon import iterative
from stages.recon.fourier import fourier_fbp
from stages.recon.iterative import cgls, fista, osem, sirt
from stages.recon.pixel_projector import MAX_ENTRIES
from stages.recon.projector import Projector
from stages.spec import Iteration
from streamer.sources.phantom import fit_radius_px, project, shepp_logan_3d, voxelise

Array = npt.NDArray[Any]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def phantom(size: int, angles_count: int, rows: int) -> tuple[Array, Array, Array, float]:
    """``(block (rows, P, N) float32, angles_deg, truth (N, N), center)`` of Shepp–Logan."""
    radius = fit_radius_px(size)
    angles = np.arange(angles_count, dtype=np.float64) * (180.0 / angles_count)
    one = project(shepp_logan_3d(), angles, 1, size, radius_px=radius, z_scale_px=radius)
    block = np.ascontiguousarray(np.repeat(one.transpose(1, 0, 2), rows, axis=0),
                                 dtype=np.float32)
    truth = voxelise(shepp_logan_3d(), 1, size, radius_px=radius, z_scale_px=radius,
                     supersample=4)[0]
    return block, angles, truth, (size - 1) / 2


def error(rec: Array, truth: Array) -> float:
    """Relative L2 inside the 0.45·N disc (no fit)."""
    n = truth.shape[-1]
    grid = np.arange(n) - (n - 1) / 2
    inside = grid[:, None] ** 2 + grid[None, :] ** 2 < (0.45 * n) ** 2
    diff = rec[inside].astype(np.float64) - truth[inside]
    return float(np.linalg.norm(diff) / np.linalg.norm(truth[inside]))


def median_time(call: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_ours(name: str, method: Callable[..., Array], block: Array, angles: Array, *,
             truth: Array, center: float, iterations: int, **params: Any) -> dict[str, Any]:
    """One call with a callback that timestamps each iteration and measures the error of
    the first row (its own time is subtracted)."""
    rows = block.shape[0]
    stamps: list[float] = []
    errors: list[float] = []
    spent = [0.0]

    def on_iteration(step: Iteration) -> None:
        now = time.perf_counter()
        stamps.append(now - spent[0])
        errors.append(error(step.iterate[0], truth))
        spent[0] += time.perf_counter() - now

    start = time.perf_counter()
    method(block, angles_deg=angles, center=center, iterations=iterations,
           recon_mask_radius=2.0, on_iteration=on_iteration, **params)
    gaps = np.diff([start, *stamps])
    per_iteration = float(np.median(gaps[1:])) if len(gaps) > 1 else float(gaps[0])
    setup = max(0.0, float(gaps[0] - per_iteration))  # the first gap holds the setup
    elapsed = np.cumsum(gaps)
    return {
        "method": name, "rows": rows, "iterations": iterations,
        "setup_s_per_slice": setup / rows,
        "s_per_iteration_per_slice": per_iteration / rows,
        "curve": [(float(t) / rows, e) for t, e in zip(elapsed, errors, strict=True)],
    }


_ORIENTATIONS: tuple[Callable[[Array], Array], ...] = (
    lambda a: a, lambda a: a[::-1], lambda a: a[:, ::-1], lambda a: a[::-1, ::-1],
    lambda a: a.T, lambda a: a.T[::-1], lambda a: a.T[:, ::-1], lambda a: a.T[::-1, ::-1],
)


def run_astra(astra: Any, algorithm: str, sino: Array, angles: Array, *, truth: Array,
              iterations: int, chunk: int) -> dict[str, Any]:  # pragma: no cover - optional
    size = sino.shape[-1]
    volume = astra.create_vol_geom(size, size)
    geometry = astra.create_proj_geom("parallel", 1.0, size, np.deg2rad(angles))
    projector = astra.create_projector("linear", geometry, volume)
    sino_id = astra.data2d.create("-sino", geometry, sino)
    rec_id = astra.data2d.create("-vol", volume, 0.0)
    config = astra.astra_dict(algorithm)
    config.update(ProjectorId=projector, ProjectionDataId=sino_id, ReconstructionDataId=rec_id)
    start = time.perf_counter()
    algorithm_id = astra.algorithm.create(config)
    setup = time.perf_counter() - start
    done, elapsed, snapshots, times = 0, setup, [], []
    while done < iterations:
        step = min(chunk, iterations - done)
        start = time.perf_counter()
        astra.algorithm.run(algorithm_id, step)
        elapsed += time.perf_counter() - start
        times.append((time.perf_counter() - start) / step)
        done += step
        snapshots.append((elapsed, astra.data2d.get(rec_id).copy()))
    for handle in (algorithm_id,):
        astra.algorithm.delete(handle)
    astra.data2d.delete([sino_id, rec_id])
    astra.projector.delete(projector)
    last = snapshots[-1][1]
    turn = min(_ORIENTATIONS, key=lambda f: error(np.ascontiguousarray(f(last)), truth))
    return {
        "method": f"astra {algorithm} (CPU, linear)", "rows": 1, "iterations": iterations,
        "setup_s_per_slice": setup, "s_per_iteration_per_slice": statistics.median(times),
        "curve": [(t, error(np.ascontiguousarray(turn(x)), truth)) for t, x in snapshots],
    }


def import_astra() -> Any:
    if importlib.util.find_spec("astra") is None:
        return None
    try:
        import astra
    except ImportError:  # the wheel's CUDA runtime libraries are missing
        return None
    return astra


def bench_size(size: int, args: argparse.Namespace, astra: Any) -> dict[str, Any]:
    angles_count = round(1200 * size / 1024)
    block, angles, truth, center = phantom(size, angles_count, args.rows)
    rows = args.rows
    fbp_s = median_time(lambda: fourier_fbp(block, angles_deg=angles, center=center),
                        args.runs) / rows
    fbp_error = error(fourier_fbp(block[:1], angles_deg=angles, center=center)[0], truth)
    projector = Projector(angles, size, size, center, rows)
    image = np.ascontiguousarray(np.repeat(truth[None], rows, axis=0), dtype=np.float32)
    forward_s = median_time(lambda: projector.forward(image), args.runs) / rows
    adjoint_s = median_time(lambda: projector.adjoint(block), args.runs) / rows
    results = []
    if "sirt" in args.methods:
        results.append(run_ours("sirt", sirt, block, angles, truth=truth, center=center,
                                iterations=args.iterations))
    if "cgls" in args.methods:
        results.append(run_ours("cgls", cgls, block, angles, truth=truth, center=center,
                                iterations=args.iterations, nonnegativity=False))
    if "fista" in args.methods:
        results.append(run_ours("fista (PD-TV, 6 subsets, λ 1e-4)", fista, block, angles,
                                truth=truth, center=center,
                                iterations=max(2, args.iterations // 2),
                                regularisation_parameter=1e-4))
    entries = 2 * angles_count * size * size
    osem_params: dict[str, Any] = {"iterations": args.osem_iterations, "subsets_number": 12,
                                   "regularisation_type": None}
    if "osem" in args.methods:
        how = "matrix-free" if entries > iterative.MATRIX_ENTRIES else "matrices"
        results.append(run_ours(f"osem (12 subsets, no TV, {how})", osem, block, angles,
                                truth=truth, center=center, **osem_params))
    if "osem-matrix" in args.methods and entries <= MAX_ENTRIES:
        limit = iterative.MATRIX_ENTRIES
        iterative.MATRIX_ENTRIES = MAX_ENTRIES  # the matrices held, for this call only
        try:
            results.append(run_ours("osem (12 subsets, no TV, matrices)", osem, block,
                                    angles, truth=truth, center=center, **osem_params))
        finally:
            iterative.MATRIX_ENTRIES = limit
    elif "osem-matrix" in args.methods:
        print(f"# N = {size}: osem with its matrices left out ({entries:,} entries > "
              f"{MAX_ENTRIES:,})")
    if astra is not None:  # pragma: no cover - optional peer
        sino = np.ascontiguousarray(block[0])
        for algorithm in ("SIRT", "CGLS"):
            results.append(run_astra(astra, algorithm, sino, angles, truth=truth,
                                     iterations=args.astra_iterations,
                                     chunk=max(1, args.astra_iterations // 4)))
    for row in results:
        row["iteration_in_fbps"] = row["s_per_iteration_per_slice"] / fbp_s
    return {"size": size, "angles": angles_count, "rows": rows,
            "fourier_fbp_s_per_slice": fbp_s, "fourier_fbp_error": fbp_error,
            "forward_s_per_slice": forward_s, "adjoint_s_per_slice": adjoint_s,
            "astra": astra is not None, "results": results}


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover - not Linux
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": model, "cores": cores(), "load": list(load),
            "python": platform.python_version(), "numpy": np.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--rows", type=int, default=4, help="rows of our band (4)")
    parser.add_argument("--runs", type=int, default=5, help="runs of the timed calls (5)")
    parser.add_argument("--iterations", type=int, default=20,
                        help="SIRT and CGLS iterations; FISTA and OSEM half as many (20)")
    parser.add_argument("--osem-iterations", type=int, default=None,
                        help="OSEM iterations (default: half of --iterations, at least 6)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS[:4]), choices=METHODS,
                        help="ours to run besides fourier_fbp (default: sirt cgls fista osem)")
    parser.add_argument("--no-astra", action="store_true", help="leave astra out")
    parser.add_argument("--astra-iterations", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="N = 64, 2 runs: a smoke run")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.runs, args.iterations, args.astra_iterations = [64], 2, 4, 4
        args.osem_iterations = args.osem_iterations or 2
    if args.osem_iterations is None:
        args.osem_iterations = max(6, args.iterations // 2)
    return args


METHODS = ("sirt", "cgls", "fista", "osem", "osem-matrix")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    astra = None if args.no_astra else import_astra()
    print(f"# {info['date']}, {info['cpu']}, {info['cores']} cores, load "
          f"{' '.join(f'{x:.2f}' for x in info['load'])}; astra "
          f"{'present' if astra is not None else 'absent'}")
    sizes = []
    for size in args.sizes:
        entry = bench_size(size, args, astra)
        sizes.append(entry)
        print(f"\nN = {size}, {entry['angles']} angles, band of {entry['rows']} rows; "
              f"fourier_fbp {entry['fourier_fbp_s_per_slice']:.4f} s/slice "
              f"(error {entry['fourier_fbp_error']:.3f}); A {entry['forward_s_per_slice']:.4f}"
              f", Aᵀ {entry['adjoint_s_per_slice']:.4f} s/slice")
        print("| method | s/iteration/slice | × fourier_fbp | setup s/slice | error after "
              "(s/slice: error) |")
        print("|---|---|---|---|---|")
        for row in entry["results"]:
            curve = row["curve"]
            marks = sorted({0, len(curve) // 4, len(curve) // 2, len(curve) - 1})
            points = ", ".join(f"{curve[i][0]:.2f}: {curve[i][1]:.3f}" for i in marks)
            print(f"| {row['method']} | {row['s_per_iteration_per_slice']:.4f} | "
                  f"{row['iteration_in_fbps']:.1f} | {row['setup_s_per_slice']:.3f} | "
                  f"{points} |")
    info["load_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else []
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "sizes": sizes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
