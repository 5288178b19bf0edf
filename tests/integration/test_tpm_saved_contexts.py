"""Object contexts carried across processes (``Tpm.keep_contexts``, client/tpm/saved.py) and
quotes without a PCR_Read, against a real swtpm that logs every command it receives.

A new ``Tpm`` is what a new ``attestgate`` process has: nothing loaded, nothing in memory;
only the file in the home carries over.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from tpm2_pytss.constants import TPM2_CC
from tpm2_pytss.types import TPMS_ATTEST

from client.tpm import MAX_LOADED, KeyBlob, Tpm
from client.tpm import saved as saved_file
from client.tpm.common import AK_TEMPLATE, SRK_TEMPLATE
from shared.errors import AttestgateError, ErrorCode
from tests.integration.test_tpm_adapter import (
    NONCE,
    SEL8,
    loaded_counts,
    make_credential,
    name_of,
    verify_ecdsa,
    wrap_psk,
)
from tests.support.swtpm import SwtpmProcess, TemplateTpm

pytestmark = pytest.mark.integration

SEALED_SECRET = b"n" * 32
HMAC_MESSAGE = b"e_i and e_r" * 6
POST = b"attestgate/1 post|hello board"


@pytest.fixture
def swtpm_logged(tmp_path: Path, swtpm_template: TemplateTpm) -> Iterator[SwtpmProcess]:
    with SwtpmProcess.start(tmp_path / "tpm", swtpm_template, log_commands=True) as tpm:
        yield tpm


class Device:
    """What an enrolled client keeps: its blobs (state.json) and its home."""

    def __init__(self, tcti: str, home: Path) -> None:
        self.contexts = home / "tpm-contexts.bin"
        home.mkdir(mode=0o700, exist_ok=True)
        self.psk = os.urandom(32)
        with Tpm(tcti) as tpm:
            self.hmac_key = tpm.import_hmac_key(*wrap_psk(tpm.srk_public(), self.psk))
            self.post_key = tpm.create_post_key()
            self.sealed = tpm.seal(SEALED_SECRET, "sha256:16")
            self.ak_public = tpm.ak_public()

    def connect_shaped(self, tcti: str) -> None:
        """A new process: what `attestgate post` asks of the TPM, checked like a server."""
        with Tpm(tcti) as tpm:
            tpm.keep_contexts(self.contexts)
            assert tpm.unseal(self.sealed, "sha256:16", reuse=True) == SEALED_SECRET
            assert tpm.hmac(self.hmac_key, HMAC_MESSAGE) == hmac.new(
                self.psk, HMAC_MESSAGE, "sha256").digest()
            quote = tpm.quote(NONCE, SEL8)
            verify_ecdsa(self.ak_public, quote.signature, quote.attest)
            assert quoted_digest(quote.attest) == hashlib.sha256(
                b"".join(v for _, v in quote.pcr_values)).digest()
            post_key = KeyBlob(self.post_key.private, self.post_key.public)
            signature = tpm.sign(post_key, hashlib.sha256(POST).digest())
            verify_ecdsa(self.post_key.public, signature, POST)


def quoted_digest(attest: bytes) -> bytes:
    parsed, _ = TPMS_ATTEST.unmarshal(attest)
    return bytes(parsed.attested.quote.pcrDigest)


@pytest.fixture
def device(swtpm_logged: SwtpmProcess, tmp_path: Path) -> Device:
    return Device(swtpm_logged.tcti, tmp_path / "home")


def commands_of(swtpm: SwtpmProcess, run: object) -> list[int]:
    before = len(swtpm.commands())
    assert callable(run)
    run()
    return swtpm.commands()[before:]


CREATE_OR_LOAD = {TPM2_CC.CreatePrimary, TPM2_CC.Load}


def test_a_new_process_loads_saved_contexts_instead_of_creating(
        swtpm_logged: SwtpmProcess, device: Device) -> None:
    first = commands_of(swtpm_logged, lambda: device.connect_shaped(swtpm_logged.tcti))
    assert first.count(TPM2_CC.CreatePrimary) == 2  # SRK, AK
    assert first.count(TPM2_CC.Load) == 3  # sealed key, HMAC key, post key
    assert stat.S_IMODE(device.contexts.stat().st_mode) == 0o600
    written = device.contexts.read_bytes()

    second = commands_of(swtpm_logged, lambda: device.connect_shaped(swtpm_logged.tcti))
    assert not CREATE_OR_LOAD & set(second)
    assert second.count(TPM2_CC.ContextLoad) == 4  # sealed key, HMAC key, AK, post key
    assert TPM2_CC.PCR_Read not in second  # the saved values hash to the quote's digest
    assert device.contexts.read_bytes() == written  # nothing changed: not rewritten
    assert loaded_counts(swtpm_logged.tcti) == (0, 0)


def test_a_thousand_new_processes_on_saved_contexts_leave_nothing_loaded(
        swtpm_logged: SwtpmProcess, device: Device) -> None:
    tcti = swtpm_logged.tcti
    device.connect_shaped(tcti)
    for n in range(1000):
        with Tpm(tcti) as tpm:
            tpm.keep_contexts(device.contexts)
            tpm.unseal(device.sealed, "sha256:16", reuse=True)
            tpm.hmac(device.hmac_key, HMAC_MESSAGE)
            tpm.quote(NONCE, SEL8)
            tpm.sign(device.post_key, bytes(32))
            if n % 50 == 0:
                objects, sessions = loaded_counts(tcti)
                assert 0 < objects <= MAX_LOADED
                assert sessions == 0
    assert loaded_counts(tcti) == (0, 0)
    assert TPM2_CC.CreatePrimary not in swtpm_logged.commands()[-40:]


def test_after_a_tpm_reset_the_contexts_fail_to_load_and_are_made_again(
        swtpm_logged: SwtpmProcess, device: Device) -> None:
    device.connect_shaped(swtpm_logged.tcti)
    stale = device.contexts.read_bytes()
    swtpm_logged.restart()  # TPM Reset: saved object contexts no longer load
    after = commands_of(swtpm_logged, lambda: device.connect_shaped(swtpm_logged.tcti))
    assert after.count(TPM2_CC.ContextLoad) == 1  # the first one fails: all are dropped
    assert after.count(TPM2_CC.CreatePrimary) == 2
    assert device.contexts.read_bytes() != stale  # rewritten with the new contexts
    again = commands_of(swtpm_logged, lambda: device.connect_shaped(swtpm_logged.tcti))
    assert not CREATE_OR_LOAD & set(again)
    assert loaded_counts(swtpm_logged.tcti) == (0, 0)


def _damaged(data: bytes, how: str) -> bytes:
    entries = saved_file.decode(data)
    if how == "truncated":
        return data[: len(data) // 2]
    if how == "garbage":
        return os.urandom(len(data))
    if how == "empty":
        return b""
    if how == "bit flipped in every context":  # the TPM's MAC no longer matches
        for key, value in entries.items():
            if key[0] == saved_file.KIND_CONTEXT:
                entries[key] = value[:60] + bytes([value[60] ^ 1]) + value[61:]
        return saved_file.encode(entries)
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "bit flipped in every context"])
def test_a_damaged_file_falls_back_silently(
        swtpm_logged: SwtpmProcess, device: Device, how: str) -> None:
    device.connect_shaped(swtpm_logged.tcti)
    device.contexts.write_bytes(_damaged(device.contexts.read_bytes(), how))
    after = commands_of(swtpm_logged, lambda: device.connect_shaped(swtpm_logged.tcti))
    assert after.count(TPM2_CC.CreatePrimary) == 2
    saved_file.decode(device.contexts.read_bytes())  # rewritten whole
    again = commands_of(swtpm_logged, lambda: device.connect_shaped(swtpm_logged.tcti))
    assert not CREATE_OR_LOAD & set(again)
    assert loaded_counts(swtpm_logged.tcti) == (0, 0)


def test_contexts_swapped_between_objects_are_not_used(
        swtpm_logged: SwtpmProcess, device: Device) -> None:
    """Someone who can write the home swaps saved contexts (all made by this TPM): the
    TPM says what was loaded is not the expected object, so none is used."""
    device.connect_shaped(swtpm_logged.tcti)
    entries = saved_file.decode(device.contexts.read_bytes())
    contexts = [k for k in entries if k[0] == saved_file.KIND_CONTEXT]
    values = [entries[k] for k in contexts]
    for key, value in zip(contexts, values[1:] + values[:1], strict=True):
        entries[key] = value  # each id now holds another object's context
    device.contexts.write_bytes(saved_file.encode(entries))
    after = commands_of(swtpm_logged, lambda: device.connect_shaped(swtpm_logged.tcti))
    assert after.count(TPM2_CC.CreatePrimary) == 2
    assert loaded_counts(swtpm_logged.tcti) == (0, 0)


def test_contexts_of_another_tpm_do_not_load(
        tmp_path: Path, swtpm_logged: SwtpmProcess, swtpm_template_other_ca: TemplateTpm,
        device: Device) -> None:
    with SwtpmProcess.start(tmp_path / "other", swtpm_template_other_ca) as other:
        other_device = Device(other.tcti, tmp_path / "other-home")
        other_device.connect_shaped(other.tcti)
    device.contexts.write_bytes(other_device.contexts.read_bytes())  # a copied home
    after = commands_of(swtpm_logged, lambda: device.connect_shaped(swtpm_logged.tcti))
    assert after.count(TPM2_CC.CreatePrimary) == 2
    assert loaded_counts(swtpm_logged.tcti) == (0, 0)


def test_a_pcr_extended_between_processes_is_read_and_quoted_as_it_is(
        swtpm_logged: SwtpmProcess, device: Device) -> None:
    tcti = swtpm_logged.tcti
    device.connect_shaped(tcti)
    with Tpm(tcti) as tpm:
        tpm.extend_pcr(7, b"a new boot component")
        now = tpm.pcr_read(SEL8)
    with Tpm(tcti) as tpm:
        tpm.keep_contexts(device.contexts)
        sent = commands_of(swtpm_logged, lambda: tpm.quote(NONCE, SEL8))
        quote = tpm.quote(NONCE, SEL8)
    assert TPM2_CC.PCR_Read in sent  # the saved values no longer match: read
    assert quote.pcrs() == now
    assert quoted_digest(quote.attest) == hashlib.sha256(b"".join(now.values())).digest()
    verify_ecdsa(device.ak_public, quote.signature, quote.attest)


def test_a_pcr_extended_between_quotes_in_one_process(swtpm_logged: SwtpmProcess) -> None:
    with Tpm(swtpm_logged.tcti) as tpm:
        first = tpm.quote(NONCE, SEL8)
        again = commands_of(swtpm_logged, lambda: tpm.quote(NONCE, SEL8))
        assert TPM2_CC.PCR_Read not in again
        tpm.extend_pcr(0, b"x")
        changed = tpm.quote(NONCE, SEL8)
    assert changed.pcrs() != first.pcrs()
    assert changed.pcrs()[0] == hashlib.sha256(
        first.pcrs()[0] + hashlib.sha256(b"x").digest()).digest()
    assert quoted_digest(changed.attest) == hashlib.sha256(
        b"".join(v for _, v in changed.pcr_values)).digest()


def test_an_unwritable_home_costs_only_time(swtpm_logged: SwtpmProcess, device: Device) -> None:
    device.contexts.mkdir()  # the file's place is taken: it cannot be written
    device.connect_shaped(swtpm_logged.tcti)
    device.connect_shaped(swtpm_logged.tcti)
    assert device.contexts.is_dir()
    assert not list(device.contexts.parent.glob("*.tmp"))


@pytest.mark.parametrize("other", ["post key", "HMAC key", "sealed key", "SRK"])
def test_an_ak_context_holding_another_object_is_not_signed_with(
        swtpm_logged: SwtpmProcess, device: Device, other: str) -> None:
    """The AK is not asked with ReadPublic: the qualifiedSigner of what it signed tells
    (or the TPM refuses to sign with it); either way the AK is created and used instead."""
    device.connect_shaped(swtpm_logged.tcti)
    entries = saved_file.decode(device.contexts.read_bytes())
    source = {"post key": saved_file.blob_id(device.post_key.private, device.post_key.public),
              "HMAC key": saved_file.blob_id(device.hmac_key.private, device.hmac_key.public),
              "sealed key": saved_file.blob_id(device.sealed.private, device.sealed.public),
              "SRK": saved_file.primary_id("srk", SRK_TEMPLATE)}[other]
    ak_id = (saved_file.KIND_CONTEXT, saved_file.primary_id("ak", AK_TEMPLATE))
    entries[ak_id] = entries[(saved_file.KIND_CONTEXT, source)]
    device.contexts.write_bytes(saved_file.encode(entries))
    with Tpm(swtpm_logged.tcti) as tpm:
        tpm.keep_contexts(device.contexts)
        sent = commands_of(swtpm_logged, lambda: tpm.quote(NONCE, SEL8))
        quote = tpm.quote(NONCE, SEL8)
        verify_ecdsa(device.ak_public, quote.signature, quote.attest)
        assert tpm.certify_srk(NONCE)  # the created AK now
        assert tpm.ak_public() == device.ak_public
    assert sent.count(TPM2_CC.CreatePrimary) == 1
    assert loaded_counts(swtpm_logged.tcti) == (0, 0)
    assert ak_id not in saved_file.decode(device.contexts.read_bytes()) or \
        saved_file.decode(device.contexts.read_bytes())[ak_id] != entries[ak_id]


def test_a_restored_ak_gives_its_public_once_the_tpm_confirms_it(
        swtpm_logged: SwtpmProcess, device: Device) -> None:
    device.connect_shaped(swtpm_logged.tcti)
    with Tpm(swtpm_logged.tcti) as tpm:
        tpm.keep_contexts(device.contexts)
        sent = commands_of(swtpm_logged, tpm.ak_public)
        assert tpm.ak_public() == device.ak_public
    assert sent == [TPM2_CC.ContextLoad, TPM2_CC.ReadPublic]


def test_credential_activation_never_uses_an_unconfirmed_ak(
        swtpm_logged: SwtpmProcess, device: Device) -> None:
    """An enrollment over a home with saved contexts (enroll --force): the AK a credential is
    activated with is the TPM-confirmed one, whatever the file holds."""
    device.connect_shaped(swtpm_logged.tcti)
    entries = saved_file.decode(device.contexts.read_bytes())
    ak_id = (saved_file.KIND_CONTEXT, saved_file.primary_id("ak", AK_TEMPLATE))
    entries[ak_id] = entries[(saved_file.KIND_CONTEXT, saved_file.blob_id(
        device.post_key.private, device.post_key.public))]
    device.contexts.write_bytes(saved_file.encode(entries))
    challenge = os.urandom(32)
    with Tpm(swtpm_logged.tcti) as tpm:
        tpm.keep_contexts(device.contexts)
        ek = tpm.endorsement()
        credential = make_credential(ek.public, challenge, name_of(device.ak_public))
        assert tpm.activate_credential(*credential) == challenge
    assert loaded_counts(swtpm_logged.tcti) == (0, 0)


def test_slots_held_by_another_client_do_not_discard_the_saved_contexts(
        swtpm_logged: SwtpmProcess, device: Device) -> None:
    """No resource manager: another client holds every object slot. The connect fails as it
    did before (tpm_error), but the saved contexts were not at fault and are kept."""
    tcti = swtpm_logged.tcti
    device.connect_shaped(tcti)
    saved = device.contexts.read_bytes()
    with Tpm(tcti) as other:
        other.hmac(device.hmac_key, b"m")
        other.quote(NONCE, SEL8)
        other.sign(device.post_key, bytes(32))  # HMAC key, AK, post key (or SRK): 3 slots
        with Tpm(tcti) as tpm:
            tpm.keep_contexts(device.contexts)
            with pytest.raises(AttestgateError) as err:
                tpm.hmac(device.hmac_key, HMAC_MESSAGE)
            assert err.value.code is ErrorCode.TPM_ERROR
    assert device.contexts.read_bytes() == saved
    again = commands_of(swtpm_logged, lambda: device.connect_shaped(tcti))
    assert not CREATE_OR_LOAD & set(again)
