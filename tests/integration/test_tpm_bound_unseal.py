"""A PCR-bound unseal sends its policy session's commands as bytes (client/tpm/rawcmd.py):
against a real swtpm, the TPM enforces the policy exactly as before and no session stays."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tpm2_pytss.constants import TPM2_CC

from client.tpm import Tpm
from shared.errors import AttestgateError, ErrorCode
from tests.integration.test_tpm_adapter import loaded_counts
from tests.support.swtpm import SwtpmProcess, TemplateTpm

pytestmark = pytest.mark.integration

SEL = "sha256:0,7,16"


@pytest.fixture
def swtpm_logged(tmp_path: Path, swtpm_template: TemplateTpm) -> Iterator[SwtpmProcess]:
    with SwtpmProcess.start(tmp_path / "tpm", swtpm_template, log_commands=True) as tpm:
        yield tpm


def test_the_session_is_made_used_and_gone(swtpm_logged: SwtpmProcess) -> None:
    with Tpm(swtpm_logged.tcti) as tpm:
        secret = os.urandom(64)
        blob = tpm.seal(secret, SEL)
        before = len(swtpm_logged.commands())
        assert tpm.unseal(blob, SEL) == secret
        sent = swtpm_logged.commands()[before:]
        assert sent == [TPM2_CC.Load, TPM2_CC.StartAuthSession, TPM2_CC.PolicyPCR,
                        TPM2_CC.Unseal, TPM2_CC.FlushContext]  # the sealed object's flush
        assert loaded_counts(swtpm_logged.tcti) == (1, 0)  # the SRK, kept; no session


def test_the_tpm_still_decides_and_no_session_is_left(swtpm_logged: SwtpmProcess) -> None:
    with Tpm(swtpm_logged.tcti) as tpm:
        secret = os.urandom(32)
        blob = tpm.seal(secret, SEL)
        for _ in range(100):
            assert tpm.unseal(blob, SEL) == secret
            tpm.extend_pcr(16, b"tampered")
            with pytest.raises(AttestgateError) as err:
                tpm.unseal(blob, SEL)
            assert err.value.code is ErrorCode.PCR_MISMATCH
            with pytest.raises(AttestgateError) as err:
                tpm.unseal(blob, "sha256:0,7")  # not the policy's selection
            assert err.value.code is ErrorCode.PCR_MISMATCH
            assert loaded_counts(swtpm_logged.tcti)[1] == 0
            tpm.reset_pcr(16)
    assert loaded_counts(swtpm_logged.tcti) == (0, 0)


def test_an_unbound_blob_unsealed_with_a_selection_is_refused(swtpm_logged: SwtpmProcess) -> None:
    with Tpm(swtpm_logged.tcti) as tpm:
        blob = tpm.seal(b"plain")
        with pytest.raises(AttestgateError) as err:
            tpm.unseal(blob, SEL)  # its authPolicy is empty: no policy session satisfies it
        assert err.value.code in (ErrorCode.PCR_MISMATCH, ErrorCode.TPM_ERROR)
        assert tpm.unseal(blob) == b"plain"
    assert loaded_counts(swtpm_logged.tcti) == (0, 0)


def test_the_tpm_gone_before_a_bound_unseal_is_unavailable_not_another_tpm(
        swtpm_logged: SwtpmProcess) -> None:
    with Tpm(swtpm_logged.tcti) as tpm:
        blob = tpm.seal(b"s" * 16, SEL)
        swtpm_logged.stop()
        with pytest.raises(AttestgateError) as err:
            tpm.unseal(blob, SEL)
        assert err.value.code is ErrorCode.TPM_UNAVAILABLE
