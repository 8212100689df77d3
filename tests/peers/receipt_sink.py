#!/usr/bin/env python3
"""receipt_sink.py - a developer's HTTPS receipt endpoint in tests (MiPush callback.url): it
answers the first FAILS POSTs 503 and every later one 204, and appends one line per POST to
OUTFILE: the status it answered, a space, the path, a space, the body on one line.
Usage: receipt_sink.py CERT KEY PORT OUTFILE FAILS"""
import http.server
import ssl
import sys
import threading

cert, key, port, out, fails = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
lock = threading.Lock()
seen = 0


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n).replace(b"\n", b" ")
        with lock:
            seen += 1
            status = 503 if seen <= fails else 204
            with open(out, "ab") as f:
                f.write(b"%d %s %s\n" % (status, self.path.encode(), body))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, fmt, *args):
        pass


srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
