"""Read a staged clip's metadata with exiftool and ffprobe.

:class:`Prober` keeps **one** ``exiftool -stay_open`` process (through pyexiftool) for the
whole docking, started on first use and restarted if it dies, and runs ``ffprobe`` per
clip with a timeout. Each tool covers for the other: when one is missing or fails, the
other's answer is used and ``ProbeResult.tool`` says who answered.

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
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import exiftool
from exiftool.exceptions import ExifToolException

from ..config import ToolsConfig
from ..errors import ProbeError
from ..model import ProbeResult

log = logging.getLogger(__name__)

_QT_EPOCH = datetime(1904, 1, 1, tzinfo=UTC)
_EXIF_DATE = re.compile(
    r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d+)?\s*(Z|[+-]\d{2}:?\d{2})?$")
_START_TAGS = ("QuickTime:CreateDate", "QuickTime:MediaCreateDate", "QuickTime:TrackCreateDate",
               "Keys:CreationDate", "UserData:DateTimeOriginal", "EXIF:DateTimeOriginal")


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


def _tag(meta: dict[str, Any], *names: str) -> Any:
    """First value of the given tags; a bare name matches that tag in any group."""
    for name in names:
        if ":" in name:
            if meta.get(name) not in (None, ""):
                return meta[name]
            continue
        for key, value in meta.items():
            if key.rpartition(":")[2] == name and value not in (None, ""):
                return value
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

    def __init__(self, tools: ToolsConfig, *, timeout: float = 60.0):
        self.tools = tools
        self.timeout = timeout
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
        et = exiftool.ExifToolHelper(executable=self.tools.exiftool, check_execute=False,
                                     common_args=["-G", "-n", "-api", "LargeFileSupport=1"])
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

    def _run_exiftool(self, path: Path) -> dict[str, Any]:
        """exiftool's tags for ``path``; raises OSError/ExifToolException when it cannot run."""
        if "\n" in os.fsdecode(path) or "\r" in os.fsdecode(path):
            raise ValueError("path with a line break cannot go through exiftool -stay_open")
        last: Exception | None = None
        for attempt in (1, 2):
            et = self._exiftool()
            proc = et._process
            with _Watchdog(proc, self.timeout) as dog:
                try:
                    out = et.execute_json(os.fsencode(path))
                except (ExifToolException, OSError, ValueError, json.JSONDecodeError) as exc:
                    last = exc
                    out = None
            if out:
                return dict(out[0])
            why = dog.fired or f"{type(last).__name__}: {last}"
            self._discard_exiftool(proc)
            if dog.fired.startswith("exiftool timed out"):
                raise TimeoutError(why)
            log.warning("exiftool failed on %s (attempt %d): %s", path, attempt, why)
        raise OSError(f"exiftool failed twice: {last}")

    # ------------------------------------------------------------------ ffprobe

    def _run_ffprobe(self, path: Path) -> dict[str, Any]:
        """ffprobe's JSON; raises OSError when it cannot run, ValueError for bad data."""
        cmd = [self.tools.ffprobe, "-v", "error", "-show_format", "-show_streams", "-of", "json",
               os.fspath(path.absolute())]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"ffprobe timed out after {self.timeout:.0f} s") from exc
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0:
            last = stderr.splitlines()[-1] if stderr else f"exit status {proc.returncode}"
            raise ValueError(f"ffprobe: {last.replace(os.fsdecode(path), path.name)}")
        try:
            data = json.loads(proc.stdout or b"{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"ffprobe: unreadable JSON output: {exc}") from exc
        if not data.get("format") or not data.get("streams"):
            raise ValueError("ffprobe: no media streams found")
        if stderr:
            data["_stderr"] = stderr[-2000:]
        return data

    # ------------------------------------------------------------------ probe

    def probe_batch(self, paths: Sequence[Path]) -> list[ProbeResult]:
        """Metadata of many clips, in the order given (one result per path, never raises)."""
        return [self.probe(p) for p in paths]

    def probe(self, path: Path) -> ProbeResult:
        """Metadata of the clip at ``path``; ``ok=False`` (never an exception) for bad data."""
        path = Path(path)
        exif: dict[str, Any] | None = None
        ff: dict[str, Any] | None = None
        errors: list[str] = []
        exif_unrunnable = ff_unrunnable = ""
        try:
            exif = self._run_exiftool(path)
        except (FileNotFoundError, PermissionError, RuntimeError, ExifToolException) as exc:
            exif_unrunnable = f"exiftool ({self.tools.exiftool!r}) cannot run: {exc}"
        except (OSError, ValueError) as exc:  # TimeoutError is an OSError
            errors.append(f"exiftool: {exc}")
        try:
            ff = self._run_ffprobe(path)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            ff_unrunnable = f"ffprobe ({self.tools.ffprobe!r}) cannot run: {exc.strerror or exc}"
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
        return _merge(exif, ff, errors, ff_ran=not ff_unrunnable)


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

    start = None
    for tag in _START_TAGS:
        start = parse_time(e.get(tag))
        if start is not None:
            break
    if start is None:
        start = parse_time(ftags.get("creation_time"))
    duration = _as_float(fmt.get("duration"))
    if duration is None:
        duration = _as_float(video.get("duration") or audio.get("duration"))
    if duration is None:
        duration = _as_float(_tag(e, "QuickTime:Duration", "Duration"))

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
        format_name=str(fmt.get("format_name") or _tag(e, "File:FileType") or ""),
        video_codec=str(video.get("codec_name") or _tag(e, "CompressorID") or ""),
        audio_codec=str(audio.get("codec_name") or _tag(e, "AudioFormat") or ""),
        width=_as_int(video.get("width")) or _as_int(_tag(e, "ImageWidth")),
        height=_as_int(video.get("height")) or _as_int(_tag(e, "ImageHeight")),
        encoder=str(ftags.get("encoder") or _tag(e, "Encoder", "Software") or ""),
        make=str(_tag(e, "Make") or ftags.get("make") or ""),
        model=str(_tag(e, "Model") or ftags.get("model") or ""),
        device_serial=str(_tag(e, "SerialNumber", "InternalSerialNumber") or ""),
        tool="+".join(tools),
        error="" if ok else "; ".join(errors) or "no tool could read the clip",
        raw=raw,
    )
