#!/usr/bin/env python3
"""Seed corpora of the libFuzzer targets.

  corpus.py build SEEDDIR    rewrite Fuzz/corpus/* from DumpSeeds output (SEEDDIR/{request,
                             response,chunked}), the black-box seeds and the lists below
  corpus.py wrap IN OUT [--flags F] [--splits a,b,...]
                             raw HTTP bytes → a request/response/chunked target input
  corpus.py unwrap IN        a target input → its raw message (stdout) and control (stderr)

Input layout of the resumable-parser targets (see Fuzz/Targets/Support/FuzzSupport.swift):
byte 0 flags (bits 0-1 limits profile, bit 2 byte at a time, bits 3-4 method, bits 5-7
split count), bytes 1-7 split points as fractions of the message length, then the message.
"""

import argparse
import hashlib
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "Fuzz", "corpus")
BLACKBOX = os.path.join(ROOT, "Fuzz", "blackbox", "seeds")


def wrap(message, flags=None, splits=(64, 128, 192), byte_at_a_time=None):
    """Control header + message. By default three splits (¼, ½, ¾) and, for short
    messages, byte-at-a-time feeding too."""
    if flags is None:
        flags = (min(len(splits), 7) << 5)
        if byte_at_a_time if byte_at_a_time is not None else len(message) <= 256:
            flags |= 0b100
    fr = list(splits)[:7] + [0] * (7 - min(len(splits), 7))
    return bytes([flags & 0xFF] + [f & 0xFF for f in fr]) + message


def unwrap(data):
    if len(data) < 8:
        return {"flags": 0, "splits": []}, data
    flags = data[0]
    return {"flags": flags, "limits": flags & 3, "byte_at_a_time": bool(flags & 4), "method": (flags >> 3) & 3,
            "splits": list(data[1:1 + (flags >> 5)])}, data[8:]


def write(dirname, name, data):
    os.makedirs(dirname, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:80]
    with open(os.path.join(dirname, safe), "wb") as f:
        f.write(data)


PATHS = [
    "/", "/admin", "/x/../admin", "/%61dmin", "//admin", "///a//b///", "/a/./b/", "/a/b/..", "/a/.", "/x/%2e%2e/admin",
    "/x/.%2E/admin", "/%2e/admin", "/a%3fb", "/a%20b", "/caf%c3%a9", "/%7Euser/%41%5a", "/api/finance/accounts",
    "/a:b@c!$&'()*+,=", "/..a/b..", "/admin;x", "/../admin", "/a/../../admin", "/a%2fb", "/a%5cb", "/a%00b", "/a\x00b",
    "/a\\b", "/a%zzb", "/a%2", "/a%", "/a b", "/a#b", "/a?b", "/a/%2E%2E%2f", "/a/b/c/../../../", "/%2e%2e%2e/",
    "/a/.../b", "/.%2e/", "/%25/%2525", "/api/v1/prediction/abc-123",
]

CREDENTIALS = [
    # (query parameter name, value)
    ("api_key", "Bearer abc"), ("api_key", "bearer   tg_xyz  "), ("api_key", "BEARER k"), ("api_key", "Basic abc"),
    ("api_key", "Bearer "), ("api_key", "Bearerabc"), ("api_key", "Bearer a b"), ("api_key", "api_key=K"),
    ("api_key", "a=1&api_key=K&b=2"), ("api_key", "a=1&api_key=&b"), ("api_key", "xapi_key=K"), ("api_key", "api_key"),
    ("api_key", "api_key=1&api_key=2"), ("key", "&&key=v&"), ("", "=x&="),
    ("api_key", "Bearer tg_0123456789abcdefghijABCDEFGHIJ01AAAAAA"),
    ("api_key", "api_key=tg_0123456789abcdefghijABCDEFGHIJ01AAAAAA&x"),
    ("api_key", "tg_0123456789abcdefghijABCDEFGHIJ01AAAAAA"),
]

