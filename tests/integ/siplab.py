"""A SIP lab for integration tests: a Director (registrar + proxy) and an access edge on
loopback with free ports, raw SIP helpers (Python sockets), and sipp runners."""
import hashlib
import os
import re
import socket
import ssl
import subprocess
import time
import uuid

from harness import ROOT, free_port, http_request, wait_for

SCEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sip")
CERTS = os.path.join(ROOT, "build", "certs")
DIR_IP, EXT_IP, INT_IP = "127.0.0.10", "127.0.0.11", "127.0.0.21"
USERS = {"alice": "alice-secret", "bob": "bob-secret"}


def ensure_certs():
    if not os.path.exists(os.path.join(CERTS, "access-edge.crt")):
        subprocess.run(["deploy/certs.sh", "build/certs"], cwd=ROOT, check=True,
                       capture_output=True)


class Lab:
    """Director + access edge. edge_to_director: 'udp' or 'tls'."""

    # MD5 first: sipp answers only the first challenge and knows only MD5 (the Director's own
    # default offers SHA-256 first, RFC 8760).
    def __init__(self, test, edge_to_director="udp", algorithms=("MD5", "SHA-256"), extra_edge="",
                 domain="example.com", ips=(DIR_IP, EXT_IP, INT_IP), cert="access-edge",
                 mtls_port=None, ctl=False, backup=False, extra_director=""):
        ensure_certs()
        DIR_IP, EXT_IP, INT_IP = ips
        self.ips = ips
        self.domain = domain
        self.t = test
        self.dir_admin = f"{DIR_IP}:{free_port(DIR_IP)}"
        self.dir_sip = free_port(DIR_IP, socket.SOCK_DGRAM)
        self.ctl_port = free_port(DIR_IP)
        self.dir_mtls = free_port(DIR_IP)
        self.ext_port = free_port(EXT_IP)
        self.ext_tls = free_port(EXT_IP)
        self.ext_mtls = mtls_port or free_port(EXT_IP)
        self.ext_ws = free_port(EXT_IP)
        self.ext_wss = free_port(EXT_IP)
        self.int_port = free_port(INT_IP)
        self.int_mtls = free_port(INT_IP)
        self.edge_admin = f"{INT_IP}:{free_port(INT_IP)}"
        algs = ", ".join(algorithms)
        users = "\n".join(f"    - {{name: {u}, password: {p}}}" for u, p in USERS.items())
        def director_conf(admin, sip_port, ctl_port):
            return f"""
admin: {{listen: {admin}}}
ctl: {{listen: {DIR_IP}:{ctl_port}}}
tls: {{cert: {CERTS}/director.crt, key: {CERTS}/director.key, ca: {CERTS}/ca.crt}}
sip:
  enabled: true
  udp: [{DIR_IP}:{sip_port}]
  mtls: [{DIR_IP}:{free_port(DIR_IP) if admin != self.dir_admin else self.dir_mtls}]
  domains: [{domain}]
  realm: {domain}
  algorithms: [{algs}]
  users:
{users}
  edge: {INT_IP}:{self.int_port}
{extra_director}
"""
        self.director = test.daemon("director", director_conf(self.dir_admin, self.dir_sip,
                                                               self.ctl_port), admin=self.dir_admin)
        backups = ""
        if backup:
            self.dir2_admin = f"{DIR_IP}:{free_port(DIR_IP)}"
            self.dir2_sip = free_port(DIR_IP, socket.SOCK_DGRAM)
            self.director2 = test.daemon("director", director_conf(
                self.dir2_admin, self.dir2_sip, free_port(DIR_IP)), admin=self.dir2_admin)
            backups = f", backups: [{DIR_IP}:{self.dir2_sip}], health_interval: 300ms"
        if edge_to_director == "tls":
            nh = f"{{address: {DIR_IP}:{self.dir_mtls}, transport: tls, server_name: director}}"
        else:
            nh = f"{{address: {DIR_IP}:{self.dir_sip}, transport: udp{backups}}}"
        ae = f"{CERTS}/{cert}"
        link = (f"director: {{enabled: true, address: {DIR_IP}:{self.ctl_port}, server_name: director, "
                f"tls: {{cert: {ae}.crt, key: {ae}.key, ca: {CERTS}/ca.crt}}}}") if ctl else \
            "director: {enabled: false}"
        self.edge = test.daemon("access-edge", f"""
admin: {{listen: {self.edge_admin}}}
{link}
domains: [{domain}]
fqdn: edge.example.com
external:
  udp: [{EXT_IP}:{self.ext_port}]
  tcp: [{EXT_IP}:{self.ext_port}]
  tls: [{EXT_IP}:{self.ext_tls}]
  mtls: [{EXT_IP}:{self.ext_mtls}]
  ws: [{EXT_IP}:{self.ext_ws}]
  wss: [{EXT_IP}:{self.ext_wss}]
  certs: {{cert: {ae}.crt, key: {ae}.key, ca: {CERTS}/ca.crt}}
internal:
  udp: [{INT_IP}:{self.int_port}]
  mtls: [{INT_IP}:{self.int_mtls}]
  certs: {{cert: {ae}.crt, key: {ae}.key, ca: {CERTS}/ca.crt}}
next_hop: {nh}
{extra_edge}
""", admin=self.edge_admin)

    def dir_metric(self, name):
        return self.director.metrics().get(name, 0.0)

    def wait_director_probed(self):
        """Until the Director answered the edge's first health check. A next hop that never
        answered an OPTIONS is judged by its calls only (a PBX that ignores them), so a test
        that stops the Director in the edge's first milliseconds would see it never marked
        down."""
        wait_for(lambda: self.dir_metric("director_sip_options_answered_total") >= 1, timeout=5,
                 what="the Director's answer to the edge's first health check")
        time.sleep(0.1)  # and the edge read it

    def edge_metric(self, name):
        return self.edge.metrics().get(name, 0.0)

    def sipp(self, scenario, target, service, transport="u1", port=None, ip="127.0.0.2",
             timeout=20, extra=(), background=False, calls=1, caller=None):
        """caller: the user a UAC scenario sends as ([caller]), with its credentials for the
        Director's 407 (default: the other test user than service)."""
        port = port or free_port(ip, socket.SOCK_DGRAM)
        caller = caller or ("bob" if service == "alice" else "alice")
        creds = ["-key", "caller", caller]
        if "-au" not in extra:
            creds += ["-au", caller, "-ap", USERS[caller]]
        argv = ["sipp", "-sf", os.path.join(SCEN, scenario), "-s", service, "-i", ip, "-p",
                str(port), "-t", transport, "-m", str(calls), "-nostdin", "-timeout",
                f"{timeout}s", "-recv_timeout", "5000", "-max_recv_loops", "1000"] + creds + \
            list(extra)
        if target:
            argv.insert(1, target)
        if background:
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 cwd=self.t.tmp)
            self.t.addCleanup(lambda: p.poll() is None and p.kill())
            if not target and transport == "u1":
                wait_udp_bound(ip, port)  # a UAS must listen before anyone sends to it
            return p
        return self.t.run_tool(argv, timeout=timeout + 10)


