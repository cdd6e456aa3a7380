"""An HTTP proxy in front of an S3 server that injects the faults real
object stores have.

Usage: python3 s3_proxy.py LISTEN_PORT UPSTREAM_URL CONTROL_FILE SEED [STATS_FILE]

With STATS_FILE, a line "METHOD REQUEST_BYTES REPLY_BYTES" is appended there
for every request forwarded (scripts/compare.py counts uploads with it).

The control file is read on every request. It holds one line:
  ok                            forward everything
  down                          reset every connection (store unreachable)
  RATE MODE[,MODE...]           fault that share of requests, each with one
                                of the modes at random:
    500       500 InternalError, request not forwarded
    503       503 ServiceUnavailable, not forwarded
    slowdown  503 SlowDown, not forwarded
    reset     connection reset before forwarding
    lost      forwarded (it lands), then the connection is reset: the
              reply is lost
    slow      forwarded, and the reply trickles out over about a second
Counts of each fault go to stderr as they happen.
"""
import http.client
import random
import socket
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, upstream, control_path, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
stats_path = sys.argv[5] if len(sys.argv) > 5 else None
stats_lock = threading.Lock()
upstream = urllib.parse.urlparse(upstream)
rng = random.Random(seed)
rng_lock = threading.Lock()

ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Please reduce your request rate."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
}


def choose_fault():
    try:
        with open(control_path) as f:
            words = f.read().split()
    except OSError:
        words = ["ok"]
    if not words or words[0] == "ok":
        return None
    if words[0] == "down":
        return "reset"
    rate, modes = float(words[0]), words[1].split(",")
    with rng_lock:
        return rng.choice(modes) if rng.random() < rate else None


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reset(self):
        # SO_LINGER with a zero timeout: close() sends RST.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def forward(self, body):
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        conn.request(self.command, self.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response, data

    def handle_any(self):
        body = self.read_body()
        fault = choose_fault()
        if fault:
            print(f"fault {fault} {self.command} {self.path}", file=sys.stderr, flush=True)
        if fault == "reset":
            return self.reset()
        if fault in ERRORS:
            status, code, message = ERRORS[fault]
            xml = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            self.wfile.write(xml)
            return
        response, data = self.forward(body)
        if stats_path:
            with stats_lock, open(stats_path, "a") as stats:
                stats.write(f"{self.command} {len(body)} {len(data)}\n")
        if fault == "lost":
            return self.reset()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(key, value)
        # A HEAD reply has no body but says how long the object is.
        length = response.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length)
        self.end_headers()
        if fault == "slow" and data:
            pieces = 10
            step = max(1, len(data) // pieces)
            for i in range(0, len(data), step):
                self.wfile.write(data[i:i + step])
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


Server(("127.0.0.1", int(port)), Proxy).serve_forever()
