#!/usr/bin/python3
"""Black-box HTTP/2 fuzzer for the real `tollgate` binary (built with AddressSanitizer).

On loopback only, it starts the same processes as proxy_fuzz.py (a scripted raw HTTP/1.1
upstream, `tollgate backends` for /api/finance/, `tollgate serve`) and talks h2c with prior
knowledge to the plain listener: the 24-byte preface, then frames it builds by hand
(9-byte header + payload; HPACK through the `hpack` package or raw bytes). Each case is
one connection. It is generated from a menu of scenarios (requests of every shape, bodies,
odd SETTINGS, CONTINUATION chains, HPACK damage, pseudo-header violations,
connection-specific and malformed fields, flow-control abuse, RST_STREAM / PING /
PRIORITY / SETTINGS floods, unknown frames, GOAWAY, PUSH_PROMISE, stream-id games,
truncation, garbage after the preface) or mutated from the pool (seeds in
Fuzz/blackbox/seeds/h2/ and cases whose answer looked new) at frame level (drop, repeat,
swap, retype, reflag, re-id, relength, splice) and byte level. The bytes go out in pieces
(frame boundaries or anywhere), the upstream answers a request's `x-fuzz-case` with a
mutated HTTP/1.1 response (proxy_fuzz's mutator), so the response path to HEADERS/DATA is
fuzzed too.

After every case a fresh well-formed h2 request (python `h2`) and a fresh HTTP/1.1 request
must be answered 200 (liveness); the proxy's stderr is watched for ASan / Swift fatal
reports. A crash or a failed liveness check (a hang) stops the workers; the cases in
flight are replayed alone on a fresh proxy, and the one that reproduces is saved under
Fuzz/crashes/h2/<kind>-<sig>-<case>/ (client.bin, response.bin, case.json, stderr.txt,
stack.txt, REPRODUCE; a hang adds gdb's thread backtraces). `--replay DIR` replays one,
`--minimize DIR` shrinks it (frame-level delta debugging, each attempt on a fresh proxy).
Connections the proxy still holds open 20 s after the client went quiet are reported as
lingering (not a failure; the first few are saved under Fuzz/crashes/h2/linger-*).

Bounded by --duration; prints `h2: executions=N duration=S crashes=C hangs=H unique=U` last.
Exit status 1 when a crash or hang was found. Needs /usr/bin/python3 with `h2` and `hpack`.
"""

import argparse
import hashlib
import json
import os
import random
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_fuzz as pf  # noqa: E402

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import hpack  # noqa: E402
from hpack.huffman import HuffmanEncoder  # noqa: E402
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH  # noqa: E402

ROOT = pf.ROOT
SEEDS_H2 = os.path.join(ROOT, "Fuzz", "blackbox", "seeds", "h2")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
KEY = pf.PLAIN_KEY

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FRAME_NAMES = {0: "DATA", 1: "HEADERS", 2: "PRIORITY", 3: "RST", 4: "SETTINGS", 5: "PUSH", 6: "PING", 7: "GOAWAY",
               8: "WU", 9: "CONT"}
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 0x1, 0x1, 0x4, 0x8, 0x20
HUFF = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)

# ---------------------------------------------------------------------------------------
# Frames and HPACK by hand
# ---------------------------------------------------------------------------------------


def frame(ftype, flags, sid, payload=b"", length=None):
    n = len(payload) if length is None else length
    return struct.pack(">I", n & 0xFFFFFF)[1:] + bytes([ftype & 0xFF, flags & 0xFF]) + struct.pack(">I", sid & 0xFFFFFFFF) + payload


def split_frames(data):
    """Frames by their length fields; a tail that is not a whole frame is its own item."""
    out, i = [], 0
    while i < len(data):
        if len(data) - i < 9:
            out.append(data[i:])
            break
        n = int.from_bytes(data[i:i + 3], "big")
        out.append(data[i:i + 9 + n])
        i += 9 + n
    return out


def settings(entries, flags=0, sid=0):
    return frame(SETTINGS, flags, sid, b"".join(struct.pack(">HI", k & 0xFFFF, v & 0xFFFFFFFF) for k, v in entries))


def hp_int(value, prefix_bits, first=0):
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([first | value])
    out = bytearray([first | top])
    value -= top
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hp_str(s, huffman=False):
    if huffman:
        e = HUFF.encode(s)
        return hp_int(len(e), 7, 0x80) + e
    return hp_int(len(s), 7) + s


def hp_literal(name, value, mode=0x00, huffman=False):
    """A literal field with a literal name: mode 0x00 without indexing, 0x10 never indexed,
    0x40 with incremental indexing."""
    return hp_int(0, 6 if mode == 0x40 else 4, mode) + hp_str(name, huffman) + hp_str(value, huffman)


def hp_block(headers, rng=None):
    """A header block of literals only (no table state needed): any name, any value."""
    out = bytearray()
    for n, v in headers:
        out += hp_literal(n, v, rng.choice((0x00, 0x10, 0x00)) if rng else 0x00, huffman=bool(rng and rng.random() < 0.3))
    return bytes(out)


# ---------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------

BASE_REQUESTS = [
    # (method, path, extra fields, body)
    (b"GET", b"/public/p?x=1", [], b""),
    (b"GET", b"/health", [], b""),
    (b"HEAD", b"/public/h", [], b""),
    (b"POST", b"/public/upload", [(b"content-type", b"text/plain")], b"hello world"),
    (b"PUT", b"/public/big", [], b"B" * 3000),
    (b"GET", b"/api/finance/whoami", [(b"x-api-key", KEY)], b""),
    (b"POST", b"/api/finance/echo", [(b"x-api-key", KEY)], b"{\"a\":1}"),
    (b"GET", b"/api/finance/slow?ms=300", [(b"authorization", b"Bearer " + KEY)], b""),
    (b"GET", b"/api/finance/stream?events=4&interval_ms=30", [(b"x-api-key", KEY)], b""),
    (b"GET", b"/api/keyed?api_key=" + KEY, [], b""),
    (b"GET", b"/api/keyed", [(b"x-api-key", b"wrong")], b""),
    (b"DELETE", b"/public/d", [(b"x-forwarded-for", b"198.51.100.7, 127.0.0.1")], b""),
    (b"OPTIONS", b"*", [], b""),
    (b"GET", b"/public/%2e%2e/api/x", [], b""),
]

