"""Progress of iterative stages in a pipeline run: one event per iteration per band.

An iterative stage (``StageSpec.reports_progress``) tells its caller after each
iteration (:class:`stages.spec.Iteration`); the executor runs it once per band of
sinograms, so :class:`IterationLog` gives each band a listener that turns those events
into :class:`BandIteration` (which stage, which band of how many, which rows), keeps
what the run's summary needs, and forwards every event to the run's own listener (a
progress line, a test). The log belongs to one scan's processor: no shared state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from stages.spec import Iteration
from streamer.pipeline.config import PipelineStep


@dataclass(frozen=True)
class BandIteration:
    """Iteration ``done`` of ``total`` of ``stage`` on band ``band`` (0-based) of
    ``bands``, detector rows ``first … last − 1`` of the scan; ``residual`` and
    ``change`` as in :class:`stages.spec.Iteration`."""

    stage: str
    band: int
    bands: int
    first: int
    last: int
    done: int
    total: int
    residual: float | None
    change: float | None

    def describe(self) -> str:
        """``sirt band 2/4 (rows 16-31): iteration 12/20, residual 0.0123`` (a progress
        line)."""
        line = (f"{self.stage} band {self.band + 1}/{self.bands} (rows {self.first}-"
                f"{self.last - 1}): iteration {self.done}/{self.total}")
        if self.residual is not None:
            line += f", residual {self.residual:.4g}"
        if self.change is not None:
            line += f", change {self.change:.3g}"
        return line


#: ``listener(step, iteration)``: what :func:`~streamer.pipeline.executor.apply_steps` calls.
StepListener = Callable[[PipelineStep, Iteration], None]


@dataclass
class _StageTally:
    bands: set[int] = field(default_factory=set)
    iterations: int = 0
    total: int = 0
    last: dict[int, BandIteration] = field(default_factory=dict)


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
        tally.bands.add(event.band)
        tally.iterations += 1
        tally.total = max(tally.total, event.total)
        tally.last[event.band] = event
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
            finals = [tally.last[b] for b in sorted(tally.last)]
            short = [e.band + 1 for e in finals if e.done < e.total]
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
