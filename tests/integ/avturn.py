"""A small STUN/TURN client in Python stdlib for av-edge integration tests: builds and
parses RFC 8489/8656 messages, runs the long-term credential dance, and relays data; for
RFC 6062 TCP relays: Connect, ConnectionAttempt and ConnectionBind on a data connection."""
import base64
import hashlib
import hmac
import os
import socket
import struct
import time
import zlib

MAGIC = 0x2112A442
BINDING, ALLOCATE, REFRESH, SEND, DATA, CREATE_PERMISSION, CHANNEL_BIND = 1, 3, 4, 6, 7, 8, 9
CONNECT, CONNECTION_BIND, CONNECTION_ATTEMPT = 0xA, 0xB, 0xC
TCP, UDP = 6, 17
REQUEST, INDICATION, SUCCESS, ERROR = 0, 1, 2, 3
A_USERNAME, A_MI, A_ERROR, A_UNKNOWN, A_CHANNEL, A_LIFETIME = 0x6, 0x8, 0x9, 0xA, 0xC, 0xD
A_PEER, A_DATA, A_REALM, A_NONCE, A_RELAYED, A_RAF = 0x12, 0x13, 0x14, 0x15, 0x16, 0x17
A_EVEN, A_TRANSPORT, A_DF, A_MAPPED, A_TOKEN, A_FP = 0x18, 0x19, 0x1A, 0x20, 0x22, 0x8028
A_CONNECTION_ID = 0x2A
A_SOFTWARE = 0x8022
# Unauthenticated requests carry this SOFTWARE attribute by default, so that their answers
# (a 401 with REALM and NONCE) are no larger than they are: av-edge answers a smaller one
# over UDP only once the client's retransmissions cover the answer (amplification rule).
PAD = b"avturn test client: padded to fit a 401"


def msg_type(method, cls):
    return ((method & 0xF80) << 2) | ((method & 0x70) << 1) | (method & 0xF) | \
           ((cls & 2) << 7) | ((cls & 1) << 4)


def attr(t, v):
    pad = (4 - len(v) % 4) % 4
    return struct.pack("!HH", t, len(v)) + v + b"\0" * pad


def xaddr(host, port, tid):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = socket.inet_pton(fam, host)
    mask = struct.pack("!I", MAGIC) + tid
    x = bytes(a ^ b for a, b in zip(raw, mask))
    return struct.pack("!BBH", 0, 1 if fam == socket.AF_INET else 2, port ^ (MAGIC >> 16)) + x


def parse_xaddr(v, tid):
    fam, port = v[1], struct.unpack("!H", v[2:4])[0] ^ (MAGIC >> 16)
    mask = struct.pack("!I", MAGIC) + tid
    raw = bytes(a ^ b for a, b in zip(v[4:], mask))
    host = socket.inet_ntop(socket.AF_INET if fam == 1 else socket.AF_INET6, raw)
    return host, port


def build(method, cls, attrs, tid=None, key=None, fingerprint=True):
    tid = tid or os.urandom(12)
    body = b"".join(attr(t, v) for t, v in attrs)
    if key is not None:
        hdr = struct.pack("!HHI", msg_type(method, cls), len(body) + 24, MAGIC) + tid
        mac = hmac.new(key, hdr + body, hashlib.sha1).digest()
        body += attr(A_MI, mac)
    if fingerprint:
        hdr = struct.pack("!HHI", msg_type(method, cls), len(body) + 8, MAGIC) + tid
        crc = (zlib.crc32(hdr + body) ^ 0x5354554E) & 0xFFFFFFFF
        body += attr(A_FP, struct.pack("!I", crc))
    return struct.pack("!HHI", msg_type(method, cls), len(body), MAGIC) + tid + body, tid


