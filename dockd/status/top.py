"""``dockd top``: a live terminal dashboard for IT staff (works over SSH, fits 80x24).

Ports with state, progress, rate and ETA; the backlog with its deadline forecast and level;
open alarms; throughput per target; staging disk. Refreshes every second; ``q`` or Ctrl-C
quits and restores the terminal. Without a terminal (or with ``--once``) it prints one
frame. Read-only over the state, like every status view.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..config import Config
from ..store import Reader, utcnow
from .timefmt import local_time
from .views import human_bytes, human_duration
from .web_data import api_queue, disk_data, kiosk_ports

log = logging.getLogger(__name__)

LEVEL_STYLE = {"ok": "bold green", "warning": "bold yellow", "alarm": "bold white on red"}
STATE_STYLE = {"done": "bold green", "charging": "green", "copying": "bold cyan",
               "checking": "cyan", "identifying": "cyan", "error": "bold white on red",
               "empty": "dim"}
STATE_WORD = {"empty": "empty", "identifying": "identifying", "copying": "copying",
              "checking": "checking", "done": "DONE - unplug", "charging": "charging only",
              "error": "ERROR"}


def top_data(state: Reader, cfg: Config, now: datetime) -> dict[str, Any]:
    """Everything one frame shows (plain data)."""
    q = api_queue(state, cfg, now)
    return {"dock": cfg.dock.id, "now": now, "tz": cfg.tz, "ports": kiosk_ports(state, cfg), "queue": q,
            "disk": q["disk"] if "disk" in q else disk_data(cfg)}


def _bar(percent: int, width: int = 8) -> str:
    filled = round(width * percent / 100)
    return "█" * filled + "░" * (width - filled)


def _port_state(p: dict[str, Any]) -> Text:
    word = STATE_WORD.get(p["display"], p["display"])
    if p["display"] == "copying":
        return Text(f"{_bar(p['percent'] or 0)} {p['percent'] or 0:>2d}%",
                    style=STATE_STYLE["copying"])
    style = STATE_STYLE.get(p["display"], "")
    if p["attention"] and p["display"] != "error":
        return Text(word + " !", style="bold white on red")
    return Text(word, style=style)


def _port_note(p: dict[str, Any]) -> Text:
    if p["problems"]:
        pr = p["problems"][0]
        words = {"not_registered": "not registered", "gap_no_note": "gap w/o spoken note",
                 "gap_review": "gap needs review", "port_error": pr.get("detail") or "error",
                 "finding_error": "file problem"}
        return Text(words.get(pr["code"], pr["code"]), style="red")
    if p["display"] == "copying":
        rate = f"{human_bytes(p['rate_bps'])}/s" if p["rate_bps"] else "-"
        return Text(f"{rate} ETA {human_duration(p['eta_s'])}")
    if p["delivered"] and p["delivered"]["total"] and p["display"] != "empty":
        return Text(f"sent {p['delivered']['done']}/{p['delivered']['total']}", style="dim")
    return Text("")


def render_top(data: dict[str, Any], *, height: int = 24) -> RenderableType:
    """One frame, laid out to fit ``height`` lines at 80 columns."""
    q, disk = data["queue"], data["disk"]
    level = q["level"]
    head = Text.assemble(
        ("dockd top ", "bold"), (f"{data['dock']}  ", "bold cyan"),
        (local_time(data["now"], data.get("tz") or UTC, seconds=True, date=False) + " ", ""),
        (f" {level.upper()} ", LEVEL_STYLE.get(level, "")),
        (f"  staging {human_bytes(disk['free'])} free"
         + (f" ({disk['free_percent']:.0f}%)" if disk["free_percent"] is not None else ""),
         "bold red" if disk["low"] else ""),
        ("   q quit", "dim"))
    head.truncate(80)
    alerts = q["alerts"]
    dockings = q["dockings"]
    targets = q["targets"]
    room = height - 5  # head, ports header, backlog, targets, one spare line
    want_dl = min(len(dockings), 3)
    want_al = min(len(alerts), 3)
    more_alerts = 1 if len(alerts) > want_al else 0
    ports = data["ports"]
    ports_room = max(2, room - want_dl - want_al - more_alerts)
    shown = ports
    if len(shown) > ports_room:  # busy and troubled ports first, empty ones summarised
        ports_room -= 1
        shown = [p for p in ports if p["display"] != "empty"]
        if len(shown) > ports_room:
            shown = sorted(shown, key=lambda p: (not p["attention"], p["port"]))[:ports_room]
            shown.sort(key=lambda p: p["port"])
    hidden = len(ports) - len(shown)
    hidden_empty = sum(1 for p in ports if p["display"] == "empty") - sum(
        1 for p in shown if p["display"] == "empty")

    pt = Table(box=None, pad_edge=False, show_edge=False, expand=False, padding=(0, 1),
               header_style="bold")
    pt.add_column("port", no_wrap=True, max_width=7)
    pt.add_column("officer", no_wrap=True, max_width=14, overflow="ellipsis")
    pt.add_column("recorder", no_wrap=True, max_width=10, overflow="ellipsis")
    pt.add_column("state", no_wrap=True, width=15)
    pt.add_column("clips", no_wrap=True, justify="right", max_width=7)
    pt.add_column("rate / note", no_wrap=True, max_width=24, overflow="ellipsis")
    for p in shown:
        officer = " ".join(x for x in (p["officer_no"], p["officer_name"]) if x) or "-"
        clips = f"{p['clips_done']}/{p['clips_total']}" if p["clips_total"] else "-"
        pt.add_row(p["port"], officer if p["serial"] else "", p["serial"] or "",
                   _port_state(p), clips, _port_note(p))
    parts: list[RenderableType] = [head, pt]
    if hidden:
        parts.append(Text(f"  + {hidden} more port(s), {hidden_empty} of them empty",
                          style="dim"))
    b = q["backlog"]
    parts.append(Text.assemble(
        ("backlog ", "bold"), f"{b['clips']} clip(s) {human_bytes(b['bytes'])}",
        ("  deadlines ", "bold"), (level.upper(), LEVEL_STYLE.get(level, ""))))
    if want_dl:
        dt = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1),
                   show_header=False)
        for col in ("docking", "recorder", "port", "left", "to deadline", "margin", "level"):
            dt.add_column(col, no_wrap=True)
        for d in dockings[:want_dl]:
            dt.add_row(f"#{d['docking_id']}", d["serial"], d["port"],
                       f"{d['clips_left']} clip(s)", f"due {human_duration(d['remaining_s'])}",
                       f"margin {human_duration(d['margin_s'])}" if d["margin_s"] is not None
                       else "margin ?", Text(d["level"], style=LEVEL_STYLE.get(d["level"], "")))
        parts.append(dt)
    tl = Text("targets ", style="bold")
    for i, (name, t) in enumerate(targets.items()):
        rate = f"{human_bytes(t['throughput_bps'])}/s" if t["throughput_bps"] else "not measured"
        tl.append(("  " if i else "") + f"{name}: {rate}, {t['clips_left']} left")
    tl.truncate(80, overflow="ellipsis")
    parts.append(tl)
    for a in alerts[:want_al]:
        line = Text(f"{a['level'].upper()} {a['kind']} {a['subject']}: {a['message'] or ''}",
                    style=LEVEL_STYLE.get(a["level"], "yellow"))
        line.truncate(80, overflow="ellipsis")
        parts.append(line)
    if len(alerts) > want_al:
        parts.append(Text(f"  + {len(alerts) - want_al} more alert(s)", style="dim"))
    return Group(*parts)


def frame(state: Reader, cfg: Config, height: int = 24) -> RenderableType:
    return render_top(top_data(state, cfg, utcnow()), height=height)


# --------------------------------------------------------------------------- the terminal


@contextmanager
def cbreak(stream: TextIO) -> Iterator[int | None]:
    """Single keypresses from ``stream`` when it is a terminal (restored on exit)."""
    if not stream.isatty():
        yield None
        return
    import termios
    import tty

    fd = stream.fileno()
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def read_key(fd: int | None, timeout: float) -> str | None:
    """A key pressed within ``timeout`` seconds (None: none, or no terminal)."""
    if fd is None:
        time.sleep(timeout)
        return None
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return None
    data = os.read(fd, 32)
    return data.decode("utf-8", "replace") if data else None


def run_top(cfg: Config, *, once: bool = False, interval: float = 1.0,
            console: Console | None = None) -> int:
    """Show the dashboard until q/Ctrl-C (or one frame with ``once`` / no terminal)."""
    from rich.live import Live

    from .web_data import open_state_ro

    console = console or Console()
    with open_state_ro(cfg.paths.database) as state:
        if once or not console.is_terminal:
            console.print(frame(state, cfg, console.height))
            return 0
        try:
            with cbreak(sys.stdin) as fd, Live(frame(state, cfg, console.height),
                                               console=console, screen=True,
                                               auto_refresh=False) as live:
                while True:
                    key = read_key(fd, interval)
                    if key and key.lower().startswith("q"):
                        break
                    live.update(frame(state, cfg, console.height), refresh=True)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_top(cfg: Config, args: argparse.Namespace) -> int:
    return run_top(cfg, once=args.once, interval=max(0.2, args.interval))
