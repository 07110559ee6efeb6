"""Property tests: any single-byte change to any revision or audit-trail file on a target,
or to any field of any audit entry in the dock's database, is detected and the right file
or entry is named."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockd.config import for_workdir
from dockd.custody.labels import label, retain
from dockd.daemon import load_signer
from dockd.delivery.targets import open_targets
from dockd.devices.simulator import RecorderSpec, simulate_recorder
from dockd.integrity.audit import verify_db
from dockd.integrity.keys import generate_key, key_id, load_public_key
from dockd.integrity.verify import verify_path
from dockd.oneshot import ingest_tree
from dockd.store import State

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A target with one docking, two revisions and several audit segments; its files."""
    w = tmp_path_factory.mktemp("custody") / "w"
    cfg = for_workdir(w)
    generate_key(cfg.paths.key_file, cfg.paths.public_key_file)
    sim = simulate_recorder(w.parent / "rec", RecorderSpec(segments=2, segment_seconds=1.0),
                            profile=cfg.profiles[0], tz=cfg.tz, tools=cfg.tools)
    assert ingest_tree(cfg, sim.root, create_key=False)["ok"]
    state = State(cfg.paths.database)
    signer, targets = load_signer(cfg), open_targets(cfg)
    try:
        label(state, cfg, signer, targets, docking_id=1, fields={"case_no": "A-1"},
              actor="user:t")
        retain(state, cfg, signer, targets, docking_id=1, retention_class="evidence",
               actor="user:t; approver:a")
    finally:
        for t in targets:
            t.close()
        state.close()
    root = cfg.targets[0].path
    files = sorted(p for d in ("_revisions", "_audit") for p in (root / d).rglob("*")
                   if p.is_file())
    assert sum(p.suffix == ".jsonl" for p in files) >= 3
    assert sum(p.name.endswith(".json") for p in files) == 2
    k = load_public_key(cfg.paths.public_key_file)
    keys = {key_id(k): k}
    assert verify_path(root, keys).ok
    return cfg, root, files, keys


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_byte_of_a_revision_or_audit_segment_changed_is_named(tree, data):
    _cfg, root, files, keys = tree
    f = data.draw(st.sampled_from(files), label="file")
    original = f.read_bytes()
    pos = data.draw(st.integers(0, len(original) - 1), label="position")
    flip = data.draw(st.integers(1, 255), label="xor")
    changed = bytearray(original)
    changed[pos] ^= flip
    f.write_bytes(bytes(changed))
    try:
        report = verify_path(root, keys)
    finally:
        f.write_bytes(original)
    rel = f.relative_to(root).as_posix().removesuffix(".sig")
    assert not report.ok
    assert any(rel in p for p in report.problems), (rel, report.problems)


@pytest.fixture(scope="module")
def audit_db(tree, tmp_path_factory):
    cfg = tree[0]
    db = tmp_path_factory.mktemp("db") / "copy.db"
    src = sqlite3.connect(cfg.paths.database)
    dst = sqlite3.connect(db)
    src.backup(dst)
    src.close()
    dst.close()
    with State(db) as s:
        assert verify_db(s).ok
        rows = s.query("SELECT * FROM audit ORDER BY id")
    assert len(rows) >= 10
    return db, rows


FIELDS = ("ts", "actor", "action", "subject", "detail", "prev_hash", "hash")


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_character_of_any_audit_entry_changed_in_the_database_is_named(audit_db, data):
    db, rows = audit_db
    row = data.draw(st.sampled_from(rows), label="entry")
    name = data.draw(st.sampled_from(FIELDS), label="field")
    value = row[name]
    if not value:  # the first entry's empty prev_hash: a byte added is the change
        new = data.draw(st.sampled_from(["0", "a", " "]))
    else:
        pos = data.draw(st.integers(0, len(value) - 1), label="position")
        ch = data.draw(st.characters(codec="utf-8").filter(lambda c: c != value[pos]),
                       label="char")
        new = value[:pos] + ch + value[pos + 1:]
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(f"UPDATE audit SET {name} = ? WHERE id = ?", (new, row["id"]))
        with State(db) as s:
            report = verify_db(s)
    finally:
        with conn:
            conn.execute(f"UPDATE audit SET {name} = ? WHERE id = ?", (value, row["id"]))
        conn.close()
    assert not report.ok
    # a changed hash shows at the entry itself; the entry after it no longer chains either
    assert report.first_bad == row["id"], (name, report.problems)
    assert report.problems[0].startswith(f"audit entry {row['id']}:"), report.problems


