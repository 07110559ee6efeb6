"""Delivery through the whole pipeline to a primary (local) and an off-site S3 target
(R3, R5, R6, R7): both verified, retention on the server, the off-site store down and back,
a permanent error alarming and not retried, and the recorder cleared only after both."""

from __future__ import annotations

import dataclasses
import socket
import time
import uuid
from pathlib import Path

import pytest

from dockd.config import TargetConfig, for_workdir
from dockd.daemon import build_pipeline
from dockd.ingest.probe import Prober
from dockd.oneshot import ingest_tree
from dockd.store import State

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

KEY_ID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Moto:
    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None

    def start(self) -> None:
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=self.port,
                                                     verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)


@pytest.fixture
def moto(monkeypatch):
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    m = Moto()
    m.start()
    yield m
    m.stop()


def _cfg(workdir: Path, moto: Moto, bucket: str, tmp_path: Path, *, policy: str = "never"):
    creds = tmp_path / "s3.ini"
    creds.write_text(f"[default]\naws_access_key_id = {KEY_ID}\n"
                     f"aws_secret_access_key = {SECRET}\n")
    creds.chmod(0o600)
    cfg = for_workdir(workdir)
    offsite = TargetConfig(name="offsite", kind="s3", endpoint_url=moto.url, bucket=bucket,
                           credentials_file=str(creds), object_lock="COMPLIANCE",
                           verify="readback")
    prof = dataclasses.replace(cfg.profiles[0], clear_policy=policy)
    return dataclasses.replace(cfg, targets=(cfg.targets[0], offsite), profiles=(prof,))


def _bucket(moto: Moto) -> str:
    name = f"evidence-{uuid.uuid4().hex[:10]}"
    moto.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def test_delivered_and_verified_on_primary_and_offsite_with_retention(
        workdir, make_recorder, moto, tmp_path):
    bucket = _bucket(moto)
    cfg = _cfg(workdir, moto, bucket, tmp_path)
    rec = make_recorder(cfg, segments=3)
    res = ingest_tree(cfg, rec, create_key=True)
    assert res["ok"], res
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"]]
    clips = [k for k in keys if k.endswith(".MP4")]
    assert len(clips) == 3 and any(k.endswith("/manifest.json") for k in keys)
    assert any(k.endswith("/manifest.json.sig") for k in keys)
    s3 = moto.client()
    head = s3.head_object(Bucket=bucket, Key=clips[0])
    assert head["ObjectLockMode"] == "COMPLIANCE"
    days = (head["ObjectLockRetainUntilDate"].timestamp() - time.time()) / 86400
    assert 725 < days < 735  # "standard" class: 730 days (R7)
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="AccessDenied"):  # locked: cannot be deleted
        s3.delete_object(Bucket=bucket, Key=clips[0], VersionId=head["VersionId"])
    local = sorted(p.name for p in (workdir / "target").rglob("*.MP4"))
    assert sorted(k.rsplit("/", 1)[1] for k in clips) == local


def test_offsite_down_then_back_everything_delivered_once(workdir, make_recorder, moto,
                                                          tmp_path):
    bucket = _bucket(moto)
    cfg = _cfg(workdir, moto, bucket, tmp_path, policy="after_delivery")
    rec = make_recorder(cfg, segments=3)
    moto.stop()  # the off-site store is down at docking time
    res = ingest_tree(cfg, rec, attempts=1, create_key=True)
    assert not res["ok"] and res["clips_delivered"] == 0
    assert any("offsite" in p for p in res["problems"])
    assert len(list(rec.rglob("*.MP4"))) == 3  # never cleared while a target lacks a copy
    with State(cfg.paths.database) as st:
        assert {r["state"] for r in st.query("SELECT state FROM clips")} == {"signed"}
        rows = st.query("SELECT target, state, attempts FROM deliveries")
        assert {(r["target"], r["state"]) for r in rows} == {("primary", "delivered"),
                                                              ("offsite", "pending")}
        assert all(r["attempts"] >= 1 for r in rows if r["target"] == "offsite")
    moto.start()  # back again (same port); its in-memory store is empty
    moto.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        assert pipe.deliver_pending(ignore_backoff=True) >= 3
        assert {r["state"] for r in st.query("SELECT state FROM clips")} == {"delivered"}
        assert st.query("SELECT state FROM dockings")[0]["state"] == "delivered"
        cleared = pipe.clear("manual", rec)
        assert cleared is not None and len(cleared.cleared) == 3
    assert list(rec.rglob("*.MP4")) == []
    keys = [o["Key"] for o in moto.client().list_object_versions(Bucket=bucket)["Versions"]]
    assert len([k for k in keys if k.endswith(".MP4")]) == 3  # one object version each


