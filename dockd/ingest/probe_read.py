"""What the metadata tools' answers mean: :func:`ffprobe_reason` (does exiftool's answer
settle a clip, or must ffprobe look too?) and :func:`merge` (one :class:`ProbeResult` from
whatever the tools said), with the tags exiftool is asked for (:data:`TAGS`). Running the
tools is :mod:`dockd.ingest.probe`'s job.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from ..model import ProbeResult

_QT_EPOCH = datetime(1904, 1, 1, tzinfo=UTC)
_EXIF_DATE = re.compile(
    r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d+)?\s*(Z|[+-]\d{2}:?\d{2})?$")
_START_TAGS = ("QuickTime:CreateDate", "QuickTime:MediaCreateDate", "QuickTime:TrackCreateDate",
               "Keys:CreationDate", "UserData:DateTimeOriginal", "EXIF:DateTimeOriginal")

TAGS: tuple[str, ...] = (
    "Error", "Warning", "FileType", "FileSize", "Duration", "CreateDate", "MediaCreateDate",
    "TrackCreateDate", "CreationDate", "DateTimeOriginal", "CompressorID", "AudioFormat",
    "ImageWidth", "ImageHeight", "SourceImageWidth", "SourceImageHeight", "MediaDataOffset",
    "MediaDataSize", "Encoder", "Software", "Make", "Model", "SerialNumber",
    "InternalSerialNumber", "HandlerDescription")
"""The tags exiftool is asked for: every tag :func:`ffprobe_reason` and :func:`_merge` read
(by name, without a group, so each is reported from whichever group holds it, as
:func:`_bare_names` looks it up), the trouble exiftool reports (``Error``, ``Warning``) and
what decides whether ffprobe runs. Asking for these alone costs less exiftool CPU per
small MP4 than every tag (the unasked ones are neither converted nor written as JSON) and
gives the same :class:`ProbeResult` (``raw["exiftool"]``, a debugging aid that is not
stored, then holds only these tags); a test checks this against every tag on good, damaged,
misnamed and non-MP4 clips. The one difference, which of two groups holding one tag name
comes first, is settled by asking again for every tag (``Prober._every_tag``). A tag read
by this module must be added here."""
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


def merge(exif: dict[str, Any] | None, ff: dict[str, Any] | None, errors: list[str],
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
