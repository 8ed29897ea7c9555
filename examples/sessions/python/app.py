"""A tiny web app in Python's standard library only, to show that flotilla works with any app.

It knows nothing of flotilla's protocol: no client script tag, no affinity headers. Run it under
the flotilla agent (or behind the host router) with `[app] inject_client = true` and each browser
tab keeps talking to the version that served its page.

Endpoints:
  GET /          an HTML page that fetches /api/hello and opens the /events stream
  GET /healthz   {"status": "ok"}
  GET /api/hello {"version": ..., "pid": ..., "hits": n}
  GET /events    a server-sent event stream, one tick per second, naming the version: a long-lived
                 session, which the agent and the router count while it is open

Listens on 127.0.0.1:$PORT (default 8000). Its version label is $FLOTILLA_DEPLOYMENT_ID when set
(flotilla sets it for every process it starts; the app only displays it), else $APP_VERSION, else
"dev". Exits cleanly on SIGTERM.
"""

import html
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("FLOTILLA_DEPLOYMENT_ID") or os.environ.get("APP_VERSION") or "dev"
STOPPING = threading.Event()
HITS = {"count": 0}
HITS_LOCK = threading.Lock()

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>python app</title>
<style>body {{ font: 16px/1.4 system-ui, sans-serif; margin: 20px; }}
code {{ font-size: 18px; }}</style>
</head>
<body>
<h1>A Python app</h1>
<p>This page was served by version <code id="page-version">{version}</code> (pid {pid}).</p>
<p>fetch says: <code id="fetch-version">...</code></p>
<p>event stream says: <code id="stream-version">...</code> (tick <span id="tick">-</span>)</p>
<script>
  window.app = {{ fetchVersion: null, streamVersion: null, ticks: 0, streamOpen: false }};
  fetch("/api/hello").then(function (r) {{ return r.json(); }}).then(function (body) {{
    window.app.fetchVersion = body.version;
    document.getElementById("fetch-version").textContent = body.version;
  }});
  var events = null;
  function open() {{
    var stream = new EventSource("/events");
    events = stream;
    stream.onopen = function () {{ if (events === stream) {{ window.app.streamOpen = true; window.app.opens += 1; }} }};
    stream.onmessage = function (event) {{
      if (events !== stream) {{ return; }}
      var tick = JSON.parse(event.data);
      window.app.streamVersion = tick.version;
      window.app.streamPid = tick.pid;
      window.app.ticks += 1;
      document.getElementById("stream-version").textContent = tick.version;
      document.getElementById("tick").textContent = tick.tick;
    }};
  }}
  window.app.opens = 0;
  window.app.close = function () {{ if (events) {{ events.close(); events = null; }} window.app.streamOpen = false; }};
  window.app.reopen = function () {{ window.app.close(); window.app.ticks = 0; open(); }};
  open();
</script>
</body>
</html>
"""


class Handler(BaseHTTPRequestHandler):
    """Answers the four endpoints; HTTP/1.1 with keep-alive except for event streams."""

    protocol_version = "HTTP/1.1"
    server_version = "python-app/1"

    def log_message(self, fmt, *args):
        sys.stderr.write("python-app: %s %s\n" % (self.address_string(), fmt % args))

    def send_body(self, status, content_type, body):
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status, value):
        self.send_body(status, "application/json", json.dumps(value))

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self.send_json(200, {"status": "ok", "version": VERSION})
        elif path == "/":
            page = PAGE.format(version=html.escape(VERSION), pid=os.getpid())
            self.send_body(200, "text/html; charset=utf-8", page)
        elif path == "/api/hello":
            with HITS_LOCK:
                HITS["count"] += 1
                hits = HITS["count"]
            self.send_json(200, {"version": VERSION, "pid": os.getpid(), "hits": hits})
        elif path == "/events":
            self.stream_events()
        else:
            self.send_json(404, {"error": "not_found"})

    def stream_events(self):
        # No Content-Length: the stream ends when the connection closes.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        tick = 0
        try:
            while not STOPPING.is_set():
                data = json.dumps({"version": VERSION, "pid": os.getpid(), "tick": tick})
                self.wfile.write(("data: %s\n\n" % data).encode("utf-8"))
                self.wfile.flush()
                tick += 1
                STOPPING.wait(1.0)
        except (BrokenPipeError, ConnectionResetError):
            pass


def main():
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True

    def stop(signum, frame):
        STOPPING.set()
        # shutdown() waits for serve_forever to return, so it cannot run on the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stderr.write("python-app: version %s listening on http://127.0.0.1:%d\n" % (VERSION, port))
    sys.stderr.flush()
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    sys.stderr.write("python-app: stopped\n")


if __name__ == "__main__":
    main()
