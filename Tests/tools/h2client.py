#!/usr/bin/python3
"""A small HTTP/2 client for the tests (the `h2` package, Debian's python3-h2).

    h2client.py PORT MODE [options]   (prints one JSON object per line)

Modes:
  request  one request per --path (same connection, in order); prints each answer
           {"status", "headers", "body", "reset"}; --window N: streams' initial window N
           (refilled as the data is read: the answer waits on the client)
  stream   one request; prints {"data": "..."} per DATA frame as it arrives, then the end
  flood    --kind rapid-reset|continuation|settings|ping|headers-big: misbehaves for at most
           --count frames/streams, then prints {"goaway": code|null, "closed": bool, "streams": n}
"""
import argparse, json, socket, ssl, sys, time

import h2.config, h2.connection, h2.events, h2.errors, h2.exceptions, h2.settings
from h2.settings import SettingCodes


def connect(a):
    s = socket.create_connection(("127.0.0.1", a.port), timeout=10)
    if a.tls:
        ctx = ssl.create_default_context(cafile=a.cafile) if a.cafile else ssl._create_unverified_context()
        ctx.set_alpn_protocols(["h2"])
        s = ctx.wrap_socket(s, server_hostname=a.sni or "localhost")
        if s.selected_alpn_protocol() != "h2":
            print(json.dumps({"error": "alpn", "alpn": s.selected_alpn_protocol()}))
            sys.exit(2)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                                             validate_outbound_headers=False,
                                                             normalize_outbound_headers=False))
    c.initiate_connection()
    if getattr(a, "window", None) is not None:
        c.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: a.window})
    s.sendall(c.data_to_send())
    return s, c


def headers_for(a, path, method):
    h = [(":method", method), (":path", path), (":scheme", "https" if a.tls else "http"),
         (":authority", a.authority or "127.0.0.1:%d" % a.port)]
    for x in a.header:
        k, v = x.split(":", 1)
        # `\x00`, `\r`, `\n` in a value are those bytes (NUL cannot travel in an argument).
        v = v.strip().encode("latin-1").decode("unicode_escape")
        h.append((k.strip(), v))
    return h


def pump(s, c, handle, until):
    """Reads and handles events until `until()` or the connection ends; True when ended."""
    while not until():
        out = c.data_to_send()
        try:
            if out:
                s.sendall(out)
            d = s.recv(65536)
        except socket.timeout:
            return "timeout"
        except (ConnectionResetError, ssl.SSLError, OSError):
            return "closed"
        if not d:
            return "closed"
        try:
            events = c.receive_data(d)
        except h2.exceptions.ProtocolError as e:
            print(json.dumps({"protocol_error": repr(e)}), flush=True)
            return "protocol-error"
        for e in events:
            handle(e)
            if isinstance(e, h2.events.DataReceived):
                c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        out = c.data_to_send()
        try:
            if out:
                s.sendall(out)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            return "closed"
    return None


def send_body(s, c, sid, body, handle, done):
    sent = 0
    while sent < len(body):
        w = min(c.local_flow_control_window(sid), c.max_outbound_frame_size, len(body) - sent)
        if w <= 0:
            waited = [False]
            def until():
                return c.local_flow_control_window(sid) > 0 or done()
            if pump(s, c, handle, until) or done():
                return sent
            continue
        c.send_data(sid, body[sent:sent + w])
        sent += w
        s.sendall(c.data_to_send())
    c.end_stream(sid)
    s.sendall(c.data_to_send())
    return sent


def request(a):
    s, c = connect(a)
    for n, path in enumerate(a.path):
        if a.wait_stdin and n > 0:
            sys.stdin.readline()   # the test says when to send the next request
        sid = c.get_next_available_stream_id()
        body = b""
        if a.body_size:
            body = (b"0123456789abcdef" * (a.body_size // 16 + 1))[:a.body_size]
        c.send_headers(sid, headers_for(a, path, a.method), end_stream=not body)
        s.sendall(c.data_to_send())
        r = {"status": None, "headers": {}, "body": b"", "reset": None, "ended": False}

        def handle(e):
            if getattr(e, "stream_id", None) != sid:
                return
            if isinstance(e, h2.events.ResponseReceived):
                for k, v in e.headers:
                    if k == ":status":
                        r["status"] = int(v)
                    else:
                        r["headers"].setdefault(k, []).append(v)
            elif isinstance(e, h2.events.DataReceived):
                r["body"] += e.data
            elif isinstance(e, h2.events.StreamEnded):
                r["ended"] = True
            elif isinstance(e, h2.events.StreamReset):
                r["reset"] = int(e.error_code)
        done = lambda: r["ended"] or r["reset"] is not None
        if body:
            send_body(s, c, sid, body, handle, done)
        end = pump(s, c, handle, done)
        out = {"status": r["status"], "headers": r["headers"], "reset": r["reset"], "end": end,
               "bodyLength": len(r["body"])}
        out["body"] = r["body"].decode("utf-8", "replace") if len(r["body"]) < 100000 else ""
        print(json.dumps(out), flush=True)
        if end:
            break
    s.close()


def stream(a):
    s, c = connect(a)
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, headers_for(a, a.path[0], a.method), end_stream=True)
    s.sendall(c.data_to_send())
    state = {"ended": False}

    def handle(e):
        if isinstance(e, h2.events.ResponseReceived):
            print(json.dumps({"status": dict(e.headers).get(":status")}), flush=True)
        elif isinstance(e, h2.events.DataReceived):
            print(json.dumps({"data": e.data.decode("utf-8", "replace")}), flush=True)
        elif isinstance(e, h2.events.ConnectionTerminated):
            print(json.dumps({"goaway": int(e.error_code), "last_stream_id": e.last_stream_id}), flush=True)
            # python-h2 treats any GOAWAY as the end of the connection; RFC 9113 §6.8 lets
            # streams up to last_stream_id finish, which is what is being tested.
            if e.last_stream_id >= sid:
                c.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        elif isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
            state["ended"] = True
    end = pump(s, c, handle, lambda: state["ended"])
    print(json.dumps({"end": end or "ended"}), flush=True)


def flood(a):
    try:
        flood_once(a)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError, h2.exceptions.ProtocolError) as e:
        # The proxy closed the connection under the flood before the client saw a GOAWAY.
        print(json.dumps({"goaway": None, "closed": True, "streams": -1, "error": repr(e)}), flush=True)


