"""Fixtures of the fault matrix: one simulated recorder and one exiftool for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dockd.config import Config
from dockd.devices.simulator import RecorderSpec, simulate_recorder
from dockd.ingest.probe import Prober


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recorder tree with three 1-second clips (real ffmpeg), copied for every case."""
    c = Config()
    root = tmp_path_factory.mktemp("template") / "rec"
    spec = RecorderSpec(segments=3, segment_seconds=1.0)
    return simulate_recorder(root, spec, profile=c.profiles[0], tz=c.tz, tools=c.tools).root


@pytest.fixture(scope="session")
def prober() -> Iterator[Prober]:
    with Prober(Config().tools) as p:
        yield p
