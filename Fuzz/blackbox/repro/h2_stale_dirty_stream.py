#!/usr/bin/python3
"""Reproducer (h2 fuzz campaign, 2026-12-06): a client that sends a request and closes at
once leaves pooled H2Stream objects flagged dirty; a later stream reusing one never runs
its first step, so its request head is never written to a pooled upstream connection and
the client gets 504 after the backend's response time-out (1 s here) instead of the answer.

Cause, as read from the code: HTTP2Session.drive() feeds the request (H2Stream.forward →
session.markDirty: isDirty = true, queued in `dirty`), then reads EOF and calls close()
before pump() ran; close() empties `dirty` and gives the streams back
(LoopContext.giveBackStream) without clearing `isDirty`, and neither takeStream nor
beginHead resets it. markDirty() on the reused stream then returns at once ("already
dirty") forever. With a fresh upstream connection the connect event still drives step(),
so only pooled upstream connections (and request bodies, window resumes) stall. strace of
the failing request: no write at all to the pooled upstream fd, then close(fd) and the 504
one second later.

Steps, on one event loop (--threads 1): poison once: preface + SETTINGS, 50 ms later
HEADERS (GET, END_STREAM) and the FIN in one TCP segment (TCP_CORK); then rounds of an
HTTP/1.1 request (it leaves an idle upstream connection in the scripted backend's pool)
and a well-formed h2 request (python h2). Expected: 200 at once, every time. Observed on
d7a4069: 504 after ~1 s, every round (the poisoned stream object keeps coming back from
the loop's spare list). On 2d46555 (main, streams started after their read batch) the h2
request is never answered at all (the client gives up after --timeout). `--poison-every-round` poisons before each round.

  /usr/bin/python3 Fuzz/blackbox/repro/h2_stale_dirty_stream.py [--binary PATH] [--rounds N] [--poison-every-round]
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


def poison(port):
    s = socket.create_connection(("127.0.0.1", port))
    block = h.hp_block([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"localhost"),
                        (b":path", b"/public/p"), (b"x-fuzz-case", b"live")])
    # The preface first (the HTTP/1.1 session hands the socket to an HTTP/2 one), then the
    # request and the FIN together: one drive() feeds the request and reads EOF.
    s.sendall(h.PREFACE + h.settings([]))
    time.sleep(0.05)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)     # the request and the FIN in one segment
    s.sendall(h.frame(h.HEADERS, h.END_STREAM | h.END_HEADERS, 1, block))
    s.shutdown(socket.SHUT_WR)
    s.settimeout(2)
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", default=os.path.join(h.ROOT, ".build-asan", "debug", "tollgate"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--poison-every-round", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds the h2 request waits for its answer")
    a = p.parse_args()
    up = h.Upstream()
    workdir = tempfile.mkdtemp(prefix="tollgate-repro-")
    gw = h.Gateway(os.path.abspath(a.binary), up.port, workdir, threads=1)
    gw.start()
    bad = 0
    try:
        for r in range(a.rounds):
            if r == 0 or a.poison_every_round:
                poison(gw.port)
            h.h1_live(gw.port)                  # leaves an idle upstream connection in the pool
            t0 = time.monotonic()
            ok, detail = h.h2_live(gw.port, timeout=a.timeout)
            took = time.monotonic() - t0
            stale = "504" in detail or "timed out" in detail or "timeout" in detail
            bad += stale
            print(f"round {r}: h2 request answered in {took:.2f}s: {detail[:40]}{'  <-- BUG' if stale else ''}")
        print("BUG reproduced" if bad else "not reproduced (fixed?)")
        return 1 if bad else 0
    finally:
        gw.stop()
        up.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
