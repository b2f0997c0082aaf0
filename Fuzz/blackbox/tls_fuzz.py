#!/usr/bin/python3
"""Black-box TLS record-path fuzzer for the real `tollgate` binary (built with ASan).

The same processes as h2_fuzz.py (scripted upstream, `tollgate backends`, `tollgate serve`),
but the proxy's listener is TLS, with two throwaway self-signed certificates made under a
temporary directory (ECDSA P-256 `localhost`, the default; RSA `b.test`, chosen by SNI), and
session tickets rotated every 3 s. Each case is one connection of one of these kinds:

  raw     a ClientHello built by hand (versions, cipher suites, key share, SNI, ALPN,
          signature algorithms, PSK, padding, unknown and duplicate extensions), then
          damaged: ALPN lists malformed / huge / only h2 / only unknown, SNI odd (empty,
          long, NUL, several, wrong type), lengths that lie, fragmented over many records,
          wrong record types and versions, truncated, SSLv2-style; after the server's
          answer, more bytes (a second hello, alerts, CCS, garbage, app data in clear).
  ssl     a real handshake (python `ssl` over memory BIOs, so every record is ours to
          mangle): TLS 1.2 or 1.3, cipher, ALPN (h2, http/1.1, odd lists), SNI, sometimes a
          resumed session; the ClientHello itself sometimes rewritten (ALPN/SNI/extension
          damage: the server's callbacks see it, the handshake then fails); after the
          handshake HTTP/2 frames (h2_fuzz's generator) or an HTTP/1.1 request (proxy_fuzz's
          seeds and mutator), encrypted, then record-level damage: split anywhere, truncated,
          a bit flipped, length fields that lie, records dropped/duplicated/swapped, alerts
          and CCS in clear, a ClientHello in clear (renegotiation attempt), an encrypted
          close_notify followed by more data, oversized and zero-length records, garbage
          between records, a reset mid-exchange.
  sclient `openssl s_client`: TLS 1.2 renegotiation (`R`) and TLS 1.3 key updates (`k`, `K`)
          between requests.
  plain   no TLS at all: HTTP/1.1, the h2c preface, random bytes.

After every case a fresh h2-over-TLS request and a fresh HTTP/1.1-over-TLS request must be
answered; ASan / fatal reports on the proxy's stderr are crashes. Crashers and hangs go to
Fuzz/crashes/tls/ (case.json holds the plan; `--replay DIR` runs it again on a fresh proxy).

Bounded by --duration; prints `tls: executions=N duration=S crashes=C hangs=H unique=U` last.
"""

import argparse
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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import h2_fuzz as hf  # noqa: E402
import proxy_fuzz as pf  # noqa: E402

# ---------------------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------------------


def make_certs(directory):
    """Two throwaway self-signed certificates (never leave the temporary directory)."""
    out = {}
    specs = [("cert", "key", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "localhost",
              "DNS:localhost,IP:127.0.0.1"),
             ("cert2", "key2", ["-newkey", "rsa:2048"], "b.test", "DNS:b.test,DNS:*.wild.test")]
    for cname, kname, newkey, cn, san in specs:
        c, k = os.path.join(directory, cname + ".pem"), os.path.join(directory, kname + ".pem")
        subprocess.run(["openssl", "req", "-x509", "-nodes", "-days", "2", *newkey, "-keyout", k, "-out", c,
                        "-subj", f"/CN={cn}", "-addext", f"subjectAltName={san}"], check=True, capture_output=True, timeout=60)
        out[cname], out[kname] = c, k
    return out


# ---------------------------------------------------------------------------------------
# A ClientHello by hand
# ---------------------------------------------------------------------------------------


def u16(n):
    return struct.pack(">H", n & 0xFFFF)


def ext(t, body, length=None):
    return u16(t) + u16(len(body) if length is None else length) + body


def alpn_wire(protos):
    return b"".join(bytes([len(p) & 0xFF]) + p for p in protos)


def sni_body(names):
    lst = b"".join(bytes([t]) + u16(len(n)) + n for t, n in names)
    return u16(len(lst)) + lst


TLS13_SUITES = [0x1301, 0x1302, 0x1303]
TLS12_SUITES = [0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC023, 0xC027, 0xC009, 0xC013, 0x009C, 0x002F, 0x0035]
ODD_SUITES = [0x00FF, 0x5600, 0x0000, 0x0004, 0xFFFF, 0x1304, 0x1305, 0x0A0A]

