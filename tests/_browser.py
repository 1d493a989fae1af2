"""A headless Chromium driven over the DevTools Protocol on a pipe, for checking report.html in a real browser.

No Python dependency beyond the standard library: Chromium started with ``--remote-debugging-pipe``
reads protocol commands on its fd 3 and writes responses and events on its fd 4, each message one
JSON object followed by a NUL byte. Every read has a deadline, so a browser that hangs fails the
check with :class:`BrowserError` instead of hanging CI.

>>> with Browser() as browser:
...     page = browser.open(Path("report.html"))
...     page.external_requests, page.console_errors, page.dialogs
...     browser.screenshot(page, Path("report.png"))
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Searched in this order on PATH; $XAUDIT_CHROMIUM overrides the search.
EXECUTABLES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")

# Everything that makes Chromium talk to the network on its own account is off, so any request seen is the page's.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-default-apps", "--disable-sync", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe")

# Requests the page may make without touching anything outside the file: inline images and blobs.
_LOCAL_SCHEMES = ("data:", "blob:", "about:")


class BrowserError(RuntimeError):
    """The browser could not be started, answered an error, closed the pipe or missed a deadline."""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable: ``$XAUDIT_CHROMIUM`` if set, else the first of EXECUTABLES on PATH."""
    if os.environ.get("XAUDIT_CHROMIUM"):
        return shutil.which(os.environ["XAUDIT_CHROMIUM"])
    return next((found for name in EXECUTABLES if (found := shutil.which(name))), None)


@dataclass
class Page:
    """One opened page and everything it did while loading (only this page's target is listened to)."""

    url: str
    session_id: str
    requests: list[str] = field(default_factory=list)          # every Network.requestWillBeSent URL
    console_errors: list[str] = field(default_factory=list)    # console.error / console.assert
    exceptions: list[str] = field(default_factory=list)        # uncaught script exceptions
    log_errors: list[str] = field(default_factory=list)        # browser log entries of level error
    dialogs: list[str] = field(default_factory=list)           # alert/confirm/prompt messages
    loaded: bool = False

    @property
    def external_requests(self) -> list[str]:
        """Requests for anything but the page itself and inline (data:/blob:) resources."""
        return [u for u in self.requests if u != self.url and not u.startswith(_LOCAL_SCHEMES)]

    def problems(self) -> dict[str, list[str]]:
        """Everything a clean, offline page must not do, by kind (all lists empty for a clean page)."""
        return {"external requests": self.external_requests, "console errors": self.console_errors,
                "exceptions": self.exceptions, "log errors": self.log_errors, "dialogs": self.dialogs}