def udp_port_taken(ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((ip, port))
        return False
    except OSError:
        return True
    finally:
        s.close()


def wait_udp_bound(ip, port, timeout=10.0):
    wait_for(lambda: udp_port_taken(ip, port), timeout=timeout, what=f"sipp on {ip}:{port}")


def digest(alg, user, realm, pw, method, uri, nonce, nc, cnonce, qop):
    h = (lambda s: hashlib.sha256(s.encode()).hexdigest()) if alg == "SHA-256" else \
        (lambda s: hashlib.md5(s.encode()).hexdigest())
    ha1, ha2 = h(f"{user}:{realm}:{pw}"), h(f"{method}:{uri}")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def parse_status(msg):
    m = re.match(r"SIP/2\.0 (\d{3})", msg)
    return int(m.group(1)) if m else None


def header(msg, name):
    vals = []
    for line in msg.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            vals.append(v.strip())
    return vals


class AutoAuth:
    """Answers the Director's 407 for the user agents below as a real client would: the last
    out-of-dialog request sent is sent again with Proxy-Authorization for its From user (from
    USERS; CSeq + 1, a new branch), after an ACK if it was an INVITE. The 407 is not returned
    to the caller of recv(), so flows read as they did before the Director challenged remote
    users. Set auto_auth = False to see the 407s."""
    auto_auth = True
    _last = None
    _answered = 0

    def _remember(self, text, *args):
        t = text.decode(errors="replace") if isinstance(text, bytes) else text
        if parse_status(t) is not None or t.startswith(("ACK ", "CANCEL ")) or \
                "\r\n\r\n" not in t:
            return
        self._answered = 0
        self._last = (t, args)

    def _answer_407(self, msg):
        """True if msg was a 407 for our last request and has been answered."""
        if not self.auto_auth or parse_status(msg) != 407 or not self._last or self._answered >= 2:
            return False
        req, args = self._last
        head, _, body = req.partition("\r\n\r\n")
        lines = head.split("\r\n")
        if header(msg, "Call-ID") != header(req, "Call-ID"):
            return False
        method, ruri = lines[0].split(" ")[:2]
        fr = header(req, "From")[0]
        user = re.search(r"sip:([^@;>]+)@", fr).group(1)
        if user not in USERS:
            return False
        chal = header(msg, "Proxy-Authenticate")[0]
        alg = re.search(r"algorithm=([\w-]+)", chal).group(1)
        realm = re.search(r'realm="([^"]+)"', chal).group(1)
        nonce = re.search(r'nonce="([^"]+)"', chal).group(1)
        cnonce = uuid.uuid4().hex[:12]
        resp = digest(alg, user, realm, USERS[user], method, ruri, nonce, "00000001", cnonce, "auth")
        cseq = int(header(req, "CSeq")[0].split()[0])
        if method == "INVITE":
            to = header(msg, "To")[0]
            ack = [f"ACK {ruri} SIP/2.0", f"Via: {header(msg, 'Via')[0]}", f"From: {fr}",
                   f"To: {to}", f"Call-ID: {header(req, 'Call-ID')[0]}", f"CSeq: {cseq} ACK",
                   "Max-Forwards: 70"]
            self._send_raw("\r\n".join(ack) + "\r\nContent-Length: 0\r\n\r\n", *args)
        out = []
        for ln in lines:
            k = ln.partition(":")[0].strip().lower()
            if k in ("via", "v") and not any(o.lower().startswith(("via:", "v:")) for o in out):
                ln = re.sub(r"branch=[^;,\s]+", f"branch=z9hG4bK{uuid.uuid4().hex[:16]}", ln)
            elif k == "cseq":
                ln = f"CSeq: {cseq + 1} {method}"
            elif k == "proxy-authorization":
                continue
            out.append(ln)
        out.append(f'Proxy-Authorization: Digest username="{user}", realm="{realm}", '
                   f'nonce="{nonce}", uri="{ruri}", response="{resp}", algorithm={alg}, '
                   f'cnonce="{cnonce}", qop=auth, nc=00000001')
        again = "\r\n".join(out) + "\r\n\r\n" + body
        self._last = (again, args)  # a second 407 (stale nonce) is answered from this one
        self._answered += 1
        self._send_raw(again, *args)
        return True


class UdpUA(AutoAuth):
    """A minimal SIP user agent on a UDP socket: sends raw requests, reads replies."""

    def __init__(self, ip="127.0.0.3", port=0, domain="example.com"):
        self.domain = domain
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind((ip, port))
        self.s.settimeout(2.0)
        self.ip, self.port = self.s.getsockname()

    def close(self):
        self.s.close()

    def send(self, text, to):
        self._remember(text, to)
        self._send_raw(text, to)

    def _send_raw(self, text, to):
        self.s.sendto(text.encode() if isinstance(text, str) else text, to)

    def recv(self, timeout=2.0, skip_provisional=True):
        end = time.time() + timeout
        while time.time() < end:
            self.s.settimeout(max(0.01, end - time.time()))
            try:
                data, _ = self.s.recvfrom(65536)
            except socket.timeout:
                return None
            msg = data.decode(errors="replace")
            st = parse_status(msg)
            if skip_provisional and st is not None and st < 200:
                continue
            if self._answer_407(msg):
                continue
            return msg
        return None

    def request(self, method, ruri, to, headers="", body="", via_extra=";rport", user="alice",
                cseq=1, call_id=None, to_uri=None, max_forwards=70, contact=True):
        call_id = call_id or uuid.uuid4().hex
        to_uri = to_uri or f"sip:{user}@{self.domain}"
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.ip}:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:16]}{via_extra}",
                 f"From: <sip:{user}@{self.domain}>;tag={uuid.uuid4().hex[:8]}",
                 f"To: <{to_uri}>", f"Call-ID: {call_id}", f"CSeq: {cseq} {method}"]
        if max_forwards is not None:
            lines.append(f"Max-Forwards: {max_forwards}")
        if contact:
            lines.append(f"Contact: <sip:{user}@{self.ip}:{self.port}>")
        text = "\r\n".join(lines) + "\r\n" + headers + f"Content-Length: {len(body)}\r\n\r\n" + body
        self.send(text, to)
        return call_id

    def register(self, to, user, password, alg_pref=None, expires=300):
        """REGISTER, answer the Digest challenge (alg_pref or the first offered)."""
        cid = uuid.uuid4().hex
        self.request("REGISTER", f"sip:{self.domain}", to, user=user, call_id=cid,
                     headers=f"Expires: {expires}\r\n")
        r = self.recv()
        if parse_status(r) != 401:
            return r, None
        chals = header(r, "WWW-Authenticate")
        chal = None
        for c in chals:
            alg = re.search(r"algorithm=([\w-]+)", c).group(1)
            if alg_pref is None or alg == alg_pref:
                chal = c
                break
        alg = re.search(r"algorithm=([\w-]+)", chal).group(1)
        realm = re.search(r'realm="([^"]+)"', chal).group(1)
        nonce = re.search(r'nonce="([^"]+)"', chal).group(1)
        resp = digest(alg, user, realm, password, "REGISTER", f"sip:{self.domain}", nonce, "00000001",
                      "c0ffee", "auth")
        auth = (f'Authorization: Digest username="{user}", realm="{realm}", nonce="{nonce}", '
                f'uri="sip:{self.domain}", response="{resp}", algorithm={alg}, cnonce="c0ffee", '
                f'qop=auth, nc=00000001\r\n')
        self.request("REGISTER", f"sip:{self.domain}", to, user=user, call_id=cid, cseq=2,
                     headers=auth + f"Expires: {expires}\r\n")
        return self.recv(), chals