def flood_once(a):
    s, c = connect(a)
    s.settimeout(5)
    result = {"goaway": None, "closed": False, "streams": 0}

    def handle(e):
        if isinstance(e, h2.events.ConnectionTerminated):
            result["goaway"] = int(e.error_code)
    raw = bytearray()
    try:
        if a.kind == "rapid-reset":
            # Open a stream and reset it at once, over and over (CVE-2023-44487).
            for i in range(a.count):
                sid = c.get_next_available_stream_id()
                c.send_headers(sid, headers_for(a, a.path[0], "GET"), end_stream=True)
                c.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
                result["streams"] += 1
                if i % 50 == 49:
                    s.sendall(c.data_to_send())
            s.sendall(c.data_to_send())
        elif a.kind == "continuation":
            # HEADERS without END_HEADERS, then empty CONTINUATION frames (CVE-2024-27316).
            s.sendall(c.data_to_send())
            block = c.encoder.encode(headers_for(a, a.path[0], "GET"))
            frame = lambda t, f, sid, p: len(p).to_bytes(3, "big") + bytes([t, f]) + sid.to_bytes(4, "big") + p
            raw += frame(1, 0x1, 1, block)          # HEADERS, END_STREAM, no END_HEADERS
            for i in range(a.count):
                raw += frame(9, 0, 1, b"")           # CONTINUATION, no END_HEADERS
            s.sendall(bytes(raw))
        elif a.kind == "headers-big":
            # One header block decoding far past the limit (an HPACK bomb's effect).
            big = [("x-filler-%d" % i, "v" * 4000) for i in range(a.count)]
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, headers_for(a, a.path[0], "GET") + big, end_stream=True)
            s.sendall(c.data_to_send())
        elif a.kind == "settings":
            for i in range(a.count):
                c.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 100 + i % 7})
                if i % 100 == 99:
                    s.sendall(c.data_to_send())
            s.sendall(c.data_to_send())
        elif a.kind == "ping":
            for i in range(a.count):
                c.ping(i.to_bytes(8, "big"))
                if i % 100 == 99:
                    s.sendall(c.data_to_send())
            s.sendall(c.data_to_send())
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
        result["closed"] = True
    if not result["closed"]:
        end = pump(s, c, handle, lambda: result["goaway"] is not None)
        result["closed"] = end in ("closed", "protocol-error") or result["goaway"] is not None
        if end == "timeout":
            result["closed"] = False
    print(json.dumps(result), flush=True)


def stall(a):
    """Opens no flow-control window (SETTINGS_INITIAL_WINDOW_SIZE 0), asks once, then only
    listens: prints what the proxy does with an answer it cannot send."""
    s = socket.create_connection(("127.0.0.1", a.port), timeout=30)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.local_settings = h2.settings.Settings(client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: 0})
    c.initiate_connection()
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, headers_for(a, a.path[0], "GET"), end_stream=True)
    s.sendall(c.data_to_send())
    seen = {"status": None, "reset": None, "goaway": None, "closed": False, "seconds": 0}
    t0 = time.monotonic()
    while True:
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        except OSError:
            d = b""
        if not d:
            seen["closed"] = True
            break
        for e in c.receive_data(d):
            if isinstance(e, h2.events.ResponseReceived):
                seen["status"] = int(dict(e.headers)[":status"])
            elif isinstance(e, h2.events.StreamReset):
                seen["reset"] = int(e.error_code)
            elif isinstance(e, h2.events.ConnectionTerminated):
                seen["goaway"] = int(e.error_code)
        # Acknowledge nothing: the window stays shut. (SETTINGS ACKs and PINGs still go out.)
        out = c.data_to_send()
        if out:
            s.sendall(out)
    seen["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(seen), flush=True)


def poison(a):
    """Sends a request and closes at once (HEADERS and the FIN in one TCP segment): the
    proxy reads the request and the end of the connection in the same read."""
    s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    time.sleep(0.05)   # the preface is read on its own, the session set up
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, headers_for(a, a.path[0], "GET"), end_stream=True)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    s.sendall(c.data_to_send())
    s.shutdown(socket.SHUT_WR)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass
    print(json.dumps({"sent": True}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("mode", choices=["request", "stream", "flood", "stall", "poison"])
    p.add_argument("--tls", action="store_true")
    p.add_argument("--cafile")
    p.add_argument("--sni")
    p.add_argument("--authority")
    p.add_argument("--method", default="GET")
    p.add_argument("--path", action="append", default=[])
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--body-size", type=int, default=0)
    p.add_argument("--kind", default="rapid-reset")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--wait-stdin", action="store_true")
    p.add_argument("--window", type=int)
    a = p.parse_args()
    if not a.path:
        a.path = ["/"]
    {"request": request, "stream": stream, "flood": flood, "stall": stall, "poison": poison}[a.mode](a)


if __name__ == "__main__":
    main()
