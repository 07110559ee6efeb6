"""docs/security.md names, for each threat, the tests that cover it: every one must exist
(in whichever tier folder it lives)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
THREATS = ("Stolen dock", "Malicious USB device", "Insider on the dock",
           "Insider on the storage server", "Network attacker between dock and server",
           "Hostile page in the kiosk browser")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef)
            and n.name.startswith("test_")}


def test_every_threat_has_a_section_with_tests() -> None:
    text = DOC.read_text()
    sections = re.split(r"\n### \d\. ", text)
    for threat in THREATS:
        (section,) = [s for s in sections if s.startswith(threat)]
        assert re.search(r"test_\w+\.py::test_\w+", section), threat


def test_every_named_test_exists() -> None:
    refs = set(re.findall(r"(test_\w+\.py)::(test_\w+)", DOC.read_text()))
    assert len(refs) > 30
    missing = [f"{f}::{t}" for f, t in sorted(refs)
               if not any(t in _tests_in(p) for p in (ROOT / "tests").rglob(f))]
    assert not missing, missing
