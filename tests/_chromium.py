"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

The browser is started with a fresh profile and ``--remote-debugging-port=0``; it writes
the port it took to ``<profile>/DevToolsActivePort``, and one websocket to the browser
carries every command (a flattened session on one page target). Each network request the
page makes arrives as a ``Network.requestWillBeSent`` event and is kept in ``requests``.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

# Flags that work on the CI machines (root, no display, no GPU, nothing fetched for itself).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip
WHY_ABSENT = ("chromium not found: install Debian's package (apt-get install -y chromium; "
              ".ci/run does) to run the inspector page in a real browser")  # fmt: skip


def chromium_path() -> str | None:
    return shutil.which("chromium")


class Chromium:
    """One headless browser with one page; use as a context manager."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 1600):
        profile.mkdir(parents=True, exist_ok=False)  # a new, empty profile every time
        self.profile, self.ids, self.events = profile, 0, []
        self.log = (profile.parent / f"{profile.name}.log").open("w")
        self.proc = subprocess.Popen(
            [chromium_path(), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def __enter__(self) -> Chromium:
        from websockets.sync.client import connect

        port, path = self._active_port()
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=None, proxy=None)
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.send("Target.attachToTarget",
                             {"targetId": target["targetId"], "flatten": True}, session=False)  # fmt: skip
        self.session = attached["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        return self

    def __exit__(self, *exc) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def _active_port(self, timeout: float = 60.0) -> tuple[int, str]:
        path, deadline = self.profile / "DevToolsActivePort", time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"chromium exited with {self.proc.returncode}; see {self.log.name}"
                )
            lines = path.read_text().split() if path.is_file() else []
            if len(lines) == 2:
                return int(lines[0]), lines[1]
            time.sleep(0.1)
        raise TimeoutError(f"chromium wrote no {path} in {timeout:.0f} s; see {self.log.name}")

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        """Send one command and wait for its answer; events that come first are kept."""
        self.ids += 1
        msg = {"id": self.ids, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") != self.ids:
                self.events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            else:
                return reply.get("result", {})

    def wait_for(self, event: str, timeout: float = 60.0) -> dict:
        """The first ``event`` not yet waited for (kept ones first)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == event:
                    return self.events.pop(i)["params"]
            self.events.append(
                json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            )

    def open(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")

    def run(self, expression: str):
        """Evaluate JavaScript in the page; its value (JSON-able), or raise what it threw."""
        out = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression!r} threw {out['exceptionDetails']}")
        return out["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        """What the window shows, as PNG."""
        shot = self.send("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def requests(self) -> list[str]:
        """The URL of every request the page made so far."""
        self.run("0")
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]  # fmt: skip

    def errors(self) -> list[dict]:
        """Uncaught script errors, console errors and the browser's own error log entries
        (a load that the page's content security policy refused, for one)."""
        self.run("0")  # collect the events sent so far
        return [e["params"] for e in self.events
                if e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]  # fmt: skip
