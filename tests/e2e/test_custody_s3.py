"""Labels and retention reach an S3 target with object lock (moto server on loopback) as new
signed revisions; retention is extended on the stored clips, ``permanent`` sets a legal
hold, a downgrade is refused and leaves the store as it was (R4, R7). An export can take
its clips from the S3 copy when the local ones are gone."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from dockd.custody.export import export_package
from dockd.custody.labels import label, retain
from dockd.daemon import load_signer
from dockd.delivery.targets import open_targets
from dockd.errors import DockdError
from dockd.integrity.manifest import check_signature, manifest_sha256
from dockd.integrity.verify import verify_path
from dockd.oneshot import ingest_tree
from dockd.store import State
from tests.e2e.test_delivery_pipeline import _bucket, _cfg, moto  # noqa: F401 - the moto fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _days(head) -> float:
    return (head["ObjectLockRetainUntilDate"].timestamp() - time.time()) / 86400


def test_label_and_retention_reach_s3_with_object_lock(workdir, make_recorder, moto,  # noqa: F811
                                                       tmp_path):
    bucket = _bucket(moto)
    cfg = _cfg(workdir, moto, bucket, tmp_path)
    res = ingest_tree(cfg, make_recorder(cfg, segments=2), create_key=True)
    assert res["ok"], res
    s3 = moto.client()
    prefix = res["prefix"]
    clips = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
                   if o["Key"].endswith(".MP4"))
    assert len(clips) == 2 and all(725 < _days(s3.head_object(Bucket=bucket, Key=k)) < 735
                                   for k in clips)

    state = State(cfg.paths.database)
    signer, targets = load_signer(cfg), open_targets(cfg)
    try:
        label(state, cfg, signer, targets, docking_id=1,
              fields={"case_no": "A-7", "party": "张三", "handler": "李四"}, actor="user:t")
        retain(state, cfg, signer, targets, docking_id=1, retention_class="evidence",
               actor="user:t; approver:a")
        for k in clips:  # extended to the evidence period on the store itself
            head = s3.head_object(Bucket=bucket, Key=k)
            assert head["ObjectLockMode"] == "COMPLIANCE"
            assert 3645 < _days(head) < 3655
            assert head.get("ObjectLockLegalHoldStatus") != "ON"
        m_head = s3.head_object(Bucket=bucket, Key=f"{prefix}/manifest.json")
        assert m_head["ObjectLockMode"] == "COMPLIANCE" and 3645 < _days(m_head) < 3655
        one = clips[0].rsplit("/", 1)[1]
        retain(state, cfg, signer, targets, docking_id=1, clips=[one],
               retention_class="permanent", actor="user:t; approver:a")
        assert s3.get_object_legal_hold(Bucket=bucket, Key=clips[0])["LegalHold"][
            "Status"] == "ON"
        for doc in ("manifest.json", "manifest.json.sig"):  # kept as long as its clips
            assert s3.get_object_legal_hold(Bucket=bucket, Key=f"{prefix}/{doc}")[
                "LegalHold"]["Status"] == "ON"
        assert s3.head_object(Bucket=bucket, Key=clips[1]).get(
            "ObjectLockLegalHoldStatus") != "ON"

        before = [s3.head_object(Bucket=bucket, Key=k)["ObjectLockRetainUntilDate"]
                  for k in clips]
        with pytest.raises(DockdError, match="cannot be lowered"):
            retain(state, cfg, signer, targets, docking_id=1, retention_class="routine",
                   actor="user:t")
        assert [s3.head_object(Bucket=bucket, Key=k)["ObjectLockRetainUntilDate"]
                for k in clips] == before
        assert state.query_one("SELECT count(*) AS n FROM revision_deliveries WHERE "
                               "state != 'delivered'")["n"] == 0

        # three revisions on S3, signed, chained, naming the manifest; the same on the disk
        keys = sorted(o["Key"] for o in s3.list_objects_v2(
            Bucket=bucket, Prefix=f"_revisions/{prefix}/")["Contents"])
        assert [k.rsplit("/", 1)[1] for k in keys] == [
            "000001.json", "000001.json.sig", "000002.json", "000002.json.sig",
            "000003.json", "000003.json.sig"]
        body = lambda k: s3.get_object(Bucket=bucket, Key=k)["Body"].read()  # noqa: E731
        manifest = body(f"{prefix}/manifest.json")
        pub = {signer.key_id: signer.private_key.public_key()}
        prev = None
        for k in keys[::2]:
            doc = body(k)
            check_signature(doc, body(k + ".sig"), pub)
            parsed = json.loads(doc)
            assert parsed["manifest_sha256"] == manifest_sha256(manifest)
            assert parsed["prev_revision_sha256"] == prev
            prev = manifest_sha256(doc)
        last = json.loads(body(keys[-2]))
        assert last["labels"]["docking"]["case_no"] == "A-7"
        assert last["retention"][one]["class"] == "permanent"
        assert last["retention"][one]["legal_hold"] is True
        # the revisions are locked like the footage they describe
        assert s3.head_object(Bucket=bucket, Key=keys[0])["ObjectLockMode"] == "COMPLIANCE"
        assert s3.head_object(Bucket=bucket, Key=keys[-2])["ObjectLockLegalHoldStatus"] == "ON"
        # the audit trail is on the store as signed segments
        segs = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="_audit/")["Contents"]]
        assert any(k.endswith(".jsonl") for k in segs) and any(k.endswith(".sig") for k in segs)

        # an export takes the clips from S3 when the local copies are gone
        shutil.rmtree(cfg.targets[0].path / prefix)
        out = tmp_path / "pkg"
        export_package(state, cfg, signer, targets, out=out, docking_ids=[1],
                       requester="r", approver="a", reason="court", actor="user:t; approver:a")
    finally:
        for t in targets:
            t.close()
        state.close()
    assert verify_path(out, pub).ok
