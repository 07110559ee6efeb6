"""``dockd verify`` run while the dock is still uploading (the demo verifies with its daemon
up; an IT check can run any time): a ``.partial`` in the audit trail, the checkpoints or the
revisions is an upload in progress or cut by a crash, a warning, not a tampered tree. Any
other stray file there stays a problem."""

from __future__ import annotations

import pytest

from dockd.integrity.keys import key_id, load_public_key
from dockd.integrity.verify import verify_path
from dockd.oneshot import ingest_tree

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("folder", ["_audit", "_checkpoints"])
def test_partial_upload_is_a_warning_a_stray_file_a_problem(cfg, make_recorder, folder):
    rec = make_recorder(cfg, segments=2)
    assert ingest_tree(cfg, rec, port="p1", create_key=True)["ok"]
    pub = load_public_key(cfg.paths.public_key_file)
    keys = {key_id(pub): pub}
    target = cfg.targets[0].path
    docks = [d for d in (target / folder).iterdir() if d.is_dir()]
    assert docks, f"nothing delivered under {folder}"
    assert verify_path(target, keys).ok
    partial = docks[0] / "0000000099-0000000120.jsonl.partial"
    partial.write_bytes(b"half an upload")
    r = verify_path(target, keys)
    assert r.ok, r.problems
    assert any(partial.name in w and "partial" in w for w in r.warnings)
    stray = docks[0] / "notes.txt"
    stray.write_text("planted\n")
    r = verify_path(target, keys)
    assert not r.ok and any("notes.txt" in p for p in r.problems)
