"""Status at fleet scale (#13 item 6): ``dockd status --json`` and the web/kiosk JSON with
25 ports and 100 000 clips in the state database, against the 200 ms target.

Builds a database shaped like a busy dock after months of service: many recorders and
dockings (most delivered and cleared, the newest still copying, checking or waiting for
delivery, a few overdue, some closed incomplete), two targets' deliveries with failures,
continuity gaps, resolved and open alerts, throughput records, health readings and a
hash-chained-looking audit trail; all inserted with ``executemany`` in one transaction.

Then it times, best and median of ``--repeat`` runs:

- in process, over the read-only store: ``status_data`` (``dockd status --json``) and the
  web endpoints' data functions (``/api/status``, ``/api/ports`` = the kiosk,
  ``/api/queue``, ``/api/recorders``, ``/api/findings``);
- the CLI: ``dockd status --json`` as a subprocess (interpreter start-up included), beside
  ``dockd --version`` (the same interpreter, imports and argument parser, no database);
- the baseline in the same run: a bare ``SELECT count(*) FROM clips`` (one pass over the
  clips' smallest index) and, with ``--without-indexes``, the same views after dropping the
  indexes of the fleet-status migration (the queries as the old schema served them).

Usage::

    .venv/bin/python bench/status_fleet.py                       # 25 ports, 100 000 clips
    .venv/bin/python bench/status_fleet.py --clips 20000 --repeat 3 --without-indexes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dockd.config import Config  # noqa: E402
from dockd.store import State  # noqa: E402

TARGET_MS = 200.0
TARGETS = ("primary", "offsite")
CLIPS_PER_DOCKING = 25
PENDING_DOCKINGS = 60  # the newest dockings still have undelivered clips


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def config_toml(workdir: Path) -> str:
    return "\n".join([
        "[dock]", 'id = "dock-fleet"', "",
        *[f'[[targets]]\nname = "{name}"\nkind = "local"\npath = "{workdir / name}"\n'
          f"required = true\n" for name in TARGETS],
    ])


def build(db: Path, *, ports: int, clips: int, seed: int = 7,
          analyze: bool = False) -> dict[str, int]:
    """Fill a fresh state database; returns the row counts."""
    rnd = random.Random(seed)
    State(db).close()  # the schema, migrated to this dockd's version
    now = datetime.now(UTC)
    n_dockings = max(1, clips // CLIPS_PER_DOCKING)
    n_recorders = max(ports * 8, n_dockings // 20)
    serials = [f"ZFY{i:07d}" for i in range(n_recorders)]
    port_names = [f"port-{i + 1:02d}" for i in range(ports)]
    recorders, dockings, clip_rows, deliveries, gaps, health = [], [], [], [], [], []
    manifests, transfers, alerts, audit = [], [], [], []
    for i, s in enumerate(serials):
        recorders.append((s, f"{10000 + i}", f"Officer {i}", f"U{i % 40}", f"Unit {i % 40}",
                          "ZFY", "DSJ-T9", "V2.1", iso(now - timedelta(days=120)),
                          iso(now - timedelta(hours=rnd.uniform(0, 72))),
                          rnd.choice(port_names), rnd.randint(5, 100),
                          rnd.uniform(-5, 5), 64 << 30, rnd.randint(1 << 30, 60 << 30)))
    clip_id = 0
    span = timedelta(days=90)
    for d in range(1, n_dockings + 1):
        docked = now - span + span * (d / n_dockings)
        pending = d > n_dockings - PENDING_DOCKINGS
        serial = serials[(d * 7919) % n_recorders]
        port = port_names[d % ports]
        state = "signed" if pending else "delivered"
        incomplete = rnd.randint(1, 5) if (not pending and d % 97 == 0) else None
        ids = list(range(clip_id + 1, clip_id + CLIPS_PER_DOCKING + 1))
        cont = {"timeline": {"sessions": [{"start": iso(docked - timedelta(hours=8)),
                                           "end": iso(docked - timedelta(hours=1)),
                                           "runs": [{"start": iso(docked - timedelta(hours=8)),
                                                     "end": iso(docked - timedelta(hours=1)),
                                                     "length_s": 25200.0, "clips": ids}]}]},
                "findings": []}
        dockings.append((d, serial, port, "dock-fleet", f"/media/{serial}", state, iso(docked),
                         iso(docked + timedelta(minutes=30)), iso(docked + timedelta(hours=24)),
                         "generic", "zfy", json.dumps({"health": {"battery_percent": 80}}),
                         "[]", rnd.uniform(-3, 3), CLIPS_PER_DOCKING,
                         CLIPS_PER_DOCKING * 200_000_000, 0, f"{serial}/{d}", None,
                         iso(docked + timedelta(minutes=20)),
                         None if pending else iso(docked + timedelta(hours=1)),
                         json.dumps(cont), json.dumps({"ntp_synced": True}), incomplete))
        health.append((iso(docked), serial, d, "docking", rnd.randint(10, 100), 64 << 30,
                       rnd.randint(1 << 30, 60 << 30), CLIPS_PER_DOCKING, 3600.0, "not_run",
                       "", "V2.1", rnd.uniform(-3, 3)))
        manifests.append((d, d, "dock-fleet", f"{d:064x}", f"{d - 1:064x}", "k1",
                          f"{serial}/{d}", iso(docked), b"{}", b"sig", d))
        for k, cid in enumerate(ids):
            start = docked - timedelta(hours=8) + timedelta(minutes=15 * k)
            if pending:
                cstate = rnd.choice(("copied", "probed", "checked", "signed", "signed",
                                     "delivered"))
            else:
                cstate = "cleared" if d < n_dockings * 0.8 else "delivered"
            clip_rows.append((cid, d, d, serial, f"DCIM/{d}/{k:04d}.MP4".encode(),
                              f"{k:04d}.MP4", rnd.randint(50_000_000, 400_000_000),
                              start.timestamp(), cstate, f"{cid:064x}",
                              f"/staging/{d}/{k}.MP4", "{}", "[]", iso(start), iso(start),
                              900.0, iso(docked + timedelta(hours=24)), None, 0, iso(docked),
                              iso(docked), iso(docked),
                              None if cstate not in ("delivered", "cleared") else iso(docked),
                              "standard"))
            for t in TARGETS:
                done = cstate in ("delivered", "cleared") or (pending and rnd.random() < 0.3)
                err = None if done or rnd.random() > 0.05 else "connection reset by peer"
                deliveries.append((cid, t, "delivered" if done else
                                   ("failed" if err and rnd.random() < 0.3 else "pending"),
                                   f"{serial}/{d}/{k:04d}.MP4", 1 if done else rnd.randint(0, 4),
                                   err, None, iso(docked) if done else None))
                if done:
                    transfers.append((iso(docked), t, 200_000_000, rnd.uniform(1, 4)))
        gaps.append((d, "interruption", ids[3], ids[4], iso(docked - timedelta(hours=7)),
                     iso(docked - timedelta(hours=6)), 120.0,
                     rnd.choice(("note", "note", "no_note", "no_reason")), None, None,
                     "spoken note", "battery change", 0.9, "zh", int(d % 11 == 0), None,
                     iso(docked)))
        gaps.append((d, "session_break", ids[10], ids[11], iso(docked - timedelta(hours=5)),
                     iso(docked - timedelta(hours=4)), 3600.0, None, None, None, None, None,
                     None, None, 0, None, None))
        alerts.append((iso(docked), "warning", "deadline", f"docking/{d}", "late",
                       None if pending and d % 5 == 0 else iso(docked + timedelta(hours=2)),
                       "ok"))
        for a in range(CLIPS_PER_DOCKING):
            audit.append((iso(docked), "dockd", "clip_delivered", f"clip/{ids[a]}", "{}",
                          "", f"{d}-{a}"))
        if d % 50 == 0:
            audit.append((iso(docked), "dockd", "clock_set", f"docking/{d}",
                          json.dumps({"serial": serial, "offset_s": 4.0}), "", f"{d}-c"))
        clip_id += CLIPS_PER_DOCKING
    port_rows = []
    states = ("copying", "checking", "done", "done", "incomplete", "error", "empty")
    for i, p in enumerate(port_names):
        st = states[i % len(states)]
        d = n_dockings - i
        serial = dockings[d - 1][1] if st != "empty" else None
        port_rows.append((p, "dock-fleet", st, serial, d if serial else None, 10,
                          CLIPS_PER_DOCKING, 2_000_000_000, 5_000_000_000,
                          35e6 if st == "copying" else None, None,
                          "recorder removed during copy" if st == "error" else None, iso(now)))
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO recorders (serial, officer_no, officer_name, unit_no, "
                     "unit_name, vendor, model, firmware, first_seen, last_seen, last_port, "
                     "last_battery, last_clock_offset_s, last_storage_total, "
                     "last_storage_free) VALUES (" + ", ".join("?" * 15) + ")", recorders)
    conn.executemany("INSERT INTO dockings (id, serial, port, dock_id, root, state, docked_at, "
                     "undocked_at, deadline_at, driver, profile, snapshot, findings, "
                     "clock_offset_s, clips_total, bytes_total, skipped_known, prefix, error, "
                     "signed_at, delivered_at, continuity, dock_clock, incomplete) VALUES ("
                     + ", ".join("?" * 24) + ")", dockings)
    conn.executemany("INSERT INTO clips (id, docking_id, first_docking_id, serial, rel_path, "
                     "safe_name, size, mtime, state, sha256, staged_path, probe, findings, "
                     "start_recorded, start_utc, duration_s, deadline_at, error, attempts, "
                     "created_at, updated_at, copied_at, delivered_at, retention_class) "
                     "VALUES (" + ", ".join("?" * 24) + ")", clip_rows)
    conn.executemany("INSERT INTO deliveries (clip_id, target, state, key, attempts, "
                     "last_error, next_try_at, verified_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     deliveries)
    conn.executemany("INSERT INTO manifests (id, docking_id, dock_id, sha256, prev_sha256, "
                     "key_id, prefix, created_at, manifest, signature, seq) VALUES ("
                     + ", ".join("?" * 11) + ")", manifests)
    conn.executemany("INSERT INTO gaps (docking_id, kind, before_clip, after_clip, start, "
                     "end, length_s, verdict, speech_start_s, speech_end_s, transcript, "
                     "reason, confidence, language, needs_review, error, analyzed_at) VALUES ("
                     + ", ".join("?" * 17) + ")", gaps)
    conn.executemany("INSERT INTO recorder_health (ts, serial, docking_id, source, battery, "
                     "storage_total, storage_free, clip_count, oldest_clip_age_s, fs_check, "
                     "fs_detail, firmware, clock_offset_s) VALUES (" + ", ".join("?" * 13)
                     + ")", health)
    conn.executemany("INSERT INTO transfers (ts, target, bytes, seconds) VALUES (?, ?, ?, ?)",
                     transfers)
    conn.executemany("INSERT INTO alerts (ts, level, kind, subject, message, resolved_at, "
                     "hook_status) VALUES (?, ?, ?, ?, ?, ?, ?)", alerts)
    conn.executemany("INSERT INTO audit (ts, actor, action, subject, detail, prev_hash, hash) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)", audit)
    conn.executemany("INSERT INTO ports (port, dock_id, state, serial, docking_id, clips_done, "
                     "clips_total, bytes_done, bytes_total, rate_bps, message, error, "
                     "updated_at) VALUES (" + ", ".join("?" * 13) + ")", port_rows)
    for i, p in enumerate(port_rows):  # ports re-docking a recorder found earlier clips
        if i % 3 == 0 and p[4]:
            first = max(1, (p[4] - 3) * CLIPS_PER_DOCKING - 5)
            conn.execute("UPDATE dockings SET earlier_pending = ?, skipped_known = 3 "
                         "WHERE id = ?", (json.dumps(list(range(first, first + 5))), p[4]))
    conn.execute("COMMIT")
    if analyze:  # the daemon never runs ANALYZE: the planner works without statistics
        conn.execute("ANALYZE")
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
              for t in ("ports", "recorders", "dockings", "clips", "deliveries", "gaps",
                        "alerts", "transfers", "audit")}
    conn.close()
    return counts


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """(best, median) wall time in ms."""
    fn()  # warm: page cache and statement cache, as a polling page sees it
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    return min(runs), statistics.median(runs)


def fleet_indexes(db: Path) -> list[str]:
    """The indexes the fleet-status migration added (dropped for the baseline)."""
    from dockd.store.db import FLEET_INDEXES

    return [name for name, _ in FLEET_INDEXES]


def measure(db: Path, cfg: Config, repeat: int, *, cli: bool) -> list[tuple[str, float, float]]:
    from dockd.status import web_data
    from dockd.status.views import status_data
    from dockd.store import open_readonly

    now = datetime.now(UTC)
    out = []
    with open_readonly(db) as st:
        cases: list[tuple[str, Callable[[], Any]]] = [
            ("baseline: SELECT count(*) FROM clips",
             lambda: st.query("SELECT count(*) AS n FROM clips")),
            ("status_data (dockd status --json)", lambda: status_data(st, cfg.dock.id, now)),
            ("/api/status", lambda: web_data.api_status(st, cfg, now)),
            ("/api/ports (kiosk)", lambda: web_data.api_ports(st, cfg, now)),
            ("/api/queue", lambda: web_data.api_queue(st, cfg, now)),
            ("/api/recorders (fleet)", lambda: web_data.fleet_data(st, cfg, now)),
            ("/api/findings", lambda: web_data.api_findings(st, cfg, now)),
        ]
        for name, fn in cases:
            best, med = timed(fn, repeat)
            out.append((name, best, med))
    if cli:
        env = {**os.environ, "DOCKD_CONFIG": str(db.parent.parent / "config.toml")}
        argv = [sys.executable, "-m", "dockd.cli", "status", "--json", "--workdir",
                str(db.parent.parent)]
        best, med = timed(lambda: subprocess.run(argv, env=env, check=True,
                                                 capture_output=True), max(3, repeat // 2))
        out.append(("CLI: dockd status --json (process)", best, med))
        best, med = timed(lambda: subprocess.run([sys.executable, "-m", "dockd.cli", "--version"],
                                                 env=env, check=True, capture_output=True),
                          max(3, repeat // 2))
        out.append(("baseline: dockd --version (process)", best, med))
    return out


def report(title: str, rows: list[tuple[str, float, float]]) -> None:
    print(f"\n{title}")
    print(f"  {'case':44} {'best ms':>9} {'median ms':>10}  vs {TARGET_MS:.0f} ms")
    for name, best, med in rows:
        verdict = "" if name.startswith("baseline") else (
            "ok" if med < TARGET_MS else "OVER")
        print(f"  {name:44} {best:9.1f} {med:10.1f}  {verdict}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ports", type=int, default=25)
    ap.add_argument("--clips", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--workdir", type=Path, help="keep the database here (default: a tmp dir)")
    ap.add_argument("--without-indexes", action="store_true",
                    help="also time the views with the fleet-status indexes dropped")
    ap.add_argument("--reuse", action="store_true",
                    help="with --workdir: time the database built there by an earlier run")
    ap.add_argument("--analyze", action="store_true",
                    help="run ANALYZE after building (planner statistics; the daemon has none)")
    ap.add_argument("--no-cli", action="store_true", help="skip the CLI subprocess timing")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dockd-fleet-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "config.toml").write_text(config_toml(work), encoding="utf-8")
        from dockd.config import load

        cfg = load(work / "config.toml", workdir=work)
        db = cfg.paths.database
        if not (args.reuse and db.exists()):
            for p in db.parent.glob(db.name + "*"):
                p.unlink()
            t0 = time.perf_counter()
            counts = build(db, ports=args.ports, clips=args.clips, analyze=args.analyze)
            print(f"built {db} in {time.perf_counter() - t0:.1f} s: "
                  + ", ".join(f"{k} {v}" for k, v in counts.items())
                  + f"; {db.stat().st_size / 1e6:.0f} MB")
        report("with this dockd's schema (indexes of the fleet-status migration included)",
               measure(db, cfg, args.repeat, cli=not args.no_cli))
        if args.without_indexes:
            conn = sqlite3.connect(db)
            for name in fleet_indexes(db):
                conn.execute(f"DROP INDEX IF EXISTS {name}")
            if args.analyze:
                conn.execute("ANALYZE")
            conn.commit()
            conn.close()
            report("baseline: the same views with the fleet-status indexes dropped",
                   measure(db, cfg, args.repeat, cli=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
