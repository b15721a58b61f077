"""Benchmark: reconstruction speed (slices/s) and accuracy against an analytic phantom.

For each size ``N`` (detector columns = slice edge) and ``P = round(1200·N/1024)``
angles over 180°, the exact line integrals of the 3-D Shepp–Logan phantom
(:func:`streamer.sources.phantom.project`, point samples at pixel centres) are
reconstructed, in the same run, by

* ``fourier_fbp`` (ours: FBP filter, NUFFT gridding), whole square and with
  ``circle_mask`` (the corners are not computed), threads = cores, and optionally with
  one thread (``--per-core``: slices/s per core); once more with a
  :class:`~stages.recon.fourier.FourierFbpCache` kept across the calls, as a scan's
  blocks run (the plan is made by the first call only);
* ``fbp`` (ours: direct back-projection, the accuracy reference);
* algotom's CPU FBP (numba) and DFI (direct Fourier inversion), ``ncore`` = cores;
* the **FFT-only bound** of ``fourier_fbp``: the FFTs it cannot avoid, on the same
  shapes and the same threads (per pair of rows: the filter's forward and inverse FFT of
  ``P × L``, the window FFT of ``P × M``, the gridding grid's 2-D inverse FFT pruned to
  ``N`` columns as ``fourier_fbp`` prunes it), and nothing else: no spreading, no
  element-wise work. ``fourier_fbp / bound`` is printed per size (without and with the
  per-scan cache), from ``--runs`` further runs of the two alternating (the ratio of
  their medians);
* astra-toolbox's CPU FBP and TomoPy's gridrec (edge-padded to 2N and unpadded) when
  they are importable (neither installs here: astra's wheels pull CUDA libraries, TomoPy
  is not on PyPI), else listed as absent.

All use the Hann window. Accuracy is the relative L2 error inside the disc of radius
0.45·N (the phantom's field of view) after a least-squares scale and shift fit
(``a·rec + b``) to ``voxelise(…, supersample=4)``, so that a peer's units or offset do
not count, only the shape of its errors. Speed is slices/s = rows / median wall time of
``--runs`` calls on a block of rows (ours: ``--rows``, peers ``--peer-rows``), after one
warm-up call at a tiny size (numba JIT). A method stops being timed once its calls
have taken ``--budget`` seconds in all (at least one call; the table says how many).

Usage::

    python tools/bench_recon.py                        # N = 512, 1024, 2048; 5 runs
    python tools/bench_recon.py --sizes 1024 --per-core --json out.json
    python tools/bench_recon.py --quick                # N = 128, 1 run: a smoke run
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft
from algotom.rec import reconstruction as algotom_rec

from stages.recon.fbp import fbp, padded_length
from stages.recon.fourier import FourierFbpCache, _grid_size, fourier_fbp, window_length
from streamer.sources.phantom import fit_radius_px, project, shepp_logan_3d, voxelise

Array = npt.NDArray[Any]
Recon = Callable[[Array, Array, float], Array]  # (block (rows, P, N), angles_deg, center)


@dataclass(frozen=True)
class Method:
    """One column of the table: how to reconstruct a sinogram block, and on how many rows."""

    label: str
    run: Recon | None  # None: not importable here
    peer: bool  # peers get --peer-rows rows per call
    note: str = ""
    ceiling: bool = False  # a speed bound, not a reconstruction: no accuracy


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _fourier(threads: int, circle: bool, cached: bool = False) -> Recon:
    """``fourier_fbp``; ``cached``: with one :class:`FourierFbpCache` kept across calls,
    as the executor keeps one per scan (each call is then one more block of the scan)."""
    cache = FourierFbpCache() if cached else None

    def run(block: Array, angles: Array, center: float) -> Array:
        return fourier_fbp(block, angles_deg=angles, center=center, filter_name="hann",
                           circle_mask=circle, threads=threads, cache=cache)
    return run


def _fft_bound(threads: int) -> Recon:
    """The FFTs of ``fourier_fbp`` on the same shapes, one worker per pair of rows."""
    def run(block: Array, angles: Array, center: float) -> Array:
        rows, count, cols = block.shape
        length, window, grid = padded_length(cols), window_length(cols, False), _grid_size(cols)
        pairs = (rows + 1) // 2
        workers = min(pairs, threads)
        inner = max(1, threads // workers)

        def pair(_: int) -> None:
            projections = np.ones((count, length), dtype=np.complex64)
            filtered = scipy.fft.ifft(scipy.fft.fft(projections, axis=-1, workers=inner),
                                      axis=-1, workers=inner, overwrite_x=True)
            scipy.fft.fft(filtered[:, :window], axis=-1, workers=inner)
            spread = np.ones((grid, grid), dtype=np.complex64)
            lines = scipy.fft.ifft(spread, axis=-1, workers=inner, overwrite_x=True)
            scipy.fft.ifft(lines[:, :cols], axis=0, workers=inner)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(pair, range(pairs)))
        return np.zeros((rows, cols, cols), dtype=np.float32)
    return run


def _fbp(block: Array, angles: Array, center: float) -> Array:
    return fbp(block, angles_deg=angles, center=center, filter_name="hann")


def _algotom(kind: str) -> Recon:
    def run(block: Array, angles: Array, center: float) -> Array:
        projections = np.ascontiguousarray(block.transpose(1, 0, 2))  # (angles, rows, cols)
        common: dict[str, Any] = {"angles": np.deg2rad(angles), "apply_log": False,
                                  "filter_name": "hann", "ratio": None, "ncore": cores()}
        if kind == "fbp":
            rec = algotom_rec.fbp_reconstruction(projections, center, gpu=False, **common)
        else:
            rec = algotom_rec.dfi_reconstruction(projections, center, **common)
        # algotom: (N, rows, N), in our orientation (docs/explanation/conventions.md).
        return np.ascontiguousarray(np.asarray(rec).transpose(1, 0, 2))
    return run


def _astra_fbp(block: Array, angles: Array, center: float) -> Array:  # pragma: no cover
    """astra-toolbox CPU FBP (``FBP``, Hann), one slice at a time (astra's 2-D CPU path)."""
    import astra  # type: ignore[import-not-found]

    rows, _, cols = block.shape
    proj_geom = astra.create_proj_geom("parallel", 1.0, cols, np.deg2rad(angles))
    # astra's detector centre is (cols - 1)/2 + shift: move the axis there.
    proj_geom = astra.geom_postalignment(proj_geom, (cols - 1) / 2 - center)
    vol_geom = astra.create_vol_geom(cols, cols)
    projector = astra.create_projector("linear", proj_geom, vol_geom)
    out = np.empty((rows, cols, cols), dtype=np.float32)
    for r in range(rows):
        sino_id = astra.data2d.create("-sino", proj_geom, block[r])
        rec_id = astra.data2d.create("-vol", vol_geom)
        cfg = astra.astra_dict("FBP")
        cfg.update(ReconstructionDataId=rec_id, ProjectionDataId=sino_id,
                   ProjectorId=projector, FilterType="hann")
        alg = astra.algorithm.create(cfg)
        astra.algorithm.run(alg)
        out[r] = astra.data2d.get(rec_id)
        astra.algorithm.delete(alg)
        astra.data2d.delete([sino_id, rec_id])
    astra.projector.delete(projector)
    return out


def _gridrec(padded: bool) -> Recon:  # pragma: no cover - TomoPy is not installable here
    def run(block: Array, angles: Array, center: float) -> Array:
        import tomopy

        cols = block.shape[2]
        data = np.ascontiguousarray(block.transpose(1, 0, 2))
        axis = center
        if padded:
            left = cols // 2
            data = np.pad(data, ((0, 0), (0, 0), (left, cols - left)), mode="edge")
            axis = center + left
        rec = tomopy.recon(data, np.deg2rad(angles), center=axis, algorithm="gridrec",
                           filter_name="hann", ncore=cores())
        if padded:
            rec = rec[:, left : left + cols, left : left + cols]
        return np.asarray(rec, dtype=np.float32)
    return run


def methods(per_core: bool) -> list[Method]:
    n = cores()
    found = {name: importlib.util.find_spec(name) is not None for name in ("astra", "tomopy")}
    table = [
        Method(f"fourier_fbp ({n} threads)", _fourier(n, False), False),
        Method(f"fourier_fbp per-scan cache ({n} threads)", _fourier(n, False, True), False),
        Method(f"fourier_fbp circle_mask ({n} threads)", _fourier(n, True), False),
        Method(f"FFT-only bound of fourier_fbp ({n} threads)", _fft_bound(n), False,
               ceiling=True),
    ]
    if per_core:
        table.append(Method("fourier_fbp (1 thread)", _fourier(1, False), False))
        table.append(Method("fourier_fbp circle_mask (1 thread)", _fourier(1, True), False))
    table += [
        Method("fbp (ours, direct)", _fbp, True),
        Method(f"algotom FBP (CPU, ncore {n})", _algotom("fbp"), True),
        Method(f"algotom DFI (ncore {n})", _algotom("dfi"), True),
        Method("astra CPU FBP", _astra_fbp if found["astra"] else None, True,
               "" if found["astra"] else "not installed (its wheels pull CUDA libraries)"),
        Method("TomoPy gridrec, edge-padded to 2N", _gridrec(True) if found["tomopy"] else None,
               True, "" if found["tomopy"] else "not importable (not on PyPI)"),
        Method("TomoPy gridrec, unpadded", _gridrec(False) if found["tomopy"] else None,
               True, "" if found["tomopy"] else "not importable (not on PyPI)"),
    ]
    return table


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


def fitted_error(rec: Array, truth: Array) -> float:
    """Relative L2 inside the 0.45·N disc after the least-squares fit ``a·rec + b``."""
    n = truth.shape[-1]
    grid = np.arange(n) - (n - 1) / 2
    inside = grid[:, None] ** 2 + grid[None, :] ** 2 < (0.45 * n) ** 2
    x = rec[inside].astype(np.float64)
    y = truth[inside].astype(np.float64)
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(np.linalg.norm(design @ coef - y) / np.linalg.norm(y))


def bench_method(method: Method, block: Array, angles: Array, truth: Array, center: float,
                 *, runs: int, budget: float) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method.label, "rows": int(block.shape[0])}
    if method.run is None:
        row["absent"] = method.note
        return row
    times: list[float] = []
    error = float("nan")
    while len(times) < runs and sum(times) <= budget:  # at least one run
        began = time.perf_counter()
        rec = method.run(block, angles, center)
        times.append(time.perf_counter() - began)
        if len(times) == 1 and not method.ceiling:
            error = fitted_error(rec[0], truth)
        del rec
    median = statistics.median(times)
    row.update({"runs": len(times), "median_s": median, "slices_per_s": block.shape[0] / median,
                "all_s": [round(t, 4) for t in times], "rel_l2_fit": error})
    return row


