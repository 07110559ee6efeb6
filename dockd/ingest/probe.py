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
spinning. One ``Prober`` serves one thread at a time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import exiftool
from exiftool.exceptions import ExifToolException, ExifToolOutputEmptyError

from ..config import ToolsConfig
from ..errors import ProbeError
from ..model import ProbeResult

log = logging.getLogger(__name__)

_QT_EPOCH = datetime(1904, 1, 1, tzinfo=UTC)
_EXIF_DATE = re.compile(
    r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d+)?\s*(Z|[+-]\d{2}:?\d{2})?$")
_START_TAGS = ("QuickTime:CreateDate", "QuickTime:MediaCreateDate", "QuickTime:TrackCreateDate",
               "Keys:CreationDate", "UserData:DateTimeOriginal", "EXIF:DateTimeOriginal")

BATCH_SIZE = 64
"""Clips per exiftool command. exiftool spends ~10 ms of CPU on a small MP4; one command
per clip adds a round trip, a watchdog thread and (before batching) an ffprobe run of
~100 ms. 64 small clips take well under a second, far inside the per-command timeout."""
_DOWN_LIMIT = 2
"""Clips probed one by one after a failed batch: after this many in a row on which exiftool
died or hung, the rest of the batch goes to ffprobe alone (a broken exiftool costs a few
timeouts per batch, not one per clip)."""
TAGS: tuple[str, ...] = (
    "Error", "Warning", "FileType", "FileSize", "Duration", "CreateDate", "MediaCreateDate",
    "TrackCreateDate", "CreationDate", "DateTimeOriginal", "CompressorID", "AudioFormat",
    "ImageWidth", "ImageHeight", "SourceImageWidth", "SourceImageHeight", "MediaDataOffset",
    "MediaDataSize", "Encoder", "Software", "Make", "Model", "SerialNumber",
    "InternalSerialNumber", "HandlerDescription")
"""The tags exiftool is asked for: every tag :func:`ffprobe_reason` and :func:`_merge` read
(by name, without a group, so each is reported from whichever group holds it, as
:func:`_bare_names` looks it up), the trouble exiftool reports (``Error``, ``Warning``) and
what decides whether ffprobe runs. Asking for these alone costs ~17 % less exiftool CPU per
small MP4 than every tag (the unasked ones are neither converted nor written as JSON) and
gives the same :class:`ProbeResult` (``raw["exiftool"]``, a debugging aid that is not
stored, then holds only these tags); a test checks this against every tag on good, damaged
and non-MP4 clips. A tag read by this module must be added here."""
_QUICKTIME_TYPES = frozenset({"MP4", "MOV", "M4V", "3GP", "3G2"})
_CODEC_NAMES = {"avc1": "h264", "avc3": "h264", "hvc1": "hevc", "hev1": "hevc", "mp4a": "aac",
                "ulaw": "pcm_mulaw", "alaw": "pcm_alaw", "sowt": "pcm_s16le",
                "twos": "pcm_s16be", "Opus": "opus", "ac-3": "ac3"}
"""QuickTime sample-entry codes exiftool reports, as ffprobe names the codec (so a manifest
reads the same whichever tool answered; ``mp4a`` is AAC on every recorder we know of)."""


def parse_time(value: object) -> datetime | None:
    """A metadata date (exiftool ``YYYY:MM:DD hh:mm:ss[+hh:mm]`` or ISO 8601) as UTC.

    Dates without an offset are taken as UTC (QuickTime stores UTC). The all-zero date
    and the QuickTime epoch (1904-01-01 00:00:00, a zeroed field) mean "not set": None.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    m = _EXIF_DATE.match(text)
    try:
        if m:
            y, mo, d, h, mi, s, frac, off = m.groups()
            if int(y) == 0 or int(mo) == 0 or int(d) == 0:
                return None
            tz = UTC
            if off and off != "Z":
                sign = 1 if off[0] == "+" else -1
                hh, mm = int(off[1:3]), int(off[-2:])
                tz = timezone(sign * timedelta(hours=hh, minutes=mm))
            dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s),
                          int(float(frac) * 1e6) if frac else 0, tzinfo=tz)
        else:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
    except ValueError:
        return None
    dt = dt.astimezone(UTC)
    return None if dt == _QT_EPOCH else dt


def _bare_names(meta: dict[str, Any]) -> dict[str, Any]:
    """Each tag's first non-empty value by its name without the group (``Make``)."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if value is not None and value != "":
            out.setdefault(key.rpartition(":")[2], value)
    return out


