"""Target audit on the dock: what the state database says was delivered against what each
target holds (listing + sizes, SHA-256 re-reads spread over passes); an alarm for anything
missing or changed. Local target and S3 (moto, object lock on)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dockd.config import for_workdir
from dockd.delivery.target_audit import audit_targets, expected_objects
from dockd.delivery.targets import open_targets
from dockd.oneshot import ingest_tree
from dockd.store import State
from tests.e2e.test_delivery_pipeline import _bucket, _cfg, moto  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(180)


def _alarms(st: State) -> list[dict]:
    return st.query("SELECT * FROM alerts WHERE kind = 'target_audit' AND resolved_at IS NULL")


def test_local_target_clean_then_deleted_and_changed(workdir: Path, make_recorder) -> None:
    cfg = for_workdir(workdir)
    cfg = dataclasses.replace(cfg, integrity=dataclasses.replace(cfg.integrity,
                                                                 audit_rehash_per_pass=1000))
    assert ingest_tree(cfg, make_recorder(cfg, segments=3), create_key=True)["ok"]
    targets = open_targets(cfg)
    with State(cfg.paths.database) as st:
        expected = expected_objects(st, "primary")
        kinds = {e.key.rsplit("/", 1)[-1].split(".")[-1] for e in expected}
        assert {"MP4", "json", "sig"} <= kinds  # clips, manifest + checkpoints, signature
        [res] = audit_targets(st, cfg, targets)
        assert res.problems == [] and res.checked == len(expected)
        assert res.rehashed == len(expected) and _alarms(st) == []

        root = workdir / "target"
        clips = sorted(root.rglob("*.MP4"))
        clips[0].unlink()  # an insider deletes one clip ...
        victim = clips[1]  # ... and edits another in place, keeping its size
        victim.chmod(0o644)
        data = bytearray(victim.read_bytes())
        data[100] ^= 0xFF
        victim.write_bytes(bytes(data))
        [res] = audit_targets(st, cfg, targets)
        rel0 = clips[0].relative_to(root).as_posix()
        rel1 = victim.relative_to(root).as_posix()
        assert any(p.startswith(f"{rel0}: missing") for p in res.problems), res.problems
        assert any(p.startswith(f"{rel1}: content changed") for p in res.problems)
        [alarm] = _alarms(st)
        assert alarm["level"] == "alarm" and rel0 in alarm["message"]
        entry = st.query_one("SELECT detail FROM audit WHERE action = 'target_audit' "
                             "ORDER BY id DESC LIMIT 1")
        assert rel1 in entry["detail"]


def test_rehash_is_spread_over_passes(workdir: Path, make_recorder) -> None:
    cfg = for_workdir(workdir)
    cfg = dataclasses.replace(cfg, integrity=dataclasses.replace(cfg.integrity,
                                                                 audit_rehash_per_pass=2))
    assert ingest_tree(cfg, make_recorder(cfg, segments=3), create_key=True)["ok"]
    targets = open_targets(cfg)
    with State(cfg.paths.database) as st:
        n = len(expected_objects(st, "primary"))
        seen: set[str] = set()
        for _ in range((n + 1) // 2):
            [res] = audit_targets(st, cfg, targets)
            assert res.rehashed == 2 and res.problems == []
            seen = {r["key"] for r in st.query("SELECT key FROM target_audit")}
        assert len(seen) == n  # every object re-read once before any twice


def test_s3_target_deleted_and_overwritten_objects_alarm(workdir: Path, make_recorder,
                                                         moto, tmp_path: Path) -> None:  # noqa: F811
    bucket = _bucket(moto)
    cfg = _cfg(workdir, moto, bucket, tmp_path)
    cfg = dataclasses.replace(cfg, integrity=dataclasses.replace(cfg.integrity,
                                                                 audit_rehash_per_pass=1000))
    assert ingest_tree(cfg, make_recorder(cfg, segments=2), create_key=True)["ok"]
    targets = open_targets(cfg)
    try:
        with State(cfg.paths.database) as st:
            results = {r.target: r for r in audit_targets(st, cfg, targets)}
            assert results["offsite"].problems == [] and results["offsite"].rehashed > 0
            s3 = moto.client()
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
            clip = next(k for k in keys if k.endswith(".MP4"))
            sig = next(k for k in keys if k.endswith("manifest.json.sig"))
            s3.delete_object(Bucket=bucket, Key=clip)  # a delete marker hides the clip
            body = s3.get_object(Bucket=bucket, Key=sig)["Body"].read()
            # a new version of the signature, one byte changed, same size
            s3.put_object(Bucket=bucket, Key=sig, Body=body[:-1] + bytes([body[-1] ^ 1]))
            results = {r.target: r for r in audit_targets(st, cfg, targets)}
            off = results["offsite"].problems
            assert any(p.startswith(f"{clip}: missing") for p in off), off
            assert any(p.startswith(f"{sig}:") for p in off), off
            assert results["primary"].problems == []
            [alarm] = _alarms(st)
            assert alarm["subject"] == "target/offsite"
    finally:
        for t in targets:
            t.close()