class StreamUA(AutoAuth):
    """A SIP user agent on one TCP or TLS connection (optionally with a client certificate)."""

    def __init__(self, host, port, tls=False, cert=None, ip="127.0.0.7", user="alice",
                 domain="example.com"):
        raw = socket.create_connection((host, port), timeout=3, source_address=(ip, 0))
        if tls:
            ctx = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.crt"))
            ctx.check_hostname = False
            if cert:
                ctx.load_cert_chain(os.path.join(CERTS, cert + ".crt"),
                                    os.path.join(CERTS, cert + ".key"))
            raw = ctx.wrap_socket(raw)
        self.s = raw
        self.ip, self.port = self.s.getsockname()
        self.tp = "TLS" if tls else "TCP"
        self.user, self.domain = user, domain
        self.buf = b""

    def close(self):
        self.s.close()

    def send(self, text):
        self._remember(text)
        self._send_raw(text)

    def _send_raw(self, text):
        self.s.sendall(text.encode() if isinstance(text, str) else text)

    def recv(self, timeout=3.0, skip_provisional=True):
        end = time.time() + timeout
        while time.time() < end:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
                n = int(m.group(1)) if m else 0
                if len(rest) >= n:
                    msg = (head + sep + rest[:n]).decode(errors="replace")
                    self.buf = rest[n:]
                    st = parse_status(msg)
                    if skip_provisional and st is not None and st < 200:
                        continue
                    if self._answer_407(msg):
                        continue
                    return msg
            self.s.settimeout(max(0.01, end - time.time()))
            try:
                d = self.s.recv(65536)
            except (socket.timeout, ssl.SSLError, TimeoutError):
                return None
            if not d:
                return None
            self.buf += d
        return None

    def request(self, method, ruri, headers="", body="", cseq=1, call_id=None, to_uri=None,
                from_user=None, from_domain=None):
        call_id = call_id or uuid.uuid4().hex
        fu = f"sip:{from_user or self.user}@{from_domain or self.domain}"
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/{self.tp} {self.ip}:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
                 f"From: <{fu}>;tag={uuid.uuid4().hex[:8]}",
                 f"To: <{to_uri or fu}>", f"Call-ID: {call_id}", f"CSeq: {cseq} {method}",
                 "Max-Forwards: 70", f"Contact: <sip:{self.user}@{self.ip}:{self.port};transport={self.tp.lower()}>"]
        self.send("\r\n".join(lines) + "\r\n" + headers +
                  f"Content-Length: {len(body.encode())}\r\n\r\n" + body)
        return call_id

    def register(self, password, alg="MD5", expires=300):
        cid = uuid.uuid4().hex
        self.request("REGISTER", f"sip:{self.domain}", call_id=cid, headers=f"Expires: {expires}\r\n")
        r = self.recv()
        if parse_status(r) != 401:
            return r
        chal = [c for c in header(r, "WWW-Authenticate") if f"algorithm={alg}" in c][0]
        realm = re.search(r'realm="([^"]+)"', chal).group(1)
        nonce = re.search(r'nonce="([^"]+)"', chal).group(1)
        uri = f"sip:{self.domain}"
        resp = digest(alg, self.user, realm, password, "REGISTER", uri, nonce, "00000001", "abc", "auth")
        auth = (f'Authorization: Digest username="{self.user}", realm="{realm}", nonce="{nonce}", '
                f'uri="{uri}", response="{resp}", algorithm={alg}, cnonce="abc", qop=auth, nc=00000001\r\n')
        self.request("REGISTER", uri, call_id=cid, cseq=2, headers=auth + f"Expires: {expires}\r\n")
        return self.recv()

    def answer(self, req, status=200, phrase="OK"):
        """Answers a received request with the Via/From/To/Call-ID/CSeq copied."""
        out = [f"SIP/2.0 {status} {phrase}"]
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            for v in header(req, name):
                if name == "To" and "tag=" not in v:
                    v += ";tag=ua1"
                out.append(f"{name}: {v}")
        self.send("\r\n".join(out) + "\r\nContent-Length: 0\r\n\r\n")


