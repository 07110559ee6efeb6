"""Issue #10, defect 1: a recorder must not be erased while a target's only copy is corrupt.

The database says "delivered and verified", then one byte of a delivered copy flips on the
target (bit rot, an insider, a broken appliance). Clearing re-verifies every required
target's copy right before it erases, so the clip stays on the recorder, an alarm is raised,
and the copy is quarantined and sent again where the target allows it (local) or left for an
operator where it does not (S3 with object lock, SFTP) — on a real local directory, a real
OpenSSH server and a moto S3 server, all on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dockd.config import TargetConfig, for_workdir
from dockd.daemon import build_pipeline
from dockd.ingest.probe import Prober
from dockd.integrity.keys import generate_key
from dockd.store import State

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _flip(data: bytes, at: int = 100) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def _cfg(workdir: Path, *extra: TargetConfig):
    base = for_workdir(workdir)
    generate_key(base.paths.key_file, base.paths.public_key_file)
    prof = dataclasses.replace(base.profiles[0], clear_policy="after_delivery")
    return dataclasses.replace(base, targets=(base.targets[0], *extra), profiles=(prof,))


def _deliver(cfg, rec: Path, st: State, pipe) -> None:
    d, known = pipe.begin_docking("port-01", rec)
    pipe.offload(d, rec, known)
    pipe.finish(d)
    pipe.deliver_pending(ignore_backoff=True)
    assert st.docking(d)["state"] == "delivered"
    assert {c["state"] for c in st.clips_of(d)} == {"delivered"}


def _recorder_clips(rec: Path) -> list[str]:
    return sorted(p.name for p in rec.rglob("*.MP4"))


def _assert_kept_and_alarmed(st: State, rec: Path, before: list[str], victim: str,
                             out, target: str) -> None:
    assert victim in _recorder_clips(rec), "erased although the only copy on the target is bad"
    assert [n for n, _ in out.kept if n == victim], out.kept
    why = dict(out.kept)[victim]
    assert target in why and "does not verify" in why
    assert sorted(out.cleared) == sorted(n for n in before if n != victim)
    alarm = st.query_one("SELECT * FROM alerts WHERE kind = 'corrupt_copy' AND "
                         "resolved_at IS NULL")
    assert alarm is not None and alarm["level"] == "alarm" and target in alarm["message"]
    c = st.query_one("SELECT * FROM clips WHERE safe_name = ?", (victim,))
    assert c["state"] == "signed"  # no longer "delivered": the database tells the truth
    assert st.query_one("SELECT state FROM dockings")["state"] == "signed"
    assert st.query("SELECT * FROM audit WHERE action = 'corrupt_copy'")
    assert st.verify_audit_chain() == []


def test_corrupt_copy_on_local_target_is_quarantined_resent_and_only_then_erased(
        workdir, make_recorder):
    cfg = _cfg(workdir)
    rec = make_recorder(cfg, segments=3)
    before = _recorder_clips(rec)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        _deliver(cfg, rec, st, pipe)
        landed = sorted((workdir / "target").rglob("*.MP4"))
        victim = landed[1]
        victim.write_bytes(_flip(victim.read_bytes()))
        out = pipe.clear("port-01", rec)
        assert out is not None
        _assert_kept_and_alarmed(st, rec, before, victim.name, out, "primary")
        assert st.query_one("SELECT d.state FROM deliveries d JOIN clips c ON c.id = d.clip_id "
                            "WHERE c.safe_name = ?", (victim.name,))["state"] == "pending"
        q = list((workdir / "target" / "_quarantine").rglob(f"{victim.name}.*"))
        assert len(q) == 1  # the bad copy kept for investigation, out of the docking folder
        # the clip is sent again (re-staged from the recorder), then erased
        assert pipe.deliver_pending(ignore_backoff=True) == 1
        assert st.query_one("SELECT state FROM dockings")["state"] == "delivered"
        out2 = pipe.clear("port-01", rec)
        assert out2 is not None and out2.cleared == [victim.name]
    assert _recorder_clips(rec) == []
    from dockd.integrity.keys import own_key
    from dockd.integrity.verify import verify_path

    report = verify_path(victim.parent, own_key(cfg.paths.public_key_file))
    assert report.ok, report.problems


def test_corrupt_copy_on_sftp_target_blocks_erasure(workdir, make_recorder, tmp_path):
    from tests.sshd import SshdServer

    with SshdServer(tmp_path / "sshd") as server:
        offsite = TargetConfig(name="offsite", kind="sftp", host=server.host, port=server.port,
                               user=server.user, key_file=str(server.client_key),
                               known_hosts=str(server.known_hosts), path=server.root,
                               verify="readback")
        cfg = _cfg(workdir, offsite)
        rec = make_recorder(cfg, segments=2)
        before = _recorder_clips(rec)
        with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
            pipe = build_pipeline(cfg, st, prober)
            try:
                _deliver(cfg, rec, st, pipe)
                victim = sorted(server.root.rglob("*.MP4"))[0]
                victim.chmod(0o644)
                victim.write_bytes(_flip(victim.read_bytes()))
                out = pipe.clear("port-01", rec)
            finally:
                for t in pipe.targets:
                    t.close()
            assert out is not None
            _assert_kept_and_alarmed(st, rec, before, victim.name, out, "offsite")
            row = st.query_one("SELECT state, last_error FROM deliveries WHERE target = "
                               "'offsite' AND state != 'delivered'")
            assert row["state"] in ("pending", "failed") and "did not verify" in row["last_error"]


def test_corrupt_copy_on_s3_target_blocks_erasure(workdir, make_recorder, tmp_path,
                                                  monkeypatch):
    from tests.e2e.test_delivery_pipeline import KEY_ID, SECRET, Moto, _bucket

    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    moto = Moto()
    moto.start()
    try:
        bucket = _bucket(moto)
        creds = tmp_path / "s3.ini"
        creds.write_text(f"[default]\naws_access_key_id = {KEY_ID}\n"
                         f"aws_secret_access_key = {SECRET}\n")
        creds.chmod(0o600)  # a file others may read is refused (dockd.secrets)
        offsite = TargetConfig(name="offsite", kind="s3", endpoint_url=moto.url, bucket=bucket,
                               credentials_file=str(creds), object_lock="COMPLIANCE",
                               verify="readback")
        cfg = _cfg(workdir, offsite)
        rec = make_recorder(cfg, segments=2)
        before = _recorder_clips(rec)
        with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
            pipe = build_pipeline(cfg, st, prober)
            try:
                _deliver(cfg, rec, st, pipe)
                s3 = moto.client()
                key = next(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]
                           if o["Key"].endswith(".MP4"))
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                head = s3.head_object(Bucket=bucket, Key=key)
                # an insider replaces the object (a new version keeps the claimed metadata)
                s3.put_object(Bucket=bucket, Key=key, Body=_flip(body),
                              Metadata=head.get("Metadata", {}))
                out = pipe.clear("port-01", rec)
            finally:
                for t in pipe.targets:
                    t.close()
            assert out is not None
            _assert_kept_and_alarmed(st, rec, before, key.rsplit("/", 1)[1], out, "offsite")
    finally:
        moto.stop()