class Msg:
    def __init__(self, raw):
        t, ln, cookie = struct.unpack("!HHI", raw[:8])
        assert cookie == MAGIC, "not STUN"
        self.raw = raw[:20 + ln]
        self.tid = raw[8:20]
        self.method = ((t & 0x3E00) >> 2) | ((t & 0xE0) >> 1) | (t & 0xF)
        self.cls = ((t >> 7) & 2) | ((t >> 4) & 1)
        self.attrs = []
        off = 20
        while off + 4 <= len(self.raw):
            at, al = struct.unpack("!HH", self.raw[off:off + 4])
            self.attrs.append((at, self.raw[off + 4:off + 4 + al]))
            off += 4 + ((al + 3) & ~3)

    def get(self, t):
        for at, v in self.attrs:
            if at == t:
                return v
        return None

    def all(self, t):
        return [v for at, v in self.attrs if at == t]

    @property
    def code(self):
        if self.cls == SUCCESS:
            return 0
        v = self.get(A_ERROR)
        return (v[2] & 7) * 100 + v[3] if v else -1


def long_term_key(user, realm, password):
    return hashlib.md5(f"{user}:{realm}:{password}".encode()).digest()


def rest_credentials(secret, user, ttl=3600):
    name = f"{int(time.time()) + ttl}:{user}"
    pw = base64.b64encode(hmac.new(secret.encode(), name.encode(), hashlib.sha1).digest()).decode()
    return name, pw


