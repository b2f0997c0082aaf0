#!/usr/bin/python3
"""Reproducer (h2 fuzz campaign, 2026-12-06): an HTTP/2 stream whose answer is fully
buffered in the proxy waits for the client's flow-control window with no deadline, so a
client that never opens its window holds the connection, the stream and its workspace
forever (HTTP/1.1 closes a client that stops reading).

Two variants, each on a fresh `tollgate serve` (ASan build) with --idle-timeout 2
--body-timeout 1 --header-timeout 1:
  local     SETTINGS_INITIAL_WINDOW_SIZE=0, then GET /api/keyed with no key: the local 401
            (JSON body) cannot be sent; the stream stays in .replying.
  chunked   SETTINGS_INITIAL_WINDOW_SIZE=1, GET /api/finance/stream (chunked upstream
            response, de-chunked into the stream's buffer, upstream released): 1 byte goes
            out, the rest waits forever.
Expected: the proxy resets the stream / closes the connection after a deadline.
Observed (d7a4069 and 2d46555): the connection is still open when the script gives up
(default 30 s).

  /usr/bin/python3 Fuzz/blackbox/repro/h2_closed_window_hold.py [--binary PATH] [--wait S] [local|chunked]
"""
import argparse
import os
import shutil
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import h2_fuzz as h  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", default=os.path.join(h.ROOT, ".build-asan", "debug", "tollgate"))
    p.add_argument("--wait", type=float, default=30.0)
    p.add_argument("variant", nargs="?", default="local", choices=["local", "chunked"])
    a = p.parse_args()
    up = h.Upstream()
    workdir = tempfile.mkdtemp(prefix="tollgate-repro-")
    gw = h.Gateway(os.path.abspath(a.binary), up.port, workdir)
    gw.start()
    try:
        s = socket.create_connection(("127.0.0.1", gw.port))
        if a.variant == "local":
            window, path, extra = 0, b"/api/keyed", []
        else:
            window, path, extra = 1, b"/api/finance/stream?events=5&interval_ms=20", [(b"x-api-key", h.KEY)]
        block = h.hp_block([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"localhost"), (b":path", path)] + extra)
        s.sendall(h.PREFACE + h.settings([(4, window)]) + h.frame(h.HEADERS, h.END_STREAM | h.END_HEADERS, 1, block))
        s.settimeout(0.5)
        got = bytearray()
        t0 = time.monotonic()
        while time.monotonic() - t0 < a.wait:
            try:
                c = s.recv(65536)
            except socket.timeout:
                continue
            if not c:
                print(f"closed by the proxy after {time.monotonic() - t0:.1f}s: {h.summarize_h2(got)} (fixed)")
                return 0
            got += c
        print(f"BUG: still open after {a.wait:.0f}s; the proxy sent {h.summarize_h2(got)}; liveness: "
              f"{h.liveness(gw.port) or 'ok'}")
        return 1
    finally:
        gw.stop()
        up.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
