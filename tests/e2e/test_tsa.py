"""Trusted time: a real RFC 3161 TSA on loopback (``openssl ts -reply`` with a test CA)
timestamps manifests and checkpoints; ``dockd verify --tsa-cert`` checks the tokens."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockd.config import for_workdir
from dockd.errors import VerifyError
from dockd.integrity.tsa import TimestampError, check_token, load_tsa_certs, request_token
from dockd.oneshot import ingest_tree
from tests.conftest import dockd_cmd
from tests.tsa_server import LoopbackTSA, start_tsa


@pytest.fixture(scope="module")
def tsa() -> Iterator[LoopbackTSA]:
    t = start_tsa("dockd test")
    yield t
    t.close()


@pytest.fixture(scope="module")
def other_tsa() -> Iterator[LoopbackTSA]:
    t = start_tsa("someone else")
    yield t
    t.close()


def verify(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(dockd_cmd("verify", str(target), *args), cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_token_round_trip_and_refusals(tsa: LoopbackTSA, other_tsa: LoopbackTSA) -> None:
    token = request_token(tsa.url, b"manifest bytes")
    info = check_token(token, b"manifest bytes", load_tsa_certs([tsa.ca_cert]))
    assert info.gen_time.tzinfo is not None
    with pytest.raises(VerifyError, match="for another hash"):
        check_token(token, b"other bytes", load_tsa_certs([tsa.ca_cert]))
    with pytest.raises(VerifyError, match="not from a trusted TSA"):
        check_token(token, b"manifest bytes", load_tsa_certs([other_tsa.ca_cert]))


def test_every_single_byte_change_of_a_token_is_detected(tsa: LoopbackTSA) -> None:
    token = request_token(tsa.url, b"checkpoint")
    roots = load_tsa_certs([tsa.ca_cert])
    for i in range(len(token)):
        for bit in (0x01, 0x80):
            bad = bytearray(token)
            bad[i] ^= bit
            with pytest.raises(VerifyError):
                check_token(bytes(bad), b"checkpoint", roots)


def test_unreachable_tsa_is_a_timestamp_error() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TimestampError):
        request_token(f"http://127.0.0.1:{port}/", b"x", timeout=2)


@pytest.fixture
def stamped(tsa: LoopbackTSA, workdir: Path, make_recorder) -> Path:
    base = for_workdir(workdir)
    cfg = dataclasses.replace(base, integrity=dataclasses.replace(base.integrity,
                                                                  tsa_url=tsa.url))
    res = ingest_tree(cfg, make_recorder(cfg, segments=1), create_key=True)
    assert res["ok"], res["problems"]
    return workdir / "target"


def test_pipeline_timestamps_manifests_and_checkpoints(stamped: Path, workdir: Path,
                                                       tsa: LoopbackTSA, other_tsa: LoopbackTSA,
                                                       tmp_path: Path) -> None:
    assert len(list(stamped.rglob("manifest.json.tsr"))) == 1
    cp_tokens = list((stamped / "_checkpoints").rglob("*.json.tsr"))
    assert cp_tokens
    pub = str(workdir / "keys" / "dock.pub")
    r = verify(stamped, tmp_path / "u", "--pubkey", pub, "--tsa-cert", str(tsa.ca_cert))
    assert r.returncode == 0, r.stdout
    assert "RFC 3161 timestamp(s) verified against the trusted TSA" in r.stdout
    assert "TSA time" in r.stdout  # the checkpoint's age is shown with the TSA's time
    r = verify(stamped, tmp_path / "u", "--pubkey", pub)
    assert r.returncode == 0 and "not checked: give the TSA certificate" in r.stdout
    r = verify(stamped, tmp_path / "u", "--pubkey", pub, "--tsa-cert", str(other_tsa.ca_cert))
    assert r.returncode == 1
    assert "manifest.json.tsr: timestamp token is not from a trusted TSA" in r.stdout
    assert any(line.strip().startswith("PROBLEM  _checkpoints/dock-01/") and
               ".json.tsr: timestamp token is not from a trusted TSA" in line
               for line in r.stdout.splitlines())


def test_token_of_another_file_fails(stamped: Path, workdir: Path, tsa: LoopbackTSA,
                                     tmp_path: Path) -> None:
    manifest_token = next(stamped.rglob("manifest.json.tsr"))
    cp_token = next((stamped / "_checkpoints").rglob("*.json.tsr"))
    cp_token.chmod(0o644)
    cp_token.write_bytes(manifest_token.read_bytes())
    r = verify(stamped, tmp_path / "u", "--pubkey", str(workdir / "keys" / "dock.pub"),
               "--tsa-cert", str(tsa.ca_cert))
    assert r.returncode == 1
    rel = cp_token.relative_to(stamped).as_posix()
    assert f"{rel}: timestamp token is for another hash" in r.stdout


def test_without_tsa_verify_says_so(workdir: Path, make_recorder, tmp_path: Path) -> None:
    cfg = for_workdir(workdir)
    assert ingest_tree(cfg, make_recorder(cfg, segments=1), create_key=True)["ok"]
    target = workdir / "target"
    assert not list(target.rglob("*.tsr"))
    r = verify(target, tmp_path / "u", "--pubkey", str(workdir / "keys" / "dock.pub"))
    assert r.returncode == 0, r.stdout
    assert "no trusted timestamps (the dock had no TSA configured)" in r.stdout


def test_documented_openssl_check_of_a_token(stamped: Path, tsa: LoopbackTSA) -> None:
    """docs/verify.md: a token can be checked with OpenSSL alone."""
    d = next(stamped.rglob("manifest.json.tsr")).parent
    r = subprocess.run(["openssl", "ts", "-verify", "-data", "manifest.json", "-in",
                        "manifest.json.tsr", "-CAfile", str(tsa.ca_cert)], cwd=d,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Verification: OK" in r.stdout, r.stderr
    r = subprocess.run(["openssl", "ts", "-reply", "-in", "manifest.json.tsr", "-text"],
                       cwd=d, capture_output=True, text=True, timeout=60)
    import hashlib

    digest = hashlib.sha256((d / "manifest.json").read_bytes()).hexdigest()
    lines = r.stdout.split("Message data:")[1].splitlines()[1:3]  # "0000 - 01 5a bd ..."
    shown = "".join(line.split(" - ", 1)[1][:47].replace("-", " ").replace(" ", "")
                    for line in lines)
    assert r.returncode == 0 and shown.lower() == digest