class Client:
    """One TURN client over UDP or TCP (5-tuple = its socket)."""

    def __init__(self, server, user=None, password=None, tcp=False, bind_host="127.0.0.1",
                 timeout=2.0):
        self.server = server
        self.user, self.password = user, password
        self.tcp = tcp
        fam = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.sock.bind((bind_host, 0))
        if tcp:
            self.sock.connect(server)
        self.realm = self.nonce = self.key = None
        self.rxbuf = b""
        self.relay = None

    @property
    def addr(self):
        return self.sock.getsockname()[:2]

    def close(self):
        self.sock.close()

    def send_raw(self, data):
        if self.tcp:
            self.sock.sendall(data)
        else:
            self.sock.sendto(data, self.server)

    def recv_raw(self):
        if not self.tcp:
            return self.sock.recvfrom(65535)[0]
        while True:
            if len(self.rxbuf) >= 4:
                if self.rxbuf[0] & 0xC0 == 0x40:
                    n = (4 + struct.unpack("!H", self.rxbuf[2:4])[0] + 3) & ~3
                else:
                    n = 20 + struct.unpack("!H", self.rxbuf[2:4])[0]
                if len(self.rxbuf) >= n:
                    out, self.rxbuf = self.rxbuf[:n], self.rxbuf[n:]
                    return out
            chunk = self.sock.recv(65535)
            if not chunk:
                raise ConnectionError("closed")
            self.rxbuf += chunk

    def transact(self, raw, tid, rto=0.2):
        """Sends a request and waits for its answer; over UDP it is sent again every rto
        seconds meanwhile, as RFC 8489 clients do."""
        self.send_raw(raw)
        deadline = time.time() + self.sock.gettimeout()
        resend = time.time() + rto
        timeout = self.sock.gettimeout()
        try:
            while time.time() < deadline:
                if not self.tcp:
                    if time.time() >= resend:
                        self.send_raw(raw)
                        resend = time.time() + rto
                    self.sock.settimeout(max(0.01, min(resend, deadline) - time.time()))
                try:
                    data = self.recv_raw()
                except socket.timeout:
                    continue
                if data[0] & 0xC0 == 0 and len(data) >= 20 and data[8:20] == tid:
                    return Msg(data)
        finally:
            self.sock.settimeout(timeout)
        raise TimeoutError("no response")

    def request(self, method, attrs=(), auth=True, user=None, password=None, pad=True):
        """Sends a request (attrs: a list, or a function of the transaction id giving one).
        With auth, the first 401 challenge and any 438 are answered with the new nonce."""
        m = None
        for attempt in range(4):
            tid = os.urandom(12)
            a = list(attrs(tid) if callable(attrs) else attrs)
            key = None
            if auth and self.nonce is not None:
                u = user or self.user
                key = long_term_key(u, self.realm, password or self.password)
                a += [(A_USERNAME, u.encode()), (A_REALM, self.realm.encode()), (A_NONCE, self.nonce)]
            elif pad:
                a.append((A_SOFTWARE, PAD))
            raw, tid = build(method, REQUEST, a, tid=tid, key=key)
            m = self.transact(raw, tid)
            if auth and m.cls == ERROR and m.get(A_NONCE) and (
                    m.code == 438 or (m.code == 401 and key is None)):
                self.realm = m.get(A_REALM).decode()
                self.nonce = m.get(A_NONCE)
                continue
            return m
        return m

    def allocate(self, extra=(), transport=17):
        m = self.request(ALLOCATE, [(A_TRANSPORT, bytes([transport, 0, 0, 0]))] + list(extra))
        if m.cls == SUCCESS:
            self.relay = parse_xaddr(m.get(A_RELAYED), m.tid)
        return m

    def refresh(self, lifetime=None):
        return self.request(REFRESH, [] if lifetime is None else [(A_LIFETIME, struct.pack("!I", lifetime))])

    def permit(self, host, port=9):
        return self.request(CREATE_PERMISSION, lambda tid: [(A_PEER, xaddr(host, port, tid))])

    def channel_bind(self, ch, host, port):
        return self.request(CHANNEL_BIND, lambda tid: [(A_CHANNEL, struct.pack("!HH", ch, 0)),
                                                        (A_PEER, xaddr(host, port, tid))])

    def send_indication(self, host, port, data):
        tid = os.urandom(12)
        raw, _ = build(SEND, INDICATION, [(A_PEER, xaddr(host, port, tid)), (A_DATA, data)], tid=tid)
        self.send_raw(raw)

    def send_channel(self, ch, data):
        frame = struct.pack("!HH", ch, len(data)) + data
        if self.tcp:
            frame += b"\0" * ((4 - len(frame) % 4) % 4)
        self.send_raw(frame)

    def recv_data(self):
        """Next relayed datagram: ('data', peer, bytes) or ('channel', ch, bytes)."""
        while True:
            d = self.recv_raw()
            if d[0] & 0xC0 == 0x40:
                ch, ln = struct.unpack("!HH", d[:4])
                return "channel", ch, d[4:4 + ln]
            m = Msg(d)
            if m.method == DATA and m.cls == INDICATION:
                return "data", parse_xaddr(m.get(A_PEER), m.tid), m.get(A_DATA)

    # ---- RFC 6062 ----

    def connect(self, host, port):
        """Connect request; on success the CONNECTION-ID is in .connection_id of the answer."""
        m = self.request(CONNECT, lambda tid: [(A_PEER, xaddr(host, port, tid))])
        m.connection_id = struct.unpack("!I", m.get(A_CONNECTION_ID))[0] if m.code == 0 else None
        return m

    def recv_msg(self, method=None):
        """Next STUN message on the connection (of that method if given)."""
        deadline = time.time() + self.sock.gettimeout()
        while time.time() < deadline:
            d = self.recv_raw()
            if d[0] & 0xC0 == 0:
                m = Msg(d)
                if method is None or m.method == method:
                    return m
        raise TimeoutError("no message")

    def connection_attempt(self):
        """Waits for a ConnectionAttempt indication: (connection id, (peer host, port))."""
        m = self.recv_msg(CONNECTION_ATTEMPT)
        assert m.cls == INDICATION
        return struct.unpack("!I", m.get(A_CONNECTION_ID))[0], parse_xaddr(m.get(A_PEER), m.tid)

    def data_connection(self, connection_id, user=None, password=None):
        """Opens a new connection to the server and sends ConnectionBind for connection_id
        with this client's credentials (or the given ones). Returns (answer, socket, bytes
        already read after the answer): after a success the socket is a raw byte pipe to the
        peer."""
        d = Client(self.server, user or self.user, password or self.password, tcp=True,
                   timeout=self.sock.gettimeout())
        m = d.request(CONNECTION_BIND, [(A_CONNECTION_ID, struct.pack("!I", connection_id))])
        return m, d.sock, d.rxbuf
