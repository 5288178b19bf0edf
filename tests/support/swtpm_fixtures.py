"""pytest fixtures for swtpm-backed integration tests.

``tests/integration/conftest.py`` imports these, so every integration test can
ask for them by name. Elsewhere, import them into your conftest or module::

    from tests.support.swtpm_fixtures import swtpm, swtpm_factory, swtpm_template  # noqa: F401

* ``swtpm_template`` (session): the provisioned template, EK certs signed by
  the CA in ``swtpm_template.trust_dir``. Provisioned once per session.
* ``swtpm_template_other_ca`` (session): a second, unrelated TPM whose EK certs
  chain to a different CA, for "unknown CA" and "different machine" tests.
* ``swtpm`` (function): a running copy of ``swtpm_template``; connect with
  ``swtpm.tcti``. Stopped after the test.
* ``swtpm_factory`` (function): ``swtpm_factory()`` starts another copy of
  ``swtpm_template``; ``swtpm_factory(other_template)`` a copy of another
  template; ``swtpm_factory(bare=True)`` an unprovisioned swtpm (no EK, all
  PCR banks active). All are stopped after the test.

Every fixture skips the test when swtpm is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.swtpm import (
    SwtpmProcess,
    SwtpmUnavailable,
    TemplateTpm,
    provision_template,
)

OTHER_CA_NAME = "attestgate-other-ca"


@pytest.fixture(scope="session")
def swtpm_template(tmp_path_factory: pytest.TempPathFactory) -> TemplateTpm:
    try:
        return provision_template(tmp_path_factory.mktemp("swtpm-template"))
    except SwtpmUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def swtpm_template_other_ca(tmp_path_factory: pytest.TempPathFactory) -> TemplateTpm:
    try:
        return provision_template(tmp_path_factory.mktemp("swtpm-template"), OTHER_CA_NAME)
    except SwtpmUnavailable as exc:
        pytest.skip(str(exc))


class SwtpmFactory:
    """Starts swtpm copies under one directory and stops them all on :meth:`stop_all`."""

    def __init__(self, directory: Path, default: TemplateTpm) -> None:
        self._directory = directory
        self._default = default
        self.started: list[SwtpmProcess] = []

    def __call__(self, template: TemplateTpm | None = None, *, bare: bool = False) -> SwtpmProcess:
        chosen = None if bare else (template or self._default)
        tpm = SwtpmProcess.start(self._directory / f"swtpm-{len(self.started)}", chosen)
        self.started.append(tpm)
        return tpm

    def stop_all(self) -> None:
        for tpm in self.started:
            tpm.stop()


@pytest.fixture
def swtpm_factory(tmp_path: Path, swtpm_template: TemplateTpm) -> Iterator[SwtpmFactory]:
    factory = SwtpmFactory(tmp_path, swtpm_template)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def swtpm(swtpm_factory: SwtpmFactory) -> SwtpmProcess:
    return swtpm_factory()