def paired_ratio(ours: Method, bound: Method, block: Array, angles: Array, *, center: float,
                 runs: int) -> float:
    """Speed of ``ours`` over ``bound``, their runs alternating (order swapped every run)
    so that the machine's load hits both alike; the ratio of the median times."""
    assert ours.run is not None and bound.run is not None
    times: dict[str, list[float]] = {"ours": [], "bound": []}
    sides = [("ours", ours.run), ("bound", bound.run)]
    for run in range(runs):
        for name, fn in sides if run % 2 == 0 else sides[::-1]:
            began = time.perf_counter()
            fn(block, angles, center)
            times[name].append(time.perf_counter() - began)
    return statistics.median(times["bound"]) / statistics.median(times["ours"])


def markdown_table(results: Sequence[dict[str, Any]], sizes: Sequence[int]) -> str:
    """One row per method, slices/s and error per size; absent methods as notes below."""
    head = "| reconstructor | " + " | ".join(
        f"N={n}: slices/s | N={n}: rel. L2" for n in sizes) + " |"
    lines = [head, "|---|" + "---|---|" * len(sizes)]
    notes: dict[str, str] = {}
    for label in dict.fromkeys(r["method"] for r in results):
        cells = []
        for n in sizes:
            found = [r for r in results if r["method"] == label and r["size"] == n]
            if not found:
                cells += ["—", "—"]
            elif "absent" in found[0]:
                notes[label] = found[0]["absent"]
                cells += ["absent", "—"]
            else:
                r = found[0]
                runs = "" if r["runs"] >= 5 else f" ({r['runs']} run{'s' * (r['runs'] > 1)})"
                error = "—" if r["rel_l2_fit"] != r["rel_l2_fit"] else f"{r['rel_l2_fit']:.4f}"
                cells += [f"{r['slices_per_s']:.3g}{runs}", error]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"Absent: {label}: {why}." for label, why in notes.items()]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cpu": model, "cores": cores(), "load_1min": load,
            "python": platform.python_version(), "numpy": np.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--runs", type=int, default=5, help="timed calls per method (median)")
    parser.add_argument("--rows", type=int, default=16, help="rows per call of ours")
    parser.add_argument("--peer-rows", type=int, default=2,
                        help="rows per call of fbp and the peers (they are slow)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per method and size: no further runs past this")
    parser.add_argument("--skip", nargs="*", default=[],
                        help="labels (substrings) of methods to leave out, e.g. 'fbp (ours'")
    parser.add_argument("--per-core", action="store_true",
                        help="also time fourier_fbp with one thread")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: N = 128, 1 run, 4 rows (overrides sizes/runs/rows)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.runs, args.rows, args.peer_rows = [128], 1, 4, 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    print(f"# {info['date']}, {info['cpu']}, {info['cores']} cores, load {info['load_1min']:.2f},"
          f" runs {args.runs}", flush=True)
    table = [m for m in methods(args.per_core) if not any(s in m.label for s in args.skip)]
    warm_block, warm_angles, _, warm_center = phantom(64, 48, 2)
    for method in table:  # numba JIT (algotom), imports: not timed
        if method.run is not None:
            method.run(warm_block, warm_angles, warm_center)
    results = []
    for size in args.sizes:
        angles_count = round(1200 * size / 1024)
        rows = max(args.rows, args.peer_rows)
        block, angles, truth, center = phantom(size, angles_count, rows)
        for method in table:
            part = block[: args.peer_rows] if method.peer else block[: args.rows]
            row = bench_method(method, part, angles, truth, center, runs=args.runs,
                               budget=args.budget)
            row.update(size=size, angles=angles_count)
            results.append(row)
            if "absent" in row:
                print(f"N={size:5d} P={angles_count:5d} {method.label:>40s}: absent "
                      f"({row['absent']})", flush=True)
            else:
                print(f"N={size:5d} P={angles_count:5d} {method.label:>40s}: "
                      f"{row['slices_per_s']:8.3g} slices/s ({row['rows']} rows, "
                      f"{row['runs']} runs), rel. L2 {row['rel_l2_fit']:.4f}", flush=True)
        bound = next((m for m in table if m.label.startswith("FFT-only bound")), None)
        for prefix in ("fourier_fbp (", "fourier_fbp per-scan cache ("):  # all threads
            ours = next((m for m in table if m.label.startswith(prefix)), None)
            if ours is None or bound is None:
                continue
            share = paired_ratio(ours, bound, block[: args.rows], angles, center=center,
                                 runs=args.runs)
            row = next(r for r in results if r["size"] == size and r["method"] == ours.label)
            row["of_fft_bound"] = share
            print(f"N={size:5d}: {ours.label} / FFT-only bound = {share:.2f} (runs "
                  "alternating, ratio of medians)", flush=True)
    print()
    print(markdown_table(results, args.sizes))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
