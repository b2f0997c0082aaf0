#!/usr/bin/env python3
"""Black-box mutation fuzzer for the real `tollgate` binary (build it with AddressSanitizer).

It starts, on loopback ports only:
  * a scripted raw TCP upstream that answers each forwarded request with a mutated
    HTTP/1.1 response (interim 1xx heads, chunked bodies, garbage, huge heads, early
    close, resets), sent in pieces;
  * the reference backends (`tollgate backends`, finance only) behind one keyed route;
  * `tollgate serve` with a policy that routes to both, trusts loopback X-Forwarded-For,
    reads keys from a header, Bearer and a query parameter.
Worker threads then send mutated whole requests (head and body, split at random points;
between pieces a worker waits for the proxy to react, or a few ms) seeded from
Fuzz/blackbox/seeds/requests, while the upstream answers with mutated responses seeded
from Fuzz/blackbox/seeds/responses. A request names its response script with an
`X-Fuzz-Case` header, which the proxy forwards.

A crash is the proxy (or backends) process exiting, or an AddressSanitizer / Swift fatal
error report on its stderr. The cases in flight are replayed one by one against a fresh
proxy to find the one that reproduces; each is saved under Fuzz/crashes/proxy/<id>/ with
the stderr report and a reproduction command (`--replay DIR`).

Bounded: --duration seconds (default 60) and --seed; it stops by itself and prints
`proxy: executions=N duration=S crashes=C` last. Exit status 1 when it found a crash.

Python 3 standard library only.
"""

import argparse
import hashlib
import json
import os
import random
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEDS = os.path.join(ROOT, "Fuzz", "blackbox", "seeds")
DEFAULT_BINARY = os.path.join(ROOT, ".build-asan", "debug", "tollgate")
DEFAULT_CRASHES = os.path.join(ROOT, "Fuzz", "crashes", "proxy")
CASE_HEADER = b"X-Fuzz-Case"
PLAIN_KEY = b"fuzz-key-alice"

# ---------------------------------------------------------------------------------------
# Processes under test
# ---------------------------------------------------------------------------------------


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


SANITIZER_ENV = {
    # ASan reports a Swift trap (precondition, overflow: ud2 → SIGILL) with a symbolised
    # stack; Swift's own backtracer is off (it can hang attached to an ASan process).
    "ASAN_OPTIONS": "detect_leaks=0:handle_sigill=1:handle_abort=1:symbolize=1:halt_on_error=1",
    "SWIFT_BACKTRACE": "enable=no",
}

CRASH_MARKERS = (b"ERROR: AddressSanitizer", b"Fatal error", b"Precondition failed", b"Assertion failed",
                 b"runtime error:", b"SUMMARY: AddressSanitizer")


