"""Disposable swtpm instances for integration tests.

Provision once, copy per test (TPM-NOTES §1, §10):

* :func:`provision_template` runs ``swtpm_setup`` with a private test CA made
  here with ``cryptography`` (EC P-256). The result is a template state file
  (``tpm2-00.permall``, ~6 KB: seeds, NV with the EK certificates, persistent
  EKs) and a trust directory holding only that CA's certificate. It costs
  about 0.65-1.2 s, so call it once per session and share the result.
* :meth:`SwtpmProcess.start` copies the template into a fresh state directory
  and starts its own ``swtpm`` on free loopback ports (~4 ms).

Every copy of one template has the same seeds, hence the same EK, EK
certificate, SRK and AK. For "a different machine" either provision a second
template (another CA name gives another CA as well), or change a seed on a
running copy with :func:`change_endorsement_seed` (new EK, so the EK no longer
matches its certificate) or :func:`clear_owner` (TPM2_Clear: new storage seed,
so the SRK changes and SRK-parented blobs from other copies no longer load).

This module imports neither pytest nor tpm2_pytss at import time; the pytest
fixtures live in ``tests.support.swtpm_fixtures``. When swtpm is missing,
:func:`require_swtpm` raises :class:`SwtpmUnavailable`, which the fixtures turn
into a skip.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.ports import free_port_pair

HOST = "127.0.0.1"
STATE_FILE = "tpm2-00.permall"
CA_CERT_FILE = "issuercert.pem"
CA_KEY_FILE = "signkey.pem"
DEFAULT_CA_NAME = "attestgate-test-ca"

# -- timing (one commented block, STYLE §10) ---------------------------------------
# swtpm answers on its control port ~4 ms after Popen; 5 s only bounds a hung start.
READY_TIMEOUT_S = 5.0
READY_POLL_S = 0.001
# SIGTERM makes swtpm write its state and exit in ~1 ms; then escalate to SIGKILL.
STOP_TIMEOUT_S = 5.0
# swtpm_setup takes ~0.65 s (up to 1.2 s the first time); 60 s only bounds a hang.
SETUP_TIMEOUT_S = 60.0
# A free port can be taken between finding it and swtpm binding it: retry.
START_ATTEMPTS = 5


class SwtpmUnavailable(RuntimeError):
    """swtpm or swtpm_setup is not installed; integration tests should skip."""


class SwtpmError(RuntimeError):
    """swtpm or swtpm_setup failed; the message carries the tail of its log."""


def require_swtpm() -> None:
    """Raise SwtpmUnavailable unless swtpm, swtpm_setup and swtpm_localca are on PATH."""
    missing = [t for t in ("swtpm", "swtpm_setup", "swtpm_localca") if shutil.which(t) is None]
    if missing:
        raise SwtpmUnavailable(f"not installed: {', '.join(missing)} (apt-get install swtpm-tools)")


@dataclass(frozen=True)
class TemplateTpm:
    """A provisioned TPM state to copy, and the CA that signed its EK certificate.

    ``trust_dir`` holds only ``ca_cert_path`` (PEM): point an attestor's
    "trusted EK CA directory" there. ``ca_dir`` also holds the CA private key
    and the swtpm_localca configuration; nothing but this module should read it.
    """

    root: Path
    ca_name: str
    state_dir: Path
    ca_dir: Path
    trust_dir: Path
    ca_cert_path: Path

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    def ca_certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())


def _write_ca(ca_dir: Path, ca_name: str) -> x509.Certificate:
    """Create a self-signed EC P-256 CA as swtpm_localca expects it (TPM-NOTES §1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "attestgate tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, ca_name),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        # The EK certificates swtpm_localca issues run to 9999-12-31; match them.
        .not_valid_after(datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_path = ca_dir / CA_KEY_FILE
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
    (ca_dir / CA_CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def _write_localca_config(ca_dir: Path) -> Path:
    """Write swtpm_setup.conf and the swtpm_localca files; return swtpm_setup.conf's path.

    A private config keeps swtpm_setup away from /etc and /var/lib/swtpm-localca.
    """
    d = ca_dir.resolve()  # swtpm_localca wants absolute paths
    (d / "swtpm-localca.conf").write_text(
        f"statedir = {d}\n"
        f"signingkey = {d / CA_KEY_FILE}\n"
        f"issuercert = {d / CA_CERT_FILE}\n"
        f"certserial = {d / 'certserial'}\n"
    )
    (d / "swtpm-localca.options").write_text(
        "--platform-manufacturer attestgate\n--platform-version 2.1\n--platform-model test\n"
    )
    setup_conf = d / "swtpm_setup.conf"
    setup_conf.write_text(
        f"create_certs_tool = {shutil.which('swtpm_localca')}\n"
        f"create_certs_tool_config = {d / 'swtpm-localca.conf'}\n"
        f"create_certs_tool_options = {d / 'swtpm-localca.options'}\n"
        "active_pcr_banks = sha256\n"
    )
    return setup_conf


def provision_template(directory: Path, ca_name: str = DEFAULT_CA_NAME, *,
                       rsa_keysize: int = 2048) -> TemplateTpm:
    """Run swtpm_setup once into ``directory/<ca_name>`` with a fresh CA called ``ca_name``.

    ``directory/<ca_name>`` must not exist yet. Slow (~0.65-1.2 s): call it
    once per test session per CA and share the result. Two calls give two
    different TPMs (different seeds and EKs); with different ``ca_name``
    values their EK certificates chain to different CAs, which is what an
    "unknown CA" test needs.

    ``rsa_keysize=3072`` makes the RSA EK a 3072-bit one: swtpm_setup 0.7.1 then
    creates the H-6 "EK-HIGH-RSA3072" EK (persistent 0x8101001C, certificate in NV
    0x01C0001C) instead of the RSA-2048 one; the ECC P-384 EK is there either way.

    Raises SwtpmUnavailable if swtpm is not installed, SwtpmError if setup fails.
    """
    require_swtpm()
    root = directory / ca_name
    ca_dir = root / "ca"
    state_dir = root / "state"
    trust_dir = root / "trust"
    for d in (ca_dir, state_dir, trust_dir):
        d.mkdir(parents=True)
    _write_ca(ca_dir, ca_name)
    ca_cert_path = trust_dir / f"{ca_name}.pem"
    shutil.copyfile(ca_dir / CA_CERT_FILE, ca_cert_path)
    setup_conf = _write_localca_config(ca_dir)

    log_path = root / "swtpm_setup.log"
    cmd = [
        "swtpm_setup",
        "--tpm2",
        "--tpmstate", str(state_dir),
        "--config", str(setup_conf),
        "--create-ek-cert",
        "--create-platform-cert",
        "--lock-nvram",
        "--logfile", str(log_path),
        *(["--rsa-keysize", str(rsa_keysize)] if rsa_keysize != 2048 else []),
    ]  # fmt: skip
    # swtpm_setup looks for per-user config under XDG_CONFIG_HOME only when
    # --config is absent; pin it anyway so nothing outside `root` is touched.
    env = {**os.environ, "XDG_CONFIG_HOME": str(root)}
    with (root / "swtpm_setup.out").open("wb") as out:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=SETUP_TIMEOUT_S,
            check=False,
        )
    if proc.returncode != 0 or not (state_dir / STATE_FILE).is_file():
        raise SwtpmError(
            f"swtpm_setup exited {proc.returncode}:\n"
            + _tail(log_path)
            + _tail(root / "swtpm_setup.out")
        )
    return TemplateTpm(
        root=root,
        ca_name=ca_name,
        state_dir=state_dir,
        ca_dir=ca_dir,
        trust_dir=trust_dir,
        ca_cert_path=ca_cert_path,
    )


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


class SwtpmProcess:
    """One running swtpm over TCP on 127.0.0.1, owning its own state directory.

    Use :meth:`start`; stop it with :meth:`stop` (or use it as a context
    manager). Connect with ``.tcti`` (tpm2-tools notation). Each instance
    allows only 3 loaded objects and 3 sessions, shared by every client.
    """

    def __init__(self, state_dir: Path, log_path: Path, *, log_commands: bool = False) -> None:
        self.state_dir = state_dir
        self.log_path = log_path
        self.log_commands = log_commands
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------

    @classmethod
    def start(cls, state_dir: Path, template: TemplateTpm | None = None, *,
              log_commands: bool = False) -> Self:
        """Start swtpm on ``state_dir`` (created if missing) and wait until it answers.

        With ``template``, its state file is copied in first, so the new TPM has
        the template's EK, certificates and seeds. Without one, swtpm starts
        unprovisioned (no EK, all four PCR banks active). The log goes to
        ``state_dir/swtpm.log``; with ``log_commands`` swtpm writes every command to
        ``state_dir/commands.log``, for :meth:`commands`.
        """
        require_swtpm()
        state_dir.mkdir(parents=True, exist_ok=True)
        if template is not None:
            shutil.copyfile(template.state_file, state_dir / STATE_FILE)
        tpm = cls(state_dir, state_dir / "swtpm.log", log_commands=log_commands)
        tpm._launch(port=None)
        return tpm

    def stop(self) -> None:
        """Terminate this swtpm (by its PID) and wait for it; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same state: a reboot.

        PCRs go back to their boot values, resetCount goes up by one; NV,
        persistent objects and seeds stay. The port is kept if it is still
        free, so ``.tcti`` usually stays the same; re-read it anyway.
        """
        self.stop()
        self._launch(port=self.port)

    @property
    def commands_path(self) -> Path:
        return self.state_dir / "commands.log"

    def commands(self) -> list[int]:
        """The command code of every TPM command received so far (``log_commands`` only),
        in order: swtpm logs each command's bytes, the code at offset 6."""
        if not self.log_commands:
            raise SwtpmError("started without log_commands")
        lines = self.commands_path.read_text(errors="replace").splitlines()
        return [int("".join(lines[n + 1].split()[6:10]), 16)
                for n, line in enumerate(lines[:-1]) if line.strip().startswith("SWTPM_IO_Read:")]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addressing --------------------------------------------------------------

    @property
    def ctrl_port(self) -> int:
        # tcti-swtpm derives the control port as port + 1.
        return self.port + 1

    @property
    def tcti(self) -> str:
        """TCTI string in tpm2-tools notation, e.g. ``swtpm:host=127.0.0.1,port=P``."""
        return f"swtpm:host={HOST},port={self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- internals ---------------------------------------------------------------

    def _launch(self, port: int | None) -> None:
        last_error = ""
        for attempt in range(START_ATTEMPTS):
            p = port if (port is not None and attempt == 0) else free_port_pair()
            proc = self._spawn(p)
            ok, last_error = self._wait_ready(proc, p)
            if ok:
                self._proc = proc
                self.port = p
                return
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        raise SwtpmError(f"swtpm did not start after {START_ATTEMPTS} attempts: {last_error}")

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        cmd = [
            "swtpm", "socket", "--tpm2",
            "--tpmstate", f"dir={self.state_dir}",
            "--server", f"type=tcp,port={port},bindaddr={HOST}",
            "--ctrl", f"type=tcp,port={port + 1},bindaddr={HOST}",
            "--flags", "not-need-init,startup-clear",
        ]  # fmt: skip
        if self.log_commands:
            cmd += ["--log", f"file={self.commands_path},level=20"]
        # stderr goes to a file, never to an unread PIPE: a full pipe blocks swtpm.
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a ^C in pytest should not hit swtpm first
            )

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> tuple[bool, str]:
        """Poll until swtpm accepts on its control port; (False, why) if it exits or hangs."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False, f"exited {proc.returncode}: {_tail(self.log_path, 500)}"
            try:
                # Both ports: swtpm binds the control port first, and a TCTI opened before
                # the data port listens fails with "IO failure" (seen on a loaded machine).
                for p in (port + 1, port):
                    with socket.create_connection((HOST, p), timeout=0.5):
                        pass
            except OSError:
                time.sleep(READY_POLL_S)
                continue
            # Someone else may own the port while our swtpm failed to bind it.
            if proc.poll() is None:
                return True, ""
        return False, "timed out waiting for the control port"


def _esapi(tcti: str):  # type: ignore[no-untyped-def]  # tpm2_pytss is untyped
    os.environ.setdefault("TSS2_LOG", "all+none")
    from tpm2_pytss import ESAPI  # noqa: PLC0415  # tests only; keep import cost off this module

    return ESAPI(tcti)


def change_endorsement_seed(tcti: str) -> None:
    """TPM2_ChangeEPS: a new endorsement seed, so a new EK that no longer matches its cert.

    Also flushes endorsement-hierarchy objects, including the persistent EKs.
    """
    from tpm2_pytss.constants import ESYS_TR  # noqa: PLC0415

    with _esapi(tcti) as ectx:
        ectx.change_eps(ESYS_TR.PLATFORM)


def clear_owner(tcti: str) -> None:
    """TPM2_Clear (platform auth): a new storage seed, so a new SRK.

    Blobs parented by the old SRK no longer load. The endorsement seed and the
    EK certificates in NV stay; persistent objects (including the persistent
    EKs) are flushed.
    """
    from tpm2_pytss.constants import ESYS_TR  # noqa: PLC0415

    with _esapi(tcti) as ectx:
        ectx.clear(ESYS_TR.PLATFORM)
