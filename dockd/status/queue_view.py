"""``dockd queue`` drawn for a terminal (rich): the data is :func:`.queue.queue_data`."""

from __future__ import annotations

from datetime import UTC, tzinfo
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..cli_text import language, tr
from ..delivery.schedule import ALARM, OK, WARNING
from .i18n import MESSAGES, translate
from .timefmt import local_time
from .views import human_bytes, human_duration


def _reasons_text(d: dict[str, Any], tz: tzinfo) -> list[str]:
    """A forecast's reasons in the CLI's language, times in the dock's zone (the page
    catalogue's ``dreason.*`` texts)."""
    codes = d.get("reason_codes") or []
    if not codes:
        return list(d["reasons"])
    out = []
    for rc in codes:
        vals = {k: (local_time(v, tz) if k in ("deadline", "eta") else v)
                for k, v in rc.items() if k != "code"}
        out.append(translate(f"dreason.{rc['code']}", language(), **vals))
    return out


LEVELS = (OK, WARNING, ALARM)


def _kind_text(kind: str) -> str:
    return MESSAGES[language()].get(f"alertkind.{kind}", kind)


def render_queue(data: dict[str, Any], tz: tzinfo = UTC) -> Group:
    style = {OK: "green", WARNING: "bold yellow", ALARM: "bold red"}
    targets = Table(title=tr("queue.targets"), expand=False)
    for col in ("target", "required", "throughput", "clips_left", "bytes_left"):
        targets.add_column(tr(f"col.{col}"))
    for name, t in data["targets"].items():
        targets.add_row(name, tr("yes") if t["required"] else tr("no"),
                        f"{human_bytes(t['throughput_bps'])}/s" if t["throughput_bps"]
                        else tr("not_measured"), str(t["clips_left"]),
                        human_bytes(t["bytes_left"]))
    q = Table(title=tr("queue.title", level=tr(f"level.{data['level']}").upper()),
              expand=False)
    for col in ("docking", "recorder", "port", "clips", "bytes", "deadline", "left",
                "forecast", "status"):
        q.add_column(tr(f"col.{col}"))
    for d in data["dockings"]:
        q.add_row(str(d["docking_id"]), d["serial"], d["port"], str(d["clips_left"]),
                  human_bytes(d["bytes_left"]), local_time(d["deadline_at"], tz),
                  human_duration(d["remaining_s"]),
                  local_time(d["eta"], tz) if d["eta"] else tr("unknown"),
                  Text(tr(f"level.{d['level']}")
                       + "".join(f"\n{r}" for r in _reasons_text(d, tz)),
                       style=style[d["level"]]))
    parts: list[Any] = [targets, q]
    for a in data["alerts"]:
        level = tr(f"level.{a['level']}").upper() if a["level"] in LEVELS else a["level"]
        parts.append(Text(f"{local_time(a['ts'], tz)} {level} {_kind_text(a['kind'])} "
                          f"{a['subject']}: {a['message']}",
                          style=style.get(a["level"], "")))
    return Group(*parts)
