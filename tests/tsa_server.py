"""A real RFC 3161 Time-Stamp Authority on loopback for tests: OpenSSL's own ``openssl ts
-reply`` behind a tiny stdlib HTTP server (127.0.0.1, port 0), with a test CA and a TSA
certificate (extendedKeyUsage = critical, timeStamping) generated in a temporary directory."""

from __future__ import annotations

import http.server
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

_CNF = """
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = {cn}
[ v3_ca ]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ v3_tsa ]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature,nonRepudiation
extendedKeyUsage = critical,timeStamping
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ tsa ]
default_tsa = tsa_config
[ tsa_config ]
dir = {dir}
serial = $dir/tsaserial
crypto_device = builtin
signer_cert = $dir/tsa.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
other_policies = 1.2.3.4.5
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_tsa_pki(d: Path, name: str = "dockd test") -> Path:
    """CA + TSA key/cert + openssl config under ``d``; returns the CA certificate path."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "tsa.cnf").write_text(_CNF.format(cn=f"{name} CA", dir=d))
    (d / "tsaserial").write_text("01\n")
    _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
             "-config", "tsa.cnf", "-extensions", "v3_ca", "-subj", f"/CN={name} CA", cwd=d)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "tsa.key", "-out", "tsa.csr", "-config", "tsa.cnf",
             "-subj", f"/CN={name} TSA", cwd=d)
    _openssl("x509", "-req", "-in", "tsa.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "tsa.pem", "-days", "30", "-extfile", "tsa.cnf",
             "-extensions", "v3_tsa", cwd=d)
    return d / "ca.pem"


@dataclass
class LoopbackTSA:
    url: str
    ca_cert: Path
    requests: list[bytes]
    server: http.server.ThreadingHTTPServer
    tmp: tempfile.TemporaryDirectory[str]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.tmp.cleanup()


def start_tsa(name: str = "dockd test") -> LoopbackTSA:
    tmp = tempfile.TemporaryDirectory(prefix="dockd-tsa-")
    d = Path(tmp.name)
    ca = make_tsa_pki(d, name)
    lock = threading.Lock()
    seen: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            n = int(self.headers.get("Content-Length", "0"))
            query = self.rfile.read(min(n, 1 << 16))
            with lock:  # openssl ts bumps its serial file: one reply at a time
                seen.append(query)
                q = d / "q.tsq"
                q.write_bytes(query)
                proc = subprocess.run(
                    ["openssl", "ts", "-reply", "-config", str(d / "tsa.cnf"),
                     "-queryfile", str(q), "-out", str(d / "r.tsr")],
                    capture_output=True, timeout=30)
                reply = (d / "r.tsr").read_bytes() if proc.returncode == 0 else b""
            if not reply:
                self.send_response(500)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="tsa").start()
    url = f"http://127.0.0.1:{server.server_address[1]}/tsa"
    return LoopbackTSA(url, ca, seen, server, tmp)