def _tag(meta: dict[str, Any], *names: str, bare: dict[str, Any] | None = None) -> Any:
    """First value of the given tags; a bare name matches that tag in any group (pass
    ``bare=_bare_names(meta)`` when looking up many)."""
    for name in names:
        if ":" in name:
            if meta.get(name) not in (None, ""):
                return meta[name]
            continue
        if bare is None:
            bare = _bare_names(meta)
        if name in bare:
            return bare[name]
    return None


def _as_float(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if f >= 0 else None


def _as_int(value: object) -> int | None:
    f = _as_float(value)
    return int(f) if f is not None else None


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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "process was previously running but died"
                alive = et.running
            if alive:
                return et
            log.warning("exiftool process died; restarting it")
            self._discard_exiftool(proc)
        args = ["-G", "-n", "-api", "LargeFileSupport=1"]
        args += [f"-{t}" for t in self.tags or ()]
        et = exiftool.ExifToolHelper(executable=self.tools.exiftool, check_execute=False,
                                     common_args=args)
        et.run()
        self._et = et
        log.debug("exiftool %s started (pid %s)", et.version, et._process.pid)
        return et

    def _discard_exiftool(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        et, self._et = self._et, None
        if et is None:
            return
        proc = proc or getattr(et, "_process", None)
        with warnings.catch_warnings():
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
        """Stop the exiftool process (if started)."""
        self._discard_exiftool()

    def _execute(self, files: Sequence[bytes]) -> list[dict[str, Any]]:
        """One exiftool command over ``files``: one dict per file that exiftool answered for.

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
                out = et.execute_json(*files)
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

    def _run_exiftool(self, path: Path) -> dict[str, Any]:
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
                out = self._execute([arg])
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
        return [x if x is not None else _Exif(error="no answer") for x in out]

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
        result = _merge(exif, ff, errors, ff_ran=bool(why) and not ff_unrunnable)
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


def ffprobe_reason(exif: dict[str, Any] | None) -> str:
    """Why exiftool's answer alone does not settle a clip ("" when it does).

    The checks need ``ok``, the start time and the duration (``checks.clip_times``,
    ``checks.clip_findings``, the continuity timeline); the manifest also shows codecs and
    picture size. exiftool's reading of a QuickTime/MP4 file is trusted when it read it
    without error or warning (a truncated ``mdat`` is a warning), found a video track, a
    duration and a start time, and its media data ends inside the file; everything else
    (other containers, damaged or unusual files, no exiftool answer) is also given to
    ffprobe, which then decides ``ok`` as before.
    """
    if exif is None:
        return "no exiftool answer"
    if exif.get("ExifTool:Error"):
        return "exiftool error"
    if exif.get("ExifTool:Warning"):
        return "exiftool warning"
    if str(exif.get("File:FileType") or "") not in _QUICKTIME_TYPES:
        return "not an MP4/MOV file"
    if not _as_float(exif.get("QuickTime:Duration")):
        return "no duration"
    if not any(parse_time(exif.get(tag)) for tag in _START_TAGS):
        return "no start time"
    if not exif.get("QuickTime:CompressorID") or not _as_int(exif.get("QuickTime:ImageWidth")):
        return "no video track"
    size = _as_int(exif.get("File:FileSize"))
    offset = _as_int(exif.get("QuickTime:MediaDataOffset"))
    length = _as_int(exif.get("QuickTime:MediaDataSize"))
    if size is None or offset is None or length is None:
        return "no media data"
    if offset + length > size:
        return "media data runs past the end of the file"
    return ""


def _codec(fourcc: object) -> str:
    code = str(fourcc or "")
    return _CODEC_NAMES.get(code, code)


def _exif_parsed(exif: dict[str, Any] | None) -> bool:
    if not exif or exif.get("ExifTool:Error"):
        return False
    return _tag(exif, "Duration", "ImageWidth") is not None


def _merge(exif: dict[str, Any] | None, ff: dict[str, Any] | None, errors: list[str],
           *, ff_ran: bool) -> ProbeResult:
    """One ProbeResult from whatever the tools said. ffprobe decides ``ok`` when it ran."""
    exif_ok = _exif_parsed(exif)
    if exif is not None and not exif_ok and not exif.get("ExifTool:Error"):
        why = exif.get("ExifTool:Warning") or "no duration or image size"
        errors.append(f"exiftool: no media metadata ({why})")
    ok = ff is not None if ff_ran else exif_ok
    tools = [name for name, good in (("exiftool", exif_ok), ("ffprobe", ff is not None)) if good]
    e = exif if exif_ok and exif is not None else {}
    fmt: dict[str, Any] = (ff or {}).get("format", {})
    streams: list[dict[str, Any]] = (ff or {}).get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), {})
    audio = next((s for s in streams if s.get("codec_type") == "audio"), {})
    ftags = {k.lower(): v for k, v in fmt.get("tags", {}).items()}

    bare = _bare_names(e)

    def tag(*names: str) -> Any:
        return _tag(e, *names, bare=bare)

    start = None
    for name in _START_TAGS:
        start = parse_time(e.get(name))
        if start is not None:
            break
    if start is None:
        start = parse_time(ftags.get("creation_time"))
    duration = _as_float(fmt.get("duration"))
    if duration is None:
        duration = _as_float(video.get("duration") or audio.get("duration"))
    if duration is None:
        duration = _as_float(tag("QuickTime:Duration", "Duration"))

    handlers = [s.get("tags", {}).get("handler_name", "") for s in streams]
    if not any(handlers) and e:
        handlers = [str(v) for k, v in e.items() if k.endswith(":HandlerDescription")]
    warnings_ = [str(exif["ExifTool:Warning"])] if exif and exif.get("ExifTool:Warning") else []
    if ff and ff.get("_stderr"):
        warnings_.append("ffprobe: " + ff["_stderr"].splitlines()[-1])
    raw: dict[str, Any] = {
        "handlers": [h for h in handlers if h],
        "warnings": warnings_,
        "streams": [{k: s.get(k) for k in ("index", "codec_type", "codec_name", "codec_tag_string",
                                           "width", "height", "duration", "sample_rate")}
                    for s in streams],
        "format_tags": ftags,
        "errors": list(errors),
        "exiftool": {k: v for k, v in e.items()
                     if not k.startswith(("File:", "SourceFile", "ExifTool:"))},
    }
    return ProbeResult(
        ok=ok,
        start=start,
        duration_s=duration,
        format_name=str(fmt.get("format_name") or tag("File:FileType") or "").lower(),
        video_codec=str(video.get("codec_name") or _codec(tag("CompressorID"))),
        audio_codec=str(audio.get("codec_name") or _codec(tag("AudioFormat"))),
        width=_as_int(video.get("width")) or _as_int(tag("SourceImageWidth", "ImageWidth")),
        height=(_as_int(video.get("height"))
                or _as_int(tag("SourceImageHeight", "ImageHeight"))),
        encoder=str(ftags.get("encoder") or tag("Encoder", "Software") or ""),
        make=str(tag("Make") or ftags.get("make") or ""),
        model=str(tag("Model") or ftags.get("model") or ""),
        device_serial=str(tag("SerialNumber", "InternalSerialNumber") or ""),
        tool="+".join(tools),
        error="" if ok else "; ".join(errors) or "no tool could read the clip",
        raw=raw,
    )
