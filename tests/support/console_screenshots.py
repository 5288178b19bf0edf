"""Make the README's console screenshots: ``python -m tests.support.console_screenshots``.

Runs a whole stack with the console (as the browser test does), enrolls three
machines on swtpm, posts from them, lets one machine's changed PCR lock it and
revokes another, logs a headless Chromium in with ``attestgate-admin console-token``
and saves ``docs/img/console-board.png`` and ``docs/img/console-devices.png``
(``--out DIR`` elsewhere). Needs what the integration tests need, plus chromium.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from client import flows
from client.channel import Refused
from client.tpm import Tpm
from tests.support import browser
from tests.support.stack import REPO, Stack
from tests.support.swtpm import SwtpmProcess, provision_template

MACHINES = ("build-runner-01", "lobby-kiosk", "lab-laptop-7")
POSTS = (
    ("build-runner-01", "nightly build 2291 signed and published"),
    ("lab-laptop-7", "firmware update scheduled for tonight, expect a re-approval"),
    ("build-runner-01", "<script>alert('hostile post text is shown as text')</script>"),
    ("lab-laptop-7", "back online after the maintenance window"),
)


def _quiet(_line: str) -> None:
    pass


def _admin(stack: Stack, *argv: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "services.registry.admin", *argv, "--json"],
                         cwd=REPO, env=stack.env, capture_output=True, text=True, timeout=30,
                         check=True)
    doc = json.loads(out.stdout)
    assert isinstance(doc, dict)
    return doc


def _post(stack: Stack, tpm: SwtpmProcess, home: Path, text: str) -> None:
    subprocess.run([sys.executable, "-m", "client.cli", "post", text, "--tpm", tpm.tcti,
                    "--home", str(home)], cwd=REPO, env=stack.env, capture_output=True,
                   timeout=60, check=True)


def make(out: Path, work: Path) -> None:
    templates = [provision_template(work / "templates", f"demo-ca-{i}")
                 for i in range(len(MACHINES))]
    trust = work / "trust"
    trust.mkdir()
    for t in templates:
        (trust / t.ca_cert_path.name).write_bytes(t.ca_cert_path.read_bytes())
    settings = {"ATTESTGATE_PCR_SELECTION": "sha256:0,1,2,3,4,5,6,7,16",
                "ATTESTGATE_MAX_FAILURES": "1"}
    tpms: dict[str, SwtpmProcess] = {}
    homes: dict[str, Path] = {}
    with Stack.start(work / "stack", ca_dir=trust, settings=settings, console=True) as stack:
        try:
            states = {}
            for name, template in zip(MACHINES, templates, strict=True):
                tpms[name] = SwtpmProcess.start(work / f"tpm-{name}", template)
                homes[name] = work / f"home-{name}"
                with Tpm(tpms[name].tcti) as tpm:
                    states[name] = flows.enroll(tpm, homes[name], stack.server, name, None,
                                                flows.ServerPin(None, True), False, _quiet)
            for name, text in POSTS:
                _post(stack, tpms[name], homes[name], text)
            with Tpm(tpms["lobby-kiosk"].tcti) as tpm:
                tpm.extend_pcr(16, b"unexpected boot component")
                with contextlib.suppress(Refused):  # the refusal is the point
                    flows.connect(tpm, states["lobby-kiosk"], _quiet)
            _admin(stack, "revoke", "lab-laptop-7")
            link = str(_admin(stack, "console-token")["link"])
            driver = browser.start(work / "chromium-profile")
            try:
                driver.get(link)
                WebDriverWait(driver, 10).until(lambda d: d.current_url.endswith("/board"))
                WebDriverWait(driver, 10).until(
                    lambda d: "on" in d.find_element(By.ID, "live").get_attribute("class"))
                _post(stack, tpms["build-runner-01"], homes["build-runner-01"],
                      "this one arrived live while the page was open")
                WebDriverWait(driver, 10).until(
                    lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.post")) == 5)
                time.sleep(0.2)  # let the layout settle for the picture
                out.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(out / "console-board.png"))
                driver.get(stack.console_url + "/devices")
                driver.save_screenshot(str(out / "console-devices.png"))
            finally:
                driver.quit()
        finally:
            for tpm in tpms.values():
                tpm.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args()
    reason = browser.unavailable()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="console-shots-") as work:
        make(args.out, Path(work))
    print(f"wrote {args.out / 'console-board.png'} and {args.out / 'console-devices.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
