#!/usr/bin/env python3
"""A small app for the agent's integration tests, standard library only.

Listens on 127.0.0.1:$PORT. Endpoints:
  GET  /healthz            {"status":"ok","sessions":N}, or 500 when made unhealthy
  POST /_test/health?ok=0  make /healthz fail (ok=1 heals it)
  POST /_test/sessions?n=3 set the `sessions` number /healthz reports
  GET  /ws                 WebSocket echo
  GET  /sse                text/event-stream, one event every 100 ms until the client leaves
  GET  /page.html          a small HTML page that knows nothing of flotilla
  GET  /slow?ms=N          answers after N milliseconds
  anything else            {"path": ..., "affinity": <X-Flotilla-Deployment request header>}
On SIGTERM/SIGINT: writes "<signal name>" to $APP_SIGNAL_FILE if set, then exits with
$APP_EXIT_CODE if set, else dies of the signal. With APP_IGNORE_TERM=1 it ignores SIGTERM.
"""

import base64
import hashlib
import json
import os
import signal
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
STATE = {"healthy": True, "sessions": 0}
LOCK = threading.Lock()


def on_signal(signum, _frame):
    path = os.environ.get("APP_SIGNAL_FILE")
    if path:
        with open(path, "w") as f:
            f.write(signal.Signals(signum).name)
    code = os.environ.get("APP_EXIT_CODE")
    if code is not None:
        os._exit(int(code))
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def query(self):
        return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = urlsplit(self.path).path
        q = self.query()
        with LOCK:
            if path == "/_test/health":
                STATE["healthy"] = q.get("ok", "1") == "1"
            elif path == "/_test/sessions":
                STATE["sessions"] = int(q.get("n", "0"))
            else:
                self.send_json(404, {"error": "not found"})
                return
        self.send_json(200, {"ok": True})

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/healthz":
            with LOCK:
                healthy, sessions = STATE["healthy"], STATE["sessions"]
            if healthy:
                self.send_json(200, {"status": "ok", "sessions": sessions})
            else:
                self.send_json(500, {"status": "sick"})
        elif path == "/ws":
            self.websocket()
        elif path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"data: tick\n\n")
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
        elif path == "/page.html":
            body = b"<!doctype html><html><head><title>t</title></head><body>hi</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/slow":
            time.sleep(int(self.query().get("ms", "500")) / 1000)
            self.send_json(200, {"slow": True})
        else:
            self.send_json(
                200,
                {"path": self.path, "affinity": self.headers.get("X-Flotilla-Deployment")},
            )

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        try:
            while True:
                head = self.rfile.read(2)
                if len(head) < 2:
                    return
                opcode, length = head[0] & 0x0F, head[1] & 0x7F
                if length == 126:
                    length = struct.unpack(">H", self.rfile.read(2))[0]
                elif length == 127:
                    length = struct.unpack(">Q", self.rfile.read(8))[0]
                mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
                if opcode == 8:
                    self.send_frame(8, data[:2])
                    return
                if opcode == 9:
                    self.send_frame(10, data)
                elif opcode in (1, 2):
                    self.send_frame(opcode, data)
        except (BrokenPipeError, ConnectionResetError):
            return

    def send_frame(self, opcode, data):
        n = len(data)
        if n < 126:
            head = struct.pack(">BB", 0x80 | opcode, n)
        elif n < 65536:
            head = struct.pack(">BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 127, n)
        self.wfile.write(head + data)
        self.wfile.flush()


def main():
    signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("APP_IGNORE_TERM") else on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
