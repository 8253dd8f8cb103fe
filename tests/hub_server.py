"""A real Hub-compatible server for tests: `olah` (a self-hosted Hub mirror) in offline mode over local git
repositories, behind a small adapter.

The adapter changes only error answers of `/resolve/` requests. olah's offline mode answers a file that the
repository does not have, and a revision that does not exist, with 401/500; the Hub answers 404 with
`x-error-code: EntryNotFound` or `RevisionNotFound`, which clients rely on (transformers probes optional files such
as `processor_config.json`, and reports a bad revision by name). Every other request and answer passes through
unchanged.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Adapter(BaseHTTPRequestHandler):
    upstream_port = 0

    def _forward(self, method: str, path: str):
        connection = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        connection.request(method, path, headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()

    def _hub_error(self, path: str) -> tuple[str, str] | None:
        """The Hub's error code for a failed `/{org}/{repo}/resolve/{revision}/{file}`, or None to pass through."""
        parts = path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return None
        api = f"/api/models/{parts[0]}/{parts[1]}/revision/"
        if self._forward("GET", api + parts[3])[0] == 200:
            return "EntryNotFound", "Entry not found"
        if self._forward("GET", api + "main")[0] == 200:
            return "RevisionNotFound", f"Invalid rev id: {parts[3]}"
        return None

    def _handle(self, method: str) -> None:
        status, headers, body = self._forward(method, self.path)
        error = self._hub_error(self.path) if status in (401, 500) else None
        if error is not None:
            status, body = 404, error[1].encode()
            headers = [("x-error-code", error[0]), ("x-error-message", error[1])]
        self.send_response(status)
        length = str(len(body))
        for key, value in headers:
            if key.lower() == "content-length" and method == "HEAD":
                length = value  # a HEAD answer announces the size of the body it does not send
            elif key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", length)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("HEAD")

    def log_message(self, *args) -> None:
        pass


class HubServer:
    """Serves the git repositories under `mirrors/models/{org}/{name}`; `endpoint` is the URL for `HF_ENDPOINT`."""

    def __init__(self, root: Path):
        self.root = root
        self.olah_port, self.port = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HubServer:
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.olah_port}\nrepos-path = "{self.root / "olah-repos"}"\n'
            f'mirrors-path = ["{self.root / "mirrors"}"]\nmirror-scheme = "http"\n'
            f'mirror-netloc = "127.0.0.1:{self.olah_port}"\nmirror-lfs-netloc = "127.0.0.1:{self.olah_port}"\n'
            "[accessibility]\noffline = true\n"
        )
        command = [sys.executable, "-m", "olah.server", "-c", str(config)]
        self.olah = subprocess.Popen(command, cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.olah_port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or self.olah.poll() is not None:
                    self.olah.kill()
                    raise RuntimeError("olah did not start") from None
                time.sleep(0.2)
        handler = type("Adapter", (_Adapter,), {"upstream_port": self.olah_port})
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.olah.terminate()
        self.olah.wait(timeout=30)