ALPN_CHOICES = [
    ("h2", [b"h2"]), ("http11", [b"http/1.1"]), ("both", [b"h2", b"http/1.1"]), ("both-rev", [b"http/1.1", b"h2"]),
    ("unknown", [b"spdy/3", b"h3", b"x"]), ("h2c", [b"h2c"]), ("H2", [b"H2"]), ("h2-long", [b"h2" + b"\x00"]),
    ("many-then-h2", [b"p%d" % i for i in range(600)] + [b"h2"]), ("many", [b"p%d" % i for i in range(2000)]),
    ("huge-names", [b"x" * 255] * 60 + [b"http/1.1"]), ("dup-h2", [b"h2"] * 50), ("http10", [b"http/1.0"]),
]


def alpn_damaged(rng):
    """ALPN extension bodies that do not parse: zero-length names, lengths past the end."""
    return rng.choice([
        u16(0),                                   # empty list
        u16(3) + b"\x00h2",                       # a zero-length name
        u16(3) + b"\x05h2",                       # a name running past the list
        u16(10) + b"\x02h2",                      # the list length lies (longer)
        u16(1) + b"\x02h2",                       # the list length lies (shorter)
        b"\x02",                                  # not even a length
        u16(4) + b"\x02h2\x00",                   # trailing zero-length entry
        u16(5) + b"\x02h2\x01",                   # an entry cut short
        b"",                                      # empty extension body
    ])


SNI_CHOICES = [
    [(0, b"localhost")], [(0, b"b.test")], [(0, b"B.TEST")], [(0, b"x.wild.test")], [(0, b"localhost.")], [(0, b"")],
    [(0, b"a" * 255)], [(0, b"a" * 4000)], [(0, b"loc\x00alhost")], [(0, b"127.0.0.1")], [(0, b"[::1]")],
    [(0, b"\xff\xfe")], [(0, b"b.test"), (0, b"localhost")], [(1, b"localhost")], [(0, b"*.wild.test")],
    [(0, b"b.test\x00.evil")], [(0, b"..")], [],
]


def client_hello(rng, plan):
    """The ClientHello handshake message for `plan` (a dict of choices), and its extensions."""
    tls13 = plan.get("v13", True)
    suites = plan.get("suites") or ((TLS13_SUITES if tls13 else []) + TLS12_SUITES)
    exts = []
    if plan.get("sni") is not None:
        exts.append((0, sni_body([(t, bytes.fromhex(n)) for t, n in plan["sni"]])))
    exts.append((10, u16(4) + u16(0x001D) + u16(0x0017)))                # groups: x25519, P-256
    exts.append((11, b"\x01\x00"))                                        # point formats
    exts.append((13, u16(8) + u16(0x0403) + u16(0x0804) + u16(0x0401) + u16(0x0503)))
    exts.append((23, b""))                                                # extended master secret
    exts.append((0xFF01, b"\x00"))                                        # renegotiation_info
    if plan.get("alpn_raw") is not None:
        exts.append((16, bytes.fromhex(plan["alpn_raw"])))
    elif plan.get("alpn") is not None:
        wire = alpn_wire([bytes.fromhex(p) for p in plan["alpn"]])
        exts.append((16, u16(len(wire)) + wire))
    if tls13:
        exts.append((43, bytes([2 * len(plan.get("versions", [0x0304, 0x0303]))]) +
                     b"".join(u16(v) for v in plan.get("versions", [0x0304, 0x0303]))))
        if plan.get("key_share", True):
            key = os.urandom(32)
            exts.append((51, u16(36) + u16(0x001D) + u16(32) + key))
        else:
            exts.append((51, u16(0)))                                     # no share: HelloRetryRequest
        exts.append((45, b"\x01\x01"))
    for t, body in plan.get("extra", []):
        exts.append((t, bytes.fromhex(body)))
    if plan.get("psk"):
        ident = os.urandom(rng.choice([1, 32, 200]))
        binder = os.urandom(32)
        exts.append((42, b""))                                            # early_data
        exts.append((41, u16(len(ident) + 6) + u16(len(ident)) + ident + b"\x00\x00\x00\x00" +
                     u16(33) + b"\x20" + binder))
    ext_bytes = b"".join(ext(t, b) for t, b in exts)
    body = (u16(plan.get("legacy", 0x0303)) + os.urandom(32) + b"\x20" + os.urandom(32) +
            u16(2 * len(suites)) + b"".join(u16(s) for s in suites) + bytes.fromhex(plan.get("comp", "0100")) +
            u16(plan.get("ext_len", len(ext_bytes))) + ext_bytes)
    msg_len = plan.get("msg_len", len(body))
    return b"\x01" + struct.pack(">I", msg_len)[1:] + body


