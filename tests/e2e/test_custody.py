"""Custody (R4, R7, R8, R12): labels and retention as signed revisions on the target, the
audit trail (who, what, when; verified, delivered), approved export packages that verify
offline and with standard tools only."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from dockd.config import for_workdir
from dockd.custody.labels import label, retain
from dockd.custody.publish import deliver_custody
from dockd.daemon import load_signer
from dockd.delivery.targets import open_targets
from dockd.errors import DeliveryError, DockdError
from dockd.integrity.audit import verify_db
from dockd.integrity.keys import generate_key
from dockd.integrity.manifest import manifest_sha256
from dockd.integrity.revisions import REVISIONS_DIR
from dockd.integrity.verify import verify_path
from dockd.oneshot import ingest_tree
from dockd.store import State
from tests.conftest import ROOT, dockd_cmd, run_dockd

pytestmark = pytest.mark.timeout(240)

LOGIN = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def docked(workdir: Path, make_recorder):
    """A work directory with one signed, delivered docking of two clips."""
    cfg = for_workdir(workdir)
    generate_key(cfg.paths.key_file, cfg.paths.public_key_file)
    res = ingest_tree(cfg, make_recorder(cfg, segments=2), create_key=False)
    assert res["ok"], res
    return cfg, res


def _w(cfg) -> list[str]:
    return ["--workdir", str(cfg.paths.state_dir.parent)]


def _revs(cfg, prefix: str) -> list[Path]:
    return sorted((cfg.targets[0].path / REVISIONS_DIR / prefix).glob("*.json"))


def test_label_and_retain_are_chained_signed_revisions_on_the_target(docked):
    cfg, res = docked
    prefix = res["prefix"]
    w = _w(cfg)
    r = run_dockd("label", *w, "--docking", "1", "--case-no", "A-2026-001", "--party", "张三",
                  "--handler", "李四", "--note", "路口纠纷")
    assert r.returncode == 0, r.stderr
    clip = sorted(p.name for p in (cfg.targets[0].path / prefix).glob("*.MP4"))[0]
    r = run_dockd("label", *w, "--docking", "1", "--clip", clip, "--note", "推搡开始")
    assert r.returncode == 0, r.stderr
    r = run_dockd("retain", *w, "--docking", "1", "--class", "evidence", "--reason", "court",
                  "--approver", "赵六")
    assert r.returncode == 0, r.stderr

    files = _revs(cfg, prefix)
    assert [f.name for f in files] == ["000001.json", "000002.json", "000003.json"]
    docs = [json.loads(f.read_bytes()) for f in files]
    manifest = (cfg.targets[0].path / prefix / "manifest.json").read_bytes()
    assert {d["manifest_sha256"] for d in docs} == {manifest_sha256(manifest)}
    assert docs[0]["prev_revision_sha256"] is None
    for after, f in zip(docs[1:], files, strict=False):
        assert after["prev_revision_sha256"] == manifest_sha256(f.read_bytes())
    last = docs[-1]
    assert last["labels"]["docking"] == {"case_no": "A-2026-001", "party": "张三",
                                         "handler": "李四", "note": "路口纠纷"}
    assert last["labels"]["clips"] == {clip: {"note": "推搡开始"}}
    assert {v["class"] for v in last["retention"].values()} == {"evidence"}
    assert docs[1]["retention"][clip]["class"] == "standard"

    report = verify_path(cfg.targets[0].path, _key(cfg))
    assert report.ok, report.problems

    # the report and the audit trail show it, with the person and the approver
    rep = json.loads(run_dockd("report", *w, "--json").stdout)
    assert rep["dockings"][0]["labels"]["docking"]["case_no"] == "A-2026-001"
    assert "A-2026-001" in run_dockd("report", *w).stdout
    audit = json.loads(run_dockd("audit", "show", *w, "--json").stdout)
    by_action = {e["action"]: e for e in audit}
    assert {"docked", "copied", "findings", "signed", "delivered_to", "delivered", "label",
            "retention_change", "revision_delivered"} <= set(by_action)
    assert by_action["label"]["actor"] == f"user:{LOGIN}"
    assert by_action["retention_change"]["actor"] == f"user:{LOGIN}; approver:赵六"
    assert by_action["docked"]["actor"] == "dockd"
    only = json.loads(run_dockd("audit", "show", *w, "--json", "--action", "label").stdout)
    assert [e["action"] for e in only] == ["label", "label"]
    assert json.loads(run_dockd("audit", "show", *w, "--json", "--actor", "赵六").stdout)[0][
        "action"] == "retention_change"
    # the trail itself reached the target, signed, and verifies there
    r = run_dockd("audit", "verify", *w, str(cfg.targets[0].path), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["ok"] and out["entries"] >= len(audit) - 2


def _key(cfg):
    from dockd.integrity.keys import key_id, load_public_key

    k = load_public_key(cfg.paths.public_key_file)
    return {key_id(k): k}


def test_retention_downgrade_is_refused_and_audited(docked):
    cfg, res = docked
    w = _w(cfg)
    assert run_dockd("retain", *w, "--docking", "1", "--class", "permanent").returncode == 0
    r = run_dockd("retain", *w, "--docking", "1", "--class", "evidence")
    assert r.returncode == 1
    assert "cannot be lowered" in r.stderr and "'permanent'" in r.stderr
    with State(cfg.paths.database) as st:
        assert {c["retention_class"] for c in st.clips_of(1)} == {"permanent"}
        assert st.query_one("SELECT count(*) AS n FROM revisions")["n"] == 1
        refused = st.query("SELECT * FROM audit WHERE action = 'retain_refused'")
        assert len(refused) == 1 and json.loads(refused[0]["detail"])["class"] == "evidence"
    assert len(_revs(cfg, res["prefix"])) == 1
    # the same class again changes nothing and makes no revision
    r = run_dockd("retain", *w, "--docking", "1", "--class", "permanent")
    assert r.returncode == 0 and "nothing changed" in r.stdout


def test_label_refuses_unknown_docking_clip_and_empty_labels(docked):
    cfg, _res = docked
    state = State(cfg.paths.database)
    signer, targets = load_signer(cfg), open_targets(cfg)
    try:
        with pytest.raises(DockdError, match="no docking 9"):
            label(state, cfg, signer, targets, docking_id=9, fields={"case_no": "x"},
                  actor="t")
        with pytest.raises(DockdError, match="has no clip nope.MP4"):
            label(state, cfg, signer, targets, docking_id=1, clips=["nope.MP4"],
                  fields={"case_no": "x"}, actor="t")
        with pytest.raises(DockdError, match="nothing to label"):
            label(state, cfg, signer, targets, docking_id=1, fields={"case_no": None},
                  actor="t")
        with pytest.raises(DockdError, match="control characters"):
            label(state, cfg, signer, targets, docking_id=1, fields={"note": "a\x1b[2Jb"},
                  actor="t")
        with pytest.raises(DockdError, match="unknown retention class"):
            retain(state, cfg, signer, targets, docking_id=1, retention_class="forever",
                   actor="t")
        assert state.query_one("SELECT count(*) AS n FROM revisions")["n"] == 0
    finally:
        for t in targets:
            t.close()
        state.close()


class _Down:
    """A target that is unreachable (every put fails with a retryable error)."""

    def __init__(self, inner):
        self.inner = inner

    def put_bytes(self, *a, **kw):
        raise DeliveryError(f"{self.inner.name}: connection refused", retry=True)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_revision_waits_for_a_target_that_is_down(docked):
    """A revision made while a target is down stays pending and lands on the next round."""
    cfg, res = docked
    state = State(cfg.paths.database)
    signer, targets = load_signer(cfg), open_targets(cfg)
    try:
        out = label(state, cfg, signer, [_Down(t) for t in targets], docking_id=1,
                    fields={"case_no": "B-1"}, actor="user:t")
        assert out["delivered"] == 0 and _revs(cfg, res["prefix"]) == []
        row = state.query_one("SELECT attempts, state, next_try_at FROM revision_deliveries")
        assert (row["attempts"], row["state"]) == (1, "pending")
        assert row["next_try_at"] > state.now()  # backoff: not before its time
        assert deliver_custody(state, cfg, targets, signer) == 0
        assert deliver_custody(state, cfg, targets, signer, ignore_backoff=True) >= 2
        assert state.query_one("SELECT count(*) AS n FROM revision_deliveries WHERE "
                               "state != 'delivered'")["n"] == 0
    finally:
        for t in targets:
            t.close()
        state.close()
    assert len(_revs(cfg, res["prefix"])) == 1
    assert verify_path(cfg.targets[0].path, _key(cfg)).ok


# --------------------------------------------------------------------------- audit chain


def _edit(db: Path, sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql, params)
    conn.close()


@pytest.mark.parametrize("how, first_bad, words", [
    ("edit", 3, "edited"),
    ("remove", 3, "removed"),
    ("reorder", 3, "reordered"),
    ("insert", 3, "inserted"),
])
def test_audit_verify_names_the_first_bad_entry(tmp_path, how, first_bad, words):
    db = tmp_path / "s.db"
    with State(db) as st:
        for i in range(1, 7):
            st.audit("label", f"docking/{i}", {"n": i}, actor=f"user:u{i}")
        assert verify_db(st).ok
        rows = st.query("SELECT * FROM audit ORDER BY id")
    if how == "edit":
        _edit(db, "UPDATE audit SET actor = 'user:mallory' WHERE id = 3")
    elif how == "remove":
        _edit(db, "DELETE FROM audit WHERE id IN (3, 4)")
    elif how == "reorder":  # swap the contents of entries 3 and 4
        a, b = rows[2], rows[3]
        for src, dst in ((b, 3), (a, 4)):
            _edit(db, "UPDATE audit SET ts=?, actor=?, action=?, subject=?, detail=?, "
                      "prev_hash=?, hash=? WHERE id = ?",
                  (src["ts"], src["actor"], src["action"], src["subject"], src["detail"],
                   src["prev_hash"], src["hash"], dst))
    else:  # a forged entry with a correct hash of its own, slipped in after entry 2
        from dockd.integrity.audit import entry_hash

        conn = sqlite3.connect(db)
        with conn:
            conn.execute("UPDATE audit SET id = id + 100 WHERE id >= 3")
            ts = rows[1]["ts"]
            h = entry_hash(ts, "dockd", "cleared", "clip/9", {}, rows[1]["hash"])
            conn.execute("INSERT INTO audit (id, ts, actor, action, subject, detail, "
                         "prev_hash, hash) VALUES (3, ?, 'dockd', 'cleared', 'clip/9', '{}', "
                         "?, ?)", (ts, rows[1]["hash"], h))
            conn.execute("UPDATE audit SET id = id - 99 WHERE id >= 103")
        conn.close()
    with State(db) as st:
        report = verify_db(st)
    assert not report.ok and report.first_bad == first_bad, report.problems
    assert f"audit entry {first_bad}" in report.problems[0] and words in report.problems[0]
    r = run_dockd("audit", "verify", "--workdir", str(tmp_path / "w"))
    assert r.returncode != 0  # no database there: a clear error, not a pass
    assert "no state database" in r.stderr


def test_audit_verify_command_on_the_dock(docked):
    cfg, _res = docked
    r = run_dockd("audit", "verify", *_w(cfg))
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout
    _edit(cfg.paths.database, "UPDATE audit SET detail = '{\"clips\": 99}' WHERE id = 2")
    r = run_dockd("audit", "verify", *_w(cfg))
    assert r.returncode == 1 and "audit entry 2: edited" in r.stdout, r.stdout


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("missing", ["--requester", "--approver", "--reason"])
def test_export_refuses_without_requester_approver_or_reason(docked, tmp_path, missing):
    cfg, _res = docked
    args = {"--requester": "王五", "--approver": "赵六", "--reason": "court case"}
    args[missing] = "  "
    flat = [x for k, v in args.items() for x in (k, v)]
    out = tmp_path / "pkg"
    r = run_dockd("export", *_w(cfg), "--docking", "1", "--out", str(out), *flat)
    assert r.returncode == 2
    assert f"export refused: {missing} required" in r.stderr
    assert not out.exists()
    with State(cfg.paths.database) as st:
        assert st.query("SELECT * FROM audit WHERE action LIKE 'export%'") == []
    r = run_dockd("export", *_w(cfg), "--docking", "1", "--out", str(out))
    assert r.returncode == 2 and "--requester, --approver, --reason required" in r.stderr


def _export(cfg, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_dockd("export", *_w(cfg), "--docking", "1", "--out", str(out),
                     "--requester", "王五 (刑侦大队)", "--approver", "赵六",
                     "--reason", "案件 A-2026-001 移送检察院", "--place", "某某派出所", *extra)


def test_export_package_verifies_on_a_clean_machine_and_is_audited(docked, tmp_path):
    cfg, res = docked
    w = _w(cfg)
    run_dockd("label", *w, "--docking", "1", "--case-no", "A-2026-001", "--party", "张三",
              "--handler", "李四", check=True)
    out = tmp_path / "pkg"
    r = _export(cfg, out)
    assert r.returncode == 0, r.stderr

    # the export is in the trail, with requester, approver, reason and the person
    with State(cfg.paths.database) as st:
        exp = st.query("SELECT * FROM audit WHERE action = 'export'")
        assert verify_db(st).ok
    assert len(exp) == 1
    detail = json.loads(exp[0]["detail"])
    assert (detail["requester"], detail["approver"]) == ("王五 (刑侦大队)", "赵六")
    assert detail["reason"] == "案件 A-2026-001 移送检察院"
    assert exp[0]["actor"] == f"user:{LOGIN}; approver:赵六"
    slice_ = [json.loads(x) for x in (out / "_export/audit-slice.jsonl").read_text().splitlines()]
    assert exp[0]["hash"] in {e["hash"] for e in slice_}
    assert {"docked", "signed", "label"} <= {e["action"] for e in slice_}

    # the description: both languages, labels, files with SHA-256, as HTML and PDF
    html = (out / "_export/evidence.html").read_text()
    manifest = json.loads((out / res["prefix"] / "manifest.json").read_bytes())
    for text in ("制作人 Maker", "提取人 Extractor", "提取时间", "提取地点", "某某派出所",
                 "A-2026-001", "张三", "李四", manifest["recorder"]["officer_name"],
                 *(c["sha256"] for c in manifest["clips"])):
        assert text in html, text
    # who exported docking 1: the export entry shows under the docking's subject
    w_ = _w(cfg)
    hist = json.loads(run_dockd("audit", "show", *w_, "--json", "--subject", "docking/1").stdout)
    assert "export" in {e["action"] for e in hist}
    assert json.loads(run_dockd("audit", "show", *w_, "--json", "--subject",
                                "docking/11").stdout) == []
    assert {e["action"] for e in json.loads(run_dockd(
        "audit", "show", *w_, "--json", "--subject", "export/").stdout)} == {"export"}
    # the package's own audit slice can be read and checked
    shown = json.loads(run_dockd("audit", "show", *w_, str(out), "--json").stdout)
    assert [e["hash"] for e in shown] == [e["hash"] for e in slice_]
    assert run_dockd("audit", "verify", *w_, str(out)).returncode == 0
    pdf = (out / "_export/evidence.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and b"WenQuanYi" in pdf and pdf.rstrip().endswith(b"%%EOF")
    import pypdf

    text = "".join(p.extract_text() for p in pypdf.PdfReader(out / "_export/evidence.pdf").pages)
    text = re.sub(r"\s+", " ", text)
    for needle in ("制作人 Maker", "提取人 Extractor", "批准人 Approver: 赵六", "A-2026-001",
                   "办案人 Case handler: 李四", "某某派出所", manifest["clips"][0]["sha256"]):
        assert needle in text, needle

    # a clean machine: only the package and the trusted key, unrelated cwd, no dock state
    key = tmp_path / "trusted.pub"
    shutil.copy(cfg.paths.public_key_file, key)
    moved = tmp_path / "elsewhere" / "pkg"
    moved.parent.mkdir()
    shutil.move(out, moved)
    shutil.rmtree(cfg.paths.state_dir.parent)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "PYTHONPATH": str(ROOT)}
    r = subprocess.run(dockd_cmd("verify", str(moved), "--pubkey", str(key)), cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("OK: 1 manifest(s), 2 file(s)"), r.stdout

    # ... and a changed byte anywhere fails it, naming the file
    victim = moved / "_export/export.json"
    data = bytearray(victim.read_bytes())
    data[data.index(b"\xe8\xb5\xb5")] ^= 1  # the approver's name
    victim.write_bytes(bytes(data))
    r = subprocess.run(dockd_cmd("verify", str(moved), "--pubkey", str(key)), cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "_export/export.json: SHA-256 differs" in r.stdout, r.stdout


def _doc_script() -> str:
    doc = (ROOT / "docs/verify.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", doc, flags=re.S)
    script = (ROOT / "docs/verify-package.sh").read_text()
    assert script in blocks, "docs/verify.md must show docs/verify-package.sh verbatim"
    return script


def test_documented_standard_tool_steps_pass_and_catch_tampering(docked, tmp_path):
    cfg, res = docked
    out = tmp_path / "pkg"
    assert _export(cfg, out, "--clip", sorted(
        p.name for p in (cfg.targets[0].path / res["prefix"]).glob("*.MP4"))[0]).returncode == 0
    script = tmp_path / "verify-package.sh"
    script.write_text(_doc_script())
    key = tmp_path / "dock.pub"
    shutil.copy(cfg.paths.public_key_file, key)
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}  # standard tools only, no dockd

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(script), str(out), str(key)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    r = run()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Signature Verified Successfully" in r.stdout
    assert "manifest.json.sig: signature OK" in r.stdout
    assert r.stdout.count(": matches its manifest") == 1
    assert r.stdout.count(": not exported (withheld)") == 1
    # dockd agrees: the withheld clip is allowed to be absent, nothing else is
    report = verify_path(out, _key(cfg))
    assert report.ok and any("withheld" in w for w in report.warnings), report

    clip = next(out.joinpath(res["prefix"]).glob("*.MP4"))
    original = clip.read_bytes()
    for victim in (clip, out / "_export/SHA256SUMS", out / res["prefix"] / "manifest.json"):
        saved = victim.read_bytes()
        data = bytearray(saved)
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
        assert run().returncode != 0, victim
        assert not verify_path(out, _key(cfg)).ok
        victim.write_bytes(saved)
    assert clip.read_bytes() == original and run().returncode == 0
    extra = out / res["prefix"] / "planted.MP4"
    extra.write_bytes(b"x")
    assert run().returncode != 0
    extra.unlink()
    other = tmp_path / "other.pub"  # a key that did not sign it
    generate_key(tmp_path / "o.key", other)
    r = subprocess.run(["sh", str(script), str(out), str(other)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Signature Verification Failure" in r.stdout + r.stderr


def test_config_check_refuses_retention_below_the_legal_minimum(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("[retention]\nroutine_days = 90\nstandard_days = 200\n")
    r = run_dockd("config-check", "--config", str(conf))
    assert r.returncode == 1
    assert "retention.routine_days: 90 is shorter than the legal minimum of 6 months" in r.stdout
    assert "retention.standard_days: 200 is shorter than the legal minimum of 1 year" in r.stdout
    conf.write_text("[retention]\nroutine_days = 183\nstandard_days = 365\n")
    assert "routine_days" not in run_dockd("config-check", "--config", str(conf)).stdout


@pytest.mark.slow
def test_package_verifies_in_a_fresh_virtualenv_holding_only_dockd(docked, tmp_path):
    """The reviewer's machine: a new virtualenv with dockd (no dependencies but the three
    its verify command imports: cryptography, rich, sqlite-utils), the package and a key."""
    cfg, _res = docked
    out = tmp_path / "pkg"
    assert _export(cfg, out).returncode == 0
    key = tmp_path / "dock.pub"
    shutil.copy(cfg.paths.public_key_file, key)
    venv = tmp_path / "venv"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for p in ("PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONFIG_FILE", "PIP_EXTRA_INDEX_URL"):
        if p in os.environ:
            env[p] = os.environ[p]
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q"]
    for args in ([*pip, "--no-deps", str(ROOT)], [*pip, "cryptography", "rich", "sqlite-utils"]):
        r = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env,
                           cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
    cwd = tmp_path / "reviewer"
    cwd.mkdir()
    shutil.rmtree(cfg.paths.state_dir.parent)  # nothing of the dock is left
    r = subprocess.run([str(venv / "bin/dockd"), "verify", str(out), "--pubkey", str(key)],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("OK: 1 manifest(s)"), r.stdout + r.stderr
    (out / "_export/keys.txt").write_text("tampered\n")
    r = subprocess.run([str(venv / "bin/dockd"), "verify", str(out), "--pubkey", str(key)],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "_export/keys.txt: SHA-256 differs" in r.stdout


def test_verify_and_key_rotation_on_the_dock_are_audited(docked):
    cfg, _res = docked
    w = _w(cfg)
    assert run_dockd("verify", *w, str(cfg.targets[0].path)).returncode == 0
    old = json.loads(run_dockd("audit", "show", *w, "--json", "--action", "signed").stdout)
    assert run_dockd("keygen", *w, "--force").returncode == 0
    entries = json.loads(run_dockd("audit", "show", *w, "--json").stdout)
    verified = [e for e in entries if e["action"] == "verified"]
    assert len(verified) == 1 and verified[0]["detail"]["ok"] is True
    assert verified[0]["actor"] == f"user:{LOGIN}"
    rotated = [e for e in entries if e["action"] == "key_rotated"]
    assert len(rotated) == 1
    assert rotated[0]["detail"]["previous_key_id"] == old[0]["detail"]["key_id"]
    assert rotated[0]["detail"]["key_id"] != rotated[0]["detail"]["previous_key_id"]
    assert run_dockd("audit", "verify", *w).returncode == 0


def test_fleet_view_lists_labelled_dockings(docked):
    from datetime import UTC, datetime

    import jsonschema

    from dockd.status.web_data import fleet_data
    from dockd.status.web_openapi import response_schema

    cfg, res = docked
    with State(cfg.paths.database) as st:
        assert fleet_data(st, cfg, datetime.now(UTC))["cases"] == []
    run_dockd("label", *_w(cfg), "--docking", "1", "--case-no", "A-9", "--party", "王五",
              check=True)
    with State(cfg.paths.database) as st:
        data = fleet_data(st, cfg, datetime.now(UTC))
    assert data["cases"] == [{
        "docking_id": 1, "serial": data["cases"][0]["serial"], "officer_no": "012345",
        "officer_name": data["cases"][0]["officer_name"], "docked_at": data["cases"][0][
            "docked_at"], "case_no": "A-9", "party": "王五", "handler": None, "note": None,
        "clips_labelled": 0}]
    jsonschema.validate(json.loads(json.dumps(data)), response_schema("/api/recorders"))


def test_deleting_the_newest_revision_is_caught_by_the_audit_trail(docked):
    """An insider removes the last label revision (and its signature) from the target: the
    revision chain alone still looks whole, the delivered audit trail gives it away."""
    cfg, res = docked
    w = _w(cfg)
    run_dockd("label", *w, "--docking", "1", "--case-no", "A-1", check=True)
    run_dockd("retain", *w, "--docking", "1", "--class", "evidence", check=True)
    root = cfg.targets[0].path
    assert verify_path(root, _key(cfg)).ok
    newest = _revs(cfg, res["prefix"])[-1]
    newest.unlink()
    newest.with_name(newest.name + ".sig").unlink()
    report = verify_path(root, _key(cfg))
    assert not report.ok
    rel = f"{REVISIONS_DIR}/{res['prefix']}/000002.json"
    assert any(p.startswith(f"{rel}: missing, but audit entry") and "retention_change" in p
               for p in report.problems), report.problems


def test_a_consistently_rewritten_database_trail_is_caught_against_the_target(docked):
    """An insider rewrites entry 2 and recomputes every later hash (and drops the signed
    segment records): the chain is whole again, the copy on the target is not fooled."""
    from dockd.integrity.audit import entry_hash

    cfg, _res = docked
    w = _w(cfg)
    conn = sqlite3.connect(cfg.paths.database)
    with conn:
        rows = conn.execute("SELECT id, ts, actor, action, subject, detail FROM audit "
                            "ORDER BY id").fetchall()
        prev = ""
        for i, (eid, ts, actor, action, subject, detail) in enumerate(rows):
            if i == 1:
                detail = json.dumps({"clips": 0}, sort_keys=True)
            h = entry_hash(ts, actor, action, subject, json.loads(detail), prev)
            conn.execute("UPDATE audit SET detail = ?, prev_hash = ?, hash = ? WHERE id = ?",
                         (detail, prev, h, eid))
            prev = h
        conn.execute("DELETE FROM audit_segment_deliveries")
        conn.execute("DELETE FROM audit_segments")
    conn.close()
    assert run_dockd("audit", "verify", *w).returncode == 0  # the chain alone looks fine
    r = run_dockd("audit", "verify", *w, "--against", str(cfg.targets[0].path))
    assert r.returncode == 1
    assert f"audit entry {rows[1][0]}: differs from the signed, delivered copy" in r.stdout


def test_export_carries_timestamp_tokens_and_key_records_from_the_target(docked, tmp_path):
    cfg, res = docked
    root = cfg.targets[0].path
    (root / res["prefix"] / "manifest.json.tsr").write_bytes(b"token bytes")
    (root / "_keys" / "ed25519_x.rec").write_bytes(b"key record")
    (root / res["prefix"] / "planted.txt").write_bytes(b"not evidence")
    out = tmp_path / "pkg"
    assert _export(cfg, out).returncode == 0
    assert (out / res["prefix"] / "manifest.json.tsr").read_bytes() == b"token bytes"
    assert (out / "_keys/ed25519_x.rec").read_bytes() == b"key record"
    assert not (out / res["prefix"] / "planted.txt").exists()
    sums = (out / "_export/SHA256SUMS").read_text()
    assert f"{res['prefix']}/manifest.json.tsr\n" in sums and "_keys/ed25519_x.rec\n" in sums


def test_export_refuses_control_characters_and_audit_show_never_prints_them(docked, tmp_path):
    cfg, _res = docked
    out = tmp_path / "pkg"
    r = run_dockd("export", *_w(cfg), "--docking", "1", "--out", str(out), "--requester",
                  "x\x1b[2J", "--approver", "a", "--reason", "r")
    assert r.returncode == 2 and "--requester: control characters" in r.stderr
    assert not out.exists()
    r = run_dockd("label", *_w(cfg), "--docking", "1", "--case-no", "A\u009b31m")
    assert r.returncode == 1 and "control characters" in r.stderr
    with State(cfg.paths.database) as st:  # e.g. a hostile recorder's serial in a detail
        st.audit("docked", "docking/1", {"serial": "A\u009b31m"})
    shown = run_dockd("audit", "show", *_w(cfg)).stdout
    assert "\u009b" not in shown and "\\u009b" in shown
