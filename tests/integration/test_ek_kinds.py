"""Enrollment with the high-range EKs: RSA-3072 (H-6) and ECC P-384 (H-3), nameAlg SHA-384.

A real stack under ``require-ek-cert`` trusts the CAs of two swtpm templates: the
default one (RSA-2048 and P-384 EKs) and one provisioned with ``--rsa-keysize 3072``
(RSA-3072 and P-384 EKs). The client enrolls with the chosen EK; the attestor verifies
its certificate, rebuilds its public from the TCG template, makes the credential to
it, and the TPM activates it; then the device connects.
"""

from __future__ import annotations

import datetime
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import flows
from client.tpm import DEFAULT_EK_KINDS, Tpm
from shared.store.redis_store import RedisStore
from shared.tpm.constants import Alg
from shared.tpm.ekcert import verify_ek_chain
from shared.tpm.structures import parse_public
from tests.support.stack import Stack
from tests.support.swtpm import SwtpmUnavailable, TemplateTpm, provision_template
from tests.support.swtpm_fixtures import SwtpmFactory

pytestmark = pytest.mark.integration


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def rsa3072_template(tmp_path_factory: pytest.TempPathFactory) -> TemplateTpm:
    try:
        return provision_template(tmp_path_factory.mktemp("swtpm-rsa3072"),
                                  "attestgate-rsa3072-ca", rsa_keysize=3072)
    except SwtpmUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, swtpm_template: TemplateTpm,
          rsa3072_template: TemplateTpm) -> Iterator[Stack]:
    trust = tmp_path_factory.mktemp("trust")
    for t in (swtpm_template, rsa3072_template):
        shutil.copy(t.ca_cert_path, trust / t.ca_cert_path.name)
    with Stack.start(tmp_path_factory.mktemp("stack"), ca_dir=trust) as s:
        yield s


@pytest.fixture
def store(stack: Stack) -> Iterator[RedisStore]:
    s = RedisStore(stack.redis.url)
    s.purge()
    yield s
    s.close()


def test_default_kinds_pick_the_rsa3072_ek_when_there_is_no_rsa2048(
        swtpm_factory: SwtpmFactory, rsa3072_template: TemplateTpm) -> None:
    assert "EK-HIGH-RSA3072" in DEFAULT_EK_KINDS
    with Tpm(swtpm_factory(rsa3072_template).tcti) as tpm:
        ek = tpm.endorsement()
    assert ek.kind == "EK-HIGH-RSA3072" and ek.certificate
    info = verify_ek_chain(ek.certificate, rsa3072_template.trust_dir,
                           datetime.datetime.now(datetime.UTC))
    assert info.public_key.key_size == 3072  # type: ignore[union-attr]


@pytest.mark.parametrize(("kind", "which"), [("EK-HIGH-RSA3072", "rsa3072"),
                                             ("EK-HIGH-ECC384", "rsa3072"),
                                             ("EK-HIGH-ECC384", "default")])
def test_enrollment_with_a_high_range_ek(stack: Stack, store: RedisStore, tmp_path: Path,
                                         swtpm_factory: SwtpmFactory,
                                         swtpm_template: TemplateTpm,
                                         rsa3072_template: TemplateTpm,
                                         kind: str, which: str) -> None:
    template = rsa3072_template if which == "rsa3072" else swtpm_template
    proc = swtpm_factory(template)
    with Tpm(proc.tcti, ek_kinds=[kind]) as tpm:
        ek = tpm.endorsement()
        assert ek.kind == kind
        state = flows.enroll(tpm, tmp_path / "home", stack.server, "hi-ek", None,
                             flows.ServerPin(None, tofu=True), False, _quiet)
        with flows.connect(tpm, state, _quiet):
            pass
    device = store.device_by_name("hi-ek")
    assert device is not None
    assert device.ek_public == ek.public and device.ek_cert == ek.certificate
    public = parse_public(device.ek_public)
    assert public.name_alg == Alg.SHA384