def records(content_type, payload, version=0x0301, size=16384):
    out = b""
    for i in range(0, max(1, len(payload)), size):
        chunk = payload[i:i + size]
        out += bytes([content_type]) + u16(version) + u16(len(chunk)) + chunk
    return out


def raw_plan(rng):
    """The choices of a hand-built hello; JSON-able (bytes as hex)."""
    plan = {"v13": rng.random() < 0.7}
    if rng.random() < 0.85:
        plan["sni"] = [(t, n.hex()) for t, n in rng.choice(SNI_CHOICES)]
    r = rng.random()
    if r < 0.65:
        name, protos = rng.choice(ALPN_CHOICES)
        plan["alpn"] = [p.hex() for p in protos]
        plan["alpn_name"] = name
    elif r < 0.85:
        plan["alpn_raw"] = alpn_damaged(rng).hex()
    if rng.random() < 0.1:
        plan["key_share"] = False
    if rng.random() < 0.1:
        plan["versions"] = rng.choice([[0x0304], [0x0303], [0x0300], [0x7F1C], [0x0304] * 40, []])
    if rng.random() < 0.1:
        plan["suites"] = rng.sample(ODD_SUITES + TLS13_SUITES + TLS12_SUITES, rng.randint(1, 6))
    if rng.random() < 0.1:
        plan["psk"] = True
    if rng.random() < 0.2:
        extra = []
        for _ in range(rng.randint(1, 4)):
            t = rng.choice([16, 0, 43, 51, 21, 35, 5, 15, 22, 28, 44, 0x3374, 0xFFFF, 0x0A0A, rng.randrange(65536)])
            extra.append((t, os.urandom(rng.choice([0, 1, 2, 4, 100, 3000])).hex()))
        plan["extra"] = extra
    if rng.random() < 0.05:
        plan["legacy"] = rng.choice([0x0300, 0x0301, 0x0304, 0xFFFF, 0x0200])
    if rng.random() < 0.05:
        plan["comp"] = rng.choice(["00", "0101", "020100", "ff" + "00" * 10])
    if rng.random() < 0.04:
        plan["ext_len"] = rng.choice([0, 1, 65535])
    if rng.random() < 0.04:
        plan["msg_len"] = rng.choice([0, 1, 0xFFFFFF, 40000])
    # How it goes on the wire.
    plan["frag"] = rng.choice([16384] * 6 + [1, 5, 100, 512])
    plan["rec_version"] = rng.choice([0x0301] * 8 + [0x0303, 0x0300, 0x0304, 0xFFFF])
    plan["rec_type"] = rng.choice([22] * 18 + [23, 21, 20, 24, 0xFF])
    plan["wire"] = rng.choice(["ok"] * 10 + ["len+", "len-", "len0", "trunc", "lenmax", "trailing", "twice", "sslv2",
                                            "empty-first", "bytes"])
    plan["after"] = rng.choice(["none", "none", "close", "garbage", "alert", "ccs", "hello", "appdata", "heartbeat",
                                "slow", "rst", "http", "huge"])
    return plan