class WsUA(StreamUA):
    """A SIP user agent over WebSocket (RFC 7118): upgrade with subprotocol "sip", then one
    SIP message per masked text frame."""

    def __init__(self, host, port, tls=False, protocol="sip", **kw):
        super().__init__(host, port, tls=tls, **kw)
        self.tp = "WSS" if tls else "WS"
        import base64
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               + (f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else "") + "\r\n")
        self.s.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            d = self.s.recv(4096)
            if not d:
                break
            head += d
        self.handshake, _, self.wbuf = head.partition(b"\r\n\r\n")
        self.handshake = self.handshake.decode(errors="replace")
        want = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                                             .encode()).digest()).decode()
        self.accept_ok = f"Sec-WebSocket-Accept: {want}" in self.handshake

    def _send_raw(self, text):
        data = text.encode() if isinstance(text, str) else text
        mask = os.urandom(4)
        n = len(data)
        hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
        self.s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self, timeout=3.0, skip_provisional=True):
        end = time.time() + timeout
        while time.time() < end:
            b = self.wbuf
            if len(b) >= 2:
                n, off = b[1] & 0x7f, 2
                if n == 126 and len(b) >= 4:
                    n, off = int.from_bytes(b[2:4], "big"), 4
                if len(b) >= off + n and n != 127:
                    op, payload, self.wbuf = b[0] & 0x0f, b[off:off + n], b[off + n:]
                    if op != 1:
                        continue
                    msg = payload.decode(errors="replace")
                    st = parse_status(msg)
                    if skip_provisional and st is not None and st < 200:
                        continue
                    if self._answer_407(msg):
                        continue
                    return msg
            self.s.settimeout(max(0.01, end - time.time()))
            try:
                d = self.s.recv(65536)
            except (socket.timeout, ssl.SSLError, TimeoutError):
                return None
            if not d:
                return None
            self.wbuf += d
        return None
