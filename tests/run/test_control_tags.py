"""Every message kind on the runner's control link has its own tag.

Two helpers once gave two new kinds the same number (307): rank 0 would have read an
iteration as a streaming CoR. The tags are module constants, so this checks them all.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from streamer.live import relay
from streamer.run import ranks


def tags(module: ModuleType) -> dict[str, int]:
    return {name: value for name, value in vars(module).items()
            if name.startswith("TAG_") and isinstance(value, int)}


@pytest.mark.parametrize("module", [ranks, relay], ids=["control", "relay"])
def test_each_message_kind_has_its_own_tag(module: ModuleType) -> None:
    found = tags(module)
    assert len(found) >= 5
    by_value: dict[int, list[str]] = {}
    for name, value in found.items():
        by_value.setdefault(value, []).append(name)
    assert not {v: n for v, n in by_value.items() if len(n) > 1}
