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

    def __init__(self, test, edge_to_director="udp", algorithms=("SHA-256", "MD5"), extra_edge=""):
        ensure_certs()
        self.t = test
        self.dir_admin = f"{DIR_IP}:{free_port(DIR_IP)}"
        self.dir_sip = free_port(DIR_IP, socket.SOCK_DGRAM)
        self.dir_mtls = free_port(DIR_IP)
        self.ext_port = free_port(EXT_IP)
        self.ext_tls = free_port(EXT_IP)
        self.int_port = free_port(INT_IP)
        self.int_mtls = free_port(INT_IP)
        self.edge_admin = f"{INT_IP}:{free_port(INT_IP)}"
        algs = ", ".join(algorithms)
        users = "\n".join(f"    - {{name: {u}, password: {p}}}" for u, p in USERS.items())
        self.director = test.daemon("director", f"""
admin: {{listen: {self.dir_admin}}}
ctl: {{listen: {DIR_IP}:{free_port(DIR_IP)}}}
tls: {{cert: {CERTS}/director.crt, key: {CERTS}/director.key, ca: {CERTS}/ca.crt}}
sip:
  enabled: true
  udp: [{DIR_IP}:{self.dir_sip}]
  mtls: [{DIR_IP}:{self.dir_mtls}]
  domains: [example.com]
  realm: example.com
  algorithms: [{algs}]
  users:
{users}
  edge: {INT_IP}:{self.int_port}
""", admin=self.dir_admin)
        if edge_to_director == "tls":
            nh = f"{{address: {DIR_IP}:{self.dir_mtls}, transport: tls, server_name: director}}"
        else:
            nh = f"{{address: {DIR_IP}:{self.dir_sip}, transport: udp}}"
        ae = f"{CERTS}/access-edge"
        self.edge = test.daemon("access-edge", f"""
admin: {{listen: {self.edge_admin}}}
director: {{enabled: false}}
domains: [example.com]
fqdn: edge.example.com
external:
  udp: [{EXT_IP}:{self.ext_port}]
  tcp: [{EXT_IP}:{self.ext_port}]
  tls: [{EXT_IP}:{self.ext_tls}]
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

    def edge_metric(self, name):
        return self.edge.metrics().get(name, 0.0)

    def sipp(self, scenario, target, service, transport="u1", port=None, ip="127.0.0.2",
             timeout=20, extra=(), background=False, calls=1):
        port = port or free_port(ip, socket.SOCK_DGRAM)
        argv = ["sipp", "-sf", os.path.join(SCEN, scenario), "-s", service, "-i", ip, "-p",
                str(port), "-t", transport, "-m", str(calls), "-nostdin", "-timeout",
                f"{timeout}s", "-recv_timeout", "5000", "-max_recv_loops", "1000"] + list(extra)
        if target:
            argv.insert(1, target)
        if background:
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 cwd=self.t.tmp)
            self.t.addCleanup(lambda: p.poll() is None and p.kill())
            return p
        return self.t.run_tool(argv, timeout=timeout + 10)


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


class UdpUA:
    """A minimal SIP user agent on a UDP socket: sends raw requests, reads replies."""

    def __init__(self, ip="127.0.0.3", port=0):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind((ip, port))
        self.s.settimeout(2.0)
        self.ip, self.port = self.s.getsockname()

    def close(self):
        self.s.close()

    def send(self, text, to):
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
            return msg
        return None

    def request(self, method, ruri, to, headers="", body="", via_extra=";rport", user="alice",
                cseq=1, call_id=None, to_uri=None, max_forwards=70, contact=True):
        call_id = call_id or uuid.uuid4().hex
        to_uri = to_uri or f"sip:{user}@example.com"
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.ip}:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:16]}{via_extra}",
                 f"From: <sip:{user}@example.com>;tag={uuid.uuid4().hex[:8]}",
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
        self.request("REGISTER", "sip:example.com", to, user=user, call_id=cid,
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
        resp = digest(alg, user, realm, password, "REGISTER", "sip:example.com", nonce, "00000001",
                      "c0ffee", "auth")
        auth = (f'Authorization: Digest username="{user}", realm="{realm}", nonce="{nonce}", '
                f'uri="sip:example.com", response="{resp}", algorithm={alg}, cnonce="c0ffee", '
                f'qop=auth, nc=00000001\r\n')
        self.request("REGISTER", "sip:example.com", to, user=user, call_id=cid, cseq=2,
                     headers=auth + f"Expires: {expires}\r\n")
        return self.recv(), chals
