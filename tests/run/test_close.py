"""The close handshake between ranks, stepped without sockets, threads or sleeps: the
clock is a number passed in."""

from __future__ import annotations

import pytest

from streamer.errors import ExchangeError
from streamer.run.close import CenterAgreed, CloseHandshake, Ready, Step, TimedOut, Waiting


def handshake(rank: int = 0, size: int = 3, owner: int | None = 1) -> CloseHandshake[str]:
    return CloseHandshake("s1", rank, size, timeout_s=10.0, center_owner=owner)


def test_references_settle_once_every_peer_delivered_what_it_announced() -> None:
    close = handshake(rank=0)
    close.begin(Step.REFERENCES, now=0.0)
    assert close.check(1.0) == Waiting((1, 2))  # nobody announced yet
    close.references_announced(1, 2)
    close.references_announced(2, 0)
    close.reference_received(1)
    assert close.check(2.0) == Waiting((1,))  # rank 1 announced 2, one arrived
    close.reference_received(1)
    assert close.check(3.0) == Ready()
    assert close.references == 2


def test_an_announcement_that_overtakes_its_references_still_waits_for_them() -> None:
    close = handshake(rank=2)
    close.references_announced(0, 1)
    close.references_announced(1, 1)
    close.begin(Step.REFERENCES, now=0.0)
    close.reference_received(0)
    assert close.check(0.5) == Waiting((1,))
    close.reference_received(1)
    assert close.check(0.6) == Ready()


def test_a_silent_rank_is_named_when_the_wait_runs_out() -> None:
    close = handshake(rank=0)
    close.references_announced(1, 0)
    close.begin(Step.REFERENCES, now=100.0)
    assert close.check(110.0) == Waiting((2,))  # the deadline itself is still in time
    outcome = close.check(110.5)
    assert isinstance(outcome, TimedOut) and outcome.ranks == (2,)
    assert outcome.message == ("scan 's1': rank 0 waited 10 s for the darks and flats "
                               "forwarded by ranks [2]: none came (a rank died or is stuck)")


def test_the_cor_is_awaited_from_its_owner_only_when_it_is_to_be_found() -> None:
    fixed = handshake(owner=None)
    fixed.begin(Step.CENTER, now=0.0)
    assert fixed.check(0.0) == Ready()
    close = handshake(rank=2, owner=1)
    close.begin(Step.CENTER, now=0.0)
    assert close.check(5.0) == Waiting((1,))
    close.center_agreed(CenterAgreed(31.5, "vo", None))
    assert close.check(6.0) == Ready() and close.center == CenterAgreed(31.5, "vo", None)
    owner = handshake(rank=1, owner=1)  # the owner finds it itself before it waits
    owner.center_agreed(CenterAgreed(None, None, "no projection"))
    owner.begin(Step.CENTER, now=0.0)
    assert owner.check(0.0) == Ready()


def test_rank_zero_waits_for_every_part_including_its_own() -> None:
    close = handshake(rank=0)
    close.begin(Step.PARTS, now=0.0)
    close.part_written(0, "part 0")
    close.part_written(2, "part 2")
    assert close.check(1.0) == Waiting((1,))
    outcome = close.check(11.0)
    assert isinstance(outcome, TimedOut) and outcome.ranks == (1,)
    assert "for the parts written by ranks [1]" in outcome.message
    assert close.parts == {0: "part 0", 2: "part 2"}


def test_one_rank_has_nobody_to_wait_for() -> None:
    close = handshake(rank=0, size=1, owner=0)
    close.center_agreed(CenterAgreed(10.0, "vo", None))
    for step in Step:
        if step is Step.PARTS:
            close.part_written(0, "mine")
        close.begin(step, now=0.0)
        assert close.check(0.0) == Ready()


def test_bad_inputs_are_exchange_errors() -> None:
    with pytest.raises(ExchangeError, match=r"rank: expected one in \[0, 2\), got 2"):
        CloseHandshake("s", 2, 2, timeout_s=1.0)
    with pytest.raises(ExchangeError, match=r"CoR owner: expected a rank in \[0, 2\), got 5"):
        CloseHandshake("s", 0, 2, timeout_s=1.0, center_owner=5)
    with pytest.raises(ExchangeError, match="expected a count >= 0"):
        handshake().references_announced(1, -1)
    with pytest.raises(ExchangeError, match=r"check\(\) before begin\(\)"):
        handshake().check(0.0)
