"""Identity binding (issue 9 item 7): the USB serial udev reads is recorded in the signed
manifest beside the device-info serial; a mismatch, a change against the recorder's
history or a serial outside the allow-list's pattern is a finding the supervisor sees."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dockd.config import AllowConfig, for_workdir
from dockd.daemon import build_pipeline
from dockd.ingest.probe import Prober
from dockd.integrity.identity import identity_findings
from dockd.integrity.keys import generate_key
from dockd.status.report import render_report, report_data
from dockd.store import State

HINTS = {"ID_VENDOR_ID": "1d6b", "ID_MODEL_ID": "0104", "ID_BUS": "usb"}
ALLOW = (AllowConfig(vendor_id="1d6b", model_id="0104", serial_pattern="A[0-9]{7}"),)


def kinds(found: list) -> list[str]:
    return [f.kind for f in found]


def test_pure_rules() -> None:
    assert identity_findings("A1234567", None) == []  # nothing to compare
    assert identity_findings("A1234567", " a1234567 ") == []  # case and blanks aside
    assert identity_findings("A1234567", "A1234567", hints=HINTS, allow=ALLOW) == []
    assert kinds(identity_findings("A1234567", "A7654321")) == ["identity_mismatch"]
    assert kinds(identity_findings("A1234567", "A1234567",
                                   usb_serials_before=["A1234567", "A0000001"])) == [
        "identity_history"]
    assert kinds(identity_findings("A1234567", "A1234567",
                                   info_serials_before=["B0000001"])) == ["identity_history"]
    found = identity_findings("B1234567", "A1234567", hints=HINTS, allow=ALLOW)
    assert kinds(found) == ["identity_mismatch", "identity_not_allowed"]
    assert "device-info serial 'B1234567'" in found[1].message
    # a pattern for another model does not apply
    assert identity_findings("x", "x", hints={"ID_VENDOR_ID": "ffff"}, allow=ALLOW) == []


def test_usb_serial_in_manifest_and_findings_in_report(tmp_path: Path, make_recorder) -> None:
    cfg = for_workdir(tmp_path / "w")
    cfg = dataclasses.replace(cfg, allow=ALLOW)
    generate_key(cfg.paths.key_file, cfg.paths.public_key_file)
    rec = make_recorder(cfg, segments=1, serial="A1234567")
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        first = pipe.run_docking("port-01", rec, {**HINTS, "ID_SERIAL_SHORT": "A1234567"})
        # the same device-info serial now arrives on another USB device
        second = pipe.run_docking("port-02", rec, {**HINTS, "ID_SERIAL_SHORT": "A7654321"})
        manifests = {r["docking_id"]: json.loads(bytes(r["manifest"])) for r in
                     st.query("SELECT docking_id, manifest FROM manifests")}
        data = report_data(st)
    m1, m2 = manifests[first.docking_id], manifests[second.docking_id]
    assert m1["recorder"]["usb_serial"] == "A1234567" and m1["recorder"]["serial"] == "A1234567"
    assert not [f for f in m1["findings"] if f["kind"].startswith("identity_")]
    assert m2["recorder"]["usb_serial"] == "A7654321"
    assert {f["kind"] for f in m2["findings"]} >= {"identity_mismatch", "identity_history"}
    by_id = {d["docking_id"]: d for d in data["dockings"]}
    shown = [f["kind"] for f in by_id[second.docking_id]["findings"]]
    assert "identity_mismatch" in shown and "identity_history" in shown
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_report(data))
    assert "finding: identity_history" in console.export_text()
