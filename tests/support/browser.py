"""Headless Chromium from Debian's ``chromium`` and ``chromium-driver``, driven by Selenium.

No download ever: the driver is the system ``/usr/bin/chromedriver`` given to Selenium's
``Service`` (which then skips Selenium Manager), and ``SE_MANAGER_PATH`` points at a
path that does not exist, so that any attempt to run Selenium Manager fails loudly
instead of fetching a browser. ``make setup`` installs both packages.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
NO_SELENIUM_MANAGER = "/nonexistent/selenium-manager-is-not-used"
WINDOW = (1280, 900)


def unavailable() -> str | None:
    """Why no browser test can run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file() and not shutil.which(path.name):
            return f"{path} missing: apt-get install chromium chromium-driver (make setup)"
    return None


def start(profile: Path) -> webdriver.Chrome:
    """A headless Chromium with its own profile directory; ``quit()`` it when done."""
    os.environ["SE_MANAGER_PATH"] = NO_SELENIUM_MANAGER
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--metrics-recording-only",
                "--disable-domain-reliability", "--no-pings", "--dns-prefetch-disable",
                "--disable-client-side-phishing-detection",
                f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    service = Service(executable_path=str(CHROMEDRIVER))
    return webdriver.Chrome(service=service, options=options)
