#!/usr/bin/python3
"""Reproducer (credits campaign, 2026-12-06): a metered answer that waits on a slow client
stalls, or reaches it with broken chunk framing.

1. Stall. Metered (and de-chunked) answer bytes are framed from the upstream buffer into the
   client's answer buffer (`outBuf`, 24 KiB) as room comes. When the upstream buffer (20 KiB)
   is full of bytes still waiting for that room and the upstream stays readable,
   `readUpstream` returns at once ("no room to read") without framing them, and the path that
   does frame buffered bytes only runs when the upstream is not readable: the answer stops
   after one answer buffer (24,560 bytes) until the backend's idle time-out (5 minutes by
   default; here 2 s, then RST_STREAM / a closed connection). And an EOF read while bytes
   still waited ended a close-delimited answer without them (a clean end, data lost: what
   the campaign first saw).
2. Broken chunk framing. For an HTTP/1.1 client a metered chunked answer is framed again,
   one chunk per piece the meter passes; a piece ends at every budget stop (every
   `reserve_tokens` tokens, the reservation extended each time), each adds a size line and
   CRLF (8 bytes), but `frameMetered` kept only 16 bytes of room beyond the data: once the
   client is slow (the buffer nearly full) the writes past the end are dropped by IOBuffer,
   so a size line is followed by less data than it announces.

Steps (the credits_fuzz policy: flowise route per_request 1, per_token 1/1 per 1,
reserve_tokens 3; consumer `big`, 10^9 credits):
  a. h2c, stream window 4096 refilled as the client reads: a close-delimited stream of 5,000
     token events (243,890 bytes);
  b. HTTP/1.1, a slow client (4 KiB receive buffer, 4 KiB reads) that reads nothing for 1 s:
     a chunked stream of 20,000 events of 243 bytes (4.9 MB).
Expected: a and b carry the upstream's bytes whole, b in valid chunks. Observed on e7747e7:
a stops at 24,560 bytes, then RST_STREAM after the backend's 2 s idle time-out; b breaks
its chunk framing once the socket buffers on the way have drained (`malformed chunk at
+2817893: b'237\\r\\nyyyy'`; with only the stall fixed too).

  /usr/bin/python3 Fuzz/blackbox/repro/credits_slow_client_meter.py [--binary PATH]
"""
import argparse
import os
import shutil
import socket
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import credits_fuzz as cf  # noqa: E402
import h2_fuzz as h  # noqa: E402
import proxy_fuzz as pf  # noqa: E402

BODY = b'{"question":"hi"}'


def h2_window(port, up):
    events = b"".join(b'message:\ndata:{"event":"token","data":"w%d "}\n\n' % i for i in range(5000))
    up.register("a", pf.Script(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + events, [], "close"))
    block = h.hp_block([(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"h"),
                        (b":path", b"/api/v1/prediction/f"), (b"x-api-key", cf.BIG_KEY), (b"x-fuzz-case", b"a"),
                        (b"content-length", b"%d" % len(BODY))])
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(h.PREFACE + h.settings([(4, 4096)]) + h.frame(h.WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30))
              + h.frame(h.HEADERS, h.END_HEADERS, 1, block) + h.frame(h.DATA, h.END_STREAM, 1, BODY))
    r = cf.H2Reader(16384)
    s.settimeout(10)
    try:
        while not r.settled([1]) and not r.problem:
            d = s.recv(65536)
            if not d:
                break
            r.feed(d)
            s.sendall(b"".join(r.replies))      # SETTINGS/PING acks, WINDOW_UPDATE per DATA frame
            r.replies = []
    except socket.timeout:
        pass
    s.close()
    st = r.streams.get(1, {})
    got = bytes(st.get("data", b""))
    ok = st.get("ended") and st.get("reset") is None and got == events
    end = "END_STREAM" if st.get("ended") else f"RST_STREAM {st.get('reset')}" if st.get("reset") is not None else "nothing"
    print(f"a (h2, window 4096): {len(got)} of {len(events)} bytes, then {end}{'' if ok else '  <-- BUG'}")
    return ok


def h1_slow(port, up):
    ev = b'message:\ndata:{"event":"token","data":"' + b"y" * 200 + b'"}\n\n'
    events = ev * 20000
    chunks = b"".join(b"%x\r\n" % len(events[k:k + 5000]) + events[k:k + 5000] + b"\r\n" for k in range(0, len(events), 5000))
    up.register("b", pf.Script(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                               + chunks + b"0\r\n\r\n", [], "keep"))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"POST /api/v1/prediction/f HTTP/1.1\r\nHost: h\r\nX-API-Key: " + cf.BIG_KEY + b"\r\nX-Fuzz-Case: b\r\n"
              b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
    time.sleep(1.0)                  # the client's pause: every buffer on the way fills
    s.settimeout(10)
    got = bytearray()
    try:
        while True:
            d = s.recv(4096)
            if not d:
                break
            got += d
    except socket.timeout:
        pass
    s.close()
    msgs, problem = cf.read_messages(bytes(got), [b"POST"], True)
    m = msgs[0] if msgs else None
    ok = problem is None and m is not None and m.state == "complete" and m.body == events
    print(f"b (HTTP/1.1, slow reader, chunked, 4 KiB reads): {len(m.body) if m else 0} of {len(events)} payload bytes"
          f"{', ' + problem if problem else ''}{'' if ok else '  <-- BUG'}")
    return ok


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", default=os.path.join(cf.ROOT, ".build-asan", "debug", "tollgate"))
    a = p.parse_args()
    up = cf.Upstream()
    workdir = tempfile.mkdtemp(prefix="tollgate-repro-")
    gw = cf.Gateway(os.path.abspath(a.binary), up.port, workdir, threads=1)
    gw.start()
    try:
        bad = (not h2_window(gw.port, up)) + (not h1_slow(gw.port, up))
        print("BUG reproduced" if bad else "not reproduced (fixed?)")
        return 1 if bad else 0
    finally:
        gw.stop()
        up.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
