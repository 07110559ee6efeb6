"""Clearing recorders (R6): never before every required target has a verified copy."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os

import pytest

from dockd.config import for_workdir
from dockd.delivery.clearing import clear_recorder, may_clear, verify_with
from dockd.delivery.local import LocalTarget
from dockd.oneshot import ingest_tree
from dockd.store import State

STATES = ("pending", "failed", "delivered", None)  # None: no delivery row at all


@pytest.mark.parametrize("a,b,c", list(itertools.product(STATES, repeat=3)))
@pytest.mark.parametrize("clip_state", ["signed", "delivered", "cleared"])
def test_every_combination_of_target_states(a, b, c, clip_state):
    states = {t: s for t, s in zip("ABC", (a, b, c), strict=True) if s is not None}
    ok = may_clear({"A", "B"}, states, clip_state=clip_state)  # C is optional (off-site)
    assert ok == (clip_state == "delivered" and a == "delivered" and b == "delivered")


def test_no_required_target_means_never():
    assert not may_clear(set(), {"A": "delivered"}, clip_state="delivered")


def _cfg(workdir, policy="after_delivery"):
    cfg = for_workdir(workdir)
    prof = dataclasses.replace(cfg.profiles[0], clear_policy=policy)
    return dataclasses.replace(cfg, profiles=(prof,))


def _primary(cfg):
    """Clearing re-verifies the copy on the real local target before each erase."""
    t = cfg.targets[0]
    return verify_with({t.name: LocalTarget(t.name, t.path)})


def _clips_on(rec):
    return sorted(p.name for p in rec.rglob("*.MP4"))


@pytest.mark.slow
def test_ingest_clears_only_after_verified_delivery(workdir, make_recorder):
    rec = make_recorder(segments=3)
    before = _clips_on(rec)
    res = ingest_tree(_cfg(workdir), rec, create_key=True)
    assert res["ok"] and res["cleared"] == before
    assert _clips_on(rec) == []
    with State(_cfg(workdir).paths.database) as s:
        assert {r["state"] for r in s.query("SELECT state FROM clips")} == {"cleared"}
        audit = [json.loads(r["detail"]) for r in s.query(
            "SELECT detail FROM audit WHERE action = 'cleared'")]
        assert sorted(a["name"] for a in audit) == before
        assert s.verify_audit_chain() == []
    # the delivered copies are intact
    landed = sorted(p.name for p in (workdir / "target").rglob("*.MP4"))
    assert landed == before


@pytest.mark.slow
def test_policy_never_keeps_everything(workdir, make_recorder):
    rec = make_recorder(segments=2)
    res = ingest_tree(_cfg(workdir, "never"), rec, create_key=True)
    assert res["ok"] and res["cleared"] == []
    assert len(_clips_on(rec)) == 2


@pytest.mark.slow
def test_file_changed_on_recorder_after_delivery_is_not_erased(workdir, make_recorder):
    cfg = _cfg(workdir, "never")
    rec = make_recorder(segments=2)
    assert ingest_tree(cfg, rec, create_key=True)["ok"]
    victim = sorted(rec.rglob("*.MP4"))[0]
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    with State(cfg.paths.database) as s:
        out = clear_recorder(s, serial="A1234567", root=rec, port="manual",
                             required_targets=["primary"],
                             verify_copy=_primary(cfg))
    assert [n for n, _ in out.kept] == [victim.name]
    assert "differs" in out.kept[0][1]
    assert victim.exists() and len(out.cleared) == 1


@pytest.mark.slow
def test_undelivered_clip_is_not_erased(workdir, make_recorder):
    cfg = _cfg(workdir, "never")
    rec = make_recorder(segments=2)
    assert ingest_tree(cfg, rec, create_key=True)["ok"]
    with State(cfg.paths.database) as s:
        s.conn.execute("UPDATE deliveries SET state = 'pending' WHERE clip_id = 1")
        out = clear_recorder(s, serial="A1234567", root=rec, port="manual",
                             required_targets=["primary"],
                             verify_copy=_primary(cfg))
        kept = s.clip(1)
        assert kept["state"] == "delivered"
    assert len(out.cleared) == 1 and len(_clips_on(rec)) == 1
    assert os.path.exists(rec / kept["rel_path"])  # the unconfirmed clip is still there