def raw_bytes(rng, plan):
    """The client bytes of a raw case: (hello bytes, bytes sent after the server answered)."""
    hello = client_hello(rng, plan)
    wire = records(plan["rec_type"], hello, plan["rec_version"], plan["frag"])
    w = plan["wire"]
    if w == "len+":
        wire = wire[:3] + u16(int.from_bytes(wire[3:5], "big") + rng.choice([1, 10, 1000])) + wire[5:]
    elif w == "len-":
        wire = wire[:3] + u16(max(0, int.from_bytes(wire[3:5], "big") - rng.choice([1, 10, 100]))) + wire[5:]
    elif w == "len0":
        wire = wire[:3] + u16(0) + wire[5:]
    elif w == "lenmax":
        wire = wire[:3] + u16(rng.choice([16385, 18432, 18433, 65535])) + wire[5:]
    elif w == "trunc":
        wire = wire[:rng.randint(1, len(wire) - 1)]
    elif w == "trailing":
        wire = wire + rng.choice([b"\x00", os.urandom(50), b"GET / HTTP/1.1\r\n\r\n", hf.PREFACE])
    elif w == "twice":
        wire = wire + records(22, client_hello(rng, plan))
    elif w == "sslv2":
        body = b"\x01\x03\x01" + u16(3) + u16(0) + u16(16) + b"\x00\x00\x2f" + os.urandom(16)
        wire = bytes([0x80 | (len(body) >> 8), len(body) & 0xFF]) + body
    elif w == "empty-first":
        wire = records(22, b"", 0x0301)[:5] + wire
    elif w == "bytes":
        b = bytearray(wire)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        wire = bytes(b)
    a = plan["after"]
    after = b""
    if a == "garbage":
        after = os.urandom(rng.choice([1, 5, 100, 20000]))
    elif a == "alert":
        after = bytes([21]) + u16(0x0303) + u16(2) + bytes([rng.choice([1, 2, 3]), rng.choice([0, 10, 40, 90, 100, 255])])
    elif a == "ccs":
        after = bytes([20, 3, 3, 0, 1, 1]) * rng.choice([1, 2, 50])
    elif a == "hello":
        after = records(22, client_hello(rng, plan))
    elif a == "appdata":
        after = records(23, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 0x0303)
    elif a == "heartbeat":
        after = bytes([24, 3, 3, 0, 3, 1, 0x40, 0x00])
    elif a == "http":
        after = b"GET /public/x HTTP/1.1\r\nHost: h\r\n\r\n"
    elif a == "huge":
        after = bytes([23, 3, 3, 0x48, 0x01]) + os.urandom(0x4801)
    return wire, after


# ---------------------------------------------------------------------------------------
# ClientHello rewriting (a real handshake's hello, changed before it leaves)
# ---------------------------------------------------------------------------------------


def parse_hello(wire):
    """(prefix up to the extensions, [(type, body)]) of the first ClientHello record, or None."""
    if len(wire) < 9 or wire[0] != 22 or wire[5] != 1:
        return None
    rec_len = int.from_bytes(wire[3:5], "big")
    msg = wire[5:5 + rec_len]
    body = msg[4:4 + int.from_bytes(msg[1:4], "big")]
    i = 2 + 32
    i += 1 + body[i]
    i += 2 + int.from_bytes(body[i:i + 2], "big")
    i += 1 + body[i]
    ext_len = int.from_bytes(body[i:i + 2], "big")
    j, end, exts = i + 2, i + 2 + ext_len, []
    while j + 4 <= end:
        t = int.from_bytes(body[j:j + 2], "big")
        n = int.from_bytes(body[j + 2:j + 4], "big")
        exts.append((t, body[j + 4:j + 4 + n]))
        j += 4 + n
    return body[:i], exts, wire[5 + rec_len:]


def rewrite_hello(wire, mut, rng):
    parsed = parse_hello(wire)
    if parsed is None:
        return wire
    prefix, exts, rest = parsed
    kind = mut["kind"]
    if kind == "alpn":
        body = bytes.fromhex(mut["body"])
        exts = [(t, b) for t, b in exts if t != 16]
        exts.insert(rng.randint(0, max(0, len(exts) - 1)), (16, body))
    elif kind == "sni":
        exts = [(t, b) for t, b in exts if t != 0]
        exts.insert(0, (0, bytes.fromhex(mut["body"])))
    elif kind == "dup" and exts:
        t, b = rng.choice(exts)
        exts.insert(rng.randint(0, max(0, len(exts) - 1)), (t, b))
    elif kind == "drop" and exts:
        exts.pop(rng.randrange(len(exts)))
    elif kind == "unknown":
        exts.insert(0, (rng.randrange(0x4000, 0xFFFF), os.urandom(rng.choice([0, 10, 5000]))))
    elif kind == "pad":
        exts.insert(0, (21, b"\x00" * rng.choice([1, 500, 9000])))
    ext_bytes = b"".join(ext(t, b) for t, b in exts)
    body = prefix + u16(len(ext_bytes)) + ext_bytes
    msg = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return records(22, msg, int.from_bytes(wire[1:3], "big")) + rest


# ---------------------------------------------------------------------------------------
# Record damage after the handshake
# ---------------------------------------------------------------------------------------

RECORD_OPS = ["split", "split", "split", "truncate", "flip", "len", "dup", "drop", "swap", "alert", "alert-enc",
              "close-notify", "ccs", "hello", "heartbeat", "zero", "huge", "garbage", "reset", "half-close", "none",
              "none", "none", "none"]


def split_records(data):
    out, i = [], 0
    while i < len(data):
        if len(data) - i < 5:
            out.append(data[i:])
            break
        n = int.from_bytes(data[i + 3:i + 5], "big")
        out.append(data[i:i + 5 + n])
        i += 5 + n
    return out


