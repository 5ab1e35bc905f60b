"""A conferencing server for conf-edge tests (Python stdlib): it dials the edge's internal
port with mutual TLS, speaks the mux framing (common/mux.h) and records what it sees.

Modes: "echo" returns each stream's bytes on the same stream; "relay" sends each
participant's bytes to the other participants of the same conference; "source" sends
`source_bytes` to each new stream, within the edge's window, then SHUT.
"""
import socket
import ssl
import struct
import threading
import time

HELLO, OPEN, DATA, SHUT, CLOSE, WINDOW, PING, PONG = range(1, 9)
DATA_MAX = 16384


def frame(t, sid, payload=b""):
    return struct.pack(">BBHI", t, 0, len(payload), sid) + payload


def strs(*items):
    out = b""
    for s in items:
        b = s.encode() if isinstance(s, str) else s
        out += bytes([len(b)]) + b
    return out


def parse_strs(p, n):
    out = []
    for _ in range(n):
        ln = p[0]
        out.append(p[1:1 + ln].decode())
        p = p[1 + ln:]
    return out


class Stream:
    def __init__(self, sid, client, conf, user, role, key_id):
        self.sid, self.client, self.conf, self.user, self.role, self.key_id = sid, client, conf, user, role, key_id
        self.received = bytearray()
        self.credit = 0
        self.shut = False
        self.closed = None
        self.pending = bytearray()  # bytes waiting for credit
        self.source_left = 0


class ConfMock:
    def __init__(self, edge_addr, certs, mode="echo", name="confmock", window=262144,
                 source_bytes=0, cert_name="confserver", grant=True):
        self.edge_addr = edge_addr
        self.certs = certs
        self.mode = mode
        self.name = name
        self.window = window
        self.source_bytes = source_bytes
        self.cert_name = cert_name
        self.grant = grant
        self.streams = {}
        self.opens = []
        self.closes = []
        self.edge_window = None
        self.lock = threading.Lock()
        self.sock = None
        self.thread = None
        self.stopped = threading.Event()
        self.error = None

    # ---- lifecycle
    def start(self, timeout=5.0):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_cert_chain(f"{self.certs}/{self.cert_name}.crt", f"{self.certs}/{self.cert_name}.key")
        ctx.load_verify_locations(f"{self.certs}/ca.crt")
        ctx.check_hostname = False
        host, port = self.edge_addr.rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock = ctx.wrap_socket(raw)
        self.sock.settimeout(0.2)
        self.send(frame(HELLO, 0, struct.pack(">HHI", 1, 0, self.window) + strs(self.name)))
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        deadline = time.time() + timeout
        while self.edge_window is None and time.time() < deadline and not self.stopped.is_set():
            time.sleep(0.02)
        if self.edge_window is None:
            raise AssertionError(f"no HELLO from the edge (error: {self.error})")
        return self

    def stop(self):
        self.stopped.set()
        if self.thread:
            self.thread.join(3)
        try:
            self.sock.close()
        except Exception:
            pass

    kill = stop

    def send(self, b):
        with self.lock:
            self.sock.sendall(b)

    # ---- queries
    def wait(self, pred, timeout=5.0, what="condition"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if pred():
                    return True
            time.sleep(0.02)
        raise AssertionError(f"confmock: timed out waiting for {what}")

    def received_by_user(self, user):
        with self.lock:
            return b"".join(bytes(s.received) for s in self.streams.values() if s.user == user)

    # ---- reading
    def run(self):
        buf = bytearray()
        try:
            while not self.stopped.is_set():
                try:
                    chunk = self.sock.recv(65536)
                except (socket.timeout, ssl.SSLWantReadError):
                    self.flush_all()
                    continue
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 8:
                    t, _, ln, sid = struct.unpack(">BBHI", buf[:8])
                    if len(buf) < 8 + ln:
                        break
                    p = bytes(buf[8:8 + ln])
                    del buf[:8 + ln]
                    self.handle(t, sid, p)
                self.flush_all()
        except Exception as e:  # the edge went away
            self.error = e
        self.stopped.set()

    def handle(self, t, sid, p):
        with self.lock:
            s = self.streams.get(sid)
        if t == HELLO:
            self.edge_window = struct.unpack(">I", p[4:8])[0]
        elif t == OPEN:
            client, conf, user, role, key_id = parse_strs(p, 5)
            s = Stream(sid, client, conf, user, role, key_id)
            s.credit = self.edge_window
            s.source_left = self.source_bytes if self.mode == "source" else 0
            with self.lock:
                self.streams[sid] = s
                self.opens.append((sid, client, conf, user, role, key_id))
        elif t == DATA and s:
            with self.lock:
                s.received += p
            if self.grant:
                self.send(frame(WINDOW, sid, struct.pack(">I", len(p))))
            if self.mode == "echo":
                self.queue(s, p)
            elif self.mode == "relay":
                with self.lock:
                    others = [o for o in self.streams.values()
                              if o.conf == s.conf and o.sid != sid and o.closed is None]
                for o in others:
                    self.queue(o, p)
        elif t == WINDOW and s:
            s.credit += struct.unpack(">I", p)[0]
        elif t == SHUT and s:
            s.shut = True
            if self.mode == "echo":
                self.queue(s, None)
        elif t == CLOSE and s:
            with self.lock:
                s.closed = p.decode(errors="replace")
                self.closes.append((sid, s.closed))
        elif t == PING:
            self.send(frame(PONG, 0, p))

    def queue(self, s, data):
        if data is None:
            s.pending_shut = True
        else:
            s.pending += data

    def flush_all(self):
        for s in list(self.streams.values()):
            if s.closed is not None:
                continue
            if s.source_left and not s.pending:
                s.pending += b"x" * min(s.source_left, 4 * DATA_MAX)
                s.source_left -= min(s.source_left, 4 * DATA_MAX)
                if s.source_left == 0:
                    s.pending_shut = True
            out = []
            while s.pending and s.credit > 0:
                n = min(len(s.pending), DATA_MAX, s.credit)
                out.append(frame(DATA, s.sid, bytes(s.pending[:n])))
                del s.pending[:n]
                s.credit -= n
            if not s.pending and getattr(s, "pending_shut", False):
                out.append(frame(SHUT, s.sid))
                s.pending_shut = False
            if out:
                self.send(b"".join(out))

    def close_stream(self, sid, reason="bye"):
        self.send(frame(CLOSE, sid, reason.encode()))
