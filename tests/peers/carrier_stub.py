#!/usr/bin/env python3
"""carrier_stub.py - a carrier's number-recycling check for tests (account.recycling.mode =
http): an HTTPS endpoint that requires a client certificate from CA, answers
POST {"phone": "+86...", "since": "YYYY-MM-DD"} with 200 {"recycled": bool}, true when
RECYCLED (re-read on every request) has a line "PHONE YYYY-MM-DD" for the phone dated on or
after since; a line "PHONE fail" makes it answer 500 for that phone. Every request body is
appended to LOG as one line.
Usage: carrier_stub.py CERT KEY CA PORT RECYCLED LOG"""
import http.server
import json
import ssl
import sys

cert, key, ca, port, recycled, log = sys.argv[1:7]


class Carrier(http.server.BaseHTTPRequestHandler):
    def answer(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(log, "ab") as f:
            f.write(raw.replace(b"\n", b" ") + b"\n")
        try:
            req = json.loads(raw)
            phone, since = req["phone"], req["since"]
        except (ValueError, KeyError, TypeError):
            return self.answer(400, {"error": "phone and since are required"})
        hit = False
        with open(recycled) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0] == phone:
                    if parts[1] == "fail":
                        return self.answer(500, {"error": "carrier down"})
                    hit = hit or parts[1] >= since
        self.answer(200, {"recycled": hit})

    def log_message(self, fmt, *args):
        pass


srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Carrier)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(ca)
ctx.verify_mode = ssl.CERT_REQUIRED
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