def damage_records(rng, recs, op, plan_rng_hello):
    """Applies one record-level operation to the list of (encrypted) records."""
    if not recs:
        return recs
    i = rng.randrange(len(recs))
    r = recs[i]
    if op == "truncate":
        recs[-1] = recs[-1][:rng.randint(1, max(1, len(recs[-1]) - 1))]
    elif op == "flip" and len(r) > 5:
        b = bytearray(r)
        k = rng.randrange(5, len(b))
        b[k] ^= 1 << rng.randrange(8)
        recs[i] = bytes(b)
    elif op == "len" and len(r) >= 5:
        n = int.from_bytes(r[3:5], "big")
        recs[i] = r[:3] + u16(rng.choice([0, 1, max(0, n - 1), n + 1, 16640, 16641, 18432, 18433, 0xFFFF])) + r[5:]
    elif op == "dup":
        recs.insert(i, r)
    elif op == "drop" and len(recs) > 1:
        del recs[i]
    elif op == "swap" and len(recs) > 1:
        j = rng.randrange(len(recs))
        recs[i], recs[j] = recs[j], recs[i]
    elif op == "alert":
        recs.insert(i, bytes([21]) + u16(0x0303) + u16(2) + bytes([rng.choice([1, 2]), rng.choice([0, 10, 20, 40, 90, 100, 255])]))
    elif op == "ccs":
        recs.insert(i, bytes([20, 3, 3, 0, 1, 1]))
    elif op == "hello":
        recs.insert(i, records(22, plan_rng_hello))
    elif op == "heartbeat":
        recs.insert(i, bytes([24, 3, 3, 0, 3, 1, 0xFF, 0xFF]))
    elif op == "zero":
        recs.insert(i, bytes([rng.choice([23, 22, 21]), 3, 3, 0, 0]))
    elif op == "huge":
        n = rng.choice([16401, 17000, 18433])
        recs.insert(i, bytes([23, 3, 3]) + u16(n) + os.urandom(n))
    elif op == "garbage":
        recs.insert(i, os.urandom(rng.choice([1, 3, 5, 100])))
    return recs


# ---------------------------------------------------------------------------------------
# Running a case
# ---------------------------------------------------------------------------------------


def connect(port, slow_read=False):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if slow_read:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.settimeout(2.0)
    s.connect(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def send_split(sock, data, rng, cuts):
    """Sends data in pieces (by event between them); False when the peer stopped taking it."""
    last = 0
    for c in sorted(set(x for x in cuts if 0 < x < len(data))) + [len(data)]:
        piece = data[last:c]
        last = c
        try:
            sock.sendall(piece)
        except (OSError, socket.timeout):
            return False
        if c < len(data):
            select.select([sock], [], [], rng.choice([0, 0.001, 0.005]))
    return True


def drain(sock, total=2.0, quiet=0.4):
    """Reads raw bytes until EOF or quiet; (bytes, closed)."""
    got = bytearray()
    deadline = time.monotonic() + total
    while time.monotonic() < deadline:
        r, _, _ = select.select([sock], [], [], quiet)
        if not r:
            return bytes(got), False
        try:
            chunk = sock.recv(65536)
        except OSError:
            return bytes(got), True
        if not chunk:
            return bytes(got), True
        got += chunk
    return bytes(got), False


def tls_summary(raw):
    """Record types (and alert descriptions when in clear) the server sent."""
    parts = set()
    for r in split_records(raw):
        if len(r) < 5:
            parts.add("partial")
            continue
        if r[0] == 21 and len(r) >= 7:
            parts.add(f"alert:{r[5]}.{r[6]}")
        elif r[0] in (20, 21, 22, 23):
            parts.add({20: "ccs", 21: "alert?", 22: "hs", 23: "app"}[r[0]])
        else:
            parts.add("junk")
    return parts


def run_raw(harness, case, rng):
    plan = case.meta["plan"]
    rng = random.Random(case.meta.get("rseed", 0))
    try:
        s = connect(harness.gateway.port, case.slow_read)
    except OSError:
        return None
    try:
        wire = case.data
        after = bytes.fromhex(case.meta.get("after", ""))
        ok = send_split(s, wire, rng, case.cuts)
        got, closed = drain(s, total=2.0, quiet=0.3) if ok else (b"", True)
        parts = tls_summary(got)
        if not closed:
            if plan["after"] == "close":
                s.shutdown(socket.SHUT_WR)
            elif plan["after"] == "rst":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                return "raw:rst:" + ",".join(sorted(parts)), True
            elif plan["after"] == "slow":
                time.sleep(1.2)        # past the header (handshake) deadline
            if after:
                send_split(s, after, rng, [rng.randint(1, len(after))] if rng.random() < 0.3 else [])
            more, closed = drain(s, total=2.0, quiet=0.3)
            parts |= {"after:" + p for p in tls_summary(more)}
        return "raw:" + plan.get("alpn_name", "-") + ":" + ",".join(sorted(parts)) + (":closed" if closed else ""), closed
    finally:
        s.close()


class TLSConn:
    """A client TLS connection over memory BIOs on a blocking socket."""

    def __init__(self, sock, ctx, server_hostname, session=None):
        self.sock = sock
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=False, server_hostname=server_hostname, session=session)

    def handshake(self, rewrite=None, timeout=3.0):
        first = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            data = self.out.read()
            if data:
                if first and rewrite:
                    data = rewrite(data)
                first = False
                self.sock.sendall(data)
            if done:
                return True
            r, _, _ = select.select([self.sock], [], [], max(0.01, deadline - time.monotonic()))
            if not r:
                return False
            chunk = self.sock.recv(65536)
            if not chunk:
                self.inc.write_eof()
                raise ConnectionError("closed during the handshake")
            self.inc.write(chunk)
        return False

    def encrypt(self, data):
        self.obj.write(data)
        return self.out.read()

    def pump_in(self, raw):
        """Feeds received bytes; returns the plaintext they decrypt to (best effort)."""
        self.inc.write(raw)
        out = bytearray()
        while True:
            try:
                d = self.obj.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            except ssl.SSLError:
                break
            if not d:
                break
            out += d
        # Key updates or tickets may want to be answered.
        pending = self.out.read()
        if pending:
            try:
                self.sock.sendall(pending)
            except OSError:
                pass
        return bytes(out)


