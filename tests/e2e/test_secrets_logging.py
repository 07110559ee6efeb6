"""No credential in any log line (issue 11): a real `dockd ingest -v` (DEBUG) delivering to a
moto S3 server (with a session token) and a real OpenSSH SFTP server (encrypted key, its
passphrase and the web token passed as systemd credentials) on 127.0.0.1; every line the
run writes is searched for every secret used."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_delivery_pipeline import KEY_ID, SECRET, Moto
from tests.sshd import SshdMissing, SshdServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SESSION_TOKEN = "FwoGZXIvYXdzEJr//////////wEaDSessionTokenSecretValue" + uuid.uuid4().hex
PASSPHRASE = "correct horse battery " + uuid.uuid4().hex[:12]
WEB_TOKEN = "webtoken-" + uuid.uuid4().hex


@pytest.fixture
def moto(monkeypatch):
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    m = Moto()
    m.start()
    yield m
    m.stop()


def _encrypted_key(path: Path) -> None:
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        pytest.skip("ssh-keygen is not installed")
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", PASSPHRASE, "-C", "dockd-test-user",
                    "-f", str(path)], check=True, capture_output=True, timeout=30)


def test_debug_run_to_s3_and_sftp_logs_no_credential(tmp_path, make_recorder, moto) -> None:
    sshd_dir = tmp_path / "sshd"
    sshd_dir.mkdir()
    _encrypted_key(sshd_dir / "id_ed25519")  # SshdServer authorises the key it finds there
    try:
        server = SshdServer(sshd_dir)
    except SshdMissing as exc:
        pytest.skip(str(exc))
    bucket = f"evidence-{uuid.uuid4().hex[:10]}"
    moto.client().create_bucket(Bucket=bucket)
    creds = tmp_path / "etc" / "s3.ini"
    creds.parent.mkdir()
    creds.write_text(f"[default]\naws_access_key_id = {KEY_ID}\n"
                     f"aws_secret_access_key = {SECRET}\naws_session_token = {SESSION_TOKEN}\n")
    creds.chmod(0o600)
    credentials = tmp_path / "credentials"  # what systemd's LoadCredential= would set up
    credentials.mkdir(mode=0o700)
    (credentials / "web.token").write_text(WEB_TOKEN + "\n")
    (credentials / "sftp.vault.passphrase").write_text(PASSPHRASE + "\n")
    for f in credentials.iterdir():
        f.chmod(0o400)
    work = tmp_path / "w"
    config = tmp_path / "etc" / "config.toml"
    config.write_text(f"""
[logging]
level = "DEBUG"

[[targets]]
name = "primary"
kind = "local"
path = "{work}/target"

[[targets]]
name = "offsite"
kind = "s3"
endpoint_url = "{moto.url}"
bucket = "{bucket}"
credentials_file = "{creds}"

[[targets]]
name = "vault"
kind = "sftp"
host = "{server.host}"
port = {server.port}
user = "{server.user}"
key_file = "{server.client_key}"
known_hosts = "{server.known_hosts}"
path = "{server.root}"
""")
    config.chmod(0o600)
    rec = make_recorder(segments=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(CREDENTIALS_DIRECTORY=str(credentials), PYTHONUNBUFFERED="1")
    server.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "dockd.cli", "ingest", "-v", "--config",
                               str(config), "--workdir", str(work), str(rec)],
                              capture_output=True, text=True, timeout=180, env=env)
    finally:
        server.stop()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    lines = out.splitlines()
    # the run really was at DEBUG, through both remote targets, with the encrypted key
    assert any(" DEBUG " in ln for ln in lines), out[-2000:]
    assert len(list(server.root.rglob("*.MP4"))) == 2
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert sum(k.endswith(".MP4") for k in keys) == 2
    secrets = {"S3 secret key": SECRET, "S3 session token": SESSION_TOKEN, "S3 key id": KEY_ID,
               "SFTP key passphrase": PASSPHRASE, "web token": WEB_TOKEN,
               "secret key, URL-quoted": SECRET.replace("/", "%2F")}
    leaks = [f"{what}: {ln[:300]}" for ln in lines for what, s in secrets.items() if s in ln]
    assert not leaks, "\n".join(leaks[:10])
    key_text = (sshd_dir / "id_ed25519").read_text()
    body = "".join(key_text.splitlines()[1:-1])
    assert body[:40] not in out  # not even the (encrypted) private key