ADDRESSES = [
    # (peer selector, X-Forwarded-For)
    (0, "192.0.2.1"), (0, "0.0.0.0"), (1, "255.255.255.255"), (2, "::"), (2, "::1"), (0, "2001:db8::1"),
    (0, "2001:DB8:0:0:0:0:0:1"), (1, "1:2:3:4:5:6:7:8"), (1, "1::"), (1, "fe80::1:2"), (0, "::ffff:192.0.2.1"),
    (0, "64:ff9b::192.0.2.33"), (1, "1.2.3"), (1, "01.2.3.4"), (1, ":::"), (1, "1::2::3"), (1, "fe80::1%eth0"),
    (1, "[::1]"), (1, "::1.2.3"), (1, "1.2.3.4:80"), (1, "unknown"), (0, "9.9.9.9, 1.2.3.4, 10.0.0.2"),
    (1, "9.9.9.9,1.2.3.4,10.0.0.2 ,\t10.0.0.3"), (1, "10.0.0.5, 10.0.0.2"), (1, "1.2.3.4, garbage, 10.0.0.2"),
    (1, "1.2.3.4, , 10.0.0.2"), (2, "::ffff:10.1.1.1, 2001:db8::7"), (4, "fd00::1, fd00::2"), (0, "10.0.0.0/8"),
    (0, "::/0"), (0, "192.0.2.7/32"), (0, "10.0.0.1/8"), (0, "10.0.0.0/08"), (0, "::/129"), (3, "203.0.113.9"),
]


def build(seed_dir):
    for kind in ("request", "response", "chunked", "path", "credential", "client-ip"):
        shutil.rmtree(os.path.join(CORPUS, kind), ignore_errors=True)
    counts = {}
    for kind in ("request", "response", "chunked"):
        d = os.path.join(seed_dir, kind)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            with open(os.path.join(d, name), "rb") as f:
                raw = f.read()
            write(os.path.join(CORPUS, kind), "test-" + name, wrap(raw))
            counts[kind] = counts.get(kind, 0) + 1
    # The black-box seeds: realistic requests/responses for the proxy, the known crash too.
    for kind, sub in (("request", "requests"), ("response", "responses")):
        d = os.path.join(BLACKBOX, sub)
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), "rb") as f:
                raw = f.read()
            write(os.path.join(CORPUS, kind), "blackbox-" + name, wrap(raw))
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "response":
                # The same bytes as the answer to HEAD and to CONNECT.
                write(os.path.join(CORPUS, kind), "blackbox-head-" + name, wrap(raw, flags=(3 << 5) | (1 << 3)))
                write(os.path.join(CORPUS, kind), "blackbox-connect-" + name, wrap(raw, flags=(3 << 5) | (2 << 3)))
                counts[kind] += 2
    for p in PATHS:
        write(os.path.join(CORPUS, "path"), hashlib.sha1(p.encode("latin-1")).hexdigest()[:12], p.encode("latin-1"))
    counts["path"] = len(PATHS)
    for name, value in CREDENTIALS:
        data = bytes([len(name)]) + name.encode() + value.encode()
        write(os.path.join(CORPUS, "credential"), hashlib.sha1(data).hexdigest()[:12], data)
    counts["credential"] = len(CREDENTIALS)
    for peer, xff in ADDRESSES:
        data = bytes([peer]) + xff.encode()
        write(os.path.join(CORPUS, "client-ip"), hashlib.sha1(data).hexdigest()[:12], data)
    counts["client-ip"] = len(ADDRESSES)
    for k, v in sorted(counts.items()):
        print(f"{k}: {v} seeds")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("seed_dir")
    w = sub.add_parser("wrap")
    w.add_argument("input")
    w.add_argument("output")
    w.add_argument("--flags", type=lambda s: int(s, 0))
    w.add_argument("--splits", default="64,128,192")
    u = sub.add_parser("unwrap")
    u.add_argument("input")
    a = p.parse_args()
    if a.cmd == "build":
        build(a.seed_dir)
    elif a.cmd == "wrap":
        with open(a.input, "rb") as f:
            raw = f.read()
        splits = [int(x) for x in a.splits.split(",") if x]
        with open(a.output, "wb") as f:
            f.write(wrap(raw, flags=a.flags, splits=splits))
    else:
        with open(a.input, "rb") as f:
            control, message = unwrap(f.read())
        print(control, file=sys.stderr)
        sys.stdout.buffer.write(message)


if __name__ == "__main__":
    main()
