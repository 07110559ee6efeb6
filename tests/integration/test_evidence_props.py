"""Property: any single-byte change to any file dockd delivers (clip, manifest, signature,
checkpoint, timestamp token, public key, key record) makes ``verify`` fail and names that
file. Other parts extend ``FILE_KINDS`` with the files they add (revisions, audit trail)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockd.integrity.keys import key_id
from dockd.integrity.tsa import load_tsa_certs, request_token
from dockd.integrity.verify import Trust, verify_path
from tests.evidence import Dock, fixed_key, make_target
from tests.tsa_server import LoopbackTSA, start_tsa

K1 = fixed_key(b"1")


@pytest.fixture(scope="module")
def tsa() -> Iterator[LoopbackTSA]:
    t = start_tsa()
    yield t
    t.close()


@pytest.fixture(scope="module")
def base_tree(tsa: LoopbackTSA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two dockings, a key rotation between them, tokens on manifests and checkpoints."""
    root = tmp_path_factory.mktemp("evidence") / "target"
    dock = Dock(make_target(root), key=K1)
    stamp = lambda data: request_token(tsa.url, data)  # noqa: E731
    m1 = dock.dock({"a_0001.mp4": b"first clip " * 40, "a_0002.mp4": b"\x00\x01" * 30})
    dock.rotate(fixed_key(b"2"))
    dock.dock({"a_0003.mp4": b"third clip"})
    dock.checkpoint(datetime.now(UTC) - timedelta(minutes=30), token_for=stamp)
    dock.checkpoint(token_for=stamp)
    for prefix, body in zip(dock.prefixes, dock.manifests, strict=True):
        (root / prefix / "manifest.json.tsr").write_bytes(stamp(body))
    assert m1
    return root


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _trust(tsa: LoopbackTSA) -> Trust:
    from dockd.integrity.keyhistory import TrustedKey

    return Trust(anchors={key_id(K1.public_key()): TrustedKey(K1.public_key(), None, "given")},
                 tsa_roots=load_tsa_certs([tsa.ca_cert]))


FILE_KINDS = {
    "clip": lambda n: n.endswith(".mp4"),
    "manifest": lambda n: n.endswith("/manifest.json"),
    "signature": lambda n: n.endswith("/manifest.json.sig"),
    "manifest token": lambda n: n.endswith("/manifest.json.tsr"),
    "checkpoint": lambda n: n.startswith("_checkpoints/") and n.endswith(".json"),
    "checkpoint token": lambda n: n.startswith("_checkpoints/") and n.endswith(".json.tsr"),
    "public key": lambda n: n.startswith("_keys/") and n.endswith(".pub"),
    "key record": lambda n: n.startswith("_keys/") and n.endswith(".rec"),
}


def test_base_tree_verifies_and_has_every_kind(base_tree: Path, tsa: LoopbackTSA) -> None:
    r = verify_path(base_tree, trust=_trust(tsa))
    assert r.ok, r.problems
    assert any("timestamp(s) verified" in i for i in r.info)
    files = _files(base_tree)
    for kind, match in FILE_KINDS.items():
        assert any(match(f) for f in files), kind
    assert all(any(m(f) for m in FILE_KINDS.values()) for f in files)


@settings(max_examples=int(os.environ.get("DOCKD_PROP_EXAMPLES", "120")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_is_detected_and_named(base_tree: Path, tsa: LoopbackTSA,
                                                      data: st.DataObject) -> None:
    files = _files(base_tree)
    kind = data.draw(st.sampled_from(sorted(FILE_KINDS)), label="kind")
    name = data.draw(st.sampled_from([f for f in files if FILE_KINDS[kind](f)]), label="file")
    size = (base_tree / name).stat().st_size
    pos = data.draw(st.integers(0, size - 1), label="byte")
    delta = data.draw(st.integers(1, 255), label="xor")
    with tempfile.TemporaryDirectory(prefix="dockd-prop-") as tmp:
        root = Path(tmp) / "target"
        shutil.copytree(base_tree, root)
        p = root / name
        p.chmod(0o644)
        b = bytearray(p.read_bytes())
        b[pos] ^= delta
        p.write_bytes(bytes(b))
        r = verify_path(root, trust=_trust(tsa))
    assert not r.ok
    assert any(pr.startswith(name + ":") for pr in r.problems), (name, r.problems)