def test_missing_bucket_alarms_and_is_retried_until_fixed(workdir, make_recorder, moto,
                                                          tmp_path):
    """A missing bucket is the target's state, not the content's: retried with backoff and
    alarmed (issue #12); once the bucket exists the clips land and the alarm clears."""
    bucket = f"later-{uuid.uuid4().hex[:8]}"
    cfg = _cfg(workdir, moto, bucket, tmp_path)
    rec = make_recorder(cfg, segments=2)
    res = ingest_tree(cfg, rec, attempts=3, create_key=True)
    assert not res["ok"]
    with State(cfg.paths.database) as st:
        rows = st.query("SELECT state, attempts FROM deliveries WHERE target = 'offsite'")
        assert {r["state"] for r in rows} == {"pending"}
        # retried, not given up: ingest's 3 passes, after the worker's first try when the
        # clip became ready during the copy (the stages overlap since 7e1ca9b)
        assert all(r["attempts"] >= 3 for r in rows)
        alarms = st.query("SELECT * FROM alerts WHERE resolved_at IS NULL")
        assert [(a["level"], a["kind"]) for a in alarms] == [("alarm", "target_unusable")]
        assert "offsite" in alarms[0]["subject"]
    moto.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        pipe.deliver_pending(ignore_backoff=True)
        assert {r["state"] for r in st.query("SELECT state FROM clips")} == {"delivered"}
        assert st.query("SELECT * FROM alerts WHERE resolved_at IS NULL") == []


