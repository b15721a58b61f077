"""Progress of iterative stages in a pipeline run: one event per iteration per band.

An iterative stage (``StageSpec.reports_progress``) tells its caller after each
iteration (:class:`stages.spec.Iteration`); the executor runs it once per band of
sinograms, so :class:`IterationLog` gives each band a listener that turns those events
into :class:`BandIteration` (which stage, which band of how many, which rows), keeps
what the run's summary needs, and forwards every event to the run's own listener (a
progress line, a test). The log belongs to one scan's processor: no shared state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stages.spec import Iteration
from streamer.errors import ExchangeError
from streamer.pipeline.config import PipelineStep


@dataclass(frozen=True)
class BandIteration:
    """Iteration ``done`` of ``total`` of ``stage`` on band ``band`` (0-based) of
    ``bands``, detector rows ``first … last − 1`` of the scan; ``residual`` and
    ``change`` as in :class:`stages.spec.Iteration`. On R ranks ``band``/``bands``
    count the blocks of rank ``rank``'s band of rows (of ``ranks``)."""

    stage: str
    band: int
    bands: int
    first: int
    last: int
    done: int
    total: int
    residual: float | None
    change: float | None
    rank: int = 0
    ranks: int = 1

    def describe(self) -> str:
        """``sirt band 2/4 (rows 16-31): iteration 12/20, residual 0.0123`` (a progress
        line; ``sirt rank 1 band 2/4 …`` on R ranks)."""
        who = f"rank {self.rank} " if self.ranks > 1 else ""
        line = (f"{self.stage} {who}band {self.band + 1}/{self.bands} (rows {self.first}-"
                f"{self.last - 1}): iteration {self.done}/{self.total}")
        if self.residual is not None:
            line += f", residual {self.residual:.4g}"
        if self.change is not None:
            line += f", change {self.change:.3g}"
        return line

    def as_message(self) -> dict[str, Any]:
        """The event as a msgpack-able map (sent by a rank to rank 0)."""
        return {"stage": self.stage, "band": self.band, "bands": self.bands,
                "first": self.first, "last": self.last, "done": self.done,
                "total": self.total, "residual": self.residual, "change": self.change,
                "rank": self.rank, "ranks": self.ranks}

    @classmethod
    def from_message(cls, message: dict[str, Any], source: int) -> BandIteration:
        """The event of :meth:`as_message` from rank ``source``; raises
        :class:`~streamer.errors.ExchangeError` naming what is wrong in it."""
        try:
            event = cls(
                str(message["stage"]), int(message["band"]), int(message["bands"]),
                int(message["first"]), int(message["last"]), int(message["done"]),
                int(message["total"]), _optional(message["residual"]),
                _optional(message["change"]), int(message["rank"]), int(message["ranks"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ExchangeError(
                f"rank {source}: iteration message: expected stage, band, bands, first, "
                f"last, done, total, residual, change, rank and ranks, got "
                f"{sorted(message)} ({type(error).__name__}: {error})") from None
        if event.rank != source or not (0 <= event.band < event.bands
                                         and 0 < event.done <= event.total
                                         and event.first < event.last):
            raise ExchangeError(
                f"rank {source}: iteration message: expected rank {source}, "
                f"0 <= band < bands, 0 < done <= total and first < last, got {message}")
        return event


#: ``listener(step, iteration)``: what :func:`~streamer.pipeline.executor.apply_steps` calls.
StepListener = Callable[[PipelineStep, Iteration], None]


@dataclass
class _StageTally:
    bands: set[tuple[int, int]] = field(default_factory=set)  # (rank, band)
    iterations: int = 0
    total: int = 0
    last: dict[tuple[int, int], BandIteration] = field(default_factory=dict)

    def finals(self) -> list[BandIteration]:
        """Each band's last event, in the order of its rows."""
        return sorted(self.last.values(), key=lambda e: (e.first, e.rank, e.band))


@dataclass
class IterationLog:
    """Every iteration of the scan's iterative stages, counted per stage and band.

    ``forward`` (optional) gets each :class:`BandIteration` as it happens.
    """

    forward: Callable[[BandIteration], None] | None = None
    _stages: dict[str, _StageTally] = field(default_factory=dict)

    def listener(self, band: int, bands: int, first: int, last: int) -> StepListener:
        """The listener for one band's :func:`apply_steps` call."""

        def tell(step: PipelineStep, iteration: Iteration) -> None:
            event = BandIteration(step.name, band, bands, first, last, iteration.done,
                                  iteration.total, iteration.residual, iteration.change)
            self.add(event)

        return tell

    def add(self, event: BandIteration) -> None:
        """Count ``event`` and pass it on."""
        tally = self._stages.setdefault(event.stage, _StageTally())
        tally.bands.add((event.rank, event.band))
        tally.iterations += 1
        tally.total = max(tally.total, event.total)
        tally.last[(event.rank, event.band)] = event
        if self.forward is not None:
            self.forward(event)

    @property
    def iterations(self) -> int:
        """Iterations run, all stages and bands together."""
        return sum(tally.iterations for tally in self._stages.values())

    def summary(self) -> list[str]:
        """One line per iterative stage: ``sirt: 20 iterations in each of 3 bands (60),
        final residual 0.0121 … 0.0153``; a band that stopped short is named."""
        lines = []
        for stage, tally in self._stages.items():
            finals = tally.finals()
            short = [_band_name(e) for e in finals if e.done < e.total]
            line = (f"{stage}: {tally.total} iterations in each of {len(tally.bands)} "
                    f"band{'s' if len(tally.bands) != 1 else ''} ({tally.iterations})")
            for name in ("residual", "change"):
                values = [getattr(e, name) for e in finals if getattr(e, name) is not None]
                if values:
                    low, high = min(values), max(values)
                    span = f"{low:.4g}" if low == high else f"{low:.4g} … {high:.4g}"
                    line += f", final {name} {span}"
            if short:
                line += f"; STOPPED SHORT in band(s) {', '.join(map(str, short))}"
            lines.append(line)
        return lines

    def as_dict(self) -> dict[str, Any]:
        """The JSON report's ``iterations``: per stage, the iterations asked, the bands,
        the iterations run in all and, per band (in the order of its rows), the rank, the
        rows, the iterations done and the final residual and change (None: not measured
        by that method; NaN, which JSON lacks, as None)."""
        return {
            stage: {
                "iterations": tally.total,
                "bands": len(tally.bands),
                "iterations_run": tally.iterations,
                "stopped_short": [_band_name(e) for e in tally.finals()
                                  if e.done < e.total],
                "per_band": [
                    {"rank": e.rank, "band": e.band + 1, "bands": e.bands,
                     "rows": [e.first, e.last], "done": e.done, "total": e.total,
                     "final_residual": _finite(e.residual),
                     "final_change": _finite(e.change)}
                    for e in tally.finals()
                ],
            }
            for stage, tally in self._stages.items()
        }


def _band_name(event: BandIteration) -> str:
    """``2`` (one rank: the band's number) or ``rank 1 band 2``."""
    if event.ranks > 1:
        return f"rank {event.rank} band {event.band + 1}"
    return str(event.band + 1)


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
