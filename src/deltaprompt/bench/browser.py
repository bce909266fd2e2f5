"""Finding a Chromium-family browser and driving it headless, with the network closed.

The report promises a page that renders with no network and no script; rendering it in a real
browser is how the tests check that promise, and how the documentation's screenshot is made
(``deltaprompt report --screenshot``). It is apart from the report because nothing else in the
report starts a process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..files import atomic_write

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chromium-headless-shell",
            "chrome-headless-shell")


def find_browser() -> str | None:
    """A Chromium-family browser: $DELTAPROMPT_BROWSER, else the first of BROWSERS on PATH."""
    chosen = os.environ.get("DELTAPROMPT_BROWSER")
    if chosen:
        return shutil.which(chosen) or (chosen if Path(chosen).is_file() else None)
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def _run_browser(page: Path, extra: Sequence[str], browser: str | None, timeout: float) -> subprocess.CompletedProcess:
    """Headless, sandbox off (containers), no GPU, and no network: every request goes to a
    closed local port, so a page that needed the network would show it."""
    executable = browser or find_browser()
    if executable is None:
        raise FileNotFoundError("no Chromium browser found: apt-get install -y chromium (Debian), "
                                "or set DELTAPROMPT_BROWSER to one")
    with tempfile.TemporaryDirectory(prefix="deltaprompt-browser-") as profile:
        command = [
            executable, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>", f"--user-data-dir={profile}", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1",
            "--mute-audio", *extra, page.resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise OSError(f"{executable} exited with {result.returncode}: {result.stderr.strip()[-800:]}")
    return result


def render_dom(page: str | Path, *, browser: str | None = None, timeout: float = 90) -> str:
    """The DOM the browser built from the page (``--dump-dom``)."""
    return _run_browser(Path(page), ["--dump-dom"], browser, timeout).stdout


def screenshot(page: str | Path, png: str | Path, *, window_size: tuple[int, int] = (1280, 2400),
               browser: str | None = None, timeout: float = 90) -> Path:
    """Render ``page`` and save a PNG of the window (for the docs and the rendering test)."""
    target = Path(png)
    with tempfile.TemporaryDirectory(prefix="deltaprompt-shot-") as scratch:
        shot = Path(scratch) / "shot.png"
        _run_browser(Path(page), [f"--screenshot={shot}", f"--window-size={window_size[0]},{window_size[1]}"],
                     browser, timeout)
        if not shot.is_file():
            raise OSError(f"the browser wrote no screenshot of {page}")
        with atomic_write(target, "wb") as handle:
            handle.write(shot.read_bytes())
    return target
