"""probe_in_order: batches through several exiftool processes at once (one Prober per
thread), answers in the clips' order, the same answers as one process gives; no second
exiftool for a single batch; the helper's exiftool lives from call to call; errors raised
in their turn; an early stop leaves nothing running."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from dockd.config import ToolsConfig
from dockd.errors import ProbeError
from dockd.ingest.probe import Prober
from dockd.ingest.probe_pool import MIN_SPLIT, groups_of, probe_in_order
from dockd.model import ProbeResult
from tests.conftest import garbage

pytestmark = pytest.mark.skipif(
    not (shutil.which("ffmpeg") and shutil.which("ffprobe") and shutil.which("exiftool")),
    reason="needs ffmpeg, ffprobe and exiftool")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Twelve clips, good ones of different dates and a few damaged ones between them."""
    d = tmp_path_factory.mktemp("par")
    out = []
    for i in range(9):
        p = d / f"A1234567_012345_2024030108{i:02d}00_{i:04d}.MP4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                        "testsrc2=s=64x48:r=5:d=1", "-c:v", "libx264", "-preset", "ultrafast",
                        "-metadata", f"creation_time=2024-03-01T00:{i:02d}:00Z",
                        os.fspath(p)], check=True)
        out.append(p)
    (d / "random.MP4").write_bytes(garbage(4000))
    (d / "half.MP4").write_bytes(out[0].read_bytes()[:3000])
    out[3:3] = [d / "random.MP4"]
    out[7:7] = [d / "half.MP4", d / "gone.MP4"]
    return out


def _probe_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dockd-probe-")]


class Recording(Prober):
    """A real Prober that notes which instance probed which group, in which thread."""

    calls: list[tuple[int, str, tuple[str, ...]]] = []
    poison = ""

    def probe_batch(self, paths: Sequence[Path]) -> list[ProbeResult]:
        Recording.calls.append((id(self), threading.current_thread().name,
                                tuple(Path(p).name for p in paths)))
        if any(Path(p).name == self.poison for p in paths):
            raise ProbeError("no metadata tool can run (test)")
        return super().probe_batch(paths)


@pytest.fixture(autouse=True)
def _fresh_recording() -> None:
    Recording.calls = []
    Recording.poison = ""


def test_two_processes_give_the_same_answers_in_order(clips: list[Path]) -> None:
    with Prober(ToolsConfig()) as p:
        alone = p.probe_batch(clips)
    with Recording(ToolsConfig()) as p:
        got = [r for rs in probe_in_order(p, groups_of(clips, 2), processes=2) for r in rs]
        helper = p.helpers(1)[0]
        assert helper._et is not None and p._et is not None  # each its own exiftool
        pids = (p._et._process.pid, helper._et._process.pid)  # type: ignore[union-attr]
        assert pids[0] != pids[1]
        again = [r for rs in probe_in_order(p, groups_of(clips, 2), processes=2) for r in rs]
        # the same two processes: exiftool ends with the thread that started it
        # (PR_SET_PDEATHSIG), so the helper's lives in a thread of its own, not one per call
        assert (p._et._process.pid, helper._et._process.pid) == pids  # type: ignore[union-attr]
        assert helper._et._process.poll() is None  # type: ignore[union-attr]
    assert got == again == alone
    assert [r.ok for r in got] == [c.exists() and c.name not in ("random.MP4", "half.MP4")
                                   for c in clips]
    probers = {who for who, _, _ in Recording.calls}
    threads = {name for _, name, _ in Recording.calls}
    assert len(probers) == 2
    assert threads == {threading.current_thread().name, "dockd-probe-1"}
    assert sorted(n for _, _, g in Recording.calls for n in g) == \
        sorted(c.name for c in clips * 2)
    assert _probe_threads() == []  # closed with the Prober


def test_a_single_batch_starts_no_second_exiftool_nor_thread(clips: list[Path]) -> None:
    with Recording(ToolsConfig()) as p:
        for group in ([clips[0]], clips[:5]):
            got = list(probe_in_order(p, groups_of(group, 64, 2), processes=2))
            assert len(got) == 1 and len(got[0]) == len(group)
        assert p._helpers == []
    assert {name for _, name, _ in Recording.calls} == {threading.current_thread().name}


def test_one_process_configured_means_one(clips: list[Path]) -> None:
    with Recording(ToolsConfig()) as p:
        got = [r for rs in probe_in_order(p, groups_of(clips, 3, 1), processes=1) for r in rs]
        assert p._helpers == []
    assert len(got) == len(clips) and len({who for who, _, _ in Recording.calls}) == 1


def test_an_error_comes_in_its_turn_and_stops_the_handing_out(clips: list[Path]) -> None:
    Recording.poison = clips[4].name
    groups = groups_of(clips, 1)
    seen: list[str] = []
    with Recording(ToolsConfig()) as p:
        with pytest.raises(ProbeError):
            for rs in probe_in_order(p, groups, processes=2):
                seen.append(rs[0].raw["ffprobe_reason"] if rs else "")
        after = len(Recording.calls)
    assert len(seen) == 4  # the four groups before the failed one, each in its turn
    assert after < len(groups)  # not every group: handing out stopped
    assert len(Recording.calls) == after  # nothing ran once the error was raised
    assert _probe_threads() == []


def test_closing_early_waits_for_the_threads_and_starts_no_more(clips: list[Path]) -> None:
    groups = groups_of(clips * 4, 1)
    with Recording(ToolsConfig()) as p:
        answers = probe_in_order(p, groups, processes=2)
        first = next(answers)
        answers.close()
        after = len(Recording.calls)
        assert len(first) == 1 and first[0].ok
        # at most two groups per process ahead of the consumer, plus the one in progress
        assert after <= 1 + 2 * 2 + 1 < len(groups)
    assert len(Recording.calls) == after  # nothing was still running after close()
    assert _probe_threads() == []


@pytest.mark.parametrize("n,batch,processes,sizes", [
    (0, 64, 2, []),
    (1, 64, 2, [1]),
    (2 * MIN_SPLIT - 1, 64, 2, [2 * MIN_SPLIT - 1]),  # too few for a second exiftool
    (2 * MIN_SPLIT, 64, 2, [MIN_SPLIT, MIN_SPLIT]),
    (2 * MIN_SPLIT, 64, 1, [2 * MIN_SPLIT]),
    (64, 64, 2, [32, 32]),
    (70, 64, 2, [35, 35]),
    (130, 64, 1, [44, 44, 42]),
    (5, 2, 1, [2, 2, 1]),
    (3, 0, 1, [1, 1, 1]),
])
def test_groups_of(n: int, batch: int, processes: int, sizes: list[int]) -> None:
    paths = [Path(f"c{i}.MP4") for i in range(n)]
    groups = groups_of(paths, batch, processes)
    assert [len(g) for g in groups] == sizes
    assert [p for g in groups for p in g] == paths


def test_exiftool_started_from_a_thread_that_ends_lives_on(clips: list[Path]) -> None:
    """pyexiftool has exiftool killed when the thread that started it ends: a Prober first
    used from a short-lived thread (a port's copy job) keeps its exiftool all the same."""
    with Prober(ToolsConfig()) as p:
        t = threading.Thread(target=p.probe_batch, args=([clips[0]],))
        t.start()
        t.join()
        assert p._et is not None
        pid = p._et._process.pid  # type: ignore[union-attr]
        time.sleep(0.5)  # a SIGTERM from the thread's end would have arrived by now
        assert p._et._process.poll() is None  # type: ignore[union-attr]
        assert p.probe_batch([clips[1]])[0].ok
        assert p._et._process.pid == pid  # type: ignore[union-attr]