def test_a_removed_newest_entry_is_named_against_the_signed_segments(audit_db, tmp_path):
    db, rows = audit_db
    copy = tmp_path / "c.db"
    shutil.copy(db, copy)
    last = rows[-1]["id"]
    conn = sqlite3.connect(copy)
    with conn:
        conn.execute("DELETE FROM audit WHERE id = ?", (last,))
    conn.close()
    with State(copy) as s:
        report = verify_db(s)
    assert not report.ok and report.first_bad == last
    assert f"audit entry {last}: removed (signed and delivered in segment" in report.problems[0]


def test_a_long_backlog_is_cut_into_bounded_segments_that_join(tmp_path, monkeypatch):
    from dockd.custody import publish
    from dockd.delivery.local import LocalTarget
    from dockd.integrity.audit import verify_segments

    monkeypatch.setattr(publish, "SEGMENT_MAX_ENTRIES", 4)
    cfg = for_workdir(tmp_path / "w")
    generate_key(cfg.paths.key_file, cfg.paths.public_key_file)
    target = LocalTarget("primary", tmp_path / "t")
    with State(cfg.paths.database) as st:
        for i in range(10):
            st.audit("label", f"docking/{i}", {"i": i})
        assert publish.deliver_custody(st, cfg, [target], load_signer(cfg)) == 3
    names = sorted(p.name for p in (tmp_path / "t/_audit/dock-01").glob("*.jsonl"))
    assert names == ["0000000001-0000000004.jsonl", "0000000005-0000000008.jsonl",
                     "0000000009-0000000010.jsonl"]
    k = load_public_key(cfg.paths.public_key_file)
    report, heads = verify_segments(tmp_path / "t/_audit", {key_id(k): k})
    assert report.ok and report.entries == 10 and heads["dock-01"]["id"] == 10
    (tmp_path / "t/_audit/dock-01" / names[1]).unlink()
    report, _ = verify_segments(tmp_path / "t/_audit", {key_id(k): k})
    assert report.problems[0] == ("_audit/dock-01: audit entries 5..8 missing (a segment was "
                                  "removed)")


def test_the_daemon_cuts_audit_segments_at_most_once_a_minute(tmp_path):
    from datetime import UTC, datetime, timedelta

    from dockd.custody import publish
    from dockd.delivery.local import LocalTarget

    now = [datetime(2026, 11, 30, 8, 0, tzinfo=UTC)]
    cfg = for_workdir(tmp_path / "w")
    generate_key(cfg.paths.key_file, cfg.paths.public_key_file)
    target, signer = LocalTarget("primary", tmp_path / "t"), load_signer(cfg)
    with State(cfg.paths.database, clock=lambda: now[0]) as st:
        st.audit("docked", "docking/1", {})
        assert publish.deliver_custody(st, cfg, [target], signer) == 1  # the first: at once
        st.audit("signed", "docking/1", {})
        now[0] += timedelta(seconds=30)
        assert publish.deliver_custody(st, cfg, [target], signer) == 0  # not yet
        now[0] += timedelta(seconds=31)
        assert publish.deliver_custody(st, cfg, [target], signer) == 1
        st.audit("delivered", "docking/1", {})
        assert publish.deliver_custody(st, cfg, [target], signer, ignore_backoff=True) == 1
    assert len(list((tmp_path / "t/_audit/dock-01").glob("*.jsonl"))) == 3