SESSIONS = []   # tickets from earlier connections (resumption cases)


def ssl_plan(rng):
    plan = {"ver": rng.choice(["1.3", "1.3", "1.2"]),
            "sni": rng.choice(["localhost", "localhost", "b.test", "x.wild.test", "other.example", None]),
            "alpn": rng.choice([["h2"], ["h2"], ["h2", "http/1.1"], ["http/1.1"], ["http/1.1"], [], ["x", "y"],
                                [f"p{i}" for i in range(500)] + ["h2"], ["h2c", "http/1.0"]]),
            "resume": rng.random() < 0.15,
            "ops": [rng.choice(RECORD_OPS) for _ in range(rng.choice([1, 1, 1, 2, 3]))]}
    if plan["ver"] == "1.2":
        plan["cipher"] = rng.choice(["ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
                                     "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384",
                                     "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305",
                                     "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA", "AES128-GCM-SHA256:AES256-SHA",
                                     "ALL"])
    if rng.random() < 0.2:
        m = {"kind": rng.choice(["alpn", "alpn", "sni", "dup", "drop", "unknown", "pad"])}
        if m["kind"] == "alpn":
            name, protos = rng.choice(ALPN_CHOICES)
            wire = alpn_wire(protos)
            m["body"] = (u16(len(wire)) + wire).hex() if rng.random() < 0.5 else alpn_damaged(rng).hex()
        elif m["kind"] == "sni":
            m["body"] = sni_body(rng.choice(SNI_CHOICES)).hex() if rng.random() < 0.7 else os.urandom(rng.choice([0, 3, 9])).hex()
        plan["hello"] = m
    return plan


def client_ctx(plan):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if plan["ver"] == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(plan.get("cipher", "ALL"))
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if plan["alpn"]:
        ctx.set_alpn_protocols(plan["alpn"])
    return ctx


