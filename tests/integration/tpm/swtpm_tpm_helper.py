"""A minimal swtpm for the TPM verification tests: private EK CA, provisioning, start/stop.

Kept local to these tests on purpose (the shared fixture lives elsewhere); every swtpm
gets its own state directory and ports and is stopped by its own PID.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.ports import free_port_pair

SWTPM = shutil.which("swtpm")
SWTPM_SETUP = shutil.which("swtpm_setup")
SWTPM_LOCALCA = shutil.which("swtpm_localca")


def available() -> bool:
    return bool(SWTPM and SWTPM_SETUP and SWTPM_LOCALCA)


def make_ca(ca_dir: Path) -> None:
    """A self-signed EC P-256 CA that swtpm_localca signs the EK certs with."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attestgate test EK CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    ca_dir.mkdir(parents=True, exist_ok=True)
    (ca_dir / "signkey.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (ca_dir / "issuercert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (ca_dir / "swtpm_setup.conf").write_text(
        f"create_certs_tool = {SWTPM_LOCALCA}\n"
        f"create_certs_tool_config = {ca_dir}/swtpm-localca.conf\n"
        f"create_certs_tool_options = {ca_dir}/swtpm-localca.options\n"
        "active_pcr_banks = sha256\n")
    (ca_dir / "swtpm-localca.conf").write_text(
        f"statedir = {ca_dir}\nsigningkey = {ca_dir}/signkey.pem\n"
        f"issuercert = {ca_dir}/issuercert.pem\ncertserial = {ca_dir}/certserial\n")
    (ca_dir / "swtpm-localca.options").write_text(
        "--platform-manufacturer attestgate\n--platform-version 2.1\n--platform-model test\n")


def provision(state_dir: Path, ca_dir: Path) -> None:
    """swtpm_setup with EK certificates (RSA-2048 and ECC P-384) signed by the test CA."""
    state_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(SWTPM_SETUP), "--tpm2", "--tpmstate", str(state_dir), "--config",
         str(ca_dir / "swtpm_setup.conf"), "--create-ek-cert", "--lock-nvram"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


@dataclass
class Swtpm:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(state_dir: Path) -> Swtpm:
    """Start swtpm on a state directory (copied from a provisioned one by the caller)."""
    for _ in range(5):
        port = free_port_pair()
        proc = subprocess.Popen(
            [str(SWTPM), "socket", "--tpm2", "--tpmstate", f"dir={state_dir}",
             "--server", f"type=tcp,port={port}", "--ctrl", f"type=tcp,port={port + 1}",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                for p in (port + 1, port):  # both: the data port may listen last
                    socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                return Swtpm(proc, port)
            except OSError:
                time.sleep(0.01)
        Swtpm(proc, port).stop()  # lost a port race or failed to start: try new ports
    raise RuntimeError("swtpm did not start")


def copy_state(template: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template / "tpm2-00.permall", dest / "tpm2-00.permall")
    return dest


os.environ.setdefault("TSS2_LOG", "all+none")  # expected TPM failures stay off stderr
