"""``dockd status`` reads through the read-only store: an older database is refused with a
clear message and left exactly as it was (the old ``open_readonly`` migrated it)."""

from __future__ import annotations

from pathlib import Path

from dockd.config import for_workdir
from dockd.store import SCHEMA_VERSION
from tests.conftest import run_dockd
from tests.integration.test_store_readonly import _fingerprint, _old_database


def test_status_cli_does_not_migrate_an_old_database(tmp_path: Path) -> None:
    work = tmp_path / "w"
    db = for_workdir(work).paths.database
    db.parent.mkdir(parents=True)
    _old_database(db, SCHEMA_VERSION - 1)
    before = _fingerprint(db)
    proc = run_dockd("status", "--json", "--workdir", str(work))
    assert proc.returncode != 0
    assert "is older than this dockd" in proc.stderr
    assert _fingerprint(db) == before