def run_ssl(harness, case, rng):
    plan = case.meta["plan"]
    rng = random.Random(case.meta.get("rseed", 0))   # the same damage on a replay
    try:
        s = connect(harness.gateway.port, case.slow_read)
    except OSError:
        return None
    s.settimeout(3.0)
    try:
        ctx = client_ctx(plan)
        earlier = [x for x in SESSIONS if x[0] == plan["ver"]] if plan["resume"] else []
        try:
            if earlier:
                # A resumed session goes with the context it came from.
                _, session, ctx = rng.choice(earlier)
                t = TLSConn(s, ctx, plan["sni"], session=session)
            else:
                t = TLSConn(s, ctx, plan["sni"])
        except (ValueError, ssl.SSLError):
            t = TLSConn(s, ctx, None)
        hello_mut = plan.get("hello")
        rewrite = (lambda w: rewrite_hello(w, hello_mut, random.Random(case.meta.get("rseed", 0)))) if hello_mut else None
        try:
            ok = t.handshake(rewrite)
        except (ssl.SSLError, OSError, ConnectionError) as e:
            # Expected when the hello was rewritten: the server saw it; what then?
            rest, closed = drain(s, total=1.0, quiet=0.2)
            return f"ssl:handshake-failed:{type(e).__name__}" + (":closed" if closed else ""), True
        if not ok:
            return "ssl:handshake-timeout", False
        alpn = t.obj.selected_alpn_protocol()
        # The application bytes: the case's data is h2 frames or an HTTP/1.1 request; the
        # ALPN the server picked decides which the proxy will read them as.
        pieces = case.pieces()
        recs = []
        for p in pieces:
            recs += split_records(t.encrypt(p))
        hello = client_hello(rng, {"v13": plan["ver"] == "1.3", "sni": [(0, b"localhost".hex())]})
        half_close = False
        close_notify_at = None
        for op in plan["ops"]:
            if op == "close-notify":
                close_notify_at = rng.randint(0, len(recs))
            elif op == "alert-enc":
                # An encrypted alert (close_notify is the only one python sends): data after it.
                close_notify_at = rng.randint(0, len(recs))
            elif op == "half-close":
                half_close = True
            elif op not in ("split", "reset", "none"):
                recs = damage_records(rng, recs, op, hello)
        if close_notify_at is not None:
            try:
                t.obj.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass
            cn = t.out.read()
            recs[close_notify_at:close_notify_at] = [cn] if cn else []
        wire = b"".join(recs)
        cuts = []
        if "split" in plan["ops"]:
            cuts = [rng.randint(1, max(1, len(wire) - 1)) for _ in range(rng.choice([1, 3, 10, 40]))]
        elif len(recs) > 1:
            acc = 0
            for r in recs[:-1]:
                acc += len(r)
                if rng.random() < 0.5:
                    cuts.append(acc)
        if "reset" in plan["ops"]:
            send_split(s, wire[:rng.randint(0, len(wire))], rng, cuts)
            time.sleep(rng.choice([0, 0.01, 0.2]))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return f"ssl:{alpn}:reset", True
        ok = send_split(s, wire, rng, cuts)
        if half_close or case.half_close:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        raw, closed = drain(s, total=3.0, quiet=0.6 if alpn == "h2" else 0.4)
        plain = t.pump_in(raw)
        if t.obj.session is not None and len(SESSIONS) < 50 and not plan["resume"]:
            SESSIONS.append((plan["ver"], t.obj.session, ctx))
        if alpn == "h2":
            sig = hf.summarize_h2(plain)
        else:
            sig = plain[:12].decode("latin-1")
        return f"ssl:{plan['ver']}:{alpn}:{sig}:{','.join(sorted(tls_summary(raw) - {'app'}))}" + (":closed" if closed else ""), closed
    except (OSError, ssl.SSLError, ValueError) as e:
        return f"ssl:error:{type(e).__name__}", True
    finally:
        s.close()


def run_sclient(harness, case, rng):
    plan = case.meta["plan"]
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{harness.gateway.port}", "-crlf", "-servername",
            plan["sni"], "-alpn", "http/1.1"]
    argv += ["-tls1_2"] if plan["ver"] == "1.2" else ["-tls1_3"]
    req = "GET /public/p HTTP/1.1\nHost: localhost\nX-Fuzz-Case: %s\n\n" % case.case_id
    try:
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError:
        return None
    try:
        for step in plan["steps"]:
            time.sleep(0.15)
            p.stdin.write((req if step == "req" else step + "\n").encode())
            p.stdin.flush()
        time.sleep(0.4)
        p.stdin.close()
        out, _ = p.communicate(timeout=5)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        out = b""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    text = out.decode("latin-1")
    statuses = sorted(set(x.split()[1] for x in text.splitlines() if x.startswith("HTTP/1.1 ") and len(x.split()) > 1))
    reneg = "RENEGOTIATING" in text
    keyupd = "KEYUPDATE" in text
    return f"sclient:{plan['ver']}:{'+'.join(plan['steps'])}:{','.join(statuses)}:{reneg}:{keyupd}", True