class FlakyDisk:
    """A local target whose storage silently keeps wrong bytes the first time a clip lands
    (a lying NAS): it corrupts the published file once, after the target's own checks."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.required, self.throttle = inner.name, inner.required, None
        self.corrupted: set[str] = set()

    def put_file(self, local_path, key, **kw):
        receipt = self.inner.put_file(local_path, key, **kw)
        if key not in self.corrupted and not receipt.already_present:
            self.corrupted.add(key)
            path = self.inner.root / key
            path.chmod(0o644)
            data = bytearray(path.read_bytes())
            data[len(data) // 3] ^= 0x40
            path.write_bytes(bytes(data))
            # what the inner put read back is not what this storage keeps: its put cannot
            # claim a checked copy, so the delivery step reads it back (``verify``)
            receipt = dataclasses.replace(receipt, verified=False)
        return receipt

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_corrupted_copy_on_target_is_detected_quarantined_and_resent(workdir, make_recorder):
    from dockd.integrity.verify import verify_path

    cfg = for_workdir(workdir)
    rec = make_recorder(cfg, segments=2)
    from dockd.oneshot import ensure_key

    ensure_key(cfg)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        pipe.targets = [FlakyDisk(pipe.targets[0])]
        d, known = pipe.begin_docking("port-01", rec)
        pipe.offload(d, rec, known)
        pipe.finish(d)
        assert pipe.deliver_pending(ignore_backoff=True) == 0  # both copies found corrupt
        rows = st.query("SELECT state, last_error FROM deliveries")
        assert {r["state"] for r in rows} == {"pending"}
        assert all("was corrupt" in r["last_error"] for r in rows)
        assert len(st.query("SELECT 1 FROM audit WHERE action = 'quarantined'")) == 2
        pipe.deliver_pending(ignore_backoff=True)  # sent again, now intact
        assert st.docking(d)["state"] == "delivered"
    target = workdir / "target"
    assert len(list((target / "_quarantine").rglob("*.MP4.*"))) == 2
    report = verify_path(target, _dock_keys(cfg))
    assert report.ok, report.problems
    assert any("_quarantine" in w for w in report.warnings)


def test_corrupt_copy_on_write_once_store_alarms_for_an_operator(workdir, make_recorder, moto,
                                                               tmp_path):
    bucket = _bucket(moto)
    cfg = _cfg(workdir, moto, bucket, tmp_path)
    rec = make_recorder(cfg, segments=1)
    from dockd.delivery.s3 import S3Target
    from dockd.oneshot import ensure_key

    ensure_key(cfg)

    class LyingStore:
        """Wraps the S3 target: after the upload, the store's bytes are changed (moto does
        not check checksums, like a store that silently keeps wrong data)."""

        def __init__(self, inner: S3Target):
            self.inner = inner
            self.name, self.required, self.throttle = inner.name, inner.required, None

        def put_file(self, local_path, key, **kw):
            receipt = self.inner.put_file(local_path, key, **kw)
            from moto.backends import get_backend

            backend = get_backend("s3")["123456789012"]["global"]
            obj = backend.get_object(bucket, self.inner.prefix + key)
            obj._value_buffer.seek(0)
            raw = bytearray(obj._value_buffer.read())
            raw[10] ^= 0xFF
            obj._value_buffer.seek(0)
            obj._value_buffer.write(bytes(raw))
            return receipt

        def __getattr__(self, name):
            return getattr(self.inner, name)

    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        pipe.targets = [pipe.targets[0], LyingStore(pipe.targets[1])]
        d, known = pipe.begin_docking("port-01", rec)
        pipe.offload(d, rec, known)
        pipe.finish(d)
        pipe.deliver_pending(ignore_backoff=True)
        row = st.query_one("SELECT state, last_error FROM deliveries WHERE target = 'offsite'")
        assert row["state"] == "failed" and "operator action needed" in row["last_error"]
        assert st.query_one("SELECT level FROM alerts WHERE resolved_at IS NULL")["level"] == \
            "alarm"
        assert st.clip(1)["state"] == "signed"  # never "delivered" with a bad off-site copy


def test_sftp_offsite_down_then_back_through_the_pipeline(workdir, make_recorder, tmp_path):
    """Primary local + off-site SFTP (a real OpenSSH on 127.0.0.1): the server is down when
    the recorder docks, the clips wait, then everything lands once, verified."""
    from dockd.integrity.verify import verify_path
    from tests.sshd import SshdServer

    server = SshdServer(tmp_path / "sshd")
    store = server.root
    offsite = TargetConfig(name="offsite", kind="sftp", host=server.host, port=server.port,
                           user=server.user, key_file=str(server.client_key),
                           known_hosts=str(server.known_hosts), path=store, verify="readback")
    base = for_workdir(workdir)
    cfg = dataclasses.replace(base, targets=(base.targets[0], offsite))
    rec = make_recorder(cfg, segments=3)
    res = ingest_tree(cfg, rec, attempts=1, create_key=True)  # sshd not started yet
    assert not res["ok"] and res["clips_delivered"] == 0
    server.start()
    try:
        with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
            pipe = build_pipeline(cfg, st, prober)
            try:
                pipe.deliver_pending(ignore_backoff=True)
                pipe.deliver_pending(ignore_backoff=True)
            finally:
                for t in pipe.targets:
                    t.close()
            assert st.query_one("SELECT state FROM dockings")["state"] == "delivered"
            assert {r["state"] for r in st.query("SELECT state FROM clips")} == {"delivered"}
    finally:
        server.stop()
    landed = sorted(p.name for p in store.rglob("*.MP4"))
    assert landed == sorted(p.name for p in (workdir / "target").rglob("*.MP4"))
    assert len(landed) == 3 and not list(store.rglob("*.partial"))
    # the off-site copy is a complete, verifiable docking of its own
    report = verify_path(store, _dock_keys(cfg))
    assert report.ok, report.problems


def _dock_keys(cfg):
    """The on-dock case: the dock's own public key is the trusted one."""
    from dockd.integrity.keys import key_id, load_public_key

    k = load_public_key(cfg.paths.public_key_file)
    return {key_id(k): k}