class Gateway:
    """`tollgate backends` + `tollgate serve` on fresh loopback ports, restartable."""

    def __init__(self, binary, upstream_port, workdir, threads=2):
        self.binary = binary
        self.upstream_port = upstream_port
        self.workdir = workdir
        self.threads = threads
        self.proxy = None
        self.backends = None
        self.generation = 0
        self.port = None
        self.finance_port = None

    def policy(self):
        return f"""version: 1
listen:
  - address: 127.0.0.1:{self.port}
clients:
  trusted_proxies: [127.0.0.0/8, "::1/128"]
  deny: [203.0.113.0/24]
credentials:
  api_key:
    headers: [X-API-Key, X-Alt-Key]
    query: api_key
    forward: false
backends:
  scripted:
    url: http://127.0.0.1:{self.upstream_port}
    timeouts: {{connect: 1s, response: 1s, idle: 2s}}
  finance:
    url: http://127.0.0.1:{self.finance_port}
    timeouts: {{connect: 1s, response: 2s, idle: 2s}}
plans:
  roomy:
    rate_limits:
      - {{requests: 100000, per: 1s, burst: 100000}}
routes:
  - name: health
    match: {{methods: [GET, HEAD], path: /health}}
    backend: scripted
    auth: none
  - name: public
    match: {{path_prefix: /public/}}
    backend: scripted
    auth: none
    max_body: 64KiB
  - name: finance
    match: {{path_prefix: /api/finance/}}
    backend: finance
    scopes: [fuzz]
  - name: keyed
    match: {{path_prefix: /api/}}
    backend: scripted
    scopes: [fuzz]
"""

    def keys(self):
        digest = hashlib.sha256(PLAIN_KEY).hexdigest()
        return f"""version: 1
keys:
  - id: key_fuzz
    hash: sha256:{digest}
    consumer: fuzzer
    plan: roomy
    scopes: [fuzz]
"""

    def start(self):
        self.generation += 1
        gen_dir = os.path.join(self.workdir, f"run{self.generation}")
        os.makedirs(os.path.join(gen_dir, "policies"), exist_ok=True)
        os.makedirs(os.path.join(gen_dir, "data"), exist_ok=True)
        env = dict(os.environ)
        env.update(SANITIZER_ENV)
        self.finance_port = free_port()
        self.backends_log = os.path.join(gen_dir, "backends.log")
        self.backends = subprocess.Popen(
            [self.binary, "backends", "--finance", f"127.0.0.1:{self.finance_port}", "--accounting", "off",
             "--flowise", "off", "--data", os.path.join(gen_dir, "data")],
            stdout=open(self.backends_log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.port = free_port()
        with open(os.path.join(gen_dir, "policies", "00-gateway.yaml"), "w") as f:
            f.write(self.policy())
        with open(os.path.join(gen_dir, "policies", "10-keys.yaml"), "w") as f:
            f.write(self.keys())
        self.proxy_log = os.path.join(gen_dir, "proxy.log")
        self.proxy = subprocess.Popen(
            [self.binary, "serve", "--policies", os.path.join(gen_dir, "policies"), "--threads", str(self.threads),
             "--header-timeout", "1", "--body-timeout", "1", "--idle-timeout", "2", "--drain-timeout", "1"],
            stdout=open(self.proxy_log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if not wait_listening(self.finance_port, self.backends):
            raise RuntimeError("tollgate backends did not start:\n" + self.read_log(self.backends_log))
        if not wait_listening(self.port, self.proxy):
            raise RuntimeError("tollgate serve did not start:\n" + self.read_log(self.proxy_log))
        self.log_offsets = {self.proxy_log: 0, self.backends_log: 0}

    @staticmethod
    def read_log(path):
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def crash_report(self):
        """A crash report from either process (exit or sanitizer/fatal output), or None."""
        for name, proc, log in (("serve", self.proxy, self.proxy_log), ("backends", self.backends, self.backends_log)):
            text = b""
            try:
                with open(log, "rb") as f:
                    text = f.read()
            except OSError:
                pass
            exited = proc.poll() is not None
            if exited or any(m in text for m in CRASH_MARKERS):
                if not exited:
                    # ASan is still writing its report: give it a moment to finish.
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                    with open(log, "rb") as f:
                        text = f.read()
                return {"process": name, "exit": proc.poll(), "log": text.decode("utf-8", "replace")}
        return None

    def stop(self):
        for proc in (self.proxy, self.backends):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# ---------------------------------------------------------------------------------------
# Scripted upstream
# ---------------------------------------------------------------------------------------


class Script:
    """What the upstream sends for one request: bytes in pieces, then how it ends."""

    def __init__(self, data, cuts=(), ending="keep", delays=()):
        self.data = data
        self.cuts = sorted(c for c in cuts if 0 < c < len(data))
        self.ending = ending          # keep | close | reset | shutdown-read
        self.delays = list(delays)

    def to_json(self):
        return {"cuts": self.cuts, "ending": self.ending, "delays": self.delays}

    @staticmethod
    def from_json(data, meta):
        return Script(data, meta.get("cuts", ()), meta.get("ending", "keep"), meta.get("delays", ()))


class Upstream:
    """Raw loopback TCP server: reads a request head (and what body is there), answers
    with the script named by the request's X-Fuzz-Case header."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.scripts = {}
        self.fallback = Script(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.stopped = False
        self.requests = 0
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def register(self, case_id, script):
        with self.lock:
            self.scripts[case_id] = script
            self.fallback = script
            if len(self.scripts) > 4096:
                for k in list(self.scripts)[:2048]:
                    del self.scripts[k]

    def accept_loop(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(3.0)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    if len(buf) > 1 << 20:
                        return
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests += 1
                m = re.search(rb"\r\n" + CASE_HEADER + rb":[ \t]*([0-9A-Za-z_-]+)", head, re.IGNORECASE)
                with self.lock:
                    script = self.scripts.get(m.group(1).decode()) if m else None
                    script = script or self.fallback
                buf = self.drain_body(conn, head, buf)
                pieces = []
                last = 0
                for c in script.cuts + [len(script.data)]:
                    pieces.append(script.data[last:c])
                    last = c
                for i, piece in enumerate(pieces):
                    if piece:
                        conn.sendall(piece)
                    if i < len(pieces) - 1:
                        time.sleep(script.delays[i % len(script.delays)] if script.delays else 0.001)
                if script.ending == "close":
                    return
                if script.ending == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return
                if script.ending == "shutdown-read":
                    conn.shutdown(socket.SHUT_WR)
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    @staticmethod
    def drain_body(conn, head, buf):
        """Reads the request body the head announces (best effort, briefly)."""
        m = re.search(rb"\r\ncontent-length:[ \t]*([0-9]{1,9})", head, re.IGNORECASE)
        chunked = re.search(rb"\r\ntransfer-encoding:[ \t]*chunked", head, re.IGNORECASE)
        deadline = time.monotonic() + 0.3
        if m:
            want = int(m.group(1))
            while len(buf) < want and time.monotonic() < deadline:
                r, _, _ = select.select([conn], [], [], 0.05)
                if r:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            return buf[want:]
        if chunked:
            while b"0\r\n\r\n" not in buf and time.monotonic() < deadline:
                r, _, _ = select.select([conn], [], [], 0.05)
                if r:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            end = buf.find(b"0\r\n\r\n")
            return buf[end + 5:] if end >= 0 else b""
        return buf

    def stop(self):
        self.stopped = True
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------
# Mutation
# ---------------------------------------------------------------------------------------

DICT = [
    b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b",", b";", b"=", b"\"", b"\\", b"%", b"%2e", b"%2F", b"%00", b"..", b"/",
    b"?", b"#", b"&", b"\x00", b"\x7f", b"\xff", b"\x80", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"GET", b"POST",
    b"HEAD", b"CONNECT", b"OPTIONS", b"*", b"http://", b"Host:", b"Content-Length:", b"Transfer-Encoding:",
    b"chunked", b"Connection:", b"close", b"keep-alive", b"Expect:", b"100-continue", b"X-Forwarded-For:",
    b"X-Forwarded-Proto:", b"https", b"X-Request-Id:", b"traceparent:", b"Authorization:", b"Bearer ", b"X-API-Key:",
    b"api_key=", PLAIN_KEY, b"tg_", b"0\r\n\r\n", b"ffffffffffffff", b"18446744073709551616", b"-1", b"999999999999999999",
    b"100 Continue", b"101", b"103 Early Hints", b"204", b"304", b"Upgrade:", b"Trailer:", b"TE:", b"Keep-Alive:",
    b"::ffff:127.0.0.1", b"127.0.0.1", b"10.0.0.1", b"203.0.113.5", b"[::1]", b"unknown",
]

EXTRA_REQUEST_FIELDS = [
    b"Host: other", b"Host: a\r\nHost: b", b"Content-Length: 0", b"Content-Length: 5, 5", b"Content-Length: 5, 6",
    b"Content-Length: 99999999999", b"Content-Length: -1", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked",
    b"Connection: close", b"Connection: keep-alive, Upgrade, X-A, Host", b"Connection: TE, Content-Length",
    b"Expect: 100-continue", b"Expect: nope", b"X-Forwarded-For: 198.51.100.1, 127.0.0.1",
    b"X-Forwarded-For: 203.0.113.7", b"X-Forwarded-For: garbage, , ::1", b"X-Forwarded-Proto: https",
    b"X-Request-Id: abc", b"X-Request-Id: bad id\x80", b"traceparent: 00-zz", b"Authorization: Bearer fuzz-key-alice",
    b"Authorization: Basic Zm9vOmJhcg==", b"X-API-Key: fuzz-key-alice", b"X-Alt-Key: fuzz-key-alice", b"X-API-Key:",
    b"X-Tollgate-Consumer: x", b"Upgrade: h2c", b"TE: trailers", b"Trailer: X", b"Proxy-Connection: keep-alive",
]

EXTRA_RESPONSE_FIELDS = [
    b"Content-Length: 0", b"Content-Length: 3", b"Content-Length: 3, 3", b"Content-Length: 2, 3",
    b"Content-Length: 99999999999999", b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity",
    b"Connection: close", b"Connection: keep-alive", b"Connection: X-Hop, Content-Length", b"X-Hop: 1",
    b"X-Request-Id: upstream", b"Keep-Alive: timeout=1", b"Upgrade: websocket", b"Trailer: X",
    b"Content-Type: text/event-stream", b"Set-Cookie: a=b", b"Host: x", b"X-Tollgate-Consumer: y",
]

HUGE_SIZES = [1000, 4000, 8100, 8200, 12000, 15000, 16300, 16384, 17000, 20000, 24000]


class Mutator:
    def __init__(self, rng):
        self.rng = rng

    def bytes_ops(self, data):
        r = self.rng
        data = bytearray(data)
        for _ in range(r.randint(1, 4)):
            op = r.randrange(6)
            pos = r.randint(0, len(data))
            if op == 0 and data:            # flip a bit
                i = r.randrange(len(data))
                data[i] ^= 1 << r.randrange(8)
            elif op == 1:                   # insert a random byte
                data[pos:pos] = bytes([r.randrange(256)])
            elif op == 2 and data:          # delete a run
                n = r.randint(1, min(8, len(data)))
                i = r.randrange(len(data))
                del data[i:i + n]
            elif op == 3:                   # insert a dictionary token
                data[pos:pos] = r.choice(DICT)
            elif op == 4 and data:          # replace a byte with an interesting one
                data[r.randrange(len(data))] = r.choice(b"\r\n \t\x00:;,=\"\\%\x7f\x80\xff0aF")
            elif op == 5 and data:          # repeat a slice
                i = r.randrange(len(data))
                n = r.randint(1, min(16, len(data) - i))
                data[i:i] = data[i:i + n] * r.randint(1, 64)
        return bytes(data)

    @staticmethod
    def split_head(data):
        i = data.find(b"\r\n\r\n")
        if i < 0:
            return data, b"", b""
        return data[:i], b"\r\n\r\n", data[i + 4:]

    def field_ops(self, data, extra):
        r = self.rng
        head, sep, body = self.split_head(data)
        lines = head.split(b"\r\n")
        op = r.randrange(7)
        if op == 0 and len(lines) > 1:      # duplicate a field line
            lines.insert(r.randint(1, len(lines)), r.choice(lines[1:]))
        elif op == 1 and len(lines) > 1:    # drop a field line
            del lines[r.randint(1, len(lines) - 1)]
        elif op == 2:                       # add a field
            lines.insert(r.randint(1, len(lines)), r.choice(extra))
        elif op == 3 and len(lines) > 1:    # blow a value up
            i = r.randint(1, len(lines) - 1)
            lines[i] = lines[i] + bytes([r.choice(b"abz0.,;-")]) * r.choice(HUGE_SIZES)
        elif op == 4:                       # a huge field of its own
            name = r.choice([b"Host", b"X-Forwarded-For", b"X-Big", b"Authorization", b"X-Request-Id", b"Cookie",
                             b"X-API-Key", b"Connection", b"traceparent"])
            filler = r.choice([b"h", b"1.2.3.4, ", b"a,", b"tok, ", b"%41"])
            n = r.choice(HUGE_SIZES)
            lines.insert(r.randint(1, len(lines)), name + b": " + (filler * (n // len(filler) + 1))[:n])
        elif op == 5:                       # many small fields
            n = r.choice([50, 99, 100, 101, 128, 200])
            lines[1:1] = [b"X-F%d: v" % k for k in range(n)]
        elif op == 6 and lines:             # a long first-line token (target or reason)
            parts = lines[0].split(b" ")
            if len(parts) >= 2:
                k = r.randrange(len(parts))
                parts[k] = parts[k] + bytes([r.choice(b"a/%.?&=")]) * r.choice(HUGE_SIZES)
                lines[0] = b" ".join(parts)
        return b"\r\n".join(lines) + sep + body

    def line_end_ops(self, data):
        r = self.rng
        occurrences = [m.start() for m in re.finditer(rb"\r\n", data)]
        if not occurrences:
            return data
        i = r.choice(occurrences)
        return data[:i] + r.choice([b"\n", b"\r", b"\r\r\n", b"\r\n ", b"\r\n\t", b""]) + data[i + 2:]

    def body_ops(self, data):
        r = self.rng
        head, sep, body = self.split_head(data)
        op = r.randrange(4)
        if op == 0:                         # chunked framing of the body
            size = r.choice([0, 1, len(body), len(body) + 1, 0xFFFFFFFF, 17])
            ext = r.choice([b"", b";a=b", b";q=\"x\\\"y\"", b"; " + b"e" * 5000])
            tail = r.choice([b"0\r\n\r\n", b"0\r\nX: y\r\n\r\n", b"", b"0\r\n", b"00000000000000000\r\n\r\n"])
            body = b"%x" % size + ext + b"\r\n" + body + b"\r\n" + tail
        elif op == 1:                       # truncate or extend the body
            body = body[:r.randint(0, len(body))] if r.random() < 0.5 else body + b"x" * r.choice([1, 100, 70000])
        elif op == 2:                       # change a length value
            return re.sub(rb"(?i)(content-length:[ \t]*)[0-9]+",
                          lambda m: m.group(1) + str(r.choice([0, 1, len(body) - 1, len(body) + 1, 2 ** 31,
                                                               10 ** 18, 10 ** 19])).encode(), data, count=1)
        else:                               # garbage after the message (pipelined junk)
            body = body + r.choice([b"\r\n", b"GET", b"\x16\x03\x01\x02\x00", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"])
        return head + sep + body

    def interim_storm(self, data):
        """Many interim heads before the answer: 102/103 with up to 100 tiny fields each
        (re-serialised, a tiny field grows by a byte), reasons of any length. Half the
        storms are dense: 30-60 heads of 100 empty fields, most without a reason, the
        most growth per byte read."""
        r = self.rng
        dense = r.random() < 0.5
        heads = []
        for _ in range(r.randint(30, 60) if dense else r.randint(1, 60)):
            if dense:
                reason = b"" if r.random() < 0.7 else b" " + b"r" * r.randint(0, 400)
                fields = b"a:\r\n" * 100
            else:
                reason = b"" if r.random() < 0.5 else b" " + b"r" * r.randint(0, 400)
                fields = b"".join(b"%s:%s\r\n" % (r.choice([b"a", b"Link", b"X"]), r.choice([b"", b"b", b" v "]))
                                  for _ in range(r.choice((0, 1, 50, 99, 100))))
            heads.append(b"HTTP/1.1 " + r.choice([b"103", b"102", b"103", b"199"]) + reason + b"\r\n" + fields + b"\r\n")
        return b"".join(heads) + data

    def mutate(self, data, pool, extra, max_len, response=False):
        r = self.rng
        if response and r.random() < 0.1:
            data = self.interim_storm(data)
        for _ in range(r.randint(1, 3)):
            op = r.randrange(10)
            if op <= 2:
                data = self.bytes_ops(data)
            elif op <= 5:
                data = self.field_ops(data, extra)
            elif op == 6:
                data = self.line_end_ops(data)
            elif op == 7:
                data = self.body_ops(data)
            elif op == 8 and pool:           # splice / pipeline another seed
                other = r.choice(pool)
                data = data + other if r.random() < 0.5 else data[:r.randint(0, len(data))] + other[r.randint(0, len(other)):]
            else:
                data = self.bytes_ops(data)
        return data[:max_len]



def with_case_header(data, case_id):
    """Names the response script in every request head of `data` (after its first line)."""
    tag = b"\r\n" + CASE_HEADER + b": " + case_id.encode()
    i = data.find(b"\r\n")
    return data if i < 0 else data[:i] + tag + data[i:]


# ---------------------------------------------------------------------------------------
# One execution: a client connection
# ---------------------------------------------------------------------------------------


class Case:
    def __init__(self, case_id, request, cuts, half_close, response, slow_read=False):
        self.case_id = case_id
        self.slow_read = slow_read
        self.request = request
        self.cuts = sorted(c for c in cuts if 0 < c < len(request))
        self.half_close = half_close
        self.response = response

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "request.bin"), "wb") as f:
            f.write(self.request)
        with open(os.path.join(directory, "response.bin"), "wb") as f:
            f.write(self.response.data)
        with open(os.path.join(directory, "case.json"), "w") as f:
            json.dump({"case_id": self.case_id, "cuts": self.cuts, "half_close": self.half_close,
                       "slow_read": self.slow_read, "response": self.response.to_json()}, f, indent=1)

    @staticmethod
    def load(directory):
        with open(os.path.join(directory, "case.json")) as f:
            meta = json.load(f)
        with open(os.path.join(directory, "request.bin"), "rb") as f:
            request = f.read()
        with open(os.path.join(directory, "response.bin"), "rb") as f:
            response = Script.from_json(f.read(), meta.get("response", {}))
        return Case(meta.get("case_id", "replay"), request, meta.get("cuts", []), meta.get("half_close", True), response,
                    meta.get("slow_read", False))


def run_case(port, case, rng):
    """Sends the request in pieces (waiting between pieces for the proxy to react, at most
    a few ms), then reads until the proxy closes or goes quiet. Returns the status line
    of the first answer (b"" when there was none)."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if case.slow_read:
            # A client that reads late through a small window: the proxy's writes block.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        s.settimeout(2.0)
        s.connect(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    received = bytearray()
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        pieces = []
        last = 0
        for c in case.cuts + [len(case.request)]:
            pieces.append(case.request[last:c])
            last = c
        closed = False
        for i, piece in enumerate(pieces):
            view = memoryview(piece)
            while view and not closed:
                _, w, _ = select.select([], [s], [], 1.0)
                if not w:
                    closed = True       # the proxy stopped reading (backpressure): move on
                    break
                try:
                    n = s.send(view)
                    view = view[n:]
                except BlockingIOError:
                    continue
                except OSError:
                    closed = True
            if closed:
                break
            if i < len(pieces) - 1:
                # By event: the proxy answering (or closing) ends the wait at once.
                r, _, _ = select.select([s], [], [], rng.choice((0, 0.001, 0.002, 0.005)))
                if r:
                    try:
                        chunk = s.recv(65536)
                        if not chunk:
                            closed = True
                        received += chunk
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed = True
        if case.half_close and not closed:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if case.slow_read:
            select.select([], [], [], 0.3)
        # Read the answer: until EOF, or quiet for a while after the last byte.
        deadline = time.monotonic() + 3.0
        quiet = 1.3 if not received else 0.15
        while not closed and time.monotonic() < deadline:
            r, _, _ = select.select([s], [], [], quiet)
            if not r:
                break
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                break
            if not chunk:
                break
            received += chunk
            # A complete final answer: anything else (pipelined answers) follows at once.
            quiet = 0.03 if has_final_response(received) else 0.15
    finally:
        s.close()
    return bytes(received[:received.find(b"\r\n")]) if b"\r\n" in received else bytes(received[:32])


def has_final_response(data):
    """True when `data` starts with interim heads and one complete final response (a
    rough framing check: Content-Length, chunked up to its last chunk, or no body)."""
    pos = 0
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return False
        head = data[pos:end]
        body = end + 4
        m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
        if not m:
            return False
        status = int(m.group(1))
        if 100 <= status < 200:
            pos = body
            continue
        if status in (204, 304):
            return True
        cl = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        if cl:
            return len(data) - body >= int(cl.group(1))
        if re.search(rb"\r\ntransfer-encoding: *chunked", head, re.IGNORECASE):
            return data.endswith(b"0\r\n\r\n")
        return False


# ---------------------------------------------------------------------------------------
# Crash bookkeeping
# ---------------------------------------------------------------------------------------


def demangle(text):
    tool = shutil.which("swift-demangle")
    if not tool:
        return text
    try:
        return subprocess.run([tool, "--simplified"], input=text, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return text


def signature(log):
    """A short key for deduplication: the fatal message and the first project frames."""
    msg = ""
    m = re.search(r"(Precondition failed: [^\n]*|Fatal error: [^\n]*|ERROR: AddressSanitizer: [a-zA-Z-]+|"
                  r"Assertion failed[^\n]*)", log)
    if m:
        msg = m.group(1)
    frames = re.findall(r"#\d+ 0x[0-9a-f]+ in \S+ (/\S*Sources/\S+)", log)
    return (msg + " @ " + " < ".join(os.path.basename(f) for f in frames[:3])).strip()


def summarize_stack(log, limit=12):
    frames = re.findall(r"(#\d+ 0x[0-9a-f]+ in (\S+) (\S+))", log)
    lines = [f"{demangle(fn).strip()} {loc}" for _, fn, loc in frames[:limit]]
    return "\n".join(lines)


def save_crash(crash_dir, case, report, binary, confirmed):
    sig = signature(report["log"])
    key = hashlib.sha1(sig.encode()).hexdigest()[:10]
    directory = os.path.join(crash_dir, f"{key}-{case.case_id}")
    case.save(directory)
    with open(os.path.join(directory, "stderr.txt"), "w") as f:
        f.write(report["log"])
    with open(os.path.join(directory, "stack.txt"), "w") as f:
        f.write(sig + "\n\n" + summarize_stack(report["log"]) + "\n")
    rel = os.path.relpath(directory, ROOT)
    repro = (f"python3 Fuzz/blackbox/proxy_fuzz.py --binary {os.path.relpath(binary, ROOT)} --replay {rel}")
    with open(os.path.join(directory, "REPRODUCE"), "w") as f:
        f.write(f"# {'reproduced alone' if confirmed else 'NOT reproduced alone (in flight with others)'}\n"
                f"# process: {report['process']}, exit status {report['exit']}\n# {sig}\ncd {ROOT}\n{repro}\n")
    return directory, sig, repro


# ---------------------------------------------------------------------------------------
# Campaign
# ---------------------------------------------------------------------------------------


def load_seeds(kind):
    d = os.path.join(SEEDS, kind)
    out = []
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            out.append((name, f.read()))
    return out


class Campaign:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.requests = load_seeds("requests")
        self.responses = load_seeds("responses")
        # Mutation pools. A seed whose mutants crashed the proxy three times with one
        # signature leaves them (see handle_crash): crashers would crowd out the rest.
        self.request_pool = [d for _, d in self.requests]
        # Requests the proxy forwards (filled by the seed pass; without it, every seed).
        self.forwardable = [d for n, d in self.requests if not n.startswith("regression-")]
        self.response_pool = [d for _, d in self.responses]
        self.signatures_seen = set()
        self.lock = threading.Lock()
        self.executions = 0
        self.in_flight = {}
        self.history = {}
        self.crashes = []
        self.crash_count = 0
        self.hits_per_sig = {}
        self.status_counts = {}
        self.saved_per_sig = {}
        self.seen_crash_sigs = set()
        self.workdir = tempfile.mkdtemp(prefix="tollgate-fuzz-")
        self.upstream = Upstream()
        self.gateway = Gateway(args.binary, self.upstream.port, self.workdir, threads=args.threads)
        self.counter = 0

    def next_id(self):
        with self.lock:
            self.counter += 1
            return f"c{self.counter}"

    def make_case(self, rng, mutator, request=None, response=None):
        """One case. Its focus decides what is mutated: the request (the upstream answers a
        seed response), the response (a request the proxy forwards, kept as is), or both."""
        case_id = self.next_id()
        focus = rng.choice(("request", "request", "response", "response", "both"))
        origin_request = origin_response = None
        if request is None:
            if focus == "response" and self.forwardable:
                request = rng.choice(self.forwardable)
            else:
                request = origin_request = rng.choice(self.request_pool)
                if rng.random() < 0.9:
                    request = mutator.mutate(request, self.request_pool, EXTRA_REQUEST_FIELDS, 70000)
        if response is None:
            data = origin_response = rng.choice(self.response_pool)
            if focus != "request" or rng.random() < 0.2:
                data = mutator.mutate(data, self.response_pool, EXTRA_RESPONSE_FIELDS, 70000, response=True)
            cuts = [rng.randint(1, max(1, len(data) - 1)) for _ in range(rng.choice((0, 0, 1, 2, 4, 8)))]
            ending = rng.choice(("keep", "keep", "keep", "close", "close", "reset", "shutdown-read"))
            delays = [rng.choice((0, 0.0005, 0.001, 0.003)) for _ in range(4)]
            response = Script(data, cuts, ending, delays)
        if rng.random() < 0.95:
            request = with_case_header(request, case_id)
        cuts = [rng.randint(1, max(1, len(request) - 1)) for _ in range(rng.choice((0, 1, 1, 2, 3, 6, 12)))]
        case = Case(case_id, request, cuts, rng.random() < 0.6, response, slow_read=rng.random() < 0.08)
        case.origins = (origin_request, origin_response)
        return case

    def execute(self, case, rng):
        self.upstream.register(case.case_id, case.response)
        status = run_case(self.gateway.port, case, rng)
        return status

    def worker(self, index, stop_at):
        rng = random.Random(self.args.seed * 1000 + index)
        mutator = Mutator(rng)
        while time.monotonic() < stop_at and not self.crash_event.is_set():
            case = self.make_case(rng, mutator)
            case.started = time.monotonic()
            with self.lock:
                self.in_flight[index] = case
            status = self.execute(case, rng)
            if status is None:
                # Nothing listens (the proxy died): this case never reached it.
                with self.lock:
                    self.in_flight.pop(index, None)
                time.sleep(0.05)
                continue
            with self.lock:
                self.executions += 1
                history = self.history.setdefault(index, [])
                history.append(case)
                del history[:-3]
                code = status[9:12].decode("latin-1") if status.startswith(b"HTTP/1.") else ("none" if not status else "junk")
                self.status_counts[code] = self.status_counts.get(code, 0) + 1
                # Feedback: an answer never seen before keeps its request in the pool.
                sig = status[:40]
                # (No answer at all may be a crash in the making: not kept.)
                if sig and sig not in self.signatures_seen and len(self.request_pool) < 2000:
                    self.signatures_seen.add(sig)
                    self.request_pool.append(case.request)

    def monitor(self, stop_at):
        while time.monotonic() < stop_at:
            report = self.gateway.crash_report()
            if report:
                self.crash_event.set()
                return report
            time.sleep(0.05)
        return None

    def reproduce(self, case):
        """Fresh gateway, one case: the crash report if it crashed."""
        self.gateway.stop()
        self.gateway.start()
        self.execute(case, random.Random(0))
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            report = self.gateway.crash_report()
            if report:
                return report
            time.sleep(0.05)
        return None

    def handle_crash(self, report, deadline):
        sig = signature(report["log"])
        new = sig not in self.seen_crash_sigs
        print(f"proxy: crash ({report['process']} exit {report['exit']}): {sig}", flush=True)
        with self.lock:
            # Newest first: the cases in flight, then each connection's last few.
            candidates = list(self.in_flight.values())
            for history in self.history.values():
                candidates += [c for c in history if c not in candidates]
        candidates.sort(key=lambda c: -getattr(c, "started", 0))
        candidates = candidates[:12]
        self.crash_count += 1
        saved = self.saved_per_sig.get(sig, 0)
        found = None
        for case in candidates:
            if time.monotonic() > deadline:
                break
            r = self.reproduce(case)
            if r:
                found = (case, r)
                break
        with self.lock:
            # Mutants of a crasher mostly crash the same way: after three crashes with
            # this signature, the pool entries the culprit came from leave the pools.
            self.hits_per_sig[sig] = self.hits_per_sig.get(sig, 0) + 1
            for c in ([found[0]] if found and self.hits_per_sig[sig] >= 3 else []):
                for d in [o for o in getattr(c, "origins", ()) if o is not None]:
                    for pool in (self.request_pool, self.response_pool, self.forwardable):
                        if d in pool and len(pool) > 1:
                            pool.remove(d)
        if saved >= 3:
            # Seen and saved enough: counted, the crasher retired; restart and go on.
            print("proxy: (already saved 3 cases with this signature)", flush=True)
            self.seen_crash_sigs.add(sig)
            self.gateway.stop()
            self.gateway.start()
            return
        if found:
            case, r = found
            directory, sig2, repro = save_crash(self.args.crash_dir, case, r, self.args.binary, confirmed=True)
            dirs = [directory]
        else:
            dirs = []
            for case in candidates:
                directory, _, repro = save_crash(self.args.crash_dir, case, report, self.args.binary, confirmed=False)
                dirs.append(directory)
        self.seen_crash_sigs.add(sig)
        self.saved_per_sig[sig] = saved + 1
        self.crashes.extend(dirs)
        print(f"proxy: saved {', '.join(os.path.relpath(d, ROOT) for d in dirs)} ({'new' if new else 'seen before'}"
              f"{'' if found else ', not reproduced alone: all cases in flight saved'}); reproduce: {repro}", flush=True)
        self.gateway.stop()
        self.gateway.start()

    def seed_pass(self):
        """Every seed request once, unmutated, with a plain response; then every seed
        response once to a plain request."""
        self.forwardable = []
        ok = Script(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        for name, data in self.requests:
            case = self.make_case(self.rng, None, request=data, response=ok)
            case.cuts = []
            before = self.upstream.requests
            self.execute(case, self.rng)
            if self.upstream.requests > before and not name.startswith("regression-"):
                self.forwardable.append(data)   # reaches the upstream: good for response-side cases
            with self.lock:
                self.executions += 1
            report = self.gateway.crash_report()
            if report:
                print(f"proxy: seed {name} crashed the proxy", flush=True)
                self.in_flight = {0: case}
                self.handle_crash(report, time.monotonic() + 60)
        # Every seed response once, unmutated and whole, to a plain public request.
        get = b"GET /public/seed HTTP/1.1\r\nHost: h\r\n\r\n"
        for name, data in self.responses:
            case = self.make_case(self.rng, None, request=get, response=Script(data))
            case.request = with_case_header(get, case.case_id)
            case.cuts = []
            case.half_close = False
            self.execute(case, self.rng)
            with self.lock:
                self.executions += 1
            report = self.gateway.crash_report()
            if report:
                print(f"proxy: seed response {name} crashed the proxy", flush=True)
                self.in_flight = {0: case}
                self.handle_crash(report, time.monotonic() + 60)

    def run(self):
        start = time.monotonic()
        stop_at = start + self.args.duration
        self.gateway.start()
        try:
            if not self.args.no_seed_pass:
                self.seed_pass()
            while time.monotonic() < stop_at:
                self.crash_event = threading.Event()
                self.in_flight = {}
                self.history = {}
                workers = [threading.Thread(target=self.worker, args=(i, stop_at), daemon=True)
                           for i in range(self.args.workers)]
                for w in workers:
                    w.start()
                report = self.monitor(stop_at)
                self.crash_event.set()
                for w in workers:
                    w.join(timeout=10)
                if report is None:
                    report = self.gateway.crash_report()
                if report:
                    # Finding the culprit may overrun the duration by a bounded minute at most.
                    self.handle_crash(report, max(stop_at, time.monotonic()) + 30)
                    if self.args.stop_on_crash:
                        break
        finally:
            self.gateway.stop()
            self.upstream.stop()
            shutil.rmtree(self.workdir, ignore_errors=True)
        elapsed = time.monotonic() - start
        return elapsed


def replay(args):
    upstream = Upstream()
    workdir = tempfile.mkdtemp(prefix="tollgate-replay-")
    gateway = Gateway(args.binary, upstream.port, workdir, threads=args.threads)
    gateway.start()
    try:
        case = Case.load(args.replay)
        upstream.register(case.case_id, case.response)
        status = run_case(gateway.port, case, random.Random(0))
        print(f"replay: answer {status!r}")
        deadline = time.monotonic() + 3.0
        report = None
        while time.monotonic() < deadline and report is None:
            report = gateway.crash_report()
            time.sleep(0.05)
        if report:
            print(f"replay: CRASH in `tollgate {report['process']}` (exit {report['exit']})")
            print(signature(report["log"]))
            print(summarize_stack(report["log"]))
            return 1
        print("replay: no crash")
        return 0
    finally:
        gateway.stop()
        upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", default=os.environ.get("TOLLGATE_BIN", DEFAULT_BINARY))
    p.add_argument("--duration", type=float, default=60.0, help="seconds to fuzz (default 60)")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    p.add_argument("--workers", type=int, default=4, help="concurrent client connections")
    p.add_argument("--threads", type=int, default=2, help="event loops of the proxy")
    p.add_argument("--crash-dir", default=DEFAULT_CRASHES)
    p.add_argument("--no-seed-pass", action="store_true", help="skip replaying the seeds unmutated first")
    p.add_argument("--stop-on-crash", action="store_true")
    p.add_argument("--replay", metavar="DIR", help="replay one saved case (Fuzz/crashes/proxy/<id>)")
    args = p.parse_args()
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"no tollgate binary at {args.binary} (swift build --scratch-path .build-asan -Xswiftc -sanitize=address)")
    if args.replay:
        sys.exit(replay(args))
    print(f"proxy: seed {args.seed}, {args.duration:.0f}s, {args.workers} workers, binary {args.binary}", flush=True)
    c = Campaign(args)
    elapsed = c.run()
    top = sorted(c.status_counts.items(), key=lambda kv: -kv[1])[:12]
    print("proxy: answers " + ", ".join(f"{k}:{v}" for k, v in top) +
          f"; upstream saw {c.upstream.requests} requests", flush=True)
    for sig in sorted(c.seen_crash_sigs):
        print(f"proxy: crash signature: {sig}", flush=True)
    print(f"proxy: executions={c.executions} duration={elapsed:.0f} crashes={c.crash_count} "
          f"unique={len(c.seen_crash_sigs)}", flush=True)
    sys.exit(1 if c.crash_count else 0)


if __name__ == "__main__":
    main()