HEADER_EXTRAS = [
    (b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"), (b"proxy-connection", b"close"),
    (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c"), (b"http2-settings", b"AAMAAABkAAQAAP__"),
    (b"te", b"trailers"), (b"te", b"gzip"), (b"te", b"trailers, gzip"), (b"host", b"h"), (b"host", b"other"),
    (b"content-length", b"0"), (b"content-length", b"5"), (b"content-length", b"-1"), (b"content-length", b"abc"),
    (b"content-length", b"99999999999999999999"), (b"content-length", b"3, 3"), (b"expect", b"100-continue"),
    (b"cookie", b"a=b"), (b"cookie", b""), (b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-proto", b"https"),
    (b"x-request-id", b"r1"), (b"traceparent", b"00-zz"), (b"authorization", b"Bearer " + KEY),
    (b"x-api-key", KEY), (b"x-alt-key", KEY), (b"x-tollgate-consumer", b"spoof"), (b"accept-encoding", b"gzip"),
    (b"", b"empty-name"), (b"x-empty", b""), (b"X-Upper", b"v"), (b"Host", b"h"), (b"x-nul", b"a\x00b"),
    (b"x-cr", b"a\rb"), (b"x-lf", b"a\nb"), (b"x-crlf", b"a\r\nx-injected: 1"), (b"x-sp", b" lead"),
    (b"x-sp", b"trail "), (b"x y", b"space"), (b"x:y", b"colon"), (b"x-del", b"\x7f"), (b"x-8bit", b"\xff\x80"),
    (b"x-tab", b"a\tb"), (b":status", b"200"), (b":foo", b"bar"), (b":protocol", b"websocket"), (b":scheme", b"ftp"),
    (b"connection", b"x-hop, te"), (b"x-hop", b"1"), (b"trailer", b"x"), (b"via", b"1.1 x"), (b"forwarded", b"for=1.2.3.4"),
]

HUGE = [100, 1000, 4000, 8100, 8192, 12000, 16000, 16384, 16385, 17000, 20000, 32000, 70000]


class Req:
    """One request's fields (pseudo first unless mutated) and body."""

    def __init__(self, fields, body, case_id):
        self.fields = fields
        self.body = body
        self.case_id = case_id


def base_request(rng, case_id, scheme=b"http"):
    method, path, extra, body = rng.choice(BASE_REQUESTS)
    fields = [(b":method", method), (b":scheme", scheme), (b":authority", rng.choice([b"localhost", b"h", b"127.0.0.1:1"])),
              (b":path", path)]
    if rng.random() < 0.5:
        # Order of the pseudo-headers is free.
        rng.shuffle(fields)
    fields += list(extra)
    fields.append((b"x-fuzz-case", case_id.encode()))
    if body and rng.random() < 0.6:
        fields.append((b"content-length", str(len(body)).encode()))
    return Req(fields, body, case_id)


def mutate_fields(rng, req):
    f = req.fields
    op = rng.randrange(22)
    pseudo = [i for i, (n, _) in enumerate(f) if n.startswith(b":")]
    regular = [i for i, (n, _) in enumerate(f) if not n.startswith(b":")]
    if op == 0 and pseudo:                      # a pseudo-header missing
        del f[rng.choice(pseudo)]
    elif op == 1 and pseudo:                    # a pseudo-header twice
        i = rng.choice(pseudo)
        f.insert(rng.randint(0, len(f)), (f[i][0], rng.choice([f[i][1], b"/x", b"GET", b"other"])))
    elif op == 2 and pseudo:                    # a pseudo-header after a regular field
        i = rng.choice(pseudo)
        item = f.pop(i)
        f.append(item)
    elif op == 3:                               # :path odd
        v = rng.choice([b"", b"*", b"noslash", b"//", b"/../../etc", b"/a%00b", b"/?", b"/#frag", b"http://h/abs",
                        b"/" + b"a" * rng.choice(HUGE), b"/p?" + b"q=1&" * 3000, b"/\xff", b"/ sp"])
        f[:] = [(n, v if n == b":path" else x) for n, x in f]
    elif op == 4:                               # CONNECT, with or without what it must not have
        f[:] = [(n, x) for n, x in f if n not in (b":method", b":path", b":scheme")]
        f.insert(0, (b":method", b"CONNECT"))
        if rng.random() < 0.5:
            f.insert(1, (b":path", b"/"))
        if rng.random() < 0.4:
            f.insert(1, (b":scheme", b"https"))
        if rng.random() < 0.3:
            f.insert(1, (b":protocol", b"websocket"))
        if rng.random() < 0.3:
            f[:] = [(n, x) for n, x in f if n != b":authority"]
    elif op == 5:                               # a connection-specific or odd field
        for _ in range(rng.randint(1, 4)):
            f.insert(rng.randint(0, len(f)), rng.choice(HEADER_EXTRAS))
    elif op == 6 and regular:                   # upper-case a name
        i = rng.choice(regular)
        f[i] = (f[i][0].upper() if rng.random() < 0.7 else f[i][0].capitalize(), f[i][1])
    elif op == 7 and f:                         # CR / LF / NUL / CTL in a value
        i = rng.randrange(len(f))
        v = bytearray(f[i][1])
        v[rng.randint(0, len(v)):rng.randint(0, len(v))] = rng.choice([b"\r", b"\n", b"\x00", b"\r\n", b"\x01", b"\x7f", b"\xff"])
        f[i] = (f[i][0], bytes(v))
    elif op == 8:                               # content-length against the DATA
        n = len(req.body)
        f[:] = [(a, b) for a, b in f if a != b"content-length"]
        f.append((b"content-length", str(rng.choice([0, 1, n - 1, n + 1, n * 2, 2 ** 31, 2 ** 63, 10 ** 30])).encode()))
        if rng.random() < 0.2:
            f.append((b"content-length", str(n).encode()))
    elif op == 9:                               # a huge value
        i = rng.randrange(len(f)) if f else 0
        name = f[i][0] if f and rng.random() < 0.5 else rng.choice([b"x-big", b"cookie", b"x-forwarded-for", b"authorization",
                                                                    b"host", b"x-request-id"])
        f.append((name, bytes([rng.choice(b"a,.;1 ")]) * rng.choice(HUGE)))
    elif op == 10:                              # many fields
        n = rng.choice([50, 99, 100, 101, 200, 255, 256, 257, 500, 1000])
        name = rng.choice([b"x-f", b"cookie", b"x-forwarded-for", b"via"])
        f += [(name if name != b"x-f" else b"x-f%d" % k, b"v%d" % k) for k in range(n)]
    elif op == 11:                              # cookie crumbs
        f += [(b"cookie", b"c%d=%s" % (k, b"v" * rng.choice((0, 1, 100, 1000)))) for k in range(rng.choice((2, 10, 100, 400)))]
    elif op == 12:                              # Host against :authority
        f.append((b"host", rng.choice([b"other", b"LOCALHOST", b"localhost", b"h", b"", b"h:1", b"h\x00"])))
        if rng.random() < 0.3:
            f[:] = [(n, x) for n, x in f if n != b":authority"]
    elif op == 13:                              # an empty :authority / authority with userinfo
        f[:] = [(n, rng.choice([b"", b"u@h", b"h:99999", b"[::1]", b"[::1", b"h h"]) if n == b":authority" else x) for n, x in f]
    elif op == 14:                              # :method odd
        f[:] = [(n, rng.choice([b"", b"get", b"G ET", b"PRI", b"TRACE", b"X" * 300, b"GET\x00"]) if n == b":method" else x)
                for n, x in f]
    elif op == 15:                              # :scheme odd
        f[:] = [(n, rng.choice([b"", b"https", b"HTTP", b"ftp", b"h\x00"]) if n == b":scheme" else x) for n, x in f]
    elif op == 16 and regular:                  # a name with odd bytes
        i = rng.choice(regular)
        f[i] = (f[i][0] + rng.choice([b" ", b":", b"\x00", b"\x7f", b"\xe9", b"(", b"\""]), f[i][1])
    elif op == 17:                              # a field only pseudo-headers (nothing else)
        f[:] = [(n, x) for n, x in f if n.startswith(b":")]
    elif op == 18:                              # the case header twice / missing
        f.append((b"x-fuzz-case", req.case_id.encode()))
    elif op == 19:                              # the body grows or shrinks
        req.body = rng.choice([b"", b"x", req.body * 2, b"y" * rng.choice([16384, 65535, 65536, 70000, 200000])])
    elif op == 20 and f:                        # shuffle everything
        rng.shuffle(f)
    else:                                       # duplicate a random field
        if f:
            f.append(rng.choice(f))
    return req


class Encoders:
    """A connection's HPACK encoder (its dynamic table follows what was sent)."""

    def __init__(self):
        self.enc = hpack.Encoder()

    def encode(self, rng, fields):
        mode = rng.random()
        if mode < 0.55:
            try:
                if rng.random() < 0.1:
                    self.enc.header_table_size = rng.choice([0, 256, 4096])
                return self.enc.encode(fields, huffman=rng.random() < 0.6)
            except Exception:
                return hp_block(fields, rng)
        return hp_block(fields, rng)


def hpack_damage(rng, block):
    """Raw HPACK damage: bad indices, size updates, huge or lying literals, bad Huffman."""
    op = rng.randrange(12)
    if op == 0:    # dynamic table size update: first (maybe too big), or after a field (illegal)
        upd = hp_int(rng.choice([0, 1, 4096, 4097, 65536, 2 ** 28, 2 ** 32 + 1]), 5, 0x20)
        return upd * rng.choice((1, 1, 2, 3)) + block if rng.random() < 0.6 else block + upd
    if op == 1:    # an indexed field out of range (0, past the tables, huge)
        return block + hp_int(rng.choice([0, 62, 63, 70, 128, 4096, 2 ** 21, 2 ** 31, 2 ** 40]), 7, 0x80)
    if op == 2:    # a literal naming an index out of range
        return block + hp_int(rng.choice([62, 99, 10000, 2 ** 30]), 6, 0x40) + hp_str(b"v")
    if op == 3:    # a literal whose length lies (longer than the block)
        return block + b"\x00" + hp_int(rng.choice([5, 127, 128, 16384, 2 ** 20, 2 ** 31]), 7) + b"abc"
    if op == 4:    # an integer that overflows
        return block + b"\x80" + b"\xff" * rng.choice([4, 5, 8, 10, 16]) + b"\x0f"
    if op == 5:    # bad Huffman: EOS, bad padding, padding longer than 7 bits
        return block + b"\x00" + rng.choice([b"\x84\xff\xff\xff\xff", b"\x81\x00", b"\x82\xff\xff", b"\x81\xfe"]) + hp_str(b"v")
    if op == 6:    # a huge literal (fills the table: an HPACK bomb follows in indexed fields)
        big = b"b" * rng.choice([4000, 4064, 4065, 8000, 16000])
        return block + hp_literal(b"x-bomb", big, 0x40) + hp_int(62, 7, 0x80) * rng.choice([1, 10, 100, 1000])
    if op == 7:    # cut the block short
        return block[:rng.randint(0, max(0, len(block) - 1))]
    if op == 8:    # random bytes inside
        b = bytearray(block)
        for _ in range(rng.randint(1, 4)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if op == 9:    # indexed static entries only (a request of :method GET, :path /, ...)
        return bytes(rng.choice([0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0xbe, 0xbf]) for _ in range(rng.randint(1, 20)))
    if op == 10:   # a name of zero length, a value of 64 KiB
        return block + b"\x00\x00" + hp_str(b"v" * rng.choice([1, 65536]))
    return block + b"\x20" + block   # size update 0 mid-block, then the block again


# ---------------------------------------------------------------------------------------
# Scenarios: one connection's frames after the preface
# ---------------------------------------------------------------------------------------

SETTING_IDS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x10, 0xFF, 0xFFFF]
SETTING_VALUES = [0, 1, 2, 100, 4096, 16383, 16384, 65535, 65536, 16777215, 16777216, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1]


class Conn:
    """Builds one connection's byte stream, frame by frame."""

    def __init__(self, rng, case_id, scheme=b"http"):
        self.rng = rng
        self.case_id = case_id
        self.scheme = scheme
        self.enc = Encoders()
        self.next_id = 1
        self.frames = []
        self.max_frame = 16384

    def sid(self):
        r = self.rng.random()
        if r < 0.9:
            s = self.next_id
            self.next_id += 2
            return s
        return self.rng.choice([0, 2, 4, max(1, self.next_id - 2), 2 ** 31 - 1, 0x80000001, self.next_id + 1000])

    def add(self, *frames):
        self.frames.extend(frames)

    def headers_frames(self, sid, block, end_stream, rng, chain=None, prio=False, pad=None):
        """HEADERS (+ CONTINUATION chain): block split in pieces, maybe empty CONTINUATIONs."""
        pieces = [block]
        if chain is None:
            chain = rng.random() < 0.3
        if chain and block:
            k = rng.choice([2, 3, 4, 8, 9, 20])
            cuts = sorted(rng.randint(0, len(block)) for _ in range(k - 1))
            pieces, last = [], 0
            for c in cuts + [len(block)]:
                pieces.append(block[last:c])
                last = c
        if chain and rng.random() < 0.4:
            # Empty CONTINUATIONs: the limit is 8 per block; around it and far past.
            n = rng.choice([1, 6, 7, 8, 9, 50, 1000])
            at = rng.randint(1, len(pieces))
            pieces[at:at] = [b""] * n
        flags = END_STREAM if end_stream else 0
        payload = pieces[0]
        if prio:
            flags |= PRIO
            payload = struct.pack(">IB", rng.choice([0, sid, 1, 3, 0x80000000 | 1]), rng.randrange(256)) + payload
        if pad is not None:
            flags |= PADDED
            payload = bytes([pad]) + payload + b"\x00" * rng.choice([pad, pad, 0, max(0, pad - 1)])
        out = []
        if len(pieces) == 1:
            out.append(frame(HEADERS, flags | END_HEADERS, sid, payload))
        else:
            out.append(frame(HEADERS, flags, sid, payload))
            for i, p in enumerate(pieces[1:]):
                last = i == len(pieces) - 2
                out.append(frame(CONTINUATION, END_HEADERS if last else 0, sid, p))
        return out

    def data_frames(self, sid, body, end_stream, rng, valid=False):
        out = []
        size = rng.choice([1, 100, 1000, 16384, 16384] + ([] if valid else [16385]))
        chunks = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
        for i, c in enumerate(chunks):
            flags = END_STREAM if end_stream and i == len(chunks) - 1 else 0
            if valid:
                out.append(frame(DATA, flags, sid, c))
            elif rng.random() < 0.1:
                pad = rng.choice([0, 1, 255])
                out.append(frame(DATA, flags | PADDED, sid, bytes([pad]) + c + b"\x00" * rng.choice([pad, 0, pad + 1])))
            else:
                out.append(frame(DATA, flags, sid, c))
        return out

    def request(self, req=None, mutate=0.5, damage=0.15, sid=None):
        rng = self.rng
        req = req or base_request(rng, self.case_id, self.scheme)
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3)) if rng.random() < mutate else 0):
            mutate_fields(rng, req)
        block = self.enc.encode(rng, req.fields)
        if rng.random() < damage:
            block = hpack_damage(rng, block)
        sid = self.sid() if sid is None else sid
        has_body = bool(req.body)
        end_stream = not has_body and rng.random() < 0.9
        self.add(*self.headers_frames(sid, block, end_stream, rng, prio=rng.random() < 0.1,
                                      pad=rng.choice([0, 3, 255]) if rng.random() < 0.08 else None))
        if has_body or not end_stream:
            self.add(*self.data_frames(sid, req.body, rng.random() < 0.85, rng))
            if rng.random() < 0.1:
                # Trailers (maybe with pseudo-headers, which they must not have).
                tr = [(b"x-trailer", b"1")] + ([(b":path", b"/x")] if rng.random() < 0.3 else [])
                self.add(frame(HEADERS, END_STREAM | END_HEADERS, sid, hp_block(tr)))
        return sid

    # --- connection-level scenarios ---

    def odd_settings(self):
        rng = self.rng
        n = rng.choice([0, 1, 2, 3, 6, 16, 17, 30])
        entries = [(rng.choice(SETTING_IDS), rng.choice(SETTING_VALUES)) for _ in range(n)]
        f = settings(entries, flags=ACK if rng.random() < 0.1 else 0, sid=rng.choice([0] * 9 + [1]))
        if rng.random() < 0.15:   # length not a multiple of 6
            f = frame(SETTINGS, 0, 0, f[9:] + b"\x00" * rng.choice([1, 2, 5]))
        self.add(f)

    def settings_flood(self):
        n = self.rng.choice([20, 100, 1000, 3000])
        self.add(*[settings([(4, 65535)]) for _ in range(n)])

    def window_update(self):
        rng = self.rng
        sid = rng.choice([0, 0, 1, self.next_id, self.next_id - 2, 2 ** 31 - 1])
        inc = rng.choice([0, 1, 65535, 2 ** 31 - 1, 2 ** 31 - 65535, 0x80000000, 0xFFFFFFFF])
        payload = struct.pack(">I", inc)
        if rng.random() < 0.1:
            payload = payload[:rng.choice([0, 3])] if rng.random() < 0.5 else payload + b"\x00"
        self.add(*[frame(WINDOW_UPDATE, 0, sid, payload)] * rng.choice([1, 1, 2, 3, 100]))

    def rst_storm(self):
        rng = self.rng
        n = rng.choice([5, 50, 199, 200, 201, 300, 1000])
        for _ in range(n):
            sid = self.next_id
            self.next_id += 2
            req = base_request(rng, self.case_id, self.scheme)
            self.add(*self.headers_frames(sid, self.enc.encode(rng, req.fields), True, rng, chain=False))
            self.add(frame(RST_STREAM, 0, sid, struct.pack(">I", rng.choice([8, 8, 0, 2, 0xFFFF]))))

    def rst_odd(self):
        rng = self.rng
        sid = rng.choice([0, self.next_id, self.next_id + 10, max(1, self.next_id - 2), 2])
        payload = struct.pack(">I", rng.choice([0, 1, 8, 0xFFFFFFFF]))
        if rng.random() < 0.2:
            payload = payload[:3]
        self.add(frame(RST_STREAM, 0, sid, payload))

    def ping_flood(self):
        rng = self.rng
        n = rng.choice([1, 10, 64, 65, 200, 1000, 5000])
        flags = ACK if rng.random() < 0.2 else 0
        body = b"\x00" * 8 if rng.random() < 0.9 else b"\x00" * rng.choice([0, 7, 9])
        self.add(*[frame(PING, flags, rng.choice([0] * 19 + [1]), body) for _ in range(n)])

    def priority(self):
        rng = self.rng
        for _ in range(rng.choice([1, 3, 100, 1000])):
            sid = rng.choice([self.next_id, self.next_id + 2 * rng.randint(0, 200), 0, 1])
            dep = rng.choice([0, sid, 1, 3, 0x80000000 | sid, 0x80000001])
            payload = struct.pack(">IB", dep, rng.randrange(256))
            if rng.random() < 0.05:
                payload = payload[:4] if rng.random() < 0.5 else payload + b"\x00"
            self.add(frame(PRIORITY, 0, sid, payload))

    def unknown_frames(self):
        rng = self.rng
        for _ in range(rng.choice([1, 2, 5, 100])):
            t = rng.choice([0x0A, 0x0B, 0x0C, 0x10, 0x14, 0x7F, 0xFF, rng.randrange(10, 256)])
            self.add(frame(t, rng.randrange(256), rng.choice([0, 1, self.next_id, 2 ** 31 - 1]),
                           os.urandom(rng.choice([0, 1, 8, 100, 16384]))))

    def goaway(self):
        rng = self.rng
        payload = struct.pack(">II", rng.choice([0, 1, 2 ** 31 - 1, self.next_id]), rng.choice([0, 1, 2, 0xB, 0xFFFFFFFF]))
        payload += os.urandom(rng.choice([0, 0, 8, 1000]))
        if rng.random() < 0.1:
            payload = payload[:rng.choice([0, 4, 7])]
        self.add(frame(GOAWAY, 0, rng.choice([0] * 9 + [1]), payload))

    def push_promise(self):
        rng = self.rng
        block = self.enc.encode(rng, [(b":method", b"GET"), (b":path", b"/p"), (b":scheme", b"http"), (b":authority", b"h")])
        self.add(frame(PUSH_PROMISE, END_HEADERS, rng.choice([1, self.next_id, 0]), struct.pack(">I", 2) + block))

    def data_odd(self):
        rng = self.rng
        op = rng.randrange(6)
        if op == 0:      # DATA on stream 0 / an idle stream / a closed one
            self.add(frame(DATA, rng.choice([0, 1]), rng.choice([0, self.next_id, self.next_id + 100, max(1, self.next_id - 2)]),
                           b"x" * rng.choice([0, 1, 100])))
        elif op == 1:    # beyond the window: a POST whose body outruns 64 KiB without WINDOW_UPDATE
            req = base_request(rng, self.case_id, self.scheme)
            req.fields = [(n, v) for n, v in req.fields if n not in (b":method", b"content-length")] + [(b":method", b"POST")]
            req.body = b"w" * rng.choice([65535, 65536, 70000, 131072, 300000])
            self.request(req, mutate=0)
        elif op == 2:    # END_STREAM, then more DATA
            sid = self.request(base_request(rng, self.case_id, self.scheme), mutate=0)
            self.add(frame(DATA, rng.choice([0, 1]), sid, b"late"))
        elif op == 3:    # empty DATA frames, lots
            sid = self.next_id
            req = base_request(rng, self.case_id, self.scheme)
            req.fields = [(n, v) for n, v in req.fields if n not in (b":method", b"content-length")] + [(b":method", b"POST")]
            self.add(*self.headers_frames(sid, self.enc.encode(rng, req.fields), False, rng, chain=False))
            self.next_id += 2
            self.add(*[frame(DATA, 0, sid, b"") for _ in range(rng.choice([10, 1000, 5000]))])
            self.add(frame(DATA, END_STREAM, sid, b""))
        elif op == 4:    # padding that lies
            sid = self.request(Req([(b":method", b"POST"), (b":scheme", self.scheme), (b":authority", b"h"),
                                    (b":path", b"/public/pad"), (b"x-fuzz-case", self.case_id.encode())], b"", self.case_id),
                               mutate=0)
            self.add(frame(DATA, PADDED | END_STREAM, sid, bytes([rng.choice([1, 10, 255])]) + b"ab"))
        else:            # a frame longer than SETTINGS_MAX_FRAME_SIZE, or one whose length lies
            n = rng.choice([16385, 20000, 2 ** 24 - 1])
            payload = b"z" * (n if n < 30000 and rng.random() < 0.5 else rng.choice([0, 100]))
            self.add(frame(rng.choice([DATA, HEADERS, CONTINUATION, 0x20]), 0, rng.choice([0, 1, self.next_id]), payload, length=n))

    def continuation_odd(self):
        rng = self.rng
        op = rng.randrange(5)
        req = base_request(rng, self.case_id, self.scheme)
        block = self.enc.encode(rng, req.fields)
        sid = self.next_id
        self.next_id += 2
        if op == 0:      # CONTINUATION with nothing open
            self.add(frame(CONTINUATION, rng.choice([0, END_HEADERS]), sid, block))
        elif op == 1:    # CONTINUATION on another stream
            self.add(frame(HEADERS, END_STREAM, sid, block[:len(block) // 2]),
                     frame(CONTINUATION, END_HEADERS, sid + 2, block[len(block) // 2:]))
        elif op == 2:    # another frame in the middle of the chain
            mid = rng.choice([frame(PING, 0, 0, b"\x00" * 8), frame(0x0B, 0, 0, b""), settings([]),
                              frame(DATA, 0, sid, b"x"), frame(HEADERS, END_HEADERS, sid + 2, block)])
            self.add(frame(HEADERS, END_STREAM, sid, block[:len(block) // 2]), mid,
                     frame(CONTINUATION, END_HEADERS, sid, block[len(block) // 2:]))
        elif op == 3:    # a chain that never ends (no END_HEADERS), long
            self.add(frame(HEADERS, END_STREAM, sid, block))
            self.add(*[frame(CONTINUATION, 0, sid, rng.choice([b"", b"\x00\x01a\x01b"])) for _ in range(rng.choice([3, 9, 100, 3000]))])
        else:            # CONTINUATION after a finished block
            self.add(frame(HEADERS, END_STREAM | END_HEADERS, sid, block), frame(CONTINUATION, END_HEADERS, sid, block))

    def many_streams(self):
        """Past SETTINGS_MAX_CONCURRENT_STREAMS (100), slow ones so they stay open."""
        rng = self.rng
        n = rng.choice([10, 100, 101, 150, 300])
        for _ in range(n):
            req = Req([(b":method", b"GET"), (b":scheme", self.scheme), (b":authority", b"h"),
                       (b":path", rng.choice([b"/api/finance/slow?ms=400", b"/public/m", b"/api/finance/stream?events=3&interval_ms=100"])),
                       (b"x-api-key", KEY), (b"x-fuzz-case", self.case_id.encode())], b"", self.case_id)
            sid = self.next_id
            self.next_id += 2
            self.add(*self.headers_frames(sid, self.enc.encode(rng, req.fields), True, rng, chain=False))

    def stream_ids(self):
        rng = self.rng
        op = rng.randrange(4)
        req = base_request(rng, self.case_id, self.scheme)
        if op == 0:      # a lower id after a higher one
            self.request(req, mutate=0, sid=7)
            self.request(base_request(rng, self.case_id, self.scheme), mutate=0, sid=3)
        elif op == 1:    # the same id twice
            s = self.request(req, mutate=0)
            self.request(base_request(rng, self.case_id, self.scheme), mutate=0, sid=s)
        elif op == 2:    # even ids, id 0, the reserved bit
            self.request(req, mutate=0, sid=rng.choice([0, 2, 0x80000003, 2 ** 31 - 1]))
        else:            # the last id there is, then one more
            self.request(req, mutate=0, sid=2 ** 31 - 1)
            self.request(base_request(rng, self.case_id, self.scheme), mutate=0, sid=1)

    def small_window(self):
        """SETTINGS_INITIAL_WINDOW_SIZE small/zero, then a request with a body in the answer,
        then (sometimes) window updates that open it, or overflow it."""
        rng = self.rng
        self.add(settings([(4, rng.choice([0, 1, 10, 2 ** 31 - 1])), (5, rng.choice([16384, 16777215]))]))
        sid = self.request(Req([(b":method", b"GET"), (b":scheme", self.scheme), (b":authority", b"h"),
                                (b":path", rng.choice([b"/api/finance/stream?events=5&interval_ms=20", b"/public/w"])),
                                (b"x-api-key", KEY), (b"x-fuzz-case", self.case_id.encode())], b"", self.case_id), mutate=0)
        if rng.random() < 0.6:
            self.add(frame(WINDOW_UPDATE, 0, rng.choice([sid, 0]), struct.pack(">I", rng.choice([1, 100, 65535, 2 ** 31 - 1]))))
        if rng.random() < 0.3:
            self.add(settings([(4, rng.choice([0, 65535, 2 ** 31 - 1]))]))

    def interleave(self):
        """Valid, concurrent streams: bodies in DATA frames interleaved across streams, some
        streams reset part-way (CANCEL), window updates and PINGs in between; the proxy has
        several exchanges in flight on one connection, upstreams included."""
        rng = self.rng
        n = rng.choice([2, 3, 5, 10, 20])
        queues = []
        for _ in range(n):
            sid = self.next_id
            self.next_id += 2
            path, key = rng.choice([(b"/api/finance/echo", True), (b"/public/up", False), (b"/api/finance/slow?ms=150", True),
                                    (b"/api/finance/stream?events=3&interval_ms=30", True), (b"/public/g", False)])
            body = b"" if b"slow" in path or b"stream" in path else b"e" * rng.choice([0, 1, 100, 5000, 20000, 65535])
            fields = [(b":method", b"POST" if body else b"GET"), (b":scheme", self.scheme), (b":authority", b"localhost"),
                      (b":path", path), (b"x-fuzz-case", self.case_id.encode())]
            if key:
                fields.append((b"x-api-key", KEY))
            if body and rng.random() < 0.5:
                fields.append((b"content-length", str(len(body)).encode()))
            # Literals without indexing: blocks sent in another order than built stay decodable.
            q = self.headers_frames(sid, hp_block(fields, rng), not body, rng, chain=False)
            if body:
                q += self.data_frames(sid, body, True, rng, valid=True)
            if rng.random() < 0.25:
                # Reset part-way: nothing of this stream follows.
                k = rng.randint(1, len(q))
                while k < len(q) and q[k][3] == CONTINUATION:
                    k += 1
                q[k:] = [frame(RST_STREAM, 0, sid, struct.pack(">I", 8))]
            queues.append(q)
        # Header blocks must not be interleaved with other frames: a CONTINUATION chain goes whole.
        opened = [0]
        extras = 0     # PING, WINDOW_UPDATE, SETTINGS in between (a few: more is a flood)
        # Streams must open in increasing order: the first frames (HEADERS) go in id order.
        order = list(range(len(queues)))
        while any(queues):
            live = [i for i in order if queues[i]]
            nxt = [i for i in live if queues[i][0][3] == HEADERS]
            i = nxt[0] if nxt and rng.random() < 0.4 else rng.choice([i for i in live if queues[i][0][3] != HEADERS] or nxt[:1])
            q = queues[i]
            f = q.pop(0)
            if f[3] == HEADERS:
                opened.append(int.from_bytes(f[5:9], "big"))
            self.add(f)
            while f[3] in (HEADERS, CONTINUATION) and not f[4] & END_HEADERS and q:
                f = q.pop(0)
                self.add(f)
            r = rng.random() if extras < 12 else 1.0
            extras += r < 0.12
            if r < 0.05:
                self.add(frame(PING, 0, 0, os.urandom(8)))
            elif r < 0.1:
                self.add(frame(WINDOW_UPDATE, 0, rng.choice(opened), struct.pack(">I", rng.choice([1, 65535, 1 << 16]))))
            elif r < 0.12:
                self.add(settings([(4, rng.choice([0, 100, 65535, 1 << 20]))]))

    def garbage(self):
        self.add(os.urandom(self.rng.choice([1, 8, 9, 100, 5000])))

    def http1_after(self):
        self.add(b"GET /public/x HTTP/1.1\r\nHost: h\r\n\r\n")

    def table_size(self):
        rng = self.rng
        self.add(settings([(1, rng.choice([0, 1, 64, 4096, 2 ** 32 - 1]))]))
        self.request()


SCENARIOS = [
    ("request", 30, lambda c: c.request()),
    ("interleave", 12, Conn.interleave),
    ("request-damaged", 10, lambda c: c.request(mutate=1.0, damage=0.6)),
    ("odd-settings", 6, Conn.odd_settings),
    ("settings-flood", 2, Conn.settings_flood),
    ("window-update", 5, Conn.window_update),
    ("rst-storm", 3, Conn.rst_storm),
    ("rst-odd", 3, Conn.rst_odd),
    ("ping-flood", 3, Conn.ping_flood),
    ("priority", 3, Conn.priority),
    ("unknown-frames", 3, Conn.unknown_frames),
    ("goaway", 3, Conn.goaway),
    ("push-promise", 1, Conn.push_promise),
    ("data-odd", 8, Conn.data_odd),
    ("continuation-odd", 5, Conn.continuation_odd),
    ("many-streams", 2, Conn.many_streams),
    ("stream-ids", 3, Conn.stream_ids),
    ("small-window", 4, Conn.small_window),
    ("garbage", 2, Conn.garbage),
    ("http1-after", 1, Conn.http1_after),
    ("table-size", 2, Conn.table_size),
]
SCENARIO_WEIGHTS = [w for _, w, _ in SCENARIOS]


def generate_stream(rng, case_id, scheme=b"http", preface=True):
    """One connection's client bytes: preface, SETTINGS, 1-5 scenarios. Returns (bytes, names)."""
    c = Conn(rng, case_id, scheme)
    names = []
    if rng.random() < 0.85:
        entries = [(3, 100), (4, 65535)] if rng.random() < 0.7 else [(rng.choice(SETTING_IDS), rng.choice(SETTING_VALUES))]
        c.add(settings(entries if rng.random() < 0.9 else []))
    for _ in range(rng.choice((1, 1, 2, 2, 3, 5))):
        name, _, fn = rng.choices(SCENARIOS, SCENARIO_WEIGHTS)[0]
        names.append(name)
        fn(c)
    if rng.random() < 0.2:
        c.add(settings([], flags=ACK))
    data = b"".join(c.frames)
    if rng.random() < 0.06:
        data = data[:rng.randint(0, max(0, len(data) - 1))]   # truncated mid-frame
        names.append("truncated")
    if preface:
        pre = PREFACE
        if rng.random() < 0.03:
            pre = rng.choice([PREFACE[:rng.randint(0, 23)], PREFACE.replace(b"SM", b"XX"), PREFACE[:-1] + b"\n", PREFACE + PREFACE])
            names.append("preface")
        data = pre + data
    return data, names


H2_DICT = [PREFACE, frame(SETTINGS, 0, 0), frame(SETTINGS, ACK, 0), frame(PING, 0, 0, b"\0" * 8), b"\x00\x00\x00\x00\x01",
           b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00", b"\xff\xff\xff", b"\x00\x40\x00", b"\x3f\xe1\x1f", b"\x82\x84\x86",
           b"\x00\x00\x04\x08\x00\x00\x00\x00\x00", b"\x00\x00\x00\x09\x04\x00\x00\x00\x01", b"\r\n", b"\x00", b":path",
           b"content-length", b"te", b"trailers", b"connection"]


class FrameMutator:
    """Mutates a connection's bytes at frame level and at byte level."""

    def __init__(self, rng):
        self.rng = rng
        self.bytes = pf.Mutator(rng)

    def mutate(self, data, pool):
        rng = self.rng
        head = PREFACE if data.startswith(PREFACE) else b""
        frames = split_frames(data[len(head):])
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(13)
            if not frames:
                frames = [settings([])]
            i = rng.randrange(len(frames))
            f = frames[i]
            if op == 0 and len(frames) > 1:                 # drop a frame
                del frames[i]
            elif op == 1:                                   # repeat a frame
                frames[i:i] = [f] * rng.choice([1, 2, 10, 100, 1000])
            elif op == 2 and len(frames) > 1:               # swap two frames
                j = rng.randrange(len(frames))
                frames[i], frames[j] = frames[j], frames[i]
            elif op == 3 and len(f) >= 9:                   # another type
                frames[i] = f[:3] + bytes([rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, rng.randrange(256)])]) + f[4:]
            elif op == 4 and len(f) >= 9:                   # flags
                frames[i] = f[:4] + bytes([f[4] ^ rng.choice([1, 4, 8, 0x20, 0xFF, rng.randrange(256)])]) + f[5:]
            elif op == 5 and len(f) >= 9:                   # stream id
                sid = rng.choice([0, 1, 2, 3, 5, 0x7FFFFFFF, 0x80000001, int.from_bytes(f[5:9], "big") + 2])
                frames[i] = f[:5] + struct.pack(">I", sid) + f[9:]
            elif op == 6 and len(f) >= 9:                   # length field lies
                n = int.from_bytes(f[:3], "big")
                n2 = rng.choice([0, 1, max(0, n - 1), n + 1, n + 100, 16384, 16385, 0xFFFFFF])
                frames[i] = struct.pack(">I", n2)[1:] + f[3:]
            elif op == 7:                                   # truncate a frame
                frames[i] = f[:rng.randint(0, len(f))]
            elif op == 8 and pool:                          # splice frames of another case
                other = split_frames(rng.choice(pool)[len(PREFACE):])
                if other:
                    a = rng.randrange(len(other))
                    frames[i:i] = other[a:a + rng.randint(1, 5)]
            elif op == 9:                                   # insert a fresh scenario's frames
                c = Conn(rng, "m", b"http")
                name, _, fn = rng.choices(SCENARIOS, SCENARIO_WEIGHTS)[0]
                c.next_id = 101
                fn(c)
                frames[i:i] = c.frames[:200]
            elif op == 10 and len(f) > 9:                   # HPACK damage in a HEADERS/CONTINUATION payload
                if f[3] in (HEADERS, CONTINUATION):
                    p = hpack_damage(rng, f[9:])
                    frames[i] = frame(f[3], f[4], int.from_bytes(f[5:9], "big"), p)
            elif op == 11:                                  # byte-level edits inside one frame
                frames[i] = self.byte_ops(f)
            else:                                           # byte-level edits anywhere
                joined = self.byte_ops(b"".join(frames))
                frames = split_frames(joined)
        out = head + b"".join(frames)
        return out[:2_000_000]

    def byte_ops(self, data):
        r = self.rng
        data = bytearray(data)
        for _ in range(r.randint(1, 4)):
            op = r.randrange(5)
            pos = r.randint(0, len(data))
            if op == 0 and data:
                data[r.randrange(len(data))] ^= 1 << r.randrange(8)
            elif op == 1:
                data[pos:pos] = bytes([r.randrange(256)])
            elif op == 2 and data:
                i = r.randrange(len(data))
                del data[i:i + r.randint(1, 8)]
            elif op == 3:
                data[pos:pos] = r.choice(H2_DICT)
            elif data:
                data[r.randrange(len(data))] = r.choice(b"\x00\x01\x04\x08\x09\x7f\x80\xff\r\n:")
        return bytes(data)


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------

LIVE_SCRIPT = pf.Script(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlive")


class Upstream(pf.Upstream):
    """proxy_fuzz's scripted upstream, with a permanent `live` script for the liveness checks."""

    def __init__(self):
        super().__init__()
        self.scripts["live"] = LIVE_SCRIPT

    def register(self, case_id, script):
        super().register(case_id, script)
        with self.lock:
            self.scripts["live"] = LIVE_SCRIPT


class Gateway(pf.Gateway):
    """proxy_fuzz's gateway; optionally its listener is TLS (two certificates: SNI)."""

    def __init__(self, binary, upstream_port, workdir, threads=2, tls=None, extra_args=()):
        super().__init__(binary, upstream_port, workdir, threads)
        self.tls = tls           # dict(cert, key, cert2, key2) or None
        self.extra_args = list(extra_args)

    def policy(self):
        text = super().policy()
        if self.tls:
            t = self.tls
            text = text.replace(f"  - address: 127.0.0.1:{self.port}\n",
                                f"  - address: 127.0.0.1:{self.port}\n"
                                f"    tls: {{certificates: [{{certificate: {t['cert']}, private_key: {t['key']}}}, "
                                f"{{certificate: {t['cert2']}, private_key: {t['key2']}}}]}}\n")
        return text

    def start(self):
        """pf.Gateway.start, with extra `serve` arguments and the listener maybe TLS; a port
        another process took between free_port() and bind() (two campaigns at once) is
        detected and the start tried again on new ports."""
        for attempt in range(5):
            try:
                self.start_once()
            except RuntimeError:
                self.stop()
                if attempt == 4:
                    raise
                continue
            time.sleep(0.1)
            text = self.read_log(self.proxy_log) + self.read_log(self.backends_log)
            if (self.proxy.poll() is None and self.backends.poll() is None and "bind" not in text
                    and f"127.0.0.1:{self.port}" in self.read_log(self.proxy_log)):
                return
            self.stop()
        raise RuntimeError("tollgate did not start on a free port:\n" + self.read_log(self.proxy_log))

    def start_once(self):
        self.generation += 1
        gen_dir = os.path.join(self.workdir, f"run{self.generation}")
        os.makedirs(os.path.join(gen_dir, "policies"), exist_ok=True)
        os.makedirs(os.path.join(gen_dir, "data"), exist_ok=True)
        env = dict(os.environ)
        env.update(pf.SANITIZER_ENV)
        self.finance_port = pf.free_port()
        self.backends_log = os.path.join(gen_dir, "backends.log")
        self.backends = subprocess.Popen(
            [self.binary, "backends", "--finance", f"127.0.0.1:{self.finance_port}", "--accounting", "off",
             "--flowise", "off", "--data", os.path.join(gen_dir, "data")],
            stdout=open(self.backends_log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.port = pf.free_port()
        with open(os.path.join(gen_dir, "policies", "00-gateway.yaml"), "w") as f:
            f.write(self.policy())
        with open(os.path.join(gen_dir, "policies", "10-keys.yaml"), "w") as f:
            f.write(self.keys())
        self.proxy_log = os.path.join(gen_dir, "proxy.log")
        self.proxy = subprocess.Popen(
            [self.binary, "serve", "--policies", os.path.join(gen_dir, "policies"), "--threads", str(self.threads),
             "--header-timeout", "1", "--body-timeout", "1", "--idle-timeout", "2", "--drain-timeout", "1"] + self.extra_args,
            stdout=open(self.proxy_log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if not pf.wait_listening(self.finance_port, self.backends):
            raise RuntimeError("tollgate backends did not start:\n" + self.read_log(self.backends_log))
        if not pf.wait_listening(self.port, self.proxy):
            raise RuntimeError("tollgate serve did not start:\n" + self.read_log(self.proxy_log))

    @property
    def pid(self):
        return self.proxy.pid if self.proxy else None


# ---------------------------------------------------------------------------------------
# Liveness
# ---------------------------------------------------------------------------------------


def client_tls_context(alpn):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(alpn)
    return ctx


def h2_live(port, tls=False, timeout=5.0):
    """A fresh, well-formed h2 request (h2c prior knowledge, or h2 over TLS): (ok, detail)."""
    sock = None
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            sock = client_tls_context(["h2"]).wrap_socket(sock, server_hostname="localhost")
            if sock.selected_alpn_protocol() != "h2":
                return False, f"ALPN {sock.selected_alpn_protocol()!r}"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https" if tls else b"http"), (b":authority", b"localhost"),
                                (b":path", b"/public/live"), (b"x-fuzz-case", b"live")], end_stream=True)
        sock.sendall(conn.data_to_send())
        status, body = None, b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                return False, f"closed (status {status})"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers).get(b":status")
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    # Answered: any complete answer counts (a 504 from a busy scripted upstream
                    # is still the proxy answering); the status is reported.
                    return status is not None, f"status {status!r} body {body[:40]!r}"
                elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    return False, repr(ev)
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        return False, "timeout"
    except Exception as e:  # noqa: BLE001 — any failure is a failed check
        return False, f"{type(e).__name__}: {e}"
    finally:
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


def h1_live(port, tls=False, timeout=5.0):
    sock = None
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            sock = client_tls_context(["http/1.1"]).wrap_socket(sock, server_hostname="localhost")
        sock.sendall(b"GET /public/live HTTP/1.1\r\nHost: localhost\r\nX-Fuzz-Case: live\r\nConnection: close\r\n\r\n")
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            got += data
        # `Connection: close`: the whole answer, then EOF. Any status counts as answered.
        ok = got.startswith(b"HTTP/1.1 ") and b"\r\n\r\n" in got
        return ok, repr(got[:60])
    except Exception as e:  # noqa: BLE001
        return False, f"{type(e).__name__}: {e}"
    finally:
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


LIVE_STATUS = {}


def liveness(port, tls=False, attempts=3):
    """Both checks, each retried (the niced proxy may be busy): None when fine, else why.

    Any complete answer counts, but the `live` script is answered at once by the upstream:
    a 504 means the proxy did not pass the request or the answer on within the backend's
    1 s. One now and then is the python upstream being slow under load; h2 answered 504
    `attempts` times in a row, with an HTTP/1.1 request answered between the attempts (it
    leaves an idle upstream connection in the pool), is a stalled h2 path."""
    h2_504 = 0
    for which, fn in (("h2", h2_live), ("http/1.1", h1_live)):
        why = None
        for k in range(attempts):
            ok, detail = fn(port, tls)
            if not ok:
                why = f"{which} liveness: {detail}"
                time.sleep(0.5 * (k + 1))
                continue
            key = which + " " + detail[:22]
            LIVE_STATUS[key] = LIVE_STATUS.get(key, 0) + 1
            why = None
            if which == "h2" and "504" in detail:
                h2_504 += 1
                h1_live(port, tls)
                continue
            h2_504 = 0 if which == "h2" else h2_504
            break
        if why:
            return why
    if h2_504 >= attempts:
        return f"h2 liveness: {attempts} answers in a row were 504 (backend time-out) while HTTP/1.1 got its answers"
    return None


# ---------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------


class Case:
    """One connection: client bytes sent in pieces, the upstream's script, and for the TLS
    target a plan (handshake, record mutations) in `meta`."""

    def __init__(self, case_id, data, cuts, response, half_close=False, slow_read=False, meta=None, waits=None):
        self.case_id = case_id
        self.data = data
        self.cuts = sorted(set(c for c in cuts if 0 < c < len(data)))
        self.response = response
        self.half_close = half_close
        self.slow_read = slow_read
        self.meta = meta or {}
        self.waits = waits or [0.0]
        self.origin = None

    def pieces(self):
        out, last = [], 0
        for c in self.cuts + [len(self.data)]:
            out.append(self.data[last:c])
            last = c
        return out

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "client.bin"), "wb") as f:
            f.write(self.data)
        with open(os.path.join(directory, "response.bin"), "wb") as f:
            f.write(self.response.data)
        with open(os.path.join(directory, "case.json"), "w") as f:
            json.dump({"case_id": self.case_id, "cuts": self.cuts, "half_close": self.half_close, "slow_read": self.slow_read,
                       "waits": self.waits, "meta": self.meta, "response": self.response.to_json()}, f, indent=1)

    @staticmethod
    def load(directory):
        with open(os.path.join(directory, "case.json")) as f:
            m = json.load(f)
        with open(os.path.join(directory, "client.bin"), "rb") as f:
            data = f.read()
        with open(os.path.join(directory, "response.bin"), "rb") as f:
            response = pf.Script.from_json(f.read(), m.get("response", {}))
        return Case(m.get("case_id", "replay"), data, m.get("cuts", []), response, m.get("half_close", False),
                    m.get("slow_read", False), m.get("meta", {}), m.get("waits"))


def frame_cuts(rng, data):
    """Where to split the byte stream: frame boundaries mostly, anywhere sometimes."""
    mode = rng.random()
    if mode < 0.35:
        return []
    if mode < 0.8:
        bounds, i = [], 0
        if data.startswith(PREFACE):
            bounds.append(len(PREFACE))
            i = len(PREFACE)
        for f in split_frames(data[i:]):
            i += len(f)
            bounds.append(i)
        k = min(len(bounds), rng.choice([1, 2, 4, 8, 32]))
        return sorted(rng.sample(bounds, k))
    return [rng.randint(1, max(1, len(data) - 1)) for _ in range(rng.choice((1, 2, 5, 12)))]


def send_pieces(sock, pieces, waits, rng, received, recv=None):
    """Sends the pieces; between them waits (by event: an answer ends the wait). Returns
    True when the peer closed or stopped reading."""
    recv = recv or (lambda: sock.recv(65536))
    closed = False
    for i, piece in enumerate(pieces):
        view = memoryview(piece)
        while view and not closed:
            _, w, _ = select.select([], [sock], [], 1.0)
            if not w:
                return True     # backpressure: the proxy stopped reading
            try:
                n = sock.send(view)
                view = view[n:]
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                continue
            except OSError:
                return True
        if i < len(pieces) - 1:
            r, _, _ = select.select([sock], [], [], waits[i % len(waits)] if waits else 0)
            if r:
                try:
                    chunk = recv()
                    if not chunk:
                        return True
                    received += chunk
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except OSError:
                    return True
    return closed


def h2_settled(received):
    """The proxy said GOAWAY (nothing more is coming but the close)."""
    i, data = 0, bytes(received)
    while len(data) - i >= 9:
        n = int.from_bytes(data[i:i + 3], "big")
        if data[i + 3] == GOAWAY:
            return True
        i += 9 + n
    return False


def read_answer(sock, received, recv=None, quiet_first=1.0, total=3.0, h2=False):
    """Reads until EOF, or quiet for a while after the last byte. True when the peer closed.
    HTTP/2: the server's SETTINGS come at once, answers later: quiet means longer, unless
    GOAWAY came."""
    recv = recv or (lambda: sock.recv(65536))
    deadline = time.monotonic() + total
    later = 0.5 if h2 else 0.25
    quiet = quiet_first if not received else later
    while time.monotonic() < deadline:
        r, _, _ = select.select([sock], [], [], quiet)
        if not r:
            return False
        try:
            chunk = recv()
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            continue
        except OSError:
            return True
        if not chunk:
            return True
        received += chunk
        quiet = 0.05 if h2 and h2_settled(received) else later
    return False


def summarize_h2(received):
    """A short signature of what the proxy sent back: frame types, GOAWAY/RST codes, statuses."""
    parts = set()
    dec = hpack.Decoder()
    dec.max_header_list_size = 1 << 20
    data = bytes(received)
    for f in split_frames(data):
        if len(f) < 9:
            parts.add("partial")
            continue
        t, flags = f[3], f[4]
        name = FRAME_NAMES.get(t, f"T{t}")
        if t == GOAWAY and len(f) >= 17:
            name += ":%d" % int.from_bytes(f[13:17], "big")
        elif t == RST_STREAM and len(f) >= 13:
            name += ":%d" % int.from_bytes(f[9:13], "big")
        elif t == HEADERS:
            try:
                p = f[9:]
                if flags & PADDED:
                    p = p[1:len(p) - p[0]]
                if flags & PRIO:
                    p = p[5:]
                hdrs = dec.decode(p, raw=True)
                name += ":" + dict(hdrs).get(b":status", b"?").decode("latin-1")
            except Exception:
                name += ":?"
        parts.add(name)
    if data and not data.startswith(b"\x00"):
        parts.add("text:" + data[:12].decode("latin-1"))
    return ",".join(sorted(parts))


class Reaper:
    """Holds connections the proxy did not close and checks it does, within `limit` seconds
    of the last byte either way (the proxy's own deadlines are 1-2 s here). Reads whatever
    comes, opens HTTP/2 windows for DATA received (a client that keeps reading), and reports
    the ones quiet and still open at the limit (one still making progress after `cap`
    seconds is let go unreported)."""

    def __init__(self, limit=20.0, capacity=64, cap=90.0):
        self.limit = limit
        self.cap = cap
        self.capacity = capacity
        self.held = {}     # sock -> (deadline, case, is_h2, recv, send)
        self.lock = threading.Lock()
        self.lingering = []
        self.window_stalls = 0
        self.stopped = False
        threading.Thread(target=self.loop, daemon=True).start()

    def hold(self, sock, case, is_h2, initial=b"", recv=None, send=None):
        """Takes over `sock`; `initial`: what the client read from it so far (frames are
        parsed from the start of the stream, so windows open for DATA already read too)."""
        with self.lock:
            if len(self.held) >= self.capacity:
                return False
            now = time.monotonic()
            # deadline, case, is_h2, recv, send, frame buffer, cap, stream ids seen, nudged
            entry = [now + self.limit, case, is_h2, recv or (lambda: sock.recv(65536)),
                     send or sock.sendall, bytearray(), now + self.cap, set(), False]
            self.held[sock] = entry
        if is_h2:
            self.open_windows(sock, entry, initial)
        return True

    def loop(self):
        while not self.stopped:
            with self.lock:
                socks = list(self.held)
            if not socks:
                time.sleep(0.1)
                continue
            try:
                r, _, _ = select.select(socks, [], [], 0.1)
            except (OSError, ValueError):
                r = []
                for s in socks:
                    try:
                        s.fileno() < 0 and r.append(s)
                    except OSError:
                        r.append(s)
            for s in r:
                entry = self.held.get(s)
                if entry is None:
                    continue
                try:
                    chunk = entry[3]()
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue
                except (OSError, ValueError):
                    chunk = b""
                if not chunk:
                    if entry[8]:
                        self.window_stalls += 1   # closed once its window opened
                    self.release(s)
                    continue
                # Progress: the limit counts from the last byte received (at most `cap` in all).
                entry[0] = min(time.monotonic() + self.limit, entry[6])
                if entry[8] and entry[8] != "counted":
                    self.window_stalls += 1       # moved once its window opened
                    entry[8] = "counted"
                if entry[2]:
                    self.open_windows(s, entry, chunk)
            now = time.monotonic()
            with self.lock:
                expired = [s for s, e in self.held.items() if e[0] < now]
            for s in expired:
                e = self.held.get(s)
                if e and e[2] and not e[8] and e[0] < e[6]:
                    # Quiet and open: first open every window wide (a closed window holds a
                    # stream with no deadline, a known issue), then wait once more.
                    e[8] = True
                    e[0] = now + self.limit
                    out = settings([(4, 2 ** 31 - 1)]) + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2 ** 30))
                    for sid in e[7]:
                        out += frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", 2 ** 30))
                    try:
                        e[4](out)
                    except (OSError, ValueError, ssl.SSLError):
                        pass
                    continue
                if e and e[0] < e[6]:
                    self.lingering.append(e[1])   # quiet for `limit` seconds, still open
                self.release(s)

    def open_windows(self, s, entry, chunk):
        buf = entry[5]
        buf += chunk
        if buf.startswith(PREFACE):
            del buf[:len(PREFACE)]
        out = b""
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            if sid:
                entry[7].add(sid)
            if buf[3] == DATA and n:
                out += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", n)) + frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", n))
            del buf[:9 + n]
        if len(buf) > 1 << 20:
            buf.clear()
        if out:
            try:
                entry[4](out)
            except (OSError, ValueError, ssl.SSLError):
                pass

    def release(self, s):
        with self.lock:
            self.held.pop(s, None)
        try:
            s.close()
        except OSError:
            pass

    def stop(self):
        self.stopped = True
        with self.lock:
            socks = list(self.held)
        for s in socks:
            self.release(s)


def run_h2_case(harness, case, rng):
    """Runs one h2c case; returns (signature, closed) or None when nothing listens."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if case.slow_read:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        s.settimeout(2.0)
        s.connect(("127.0.0.1", harness.gateway.port))
    except OSError:
        s.close()
        return None
    received = bytearray()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    held = False
    try:
        closed = send_pieces(s, case.pieces(), case.waits, rng, received)
        if case.half_close and not closed:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if case.slow_read:
            time.sleep(0.3)
        if not closed:
            closed = read_answer(s, received, h2=True)
        if not closed and harness.reaper is not None and not case.half_close:
            held = harness.reaper.hold(s, case, True, initial=bytes(received))
        return summarize_h2(received), closed
    finally:
        if not held:
            s.close()


# ---------------------------------------------------------------------------------------
# The campaign
# ---------------------------------------------------------------------------------------


class Harness:
    """Workers, crash and hang detection, replay, saving; the target (h2, tls) supplies the
    case generator and the runner."""

    name = "h2"
    tls = False

    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.lock = threading.Lock()
        self.executions = 0
        self.counter = 0
        self.in_flight = {}
        self.history = {}
        self.crash_count = 0
        self.hang_count = 0
        self.saved_per_sig = {}
        self.seen_sigs = set()
        self.signatures = {}
        self.scenario_counts = {}
        self.workdir = tempfile.mkdtemp(prefix=f"tollgate-{self.name}-fuzz-")
        self.upstream = Upstream()
        self.gateway = Gateway(args.binary, self.upstream.port, self.workdir, threads=args.threads, tls=self.tls_files(),
                               extra_args=self.serve_args())
        self.reaper = Reaper() if not getattr(args, "no_reaper", False) else None
        self.linger_saved = 0
        self.linger_reported = 0
        self.responses = [d for _, d in pf.load_seeds("responses")]
        self.pool = self.load_pool()
        self.stop_event = threading.Event()
        self.problem = None

    # --- hooks for targets ---
    def tls_files(self):
        return None

    def serve_args(self):
        return []

    def load_pool(self):
        pool = []
        if os.path.isdir(SEEDS_H2):
            for n in sorted(os.listdir(SEEDS_H2)):
                with open(os.path.join(SEEDS_H2, n), "rb") as f:
                    pool.append(f.read())
        return pool

    def seed_cases(self):
        return [self.wrap(d, "seed") for d in self.pool]

    def next_id(self):
        with self.lock:
            self.counter += 1
            return f"c{self.counter}"

    def response_for(self, rng, mutator):
        if rng.random() < 0.55:
            return pf.Script(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        data = rng.choice(self.responses)
        if rng.random() < 0.8:
            data = mutator.mutate(data, self.responses, pf.EXTRA_RESPONSE_FIELDS, 70000, response=True)
        cuts = [rng.randint(1, max(1, len(data) - 1)) for _ in range(rng.choice((0, 0, 1, 2, 4)))]
        ending = rng.choice(("keep", "keep", "close", "reset", "shutdown-read"))
        delays = [rng.choice((0, 0.0005, 0.002, 0.02)) for _ in range(4)]
        return pf.Script(data, cuts, ending, delays)

    def wrap(self, data, origin, rng=None, case_id=None):
        rng = rng or self.rng
        case_id = case_id or self.next_id()
        # The case id is carried in the bytes as x-fuzz-case values ("c123"): a generated
        # case names itself; a mutated or seed one answers with the upstream's fallback.
        c = Case(case_id, data, frame_cuts(rng, data), pf.Script(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
                 half_close=rng.random() < 0.3, slow_read=rng.random() < 0.05,
                 waits=[rng.choice((0, 0.001, 0.003, 0.02, 0.02, 0.1, 0.3)) for _ in range(3)])
        c.origin = origin
        return c

    def make_case(self, rng, fm, bm):
        case_id = self.next_id()
        if self.pool and rng.random() < 0.4:
            parent = rng.choice(self.pool)
            data = fm.mutate(parent, self.pool)
            c = self.wrap(data, "mutated", rng, case_id)
            c.meta["scenarios"] = ["mutated"]
        else:
            data, names = generate_stream(rng, case_id)
            if rng.random() < 0.12:
                data = data[:len(PREFACE)] + fm.byte_ops(data[len(PREFACE):])
                names.append("bytes")
            c = self.wrap(data, "generated", rng, case_id)
            c.meta["scenarios"] = names
        c.response = self.response_for(rng, bm)
        return c

    def run_case(self, case, rng):
        return run_h2_case(self, case, rng)

    def check_live(self):
        return liveness(self.gateway.port, self.tls)

    # --- the machinery ---
    def execute(self, case, rng):
        self.upstream.register(case.case_id, case.response)
        return self.run_case(case, rng)

    def worker(self, index, stop_at):
        rng = random.Random(self.args.seed * 1000 + index)
        fm = FrameMutator(rng)
        bm = pf.Mutator(rng)
        while time.monotonic() < stop_at and not self.stop_event.is_set():
            case = self.make_case(rng, fm, bm)
            case.started = time.monotonic()
            with self.lock:
                self.in_flight[index] = case
            out = self.execute(case, rng)
            if out is None:
                with self.lock:
                    self.in_flight.pop(index, None)
                time.sleep(0.05)
                continue
            sig, _closed = out
            with self.lock:
                self.executions += 1
                h = self.history.setdefault(index, [])
                h.append(case)
                del h[:-3]
                for n in case.meta.get("scenarios", ()):
                    self.scenario_counts[n] = self.scenario_counts.get(n, 0) + 1
                self.signatures[sig] = self.signatures.get(sig, 0) + 1
                if self.signatures[sig] == 1 and sig and len(self.pool) < 3000 and self.poolable(case):
                    self.pool.append(case.data)
            if self.stop_event.is_set():
                return
            if self.gateway.crash_report():
                self.stop_event.set()
                return
            why = self.check_live()
            if why:
                if self.gateway.crash_report():
                    self.stop_event.set()
                    return
                with self.lock:
                    if self.problem is None:
                        self.problem = ("hang", why)
                self.stop_event.set()
                return

    def poolable(self, case):
        return True

    def monitor(self, stop_at):
        while time.monotonic() < stop_at and not self.stop_event.is_set():
            report = self.gateway.crash_report()
            if report:
                self.stop_event.set()
                return ("crash", report)
            time.sleep(0.05)
        report = self.gateway.crash_report()
        if report:
            return ("crash", report)
        return self.problem

    def candidates(self):
        with self.lock:
            cands = list(self.in_flight.values())
            for h in self.history.values():
                cands += [c for c in h if c not in cands]
            if self.reaper:
                with self.reaper.lock:
                    cands += [e[1] for e in self.reaper.held.values() if e[1] not in cands]
        cands.sort(key=lambda c: -getattr(c, "started", 0))
        return cands[:16]

    def reproduce(self, case, kind):
        """Fresh proxy, one case: the problem it causes, if any."""
        self.restart()
        self.execute(case, random.Random(0))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            r = self.gateway.crash_report()
            if r:
                return ("crash", r)
            time.sleep(0.05)
        if kind == "hang":
            # Twice: state a case leaves behind may show only on the second (the first
            # check's HTTP/1.1 request leaves an idle upstream connection).
            for _ in range(2):
                why = self.check_live()
                if why:
                    r = self.gateway.crash_report()
                    return ("crash", r) if r else ("hang", why)
        return None

    def restart(self):
        if self.reaper:
            self.reaper.stop()
            old, self.reaper = self.reaper, Reaper()
            self.reaper.lingering, self.reaper.window_stalls = old.lingering, old.window_stalls
        self.gateway.stop()
        self.gateway.start()

    def gdb_stacks(self):
        pid = self.gateway.pid
        if not pid or not shutil.which("gdb"):
            return ""
        try:
            r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 30"], capture_output=True,
                               text=True, timeout=90)
            return pf.demangle(r.stdout)
        except (OSError, subprocess.SubprocessError) as e:
            return f"gdb failed: {e}"

    def handle(self, problem, deadline):
        kind, detail = problem
        extra = ""
        if kind == "crash":
            sig = pf.signature(detail["log"])
            print(f"{self.name}: crash ({detail['process']} exit {detail['exit']}): {sig}", flush=True)
            self.crash_count += 1
        else:
            sig = "hang: " + detail.split(":")[0]
            print(f"{self.name}: hang: {detail}", flush=True)
            self.hang_count += 1
        saved = self.saved_per_sig.get(sig, 0)
        if saved >= 3:
            print(f"{self.name}: (already saved 3 cases with this signature)", flush=True)
            self.restart()
            return
        if kind == "hang":
            extra = self.gdb_stacks()
        found = None
        for case in self.candidates():
            if time.monotonic() > deadline:
                break
            r = self.reproduce(case, kind)
            if r:
                found = (case, r)
                break
        if found:
            case, r = found
            if r[0] == "hang":
                extra = self.gdb_stacks() or extra
            d = self.save(case, r, confirmed=True, extra=extra)
            print(f"{self.name}: saved {os.path.relpath(d, ROOT)} (reproduced alone)", flush=True)
            if r[0] == "crash":
                sig = pf.signature(r[1]["log"])
        else:
            for case in self.candidates()[:6]:
                d = self.save(case, problem, confirmed=False, extra=extra)
            print(f"{self.name}: not reproduced alone; saved the cases in flight", flush=True)
        self.seen_sigs.add(sig)
        self.saved_per_sig[sig] = saved + 1
        self.restart()

    def save(self, case, problem, confirmed, extra=""):
        kind, detail = problem
        log = detail["log"] if kind == "crash" else self.gateway.read_log(self.gateway.proxy_log)
        sig = pf.signature(log) if kind == "crash" else "hang: " + detail
        key = hashlib.sha1(sig.encode()).hexdigest()[:10]
        d = os.path.join(self.args.crash_dir, f"{kind}-{key}-{case.case_id}")
        case.save(d)
        with open(os.path.join(d, "stderr.txt"), "w") as f:
            f.write(log)
        with open(os.path.join(d, "stack.txt"), "w") as f:
            f.write(sig + "\n\n" + (pf.summarize_stack(log) if kind == "crash" else "") + "\n" + extra)
        script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
        with open(os.path.join(d, "REPRODUCE"), "w") as f:
            f.write(f"# {'reproduced alone' if confirmed else 'NOT reproduced alone (in flight with others)'}\n# {sig}\n"
                    f"cd {ROOT}\n/usr/bin/python3 {script} --binary {os.path.relpath(self.args.binary, ROOT)} "
                    f"--threads {self.args.threads} --replay "
                    f"{os.path.relpath(d, ROOT)}\n")
        return d

    def save_lingering(self):
        if not self.reaper:
            return
        with self.reaper.lock:
            new = self.reaper.lingering[self.linger_reported:]
            self.linger_reported = len(self.reaper.lingering)
        for case in new:
            if self.linger_saved >= 5:
                break
            self.linger_saved += 1
            d = os.path.join(self.args.crash_dir, f"linger-{case.case_id}")
            case.save(d)
            print(f"{self.name}: connection still open {self.reaper.limit:.0f}s after the client went quiet: "
                  f"{os.path.relpath(d, ROOT)} ({','.join(case.meta.get('scenarios', []))})", flush=True)

    def seed_pass(self):
        for case in self.seed_cases():
            case.cuts = []
            case.half_close = False
            self.execute(case, self.rng)
            self.executions += 1
            r = self.gateway.crash_report()
            why = None if r else self.check_live()
            if r or why:
                print(f"{self.name}: seed case {case.case_id} broke the proxy", flush=True)
                self.in_flight = {0: case}
                self.history = {}
                self.handle(("crash", r) if r else ("hang", why), time.monotonic() + 60)

    def run(self):
        start = time.monotonic()
        stop_at = start + self.args.duration
        self.gateway.start()
        try:
            if not self.args.no_seed_pass:
                self.seed_pass()
            while time.monotonic() < stop_at:
                self.stop_event = threading.Event()
                self.problem = None
                self.in_flight, self.history = {}, {}
                workers = [threading.Thread(target=self.worker, args=(i, stop_at), daemon=True) for i in range(self.args.workers)]
                for w in workers:
                    w.start()
                problem = self.monitor(stop_at)
                self.stop_event.set()
                for w in workers:
                    w.join(timeout=30)
                if problem is None:
                    r = self.gateway.crash_report()
                    problem = ("crash", r) if r else None
                self.save_lingering()
                if problem:
                    self.handle(problem, max(stop_at, time.monotonic()) + 60)
                    if self.args.stop_on_crash:
                        break
            # Connections still held: give them their time, then report.
            if self.reaper:
                end = time.monotonic() + 2 * self.reaper.limit + 1
                while time.monotonic() < end and self.reaper.held:
                    time.sleep(0.2)
                self.save_lingering()
        finally:
            self.cleanup()
        return time.monotonic() - start

    def cleanup(self):
        if self.reaper:
            self.reaper.stop()
        self.gateway.stop()
        self.upstream.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def report(self, elapsed):
        top = sorted(self.signatures.items(), key=lambda kv: -kv[1])[:10]
        print(f"{self.name}: {len(self.signatures)} distinct answers; most common: " +
              "; ".join(f"[{k[:70]}]x{v}" for k, v in top), flush=True)
        print(f"{self.name}: scenarios " + ", ".join(f"{k}:{v}" for k, v in sorted(self.scenario_counts.items())), flush=True)
        lingering = len(self.reaper.lingering) if self.reaper else 0
        stalls = self.reaper.window_stalls if self.reaper else 0
        print(f"{self.name}: lingering connections {lingering} (+{stalls} held on a closed flow-control window until the "
              f"client opened it); pool {len(self.pool)}; liveness answers " +
              ", ".join(f"{k}:{v}" for k, v in sorted(LIVE_STATUS.items(), key=lambda kv: -kv[1])[:6]), flush=True)
        for sig in sorted(self.seen_sigs):
            print(f"{self.name}: problem signature: {sig}", flush=True)
        print(f"{self.name}: executions={self.executions} duration={elapsed:.0f} crashes={self.crash_count} "
              f"hangs={self.hang_count} unique={len(self.seen_sigs)}", flush=True)

    # --- replay and minimisation ---
    def replay_once(self, case, kind_hint="any"):
        self.execute(case, random.Random(0))
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            r = self.gateway.crash_report()
            if r:
                return ("crash", r)
            time.sleep(0.05)
        for _ in range(2):
            why = self.check_live()
            if why:
                r = self.gateway.crash_report()
                return ("crash", r) if r else ("hang", why)
        return None

    def replay(self, directory):
        case = Case.load(directory)
        self.gateway.start()
        try:
            r = self.replay_once(case)
            if r is None:
                print("replay: no crash, proxy alive")
                return 0
            if r[0] == "crash":
                print(f"replay: CRASH in `tollgate {r[1]['process']}` (exit {r[1]['exit']})")
                print(pf.signature(r[1]["log"]))
                print(pf.summarize_stack(r[1]["log"]))
            else:
                print(f"replay: HANG: {r[1]}")
                print(self.gdb_stacks())
            return 1
        finally:
            self.cleanup()

    def minimize(self, directory, budget=300):
        """Frame-level ddmin (then piece cuts dropped): keeps what still reproduces."""
        case = Case.load(directory)
        tries = [0]

        def still(data, cuts):
            tries[0] += 1
            c = Case(case.case_id, data, cuts, case.response, case.half_close, case.slow_read, case.meta, case.waits)
            self.restart()
            return self.replay_once(c) is not None

        self.gateway.start()
        try:
            if not still(case.data, case.cuts):
                print("minimize: does not reproduce")
                return 1
            head = PREFACE if case.data.startswith(PREFACE) else b""
            frames = split_frames(case.data[len(head):])
            cuts = case.cuts
            n = 2
            while len(frames) >= 2 and tries[0] < budget:
                chunk = max(1, len(frames) // n)
                reduced = False
                for i in range(0, len(frames), chunk):
                    cand = frames[:i] + frames[i + chunk:]
                    data = head + b"".join(cand)
                    if still(data, [c for c in cuts if c < len(data)]):
                        frames, reduced = cand, True
                        cuts = [c for c in cuts if c < len(data)]
                        n = max(n - 1, 2)
                        break
                    if tries[0] >= budget:
                        break
                if not reduced:
                    if n >= len(frames):
                        break
                    n = min(len(frames), n * 2)
            data = head + b"".join(frames)
            if cuts and still(data, []):
                cuts = []
            out = Case(case.case_id, data, cuts, case.response, case.half_close, case.slow_read, case.meta, case.waits)
            dest = directory.rstrip("/") + "-min"
            out.save(dest)
            print(f"minimize: {len(case.data)} -> {len(data)} bytes, {len(frames)} frames, {tries[0]} runs; saved {dest}")
            for f in frames[:60]:
                print("  " + (f"{FRAME_NAMES.get(f[3], f[3])} flags={f[4]:#x} sid={int.from_bytes(f[5:9], 'big')} "
                              f"len={int.from_bytes(f[:3], 'big')} {f[9:41].hex()}" if len(f) >= 9 else f.hex()))
            return 0
        finally:
            self.cleanup()


def write_seeds(directory, seed=1):
    """A few dozen small seeds: one or two of every scenario, and a few made by hand."""
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(seed)
    written = 0
    for name, _, fn in SCENARIOS:
        for k in range(2 if name in ("request", "request-damaged", "data-odd", "continuation-odd") else 1):
            for _attempt in range(20):
                c = Conn(rng, "seed", b"http")
                c.add(settings([(3, 100), (4, 65535)]))
                fn(c)
                data = PREFACE + b"".join(c.frames)
                if len(data) <= 20000:
                    break
            with open(os.path.join(directory, f"{name}-{k}.bin"), "wb") as f:
                f.write(data)
            written += 1
    # Hand-made ones: well-formed shapes the mutator should start from.
    base = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"localhost"), (b":path", b"/api/finance/echo"),
            (b"x-api-key", KEY)]
    enc = hpack.Encoder()
    block = enc.encode(base + [(b"content-length", b"11")])
    hand = {
        "post-echo": frame(HEADERS, END_HEADERS, 1, block) + frame(DATA, 0, 1, b"hello ") + frame(DATA, END_STREAM, 1, b"world"),
        "continuation-at-limit": frame(HEADERS, END_STREAM, 1, hp_block(base)[:5]) + frame(CONTINUATION, 0, 1, b"") * 7 +
        frame(CONTINUATION, END_HEADERS, 1, hp_block(base)[5:]),
        "trailers": frame(HEADERS, END_HEADERS, 1, hp_block(base)) + frame(DATA, 0, 1, b"body") +
        frame(HEADERS, END_STREAM | END_HEADERS, 1, hp_block([(b"x-trailer", b"t")])),
        "table-size-update": frame(HEADERS, END_STREAM | END_HEADERS, 1, hp_int(0, 5, 0x20) + hp_int(4096, 5, 0x20) +
                                   hp_block(base) + hp_literal(b"x-idx", b"v", 0x40)) +
        frame(HEADERS, END_STREAM | END_HEADERS, 3, hp_block(base) + hp_int(62, 7, 0x80)),
        "connect": frame(HEADERS, END_HEADERS, 1, hp_block([(b":method", b"CONNECT"), (b":authority", b"localhost:443")])),
        "get-then-goaway": frame(HEADERS, END_STREAM | END_HEADERS, 1, hp_block(base[2:4] + [(b":method", b"GET"),
                                                                                          (b":scheme", b"http")])) +
        frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)),
    }
    for name, body in hand.items():
        with open(os.path.join(directory, f"hand-{name}.bin"), "wb") as f:
            f.write(PREFACE + settings([(3, 100), (4, 65535)]) + body)
        written += 1
    return written


def common_args(p, name):
    p.add_argument("--binary", default=os.environ.get("TOLLGATE_BIN", pf.DEFAULT_BINARY))
    p.add_argument("--duration", type=float, default=60.0, help="seconds to fuzz (default 60)")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    p.add_argument("--workers", type=int, default=3, help="concurrent client connections")
    p.add_argument("--threads", type=int, default=2, help="event loops of the proxy")
    p.add_argument("--crash-dir", default=os.path.join(ROOT, "Fuzz", "crashes", name))
    p.add_argument("--no-seed-pass", action="store_true")
    p.add_argument("--no-reaper", action="store_true", help="do not watch for connections the proxy keeps open")
    p.add_argument("--stop-on-crash", action="store_true")
    p.add_argument("--replay", metavar="DIR")
    p.add_argument("--minimize", metavar="DIR")


def main_for(harness_class, p):
    args = p.parse_args()
    if getattr(args, "write_seeds", None):
        print(f"wrote {write_seeds(args.write_seeds)} seeds to {args.write_seeds}")
        return 0
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"no tollgate binary at {args.binary} (swift build --scratch-path .build-asan -Xswiftc -sanitize=address)")
    args.binary = os.path.abspath(args.binary)
    name = harness_class.name
    if args.replay or args.minimize:
        args.duration = 0
        h = harness_class(args)
        return h.replay(args.replay) if args.replay else h.minimize(args.minimize)
    print(f"{name}: seed {args.seed}, {args.duration:.0f}s, {args.workers} workers, binary {args.binary}", flush=True)
    h = harness_class(args)
    elapsed = h.run()
    h.report(elapsed)
    return 1 if (h.crash_count or h.hang_count) else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_args(p, "h2")
    p.add_argument("--write-seeds", metavar="DIR", help="write the generated seed set to DIR and exit")
    sys.exit(main_for(Harness, p))


if __name__ == "__main__":
    main()
