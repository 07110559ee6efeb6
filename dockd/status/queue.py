"""``dockd queue``: the delivery backlog by deadline, its forecast at the measured throughput,
and the alerts it raises (R3). The data functions are shared with the daemon's deadline
check, so what the admin sees is exactly what raised the alarm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..cli_text import tr
from ..config import Config
from ..delivery.schedule import ALARM, OK, WARNING, Forecast, Pending, forecast, measured_throughput
from ..store import Reader, parse_iso
from ..store import status as store
from .timefmt import local_time
from .views import human_bytes, human_duration

THROUGHPUT_WINDOW = 50  # most recent transfers per target used for the forecast


def target_throughput(state: Reader, target: str) -> float | None:
    return measured_throughput(store.recent_transfers(state, target, THROUGHPUT_WINDOW))


def pending_by_target(state: Reader, target: str) -> list[Pending]:
    """Each docking's undelivered clips on ``target`` (clips not yet signed count as well:
    they will have to be delivered too)."""
    out = []
    for r in store.pending_on_target(state, target):
        out.append(Pending(r["id"], r["serial"], r["port"], parse_iso(r["deadline"]),  # type: ignore[arg-type]
                           parse_iso(r["docked_at"]), r["b"], r["n"], r["failed"] or 0))  # type: ignore[arg-type]
    return out


def queue_forecasts(state: Reader, cfg: Config, now: datetime) -> dict[str, Any]:
    """Per required target: throughput and per-docking forecasts; overall: the worst level."""
    warn_margin = timedelta(hours=cfg.delivery.warn_margin_hours)
    warn_age = timedelta(hours=cfg.delivery.warn_age_hours)
    per_target: dict[str, dict[str, Any]] = {}
    worst: dict[int, Forecast] = {}
    rank = {OK: 0, WARNING: 1, ALARM: 2}
    for t in cfg.targets:
        bps = target_throughput(state, t.name)
        fc = forecast(pending_by_target(state, t.name), now, bps, warn_margin=warn_margin,
                      warn_age=warn_age)
        per_target[t.name] = {"required": t.required, "throughput_bps": bps,
                              "forecasts": fc}
        if not t.required:
            continue
        for f in fc:
            cur = worst.get(f.docking_id)
            if cur is None or rank[f.level] > rank[cur.level] or (
                    f.level == cur.level and (f.eta or now) > (cur.eta or now)):
                worst[f.docking_id] = f
    dockings = sorted(worst.values(), key=lambda f: (f.deadline, f.docking_id))
    level = max((f.level for f in dockings), key=lambda x: rank[x], default=OK)
    return {"level": level, "targets": per_target, "dockings": dockings}


def _fc_dict(f: Forecast, now: datetime) -> dict[str, Any]:
    return {
        "docking_id": f.docking_id, "serial": f.serial, "port": f.port,
        "deadline_at": f.deadline.isoformat(), "remaining_s": (f.deadline - now).total_seconds(),
        "eta": f.eta.isoformat() if f.eta else None, "margin_s": f.margin_s,
        "bytes_left": f.bytes_left, "clips_left": f.clips_left, "level": f.level,
        "reasons": list(f.reasons), "reason_codes": list(f.codes),
    }


def queue_data(state: Reader, cfg: Config, now: datetime) -> dict[str, Any]:
    q = queue_forecasts(state, cfg, now)
    alerts = store.open_alerts_by_time(state)
    return {
        "generated_at": now.isoformat(),
        "level": q["level"],
        "dockings": [_fc_dict(f, now) for f in q["dockings"]],
        "targets": {name: {"required": t["required"], "throughput_bps": t["throughput_bps"],
                           "clips_left": sum(f.clips_left for f in t["forecasts"]),
                           "bytes_left": sum(f.bytes_left for f in t["forecasts"])}
                    for name, t in q["targets"].items()},
        "alerts": alerts,
    }


def _reasons_text(d: dict[str, Any], tz: tzinfo) -> list[str]:
    """A forecast's reasons in the CLI's language, times in the dock's zone (the page
    catalogue's ``dreason.*`` texts)."""
    from ..cli_text import language
    from .i18n import translate

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
    from ..cli_text import language
    from .i18n import MESSAGES

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
