"""``dockd queue``: the delivery backlog by deadline, its forecast at the measured throughput,
and the alerts it raises (R3). The data functions are shared with the daemon's deadline
check, so what the admin sees is exactly what raised the alarm. No rich here (the daemon's
alert path imports this module): the table is drawn by :mod:`.queue_view`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ..config import Config
from ..delivery.schedule import ALARM, OK, WARNING, Forecast, Pending, forecast, measured_throughput
from ..store import Reader, parse_iso
from ..store import status as store

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
