#!/usr/bin/env python3
"""webhook_sink.py - a minimal HTTPS endpoint that stands in for an operator's
alert receiver in tests: it appends every POSTed body as one line to a file and
answers 204. Usage: webhook_sink.py CERT KEY PORT OUTFILE"""
import http.server
import ssl
import sys

cert, key, port, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n).replace(b"\n", b" ")
        with open(out, "ab") as f:
            f.write(body + b"\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, fmt, *args):
        pass


srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
