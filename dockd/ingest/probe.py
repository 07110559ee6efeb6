"""Read staged clips' metadata with exiftool and, where needed, ffprobe.

:class:`Prober` keeps **one** ``exiftool -stay_open`` process (through pyexiftool) for the
whole docking, started on first use and restarted if it dies. :meth:`Prober.probe_batch`
asks it about :data:`BATCH_SIZE` clips per command (a recorder of 20 000 small clips was
probed at ~15 clips/s with a command and an ffprobe run per clip). ffprobe runs, with a
timeout, only for a clip whose exiftool answer does not settle it (:func:`ffprobe_reason`:
an error or warning, not MP4/MOV, no duration, start time or video track, media data past
the end of the file), and then decides ``ok`` as before. Each tool covers for the other:
when one is missing or fails, the other's answer is used and ``ProbeResult.tool`` says who
answered. :meth:`Prober.probe` is ``probe_batch`` of one clip: the same answer per clip.

A clip is evidence whatever its state, so bad clip data (random bytes, a truncated file
without its ``moov`` atom, a clip that makes a tool hang) gives ``ProbeResult(ok=False,
error=...)``; :class:`ProbeError` is raised only when neither tool can be run at all.

pyexiftool reads exiftool's answer in a loop that never ends if the process dies in the
middle of a command; a watchdog thread therefore kills a dead or overdue exiftool and
points its output pipes at a directory, so the pending read fails (EISDIR) instead of
spinning. One ``Prober`` serves one thread at a time; :meth:`Prober.helpers` are more
Probers for :mod:`dockd.ingest.probe_pool`, which probes many clips with several exiftool
processes at once. exiftool is asked only for :data:`TAGS` (see
:mod:`dockd.ingest.probe_read`, which says what the tools' answers mean).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import exiftool
from exiftool.exceptions import ExifToolException, ExifToolOutputEmptyError

from ..config import ToolsConfig
from ..errors import ProbeError
from ..model import ProbeResult
from .probe_read import TAGS, ffprobe_reason, merge, parse_time

log = logging.getLogger(__name__)

__all__ = ["BATCH_SIZE", "TAGS", "Prober", "ffprobe_reason", "parse_time"]

BATCH_SIZE = 64
"""Clips per exiftool command. exiftool spends ~10 ms of CPU on a small MP4; one command
per clip adds a round trip, a watchdog thread and (before batching) an ffprobe run of
~100 ms. 64 small clips take well under a second, far inside the per-command timeout."""
_WARNINGS = threading.Lock()
_DOWN_LIMIT = 2
"""Clips probed one by one after a failed batch: after this many in a row on which exiftool
died or hung, the rest of the batch goes to ffprobe alone (a broken exiftool costs a few
timeouts per batch, not one per clip)."""
class _Watchdog:
    """Unblocks pyexiftool if its process dies or overruns ``timeout`` during a command."""

    def __init__(self, proc: subprocess.Popen[bytes], timeout: float):
        self.proc = proc
        self.timeout = timeout
        self.fired = ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="dockd-exiftool-watchdog",
                                        daemon=True)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self._done.wait(0.1):
            if self.proc.poll() is not None:
                self.fired = "exiftool died"
            elif time.monotonic() > deadline:
                self.fired = f"exiftool timed out after {self.timeout:.0f} s"
                self.proc.kill()
            else:
                continue
            dfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for stream in (self.proc.stdout, self.proc.stderr):
                    if stream is not None:
                        os.dup2(dfd, stream.fileno())
            finally:
                os.close(dfd)
            return


class Prober:
    """Metadata of staged clips. Use as a context manager, or call :meth:`close`."""

    def __init__(self, tools: ToolsConfig, *, timeout: float = 60.0,
                 tags: Sequence[str] | None = TAGS):
        self.tools = tools
        self.timeout = timeout
        self.tags = None if tags is None else tuple(tags)
        """The tags exiftool is asked for (None: every tag)."""
        self._et: exiftool.ExifToolHelper | None = None
        self._et_broken = ""
        self._ffprobe_broken = ""
        self._helpers: list[Prober] = []
        self._servers: list[_Server] = []  # one long-lived thread per helper

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ exiftool process

    def _exiftool(self) -> exiftool.ExifToolHelper:
        et = self._et
        if et is not None:
            proc = et._process  # pyexiftool forgets it once it notices the death
            # not et.running: it warns "previously running but died", and silencing that
            # (warnings.catch_warnings) is not thread-safe
            alive = proc is not None and proc.poll() is None
            if alive:
                return et
            log.warning("exiftool process died; restarting it")
            self._discard_exiftool(proc)
        et = exiftool.ExifToolHelper(executable=self.tools.exiftool, check_execute=False,
                                     common_args=["-G", "-n", "-api", "LargeFileSupport=1"])
        _in_starter(et.run)
        self._et = et
        log.debug("exiftool %s started (pid %s)", et.version, et._process.pid)
        return et

    def _discard_exiftool(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        et, self._et = self._et, None
        if et is None:
            return
        proc = proc or getattr(et, "_process", None)
        with _WARNINGS, warnings.catch_warnings():  # the lock: catch_warnings is process-wide
            warnings.simplefilter("ignore")
            try:
                if et.running:
                    et.terminate(timeout=5)
            except (ExifToolException, OSError, ValueError, subprocess.SubprocessError):
                pass
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
            proc.wait()
        et._process = None  # nothing left for pyexiftool's __del__ to do
        et._running = False  # (a terminate that timed out left it set: __del__ then crashed)

    def close(self) -> None:
        """Stop the exiftool process (if started), and those of the :meth:`helpers`."""
        self._discard_exiftool()
        servers, self._servers = self._servers, []
        for server in servers:
            server.stop()
        for helper in self._helpers:
            helper.close()
        self._helpers = []

    def helpers(self, n: int) -> list[Prober]:
        """``n`` more Probers like this one (same tools, timeout and tags), each used only in
        its own long-lived thread (see :meth:`run_in_helper`): kept for the next call,
        closed with this one. Each starts its exiftool on first use."""
        while len(self._helpers) < n:
            self._helpers.append(type(self)(self.tools, timeout=self.timeout, tags=self.tags))
            self._servers.append(_Server(len(self._helpers)))
        return self._helpers[:max(0, n)]

    def run_in_helper(self, helper: int, job: Callable[[], None]) -> None:
        """Run ``job`` in helper ``helper``'s own thread. A thread of its own that lives as
        long as this Prober, because pyexiftool has the kernel end exiftool when the thread
        that started it ends (PR_SET_PDEATHSIG): started in a short-lived thread, exiftool
        would die after every call."""
        self._servers[helper].inbox.put(job)

    def _execute(self, files: Sequence[bytes], *, every_tag: bool = False
                 ) -> list[dict[str, Any]]:
        """One exiftool command over ``files``: one dict per file that exiftool answered for,
        with the :attr:`tags` asked for (every tag with ``every_tag``).

        Raises :class:`_Unrunnable` when exiftool cannot be started, :class:`_ExifToolDown`
        when it died, timed out or answered garbage (the process is then discarded), and
        ``ValueError`` when it answered nothing at all (every file missing or unreadable).
        """
        try:
            et = self._exiftool()
        except (FileNotFoundError, PermissionError, RuntimeError, ExifToolException) as exc:
            raise _Unrunnable(str(exc)) from exc
        proc = et._process
        last: Exception | None = None
        with _Watchdog(proc, self.timeout) as dog:
            try:
                asked = [] if every_tag or self.tags is None else [f"-{t}" for t in self.tags]
                out = et.execute_json(*asked, *files)
            except ExifToolOutputEmptyError as exc:
                last, out = exc, None
                if not dog.fired and proc.poll() is None:  # alive: it had nothing to say
                    err = (et.last_stderr or "").strip().splitlines()
                    raise ValueError(err[-1] if err else "no output") from exc
            except (ExifToolException, OSError, ValueError) as exc:  # JSONDecodeError too
                last, out = exc, None
        if out is not None and isinstance(out, list) and all(isinstance(d, dict) for d in out):
            return [dict(d) for d in out]
        why = dog.fired or (f"{type(last).__name__}: {last}" if last else "no JSON list")
        self._discard_exiftool(proc)
        raise _ExifToolDown(why, timed_out=dog.fired.startswith("exiftool timed out"))

    def _run_exiftool(self, path: Path, *, every_tag: bool = False) -> dict[str, Any]:
        """exiftool's tags for ``path`` alone (restarting a dead exiftool once).

        Raises :class:`_Unrunnable`, :class:`_ExifToolDown` (timed out, or died twice) or
        ``ValueError`` (no answer for this file: missing, unreadable, unusable name).
        """
        name = os.fsdecode(path)
        if "\n" in name or "\r" in name:
            raise ValueError("path with a line break cannot go through exiftool -stay_open")
        arg = os.fsencode(path.absolute())  # absolute: a name like "-x.MP4" is no option
        for attempt in (1, 2):
            try:
                out = self._execute([arg], every_tag=every_tag)
            except _ExifToolDown as exc:
                if exc.timed_out or attempt == 2:
                    raise
                log.warning("exiftool failed on %s (attempt %d): %s", path.name, attempt, exc)
                continue
            except ValueError as exc:
                raise ValueError(str(exc).replace(os.fsdecode(arg), path.name)) from exc
            if len(out) != 1:
                raise ValueError(f"{len(out)} answers for one file")
            return out[0]
        raise AssertionError("unreachable")  # pragma: no cover

    def _exif_chunk(self, paths: Sequence[Path]) -> list[_Exif]:
        """exiftool's answer for each of ``paths``: one command for all of them, then, for
        any clip that command did not answer for (it died, hung, skipped a file), a command
        per clip, so a bad clip is isolated and gets its own error."""
        out: list[_Exif | None] = [None] * len(paths)
        todo: list[int] = []
        for i, p in enumerate(paths):
            name = os.fsdecode(p)
            if "\n" in name or "\r" in name:
                out[i] = _Exif(error="path with a line break cannot go through exiftool "
                                     "-stay_open")
            else:
                todo.append(i)
        if len(todo) > 1:
            args = [os.fsencode(paths[i].absolute()) for i in todo]
            try:
                answers = _match(args, self._execute(args))
            except _Unrunnable as exc:
                return [x or _Exif(unrunnable=str(exc)) for x in out]
            except (_ExifToolDown, ValueError) as exc:
                log.warning("exiftool failed on a batch of %d clips (%s); probing them one "
                            "by one", len(todo), exc)
                answers = [None] * len(todo)
            for i, tags in zip(todo, answers, strict=True):
                if tags is not None:
                    out[i] = _Exif(tags=tags)
        down = 0
        for i in (i for i in todo if out[i] is None):
            if down >= _DOWN_LIMIT:
                out[i] = _Exif(error=f"not run: exiftool failed on the {down} clips before "
                                     "this one in the same batch")
                continue
            try:
                out[i] = _Exif(tags=self._run_exiftool(paths[i]))
                down = 0
            except _Unrunnable as exc:
                out[i] = _Exif(unrunnable=str(exc))
            except _ExifToolDown as exc:
                down += 1
                out[i] = _Exif(error=str(exc) if exc.timed_out else f"failed twice: {exc}")
            except ValueError as exc:
                out[i] = _Exif(error=str(exc))
        for i in todo:
            x = out[i]
            if self.tags is not None and x is not None and x.tags and _one_name_twice(x.tags):
                out[i] = self._every_tag(paths[i], x)
        return [x if x is not None else _Exif(error="no answer") for x in out]

    def _every_tag(self, path: Path, asked: _Exif) -> _Exif:
        """exiftool's answer with every tag, for a clip whose answer holds one tag name in
        two groups: which of them a lookup by name finds first depends on where the groups
        begin in the file, which only the whole answer shows (the asked tags alone come in
        the order of the tags themselves). Rare (a camera writing Make in EXIF and XMP);
        when it fails, the asked tags' answer stands."""
        try:
            return _Exif(tags=self._run_exiftool(path, every_tag=True))
        except (_Unrunnable, _ExifToolDown, ValueError) as exc:
            log.warning("exiftool failed reading every tag of %s (%s); its asked tags stand",
                        path.name, exc)
            return asked

    # ------------------------------------------------------------------ ffprobe

    def _run_ffprobe(self, path: Path) -> dict[str, Any]:
        """ffprobe's JSON; raises OSError when it cannot run, ValueError for bad data."""
        target = os.fspath(path.absolute())
        cmd = [self.tools.ffprobe, "-v", "error", "-show_format", "-show_streams", "-of", "json",
               target]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"ffprobe timed out after {self.timeout:.0f} s") from exc
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0:
            last = stderr.splitlines()[-1] if stderr else f"exit status {proc.returncode}"
            raise ValueError(f"ffprobe: {last.replace(target, path.name)}")
        try:
            data: object = json.loads(proc.stdout or b"{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"ffprobe: unreadable JSON output: {exc}") from exc
        if not isinstance(data, dict) or not data.get("format") or not data.get("streams"):
            raise ValueError("ffprobe: no media streams found")
        if stderr:
            data["_stderr"] = stderr[-2000:]
        return data

    # ------------------------------------------------------------------ probe

    def probe_batch(self, paths: Sequence[Path]) -> list[ProbeResult]:
        """Metadata of many clips, in the order given: one result per path, each exactly
        what :meth:`probe` gives for that path alone.

        exiftool reads :data:`BATCH_SIZE` clips per command; ffprobe runs only for the clips
        exiftool's answer does not settle (see :func:`ffprobe_reason`). Bad clip data gives
        ``ok=False`` for that clip only; :class:`ProbeError` is raised only when neither tool
        can run at all.
        """
        paths = [Path(p) for p in paths]
        results: list[ProbeResult] = []
        for i in range(0, len(paths), BATCH_SIZE):
            chunk = paths[i:i + BATCH_SIZE]
            results.extend(self._result(p, x)
                           for p, x in zip(chunk, self._exif_chunk(chunk), strict=True))
        return results

    def probe(self, path: Path) -> ProbeResult:
        """Metadata of the clip at ``path``; ``ok=False`` (never an exception) for bad data."""
        return self.probe_batch([Path(path)])[0]

    def _result(self, path: Path, exif_answer: _Exif) -> ProbeResult:
        exif, errors = exif_answer.tags, []
        exif_unrunnable = ff_unrunnable = ""
        if exif_answer.unrunnable:
            exif_unrunnable = f"exiftool ({self.tools.exiftool!r}) cannot run: " \
                              f"{exif_answer.unrunnable}"
        elif exif_answer.error:
            errors.append(f"exiftool: {exif_answer.error}")
        why = ffprobe_reason(exif)
        ff: dict[str, Any] | None = None
        if why:
            try:
                ff = self._run_ffprobe(path)
            except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
                ff_unrunnable = (f"ffprobe ({self.tools.ffprobe!r}) cannot run: "
                                 f"{exc.strerror or exc}")
            except (OSError, ValueError) as exc:
                errors.append(str(exc))
        if exif_unrunnable and ff_unrunnable:
            raise ProbeError(f"no metadata tool can run: {exif_unrunnable}; {ff_unrunnable}")
        for msg, flag in ((exif_unrunnable, "_et_broken"), (ff_unrunnable, "_ffprobe_broken")):
            if msg and getattr(self, flag) != msg:
                log.error("%s; continuing with the other tool", msg)
                setattr(self, flag, msg)
        if exif is not None and exif.get("ExifTool:Error"):
            errors.append(f"exiftool: {exif['ExifTool:Error']}")
        result = merge(exif, ff, errors, ff_ran=bool(why) and not ff_unrunnable)
        result.raw["ffprobe_reason"] = why
        return result


@dataclass(frozen=True)
class _Exif:
    """exiftool's answer for one clip: its tags, or why there are none."""

    tags: dict[str, Any] | None = None
    error: str = ""
    """exiftool ran but gave nothing for this clip (timed out, died, file missing...)."""
    unrunnable: str = ""
    """exiftool cannot be started at all."""


class _Unrunnable(Exception):
    """exiftool cannot be started (missing, not executable, not exiftool)."""


class _ExifToolDown(OSError):
    """exiftool died, hung or answered garbage during a command; its process is gone."""

    def __init__(self, why: str, *, timed_out: bool):
        super().__init__(why)
        self.timed_out = timed_out


def _one_name_twice(tags: dict[str, Any]) -> bool:
    """Whether a tag name holds a value in more than one group (``EXIF:Make``, ``XMP:Make``)."""
    names = [k.rpartition(":")[2] for k, v in tags.items() if ":" in k and v not in (None, "")]
    return len(names) != len(set(names))


def _match(files: Sequence[bytes], answers: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """exiftool's answers lined up with the files asked for (None: no answer for it).

    exiftool answers in the order it was asked and leaves out files it could not open; its
    ``SourceFile`` is the path as given, with bytes that are not UTF-8 shown as ``?``. An
    answer is taken only where the name proves which file it is for (or, for undecodable
    names, where every file got an answer in order); the rest are probed one by one.
    """
    def name(f: bytes) -> str | None:
        try:
            return f.decode("utf-8")
        except UnicodeDecodeError:
            return None

    names = [name(f) for f in files]
    if len(answers) == len(files) and all(
            n is None or a.get("SourceFile") == n for n, a in zip(names, answers, strict=True)):
        return list(answers)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for a in answers:
        by_name.setdefault(str(a.get("SourceFile")), []).append(a)
    out: list[dict[str, Any] | None] = []
    for n in names:
        got = by_name.get(n) if n is not None else None
        out.append(got[0] if got and len(got) == 1 else None)
    return out


class _Server:
    """A long-lived thread that runs the jobs put in its inbox, one at a time."""

    def __init__(self, n: int, name: str = ""):
        self.inbox: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name or f"dockd-probe-{n}",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.inbox.get()) is not None:
            job()

    def stop(self) -> None:
        self.inbox.put(None)
        self.thread.join()


_starter: _Server | None = None
_starter_lock = threading.Lock()


def _in_starter(start: Callable[[], None]) -> None:
    """Run ``start`` (pyexiftool's ``run``, which forks exiftool) in one thread that lives
    as long as dockd: pyexiftool has the kernel end exiftool when the thread that started
    it ends (PR_SET_PDEATHSIG), so an exiftool started from a short-lived thread (a port's
    copy job under staging pressure, a helper) would die with it and be restarted."""
    global _starter
    with _starter_lock:
        if _starter is None:
            _starter = _Server(0, "dockd-exiftool-starter")
        starter = _starter
    done = threading.Event()
    failed: list[BaseException] = []

    def job() -> None:
        try:
            start()
        except BaseException as exc:  # raised again in the caller's thread
            failed.append(exc)
        finally:
            done.set()

    starter.inbox.put(job)
    done.wait()
    if failed:
        raise failed[0]
