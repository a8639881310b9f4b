from __future__ import annotations

import pytest

from mqepi.lake.store import Lake


@pytest.fixture
def lake(tmp_path) -> Lake:
    """A fresh, initialised lake in a temporary folder."""
    lk = Lake(tmp_path / "lake")
    lk.init()
    return lk
