"""Recording a landed copy cheaply (#13: a 20 000-clip recorder delivered in minutes).

* a landed clip is recorded in ONE write transaction (each is an fsync of the WAL, all
  serialised on one lock), whatever it settles: the delivery, the clip's state, the
  target's alarms, the tiles of dockings waiting for it; clips landing together share one
  (the group commit, ``test_deliver_commit``);
* a target's ``delivery_failed`` alarm stays open while any delivery to it is still failed,
  and closes with the landing that leaves none;
* a put that did not check what it stored (``Receipt.verified`` false) is read back by the
  delivery step, so a copy altered on the way is moved aside and sent again, never
  recorded as delivered.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dockd.daemon import build_pipeline
from dockd.errors import DeliveryError
from dockd.ingest.probe import Prober
from dockd.oneshot import ingest_tree
from dockd.store import State

pytestmark = [pytest.mark.timeout(120)]


def _count_transactions(monkeypatch) -> list[int]:
    """Write transactions opened inside each ``clip_landed`` call (per thread: the lanes
    land clips concurrently)."""
    import dockd.stages.deliver_steps as steps

    mine = threading.local()
    per_landing: list[int] = []
    real_tx, real_landed = State.tx, steps.clip_landed

    def tx(self: State) -> Any:
        if getattr(mine, "n", None) is not None:
            mine.n += 1
        return real_tx(self)

    def clip_landed(*a: Any, **kw: Any) -> Any:
        mine.n = 0
        try:
            return real_landed(*a, **kw)
        finally:
            per_landing.append(mine.n)
            mine.n = None

    monkeypatch.setattr(State, "tx", tx)
    monkeypatch.setattr(steps, "clip_landed", clip_landed)
    return per_landing


def test_a_landed_clip_is_recorded_in_one_write_transaction(cfg, make_recorder, monkeypatch):
    rec = make_recorder(cfg, segments=4)
    per_landing = _count_transactions(monkeypatch)
    out = ingest_tree(cfg, rec)
    assert out["ok"], out["problems"]
    # each landing commits at most one transaction (none when another lane's transaction
    # carried its record: the group commit), and every record is in one
    assert len(per_landing) == 4 and set(per_landing) <= {0, 1} and sum(per_landing) >= 1
    with State(cfg.paths.database) as st:
        assert {r["state"] for r in st.query("SELECT state FROM clips")} == {"delivered"}
        assert {r["state"] for r in st.query("SELECT state FROM deliveries")} == {"delivered"}
    # and the staged copies still leave staging once they are on every target
    assert not [p for p in cfg.paths.staging_dir.rglob("*") if p.is_file()]


class Flaky:
    """A real local target whose store refuses the content of some keys for good."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.name, self.required, self.throttle = inner.name, inner.required, None
        self.refuse: set[str] = set()

    def put_file(self, local_path: Path, key: str, **kw: Any) -> Any:
        if key.rsplit("/", 1)[-1] in self.refuse:
            raise DeliveryError(f"{self.name}: {key} refused", retry=False)
        return self.inner.put_file(local_path, key, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _open_alarms(st: State) -> list[str]:
    return [a["kind"] for a in st.query("SELECT kind FROM alerts WHERE resolved_at IS NULL "
                                        "AND subject LIKE 'target/%'")]


def test_failure_alarm_closes_only_with_the_last_failed_delivery(cfg, make_recorder, workdir):
    rec = make_recorder(cfg, segments=3)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        target = Flaky(pipe.targets[0])
        pipe.targets = [target]
        names = sorted(p.name for p in rec.rglob("*.MP4"))
        target.refuse = set(names[:2])
        pipe.run_docking("port-01", rec)
        pipe.deliver_pending(ignore_backoff=True)
        assert sorted(r["state"] for r in st.query("SELECT state FROM deliveries")) == [
            "delivered", "failed", "failed"]
        assert _open_alarms(st) == ["delivery_failed"]
        # one of the two is fixed and sent: the other is still failed, the alarm stays
        target.refuse = {names[1]}
        with st.tx() as conn:
            conn.execute("UPDATE deliveries SET state = 'pending' WHERE key LIKE ?",
                         (f"%/{names[0]}",))
        assert pipe.deliver_pending(ignore_backoff=True) == 1
        assert _open_alarms(st) == ["delivery_failed"]
        # the last one lands: nothing of the target is failed any more, the alarm closes
        target.refuse = set()
        with st.tx() as conn:
            conn.execute("UPDATE deliveries SET state = 'pending' WHERE state = 'failed'")
        assert pipe.deliver_pending(ignore_backoff=True) >= 1
        assert _open_alarms(st) == []
        assert {r["state"] for r in st.query("SELECT state FROM clips")} == {"delivered"}


class Altering:
    """A target that changes one byte of each new copy after its inner put checked it, and
    says so: its receipt is not ``verified`` (as a store that does not read back)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.name, self.required, self.throttle = inner.name, inner.required, None
        self.altering = True
        self.verifies: Counter[str] = Counter()

    def put_file(self, local_path: Path, key: str, **kw: Any) -> Any:
        receipt = self.inner.put_file(local_path, key, **kw)
        if self.altering and not receipt.already_present:
            landed = self.inner.root / key
            landed.chmod(0o644)
            data = bytearray(landed.read_bytes())
            data[len(data) // 2] ^= 0x01
            landed.write_bytes(bytes(data))
        return dataclasses.replace(receipt, verified=False)

    def verify(self, key: str, **kw: Any) -> bool:
        self.verifies[key] += 1
        return bool(self.inner.verify(key, **kw))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_put_that_did_not_check_its_copy_is_read_back_and_a_bad_copy_sent_again(
        cfg, make_recorder):
    rec = make_recorder(cfg, segments=2)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        target = Altering(pipe.targets[0])
        pipe.targets = [target]
        pipe.run_docking("port-01", rec)
        pipe.deliver_pending(ignore_backoff=True)
        clip_keys = [k for k in target.verifies if k.endswith(".MP4")]
        assert len(clip_keys) == 2 and all(target.verifies[k] == 1 for k in clip_keys)
        # caught: never recorded as delivered, the bad copies moved aside
        assert {r["state"] for r in st.query("SELECT state FROM deliveries")} == {"pending"}
        assert {r["state"] for r in st.query("SELECT state FROM clips")} == {"signed"}
        quarantine = target.inner.root / "_quarantine"
        assert len([p for p in quarantine.rglob("*") if p.is_file()]) == 2
        target.altering = False
        pipe.deliver_pending(ignore_backoff=True)
        assert {r["state"] for r in st.query("SELECT state FROM clips")} == {"delivered"}
        assert st.docking(1)["state"] == "delivered"