class Browser:
    """A headless Chromium process; use as a context manager so the process never outlives the test."""

    def __init__(self, executable: str | None = None, *, timeout_s: float = 30.0, width: int = 1200,
                 height: int = 900) -> None:
        self.executable = executable or find_chromium()
        self.timeout_s = timeout_s
        self.width, self.height = width, height
        self._proc: subprocess.Popen[bytes] | None = None
        self._profile: tempfile.TemporaryDirectory[str] | None = None
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        self._pages: dict[str, Page] = {}

    # -- process and pipe -------------------------------------------------------------------------------
    def __enter__(self) -> Browser:
        if not self.executable:
            raise BrowserError(f"no Chromium found (looked for {', '.join(EXECUTABLES)}; or set $XAUDIT_CHROMIUM)")
        self._profile = tempfile.TemporaryDirectory(prefix="xaudit-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds() -> None:
            # the pipe ends may already sit on fds 3/4: move both above them first, then into place
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self._log = open(Path(self._profile.name) / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        try:
            # close_fds=False: Python's own fds are non-inheritable anyway; only the dup2'ed 3 and 4 pass
            self._proc = subprocess.Popen(
                [self.executable, *FLAGS, f"--user-data-dir={self._profile.name}",
                 f"--window-size={self.width},{self.height}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                preexec_fn=child_fds, close_fds=False)
        finally:
            os.close(to_browser_r)
            os.close(from_browser_w)
        try:
            self.send("Browser.getVersion")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Ask the browser to quit, kill it if it does not within a few seconds, and free its profile."""
        if self._proc is not None:
            try:
                os.write(self._to_browser, json.dumps({"id": -1, "method": "Browser.close"}).encode() + b"\0")
            except OSError:
                pass  # already gone: nothing to ask
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
            self._proc = None
            for fd in (self._to_browser, self._from_browser):
                os.close(fd)
            self._log.close()
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    def log_tail(self, n_chars: int = 2000) -> str:
        """The end of Chromium's own stderr, for error messages."""
        if self._profile is None:
            return ""
        self._log.flush()
        return (Path(self._profile.name) / "chromium.log").read_text(errors="replace")[-n_chars:]

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_browser], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise BrowserError(f"Chromium closed the DevTools pipe; its log ends:\n{self.log_tail()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are recorded."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                reply = self._read_message(deadline)
            except TimeoutError:
                raise BrowserError(f"no answer to {method} within {self.timeout_s:g} s") from None
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self._record(reply)

    def _wait(self, done: Any, seconds: float, what: str) -> None:
        """Record events until ``done()`` is true; BrowserError after ``seconds``."""
        deadline = time.monotonic() + seconds
        while not done():
            try:
                self._record(self._read_message(deadline))
            except TimeoutError:
                raise BrowserError(f"{what} did not happen within {seconds:g} s") from None

    def _settle(self, quiet_s: float) -> None:
        """Record events until none has arrived for ``quiet_s`` (late console errors, lazy requests)."""
        while True:
            try:
                self._record(self._read_message(time.monotonic() + quiet_s))
            except TimeoutError:
                return

    # -- events -------------------------------------------------------------------------------------------
    def _record(self, event: dict[str, Any]) -> None:
        page = self._pages.get(event.get("sessionId", ""))
        if page is None:
            return  # another target (the browser itself, about:blank): not the page under test
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            page.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            page.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            page.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            page.log_errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Page.javascriptDialogOpening":
            page.dialogs.append(params.get("message", ""))
            # a dialog blocks the page (and its load event) until answered
            self._send_nowait("Page.handleJavaScriptDialog", {"accept": False}, page.session_id)
        elif method == "Page.loadEventFired":
            page.loaded = True

    def _send_nowait(self, method: str, params: dict[str, Any], session_id: str) -> None:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params, "sessionId": session_id}
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")

    # -- pages --------------------------------------------------------------------------------------------
    def open(self, path_or_url: str | os.PathLike[str], *, settle_s: float = 0.5) -> Page:
        """Open a file (or URL) in a new tab, wait for its load event, and return what it did.

        Outside requests are blocked after being recorded, so the check never depends on the network.
        """
        url = str(path_or_url)
        if "://" not in url:
            url = Path(url).resolve().as_uri()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = self._pages[session] = Page(url=url, session_id=session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", {}, session)
        self.send("Network.setBlockedURLs", {"urls": ["http://*", "https://*", "ws://*", "wss://*", "ftp://*"]},
                  session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False}, session)
        self.send("Page.navigate", {"url": url}, session)
        self._wait(lambda: page.loaded, self.timeout_s, f"the load event of {url}")
        self._settle(settle_s)
        return page

    def evaluate(self, page: Page, expression: str) -> Any:
        """The JSON value of ``expression`` evaluated in the page."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, page.session_id)
        if "exceptionDetails" in result:
            raise BrowserError(f"evaluating {expression!r} threw: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def screenshot(self, page: Page, path: str | os.PathLike[str], *, max_height: int | None = None) -> Path:
        """Write a PNG of the whole page (or its first ``max_height`` CSS pixels) at the browser's width."""
        size = self.send("Page.getLayoutMetrics", {}, page.session_id)["cssContentSize"]
        height = int(size["height"]) if max_height is None else min(int(size["height"]), max_height)
        clip = {"x": 0, "y": 0, "width": self.width, "height": max(height, 1), "scale": 1}
        shot = self.send("Page.captureScreenshot",
                         {"format": "png", "clip": clip, "captureBeyondViewport": True}, page.session_id)
        path = Path(path)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
