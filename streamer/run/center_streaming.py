"""Which centre of rotation a streaming reconstruction uses, and when the volume is redone.

A streaming reconstruction (:class:`stages.recon.streaming.StreamingFbp`) needs its CoR
before the first block goes in. :class:`StreamingCenter` decides it from, in order of
authority:

1. ``given``: the pipeline's or the command line's fixed ``center``;
2. ``viewer``: set by a person in the live viewer during the scan (overrides all);
3. ``pair``: this scan's own estimate from its opposite projections
   (:func:`streamer.run.center_pair.pair_center`), as soon as they have arrived;
4. ``early estimate``: this scan's estimate from the projections received so far, before
   its opposite pair (:func:`streamer.run.center_early.early_center`; a 180° scan with
   nothing carried, whose pair comes last);
5. ``carried``: the last CoR of the previous scan of the same sample
   (:class:`CenterMemory`).

Each event returns what the runner must do: :class:`Start` (start the accumulator with
this centre, or restart it and re-add the blocks kept so far when the centre changes
mid-scan) or ``None`` (nothing). Until a centre is known the runner keeps the corrected
blocks and starts when one is. At close, :meth:`StreamingCenter.closed` takes the final
estimate from the whole scan (e.g. Vo's method on the sinogram): when the centre used came
from an estimate (pair or carried) and the final one differs by more than the tolerance,
the volume is redone with the final one (:class:`Outcome` ``redone``) and the report says
so; a given or viewer centre is a person's choice and is kept (the difference is
reported). No sockets, threads or clocks here: the runner feeds events and acts.

**The same sample** (:func:`sample_key`): two scans are of the same sample when their
``start`` headers carry the same ``metadata["sample"]`` (a string or integer the source
sets, e.g. the beamline's sample name; our ``simulate`` and ``replay`` send ``--sample``,
``replay`` the file's own by default: :mod:`streamer.sources.sample_name`) and the same
detector width. A scan without it
carries nothing and gives nothing to the next: the scan name changes per scan and the
``source`` names the sender, not the sample, so neither can say it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from streamer.errors import StreamerError
from streamer.sources.sample_name import SAMPLE_ENTRY
from streamer.wire.protocol import StartHeader

__all__ = ["DEFAULT_TOLERANCE_PX", "CenterMemory", "CenterSource", "Outcome", "Start",
           "StreamingCenter", "center_note", "sample_key", "streaming_center_method"]

#: Samples whose last CoR a service remembers (the newest).
MAX_REMEMBERED: Final = 1000
#: Pixels an estimated CoR may differ from the final estimate before the volume is redone:
#: half a detector pixel, the step below which FBP's reconstructions are not told apart
#: by eye or by Vo's metric (which refines to 0.25 px), and above the spread of the pair
#: estimate on the real scans with an exact pair (DIAD 0.0, I13 0.16 px from Vo's).
DEFAULT_TOLERANCE_PX: Final = 0.5


class CenterSource(StrEnum):
    """Where the CoR in use came from."""

    GIVEN = "given"
    VIEWER = "viewer"
    PAIR = "pair"
    EARLY = "early estimate"
    CARRIED = "carried"
    FINAL = "final"


#: Sources a person chose: never replaced by an estimate.
_CHOSEN = (CenterSource.GIVEN, CenterSource.VIEWER)


@dataclass(frozen=True)
class Start:
    """Start the accumulator with ``center`` (``restart``: discard it and re-add the blocks
    kept so far)."""

    center: float
    source: CenterSource
    restart: bool


@dataclass(frozen=True)
class Outcome:
    """The decision at close: the volume's CoR, whether it must be (re)computed with it at
    close, and the sentence for the report."""

    center: float
    source: CenterSource
    redone: bool
    at_close: bool
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"center": self.center, "source": self.source.value, "redone": self.redone,
                "reconstructed_at_close": self.at_close, "reason": self.reason}


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise StreamerError(f"streaming CoR: {name}: expected a finite column, got {value}")
    return float(value)


@dataclass
class StreamingCenter:
    """The CoR decision of one scan; see the module docstring.

    Parameters
    ----------
    tolerance : float
        Pixels the final estimate may differ from an estimated centre in use before the
        volume is redone.
    given, carried : float, optional
        A fixed centre, and the previous scan's centre for the same sample.
    """

    tolerance: float = DEFAULT_TOLERANCE_PX
    given: float | None = None
    carried: float | None = None
    center: float | None = None
    source: CenterSource | None = None
    estimates: dict[str, float] = field(default_factory=dict)
    restarts: int = 0
    outcome: Outcome | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise StreamerError(
                f"streaming CoR: tolerance: expected a finite value >= 0, got {self.tolerance}"
            )

    def _use(self, value: float, source: CenterSource) -> Start:
        restart = self.center is not None
        self.restarts += int(restart)
        self.center, self.source = value, source
        return Start(value, source, restart)

    def _open(self) -> None:
        if self.outcome is not None:
            raise StreamerError("streaming CoR: expected an open scan, got a closed one")

    def opened(self) -> Start | None:
        """The scan opened: start at once with a given or carried centre, else wait."""
        self._open()
        if self.given is not None:
            return self._use(_finite("given", self.given), CenterSource.GIVEN)
        if self.carried is not None:
            return self._use(_finite("carried", self.carried), CenterSource.CARRIED)
        return None

    def viewer_set(self, value: float) -> Start | None:
        """A person set the CoR in the viewer: it wins; restart if it changed."""
        self._open()
        value = _finite("viewer", value)
        if self.center == value:
            self.source = CenterSource.VIEWER
            return None
        return self._use(value, CenterSource.VIEWER)

    def pair_found(self, value: float) -> Start | None:
        """This scan's opposite pair gave ``value``: use it unless a person chose a centre,
        the carried one agrees within the tolerance, or an early estimate is streaming
        (like a carried centre it is settled at close, not restarted: the pair of a scan
        that has it comes with the last projections, when a restart costs the redo)."""
        self._open()
        value = _finite("pair", value)
        self.estimates["pair"] = value
        if self.source in _CHOSEN or self.source is CenterSource.EARLY:
            return None
        if self.center is not None and abs(value - self.center) <= self.tolerance:
            return None
        return self._use(value, CenterSource.PAIR)

    def early_found(self, value: float) -> Start | None:
        """This scan's early estimate (from the projections so far) gave ``value``: use it
        when no centre is in use yet (a given, viewer, carried or pair centre is not
        replaced by it)."""
        self._open()
        value = _finite("early", value)
        self.estimates["early"] = value
        if self.center is not None:
            return None
        return self._use(value, CenterSource.EARLY)

    def closed(self, final: float | None) -> Outcome:
        """The scan closed; ``final`` is the estimate from the whole scan (``None``: none).

        Raises
        ------
        StreamerError
            If no centre is known at all, or the scan was already closed.
        """
        self._open()
        if final is not None:
            final = _finite("final", final)
            self.estimates["final"] = final
        if self.center is None or self.source is None:
            if final is None:
                raise StreamerError(
                    "streaming CoR: expected a centre (given, viewer, pair, early estimate, "
                    "carried or a final estimate), got none"
                )
            self.outcome = Outcome(final, CenterSource.FINAL, False, True,
                                   "no centre before the scan closed: reconstructed at close "
                                   f"with the final estimate {final:.2f}")
        elif final is None or abs(final - self.center) <= self.tolerance:
            self.outcome = Outcome(self.center, self.source, False, False, None)
        elif self.source in _CHOSEN:
            self.outcome = Outcome(
                self.center, self.source, False, False,
                f"kept the {self.source.value} CoR {self.center:.2f}; the final estimate "
                f"{final:.2f} differs by {abs(final - self.center):.2f} px",
            )
        else:
            self.outcome = Outcome(
                final, CenterSource.FINAL, True, True,
                f"redone: the final CoR estimate {final:.2f} differs from the "
                f"{self.source.value} CoR {self.center:.2f} by {abs(final - self.center):.2f} "
                f"px (tolerance {self.tolerance:g})",
            )
        return self.outcome

    def report(self) -> dict[str, Any]:
        """JSON-able, for the run report (``center``)."""
        return {
            **(self.outcome.as_dict() if self.outcome is not None else {
                "center": self.center,
                "source": None if self.source is None else self.source.value,
            }),
            "estimates": dict(self.estimates),
            "restarts": self.restarts,
            "tolerance": self.tolerance,
        }


@dataclass
class CenterMemory:
    """The last CoR per sample, for the next scan of the same sample (newest kept)."""

    limit: int = MAX_REMEMBERED
    _centers: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def remember(self, sample: str, center: float) -> None:
        self._centers[sample] = _finite("remembered", center)
        self._centers.move_to_end(sample)
        while len(self._centers) > self.limit:
            self._centers.popitem(last=False)

    def recall(self, sample: str) -> float | None:
        return self._centers.get(sample)


def sample_key(start: StartHeader) -> str | None:
    """Which sample a scan is of, for carrying its CoR to the next scan (see the module
    docstring), or None when its ``start`` does not say."""
    value = start.metadata.get(SAMPLE_ENTRY)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return f"{value} ({start.cols} columns)"


def streaming_center_method(outcome: Outcome, final_method: str | None) -> str:
    """How the CoR of a streamed scan was decided, as stored beside it and sent in the
    feed's ``scan_end``: its source, and the reason when it was redone or kept against
    the final estimate (found by ``final_method``, e.g. ``"auto"``: the CoR policy)."""
    final = "vo" if final_method in (None, "auto") else final_method
    if outcome.source is CenterSource.VIEWER:
        label = "user (viewer)"
    elif outcome.source is CenterSource.FINAL:
        label = final
    else:
        label = f"{outcome.source.value} (streaming)"
    return label if outcome.reason is None else f"{label}; {outcome.reason}"


def center_note(report: dict[str, Any]) -> str:
    """The terminal line of a streamed scan's CoR (from :meth:`StreamingCenter.report`
    as the runner completes it)."""
    used, final = report.get("streamed_with"), report.get("final")
    line = f"CoR: {report.get('source')} {_px(report.get('center'))}"
    if used is not None and used != report.get("center"):
        line += f" (streamed with {_px(used)})"
    if final is not None:
        line += f", final estimate {_px(final)}"
    if report.get("difference") is not None:
        line += f" ({report['difference']:.2f} px apart, tolerance {report['tolerance']:g})"
    if report.get("redone"):
        line += ": volume REDONE at close"
    elif not report.get("streamed"):
        line += ": reconstructed at close"
    if report.get("final_error"):
        line += f"; final estimate failed: {report['final_error']}"
    return line


def _px(value: Any) -> str:
    return "?" if value is None else f"{float(value):.2f}"
