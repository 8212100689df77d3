#!/usr/bin/env python3
"""bench/cloudsync/recsync.py - record sync through mica-cloudsync's API with one keep-alive TLS
connection per device (Python's http.client, verified against the bench CA): device 1 pushes
N contacts in batches, device 2 (another session of the same user) pulls them page by page from
token 0. Prints one line: push_rps pull_rps push_p50_ms push_p99_ms pull_p50_ms pull_p99_ms.

Usage: recsync.py URL CA TOKEN1 TOKEN2 N BATCH
"""
import http.client
import json
import ssl
import sys
import time
import urllib.parse


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def main():
    url, ca, tok1, tok2, n, batch = sys.argv[1:7]
    n, batch = int(n), int(batch)
    u = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context(cafile=ca)

    def conn():
        return http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)

    def call(c, method, path, token, body=None):
        headers = {"Authorization": "Bearer " + token}
        if body is not None:
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        t = time.perf_counter()
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        dt = time.perf_counter() - t
        if r.status != 200:
            sys.exit("recsync: %s %s: HTTP %d %s" % (method, path, r.status, data[:200]))
        return json.loads(data), dt

    c1, c2 = conn(), conn()
    push = []
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        changes = [{"id": "bench-%06d" % i,
                    "data": {"vcard": "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:bench-%06d\r\n"
                             "FN:Bench Person %d\r\nTEL;TYPE=CELL:+1555%07d\r\n"
                             "EMAIL:person%d@example.org\r\nEND:VCARD\r\n" % (i, i, i, i)}}
                   for i in range(start, min(n, start + batch))]
        out, dt = call(c1, "POST", "/v1/sync/contacts/batch", tok1, {"changes": changes})
        if any(r["status"] != "ok" for r in out["results"]):
            sys.exit("recsync: a write did not succeed")
        push.append(dt)
    push_s = time.perf_counter() - t0
    pull, got, token, more = [], 0, "0", True
    t0 = time.perf_counter()
    while more:
        out, dt = call(c2, "GET", "/v1/sync/contacts/changes?since=%s&limit=%d" % (token, batch), tok2)
        pull.append(dt)
        got += len(out["changes"])
        token, more = out["token"], out["more"]
    pull_s = time.perf_counter() - t0
    if got != n:
        sys.exit("recsync: pulled %d of %d" % (got, n))
    print("push_rps=%.0f pull_rps=%.0f push_p50_ms=%.1f push_p99_ms=%.1f pull_p50_ms=%.1f pull_p99_ms=%.1f"
          % (n / push_s, n / pull_s, 1000 * percentile(push, 50), 1000 * percentile(push, 99),
             1000 * percentile(pull, 50), 1000 * percentile(pull, 99)))


if __name__ == "__main__":
    main()
