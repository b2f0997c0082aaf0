#!/usr/bin/python3
"""Reproducer (credits campaign, 2026-12-06): a metered answer the upstream frames by
Content-Length or by closing its connection is relayed with broken framing.

1. HTTP/1.1. A metered answer (per-token route: an SSE stream, or any other answer counted
   by its bytes) is written through `writeMetered`, which frames every piece as a chunk
   whenever the client speaks HTTP/1.1 (`rechunks`). The head writer announces
   `Transfer-Encoding: chunked` only when the upstream's answer was chunked: a
   Content-Length answer keeps its `Content-Length: N` and a close-delimited one has no
   framing field, yet their bodies arrive as `58\\r\\n<data>\\r\\n`. The client reads size
   lines as payload; with Content-Length it stops N bytes in and the rest (`\\r\\n` and the
   tail) is read as the next response on the keep-alive connection.
2. HTTP/2. A Content-Length answer cut off for want of credits ends short (`cutOff`: "a
   length-framed answer cannot take an event it did not announce"), meant as a closed
   connection (HTTP/1) or a reset stream (HTTP/2); but H2Stream ignores
   `closeAfterResponse` and ends the stream with END_STREAM after fewer DATA bytes than
   the `content-length` it forwarded: a malformed response (RFC 9113 §8.1.1) that a client
   takes as complete or rejects.

Steps (one proxy, the credits_fuzz policy: flowise route per_request 1, per_token 1/1 per
1, reserve_tokens 3; consumer `big` with 10^9 credits, `small` with 50):
  a. HTTP/1.1, big: the upstream answers 20 Flowise token events with Content-Length;
  b. HTTP/1.1, big: the same, close-delimited;
  c. HTTP/1.1, big, route `bytes` (per-token, no stream): a JSON answer with Content-Length;
  d. h2c, small: 400 token events with Content-Length: the account runs out mid-stream.
Expected: a-c carry the upstream's bytes exactly (a, c on a connection that stays usable);
d ends with RST_STREAM (or the connection closing), never END_STREAM short of its
content-length. Observed on e7747e7: a-c carry chunk framing (`b0\\r\\nmessage:...`); d
ends with END_STREAM after 1,980 bytes of a 17,600-byte content-length.

  /usr/bin/python3 Fuzz/blackbox/repro/credits_length_framed_meter.py [--binary PATH]
"""
import argparse
import os
import random
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import credits_fuzz as cf  # noqa: E402
import h2_fuzz as h  # noqa: E402
import proxy_fuzz as pf  # noqa: E402

EVENT = b'message:\ndata:{"event":"token","data":"x"}\n\n'
BODY = b'{"question":"hi"}'


def case(name, proto, route, key, answer, ending="keep"):
    c = cf.Case(name, proto)
    rid = name + "-0"
    req = cf.Req(rid, route)
    req.meta["sid"] = 1
    c.reqs = [req]
    framing = "close" if b"Content-Length" not in answer else "length"
    c.scripts[rid] = (pf.Script(answer, [], ending), {"framing": framing, "damaged": False, "structured": True})
    path = cf.ROUTES[route][0] + b"f"
    if proto == "h2":
        block = h.hp_block([(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"h"), (b":path", path),
                            (b"x-api-key", key), (b"x-fuzz-case", rid.encode()), (b"content-length", b"%d" % len(BODY))])
        c.data = (h.PREFACE + h.settings([]) + h.frame(h.HEADERS, h.END_HEADERS, 1, block)
                  + h.frame(h.DATA, h.END_STREAM, 1, BODY))
    else:
        c.data = (b"POST " + path + b" HTTP/1.1\r\nHost: h\r\nX-API-Key: " + key + b"\r\nX-Fuzz-Case: " + rid.encode()
                  + b"\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
    return c


def sse(n, length=True):
    body = EVENT * n
    framing = b"Content-Length: %d\r\n" % len(body) if length else b""
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + framing + b"\r\n" + body


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", default=os.path.join(cf.ROOT, ".build-asan", "debug", "tollgate"))
    a = p.parse_args()
    up = h.Upstream()
    workdir = tempfile.mkdtemp(prefix="tollgate-repro-")
    gw = cf.Gateway(os.path.abspath(a.binary), up.port, workdir, threads=1)
    gw.start()
    bad = 0
    try:
        json = b'{"text":"hello","usage":{"output_tokens":5}}'
        cases = [
            ("a", case("a", "h1", "flowise", cf.BIG_KEY, sse(20))),
            ("b", case("b", "h1", "flowise", cf.BIG_KEY, sse(20, length=False), ending="close")),
            ("c", case("c", "h1", "bytes", cf.BIG_KEY,
                       b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(json) + json)),
            ("d", case("d", "h2", "flowise", cf.SMALL_KEY, sse(400))),
        ]
        for name, c in cases:
            for rid, (script, _) in c.scripts.items():
                up.register(rid, script)
            o = (cf.run_h2 if c.proto == "h2" else cf.run_h1)(gw.port, c, random.Random(0))
            problems = cf.check_h2(c, o) if c.proto == "h2" else cf.check_h1(c, o)
            if c.proto == "h2":
                st = o.h2.streams.get(1, {})
                cl = [v for k, v in st.get("fields", []) if k == b"content-length"]
                seen = (f"status {st.get('status')}, content-length {cl[0].decode() if cl else '-'}, "
                        f"{len(st.get('data', b''))} DATA bytes, {'END_STREAM' if st.get('ended') else ''}"
                        f"{' RST_STREAM %d' % st['reset'] if st.get('reset') is not None else ''}")
            else:
                head, _, body = bytes(o.received).partition(b"\r\n\r\n")
                status = head.split(b"\r\n")[0].decode("latin-1")
                seen = f"{status}, body starts {body[:24]!r}"
            print(f"{name} ({c.proto}, {c.reqs[0].route}): {seen}")
            for kind, detail in problems:
                print(f"    {kind}: {detail}  <-- BUG")
            bad += bool(problems)
        print("BUG reproduced" if bad else "not reproduced (fixed?)")
        return 1 if bad else 0
    finally:
        gw.stop()
        up.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