def run_plain(harness, case, rng):
    try:
        s = connect(harness.gateway.port)
    except OSError:
        return None
    try:
        send_split(s, case.data, rng, case.cuts)
        got, closed = drain(s, total=2.0, quiet=0.4)
        return "plain:" + got[:8].hex() + (":closed" if closed else ""), closed
    finally:
        s.close()


RUNNERS = {"raw": run_raw, "ssl": run_ssl, "sclient": run_sclient, "plain": run_plain}


class TLSHarness(hf.Harness):
    name = "tls"
    tls = True

    def tls_files(self):
        self.cert_dir = tempfile.mkdtemp(prefix="tollgate-tls-certs-")
        return make_certs(self.cert_dir)

    def serve_args(self):
        return ["--ticket-key-rotation", "3"]

    def load_pool(self):
        return []

    def seed_cases(self):
        return []

    def poolable(self, case):
        return False

    def app_data(self, rng, case_id):
        """HTTP/2 frames or an HTTP/1.1 request, maybe mutated."""
        if rng.random() < 0.55:
            data, names = hf.generate_stream(rng, case_id, scheme=b"https")
            if rng.random() < 0.15:
                data = hf.FrameMutator(rng).mutate(data, [])
            return data, ["h2:" + n for n in names]
        req = rng.choice(self.requests)
        if rng.random() < 0.5:
            req = self.bm.mutate(req, self.requests, pf.EXTRA_REQUEST_FIELDS, 70000)
        return pf.with_case_header(req, case_id), ["h1"]

    def make_case(self, rng, fm, bm):
        self.bm = bm
        if not hasattr(self, "requests"):
            self.requests = [d for n, d in pf.load_seeds("requests") if not n.startswith("regression-")]
        case_id = self.next_id()
        kind = rng.choices(["raw", "ssl", "sclient", "plain"], [35, 56, 4, 5])[0]
        response = self.response_for(rng, bm)
        if kind == "raw":
            plan = raw_plan(rng)
            wire, after = raw_bytes(rng, plan)
            cuts = [] if rng.random() < 0.7 else [rng.randint(1, max(1, len(wire) - 1)) for _ in range(rng.choice([1, 3, 20]))]
            c = hf.Case(case_id, wire, cuts, response, meta={"kind": kind, "plan": plan, "after": after.hex(),
                                                              "rseed": rng.randrange(1 << 30),
                                                              "scenarios": ["raw:" + plan["wire"], "raw-after:" + plan["after"]]})
        elif kind == "ssl":
            plan = ssl_plan(rng)
            data, names = self.app_data(rng, case_id)
            cuts = hf.frame_cuts(rng, data) if names[0].startswith("h2") else \
                [rng.randint(1, max(1, len(data) - 1)) for _ in range(rng.choice([0, 0, 1, 3]))]
            c = hf.Case(case_id, data, cuts, response, half_close=rng.random() < 0.15,
                        meta={"kind": kind, "plan": plan, "rseed": rng.randrange(1 << 30),
                              "scenarios": ["ssl:" + o for o in plan["ops"]] + (["ssl:hello-" + plan["hello"]["kind"]]
                                                                                 if "hello" in plan else []) + names[:2]})
        elif kind == "sclient":
            ver = rng.choice(["1.2", "1.3"])
            cmds = ["R"] if ver == "1.2" else ["k", "K"]
            steps = ["req"] + [rng.choice(cmds + ["req"]) for _ in range(rng.randint(1, 4))] + ["req"]
            plan = {"ver": ver, "sni": rng.choice(["localhost", "b.test"]), "steps": steps}
            c = hf.Case(case_id, b"", [], response, meta={"kind": kind, "plan": plan, "scenarios": ["sclient:" + ver]})
        else:
            data = rng.choice([b"GET /public/x HTTP/1.1\r\nHost: h\r\n\r\n", hf.PREFACE + hf.settings([]), os.urandom(100),
                               b"\x16\x03\x01\x00", b"\x80\x00", b"\x16" * 1000])
            c = hf.Case(case_id, data, [], response, meta={"kind": kind, "scenarios": ["plain"]})
        c.slow_read = rng.random() < 0.04
        c.origin = kind
        return c

    def run_case(self, case, rng):
        return RUNNERS[case.meta["kind"]](self, case, rng)

    def cleanup(self):
        super().cleanup()
        shutil.rmtree(self.cert_dir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    hf.common_args(p, "tls")
    sys.exit(hf.main_for(TLSHarness, p))


if __name__ == "__main__":
    main()
