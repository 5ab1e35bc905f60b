"""The edges' side of ACME over the real control channel, without a CA: build/bin/acme-dirstub
plays the Director (the ctl server API, stdin commands -> CsrRequest / CertIssued / Challenge),
and the test signs each edge's CSR with the lab CA through the openssl CLI.

- revproxy's port-80 listener serves HTTP-01 key authorizations placed over the control
  channel, 404 for other tokens, the redirect for everything else, and hostile input (slow
  heads, garbage) the same way as before: 408/400, counted.
- Issuance: placeholder at start, CertStatus, a CSR that verifies, the CA's certificate
  installed (key 0600), new handshakes show the new serial while a TLS connection opened
  before keeps working on the old certificate; a CertIssued it did not ask for is refused.
- The other three edges: the same issuance, checked with openssl s_client.
"""
import json
import os
import queue
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
import unittest

from harness import ROOT, SuiteTest, binary, free_port, have_binary, wait_for
from rp_upstream import Upstream

CERTS = None


def setUpModule():
    global CERTS
    CERTS = tempfile.mkdtemp(prefix="acmecerts-")
    subprocess.run([os.path.join(ROOT, "deploy", "certs.sh"), CERTS], check=True,
                   capture_output=True)


def tearDownModule():
    shutil.rmtree(CERTS, ignore_errors=True)


class DirStub:
    """acme-dirstub: a Director that welcomes every edge and speaks ACME on command."""

    def __init__(self, workdir):
        self.events = []
        self.lock = threading.Lock()
        self.errlog = open(os.path.join(workdir, "dirstub.log"), "wb")
        argv = [binary("acme-dirstub"), "--listen", "127.0.0.1:0",
                "--cert", f"{CERTS}/director.crt", "--key", f"{CERTS}/director.key",
                "--ca", f"{CERTS}/ca.crt"]
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.errlog)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        ev = self.wait(lambda e: e["event"] == "listening")
        self.port = int(ev["addr"].rsplit(":", 1)[1])

    def _read(self):
        for line in self.p.stdout:
            with self.lock:
                self.events.append(json.loads(line))

    def wait(self, pred, timeout=15, after=0):
        def find():
            with self.lock:
                for e in self.events[after:]:
                    if pred(e):
                        return e
            return None
        return wait_for(find, timeout, what="a dirstub event")

    def mark(self):
        with self.lock:
            return len(self.events)

    def send(self, line, to=1):
        m = self.mark()
        self.p.stdin.write((line + "\n").encode())
        self.p.stdin.flush()
        ev = self.wait(lambda e: e["event"] in ("sent", "error"), after=m)
        assert ev == {"event": "sent", "to": to, "failed": 0}, ev
        return m

    def stop(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.t.join(5)
        self.p.stdout.close()
        self.errlog.close()


def director_section(port, role):
    return (f"director: {{enabled: true, address: 127.0.0.1:{port}, server_name: director, "
            f"report_interval: 1s, tls: {{cert: {CERTS}/{role}.crt, key: {CERTS}/{role}.key, "
            f"ca: {CERTS}/ca.crt}}}}")


def serial_of_pem(pem_path):
    out = subprocess.run(["openssl", "x509", "-in", pem_path, "-noout", "-serial"], check=True,
                         capture_output=True, text=True).stdout
    return norm_serial(out.strip().split("=", 1)[1])


def norm_serial(s):
    return s.replace(":", "").upper().lstrip("0")


def served_serial(port, name):
    """The serial of the certificate a new handshake on port gets (openssl s_client)."""
    p = subprocess.run(f"openssl s_client -connect 127.0.0.1:{port} -servername {name} "
                       f"</dev/null 2>/dev/null | openssl x509 -noout -serial",
                       shell=True, capture_output=True, text=True, timeout=20)
    out = p.stdout.strip()
    return norm_serial(out.split("=", 1)[1]) if out.startswith("serial=") else None


class AcmeEdgeTest(SuiteTest):
    def setUp(self):
        super().setUp()
        for b in ("acme-dirstub",):
            if not have_binary(b):
                self.skipTest(f"{b} is not built")
        if not shutil.which("openssl"):
            self.skipTest("openssl is not installed")
        self.stub = DirStub(self.tmp)
        self.addCleanup(self.stub.stop)
        self.cert = os.path.join(self.tmp, "edge.crt")
        self.key = os.path.join(self.tmp, "edge.key")

    def acme_section(self):
        return f"acme: {{enabled: true, cert: {self.cert}, key: {self.key}}}"

    # ---- helpers: what the Director and the CA would do ----

    def sign(self, der_hex, names, order):
        """Checks the CSR with openssl and signs it with the lab CA: the chain's path."""
        d = os.path.join(self.tmp, order)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "req.der"), "wb") as f:
            f.write(bytes.fromhex(der_hex))
        text = self.run_tool(["openssl", "req", "-inform", "DER", "-in", f"{d}/req.der",
                              "-verify", "-noout", "-text"], check=True)
        out = (text.stdout + text.stderr).decode()
        self.assertIn("verify OK", out)
        for n in names:
            self.assertIn(f"DNS:{n}", out)
        with open(f"{d}/ext.cnf", "w") as f:
            f.write("subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n")
        self.run_tool(["openssl", "x509", "-req", "-inform", "DER", "-in", f"{d}/req.der",
                       "-CA", f"{CERTS}/ca.crt", "-CAkey", f"{CERTS}/ca.key", "-set_serial",
                       str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
                       "-extfile", f"{d}/ext.cnf", "-out", f"{d}/leaf.pem"], check=True)
        with open(f"{d}/chain.pem", "w") as f, open(f"{d}/leaf.pem") as leaf, \
                open(f"{CERTS}/ca.crt") as ca:
            f.write(leaf.read() + ca.read())
        return f"{d}/chain.pem", serial_of_pem(f"{d}/leaf.pem")

    def placeholder_status(self, role):
        st = self.stub.wait(lambda e: e["event"] == "cert_status" and e["role"] == role)
        self.assertTrue(st["self_signed"], st)
        self.assertEqual(st["error"], "")
        self.assertEqual(os.stat(self.key).st_mode & 0o777, 0o600)
        return st

    def issue(self, role, names, order):
        """CsrRequest -> Csr -> signed -> CertIssued -> CertStatus: the new serial."""
        m = self.stub.send(f"csr {order} " + " ".join(names))
        csr = self.stub.wait(lambda e: e["event"] == "csr" and e["order"] == order, after=m)
        self.assertEqual(csr["error"], "")
        chain, serial = self.sign(csr["der"], names, order)
        m = self.stub.send(f"issue {order} {chain}")
        st = self.stub.wait(lambda e: e["event"] == "cert_status", after=m)
        self.assertEqual(st["error"], "", st)
        self.assertFalse(st["self_signed"])
        self.assertEqual(norm_serial(st["serial"]), serial)
        self.assertEqual(sorted(st["names"]), sorted(names))
        self.assertEqual(os.stat(self.key).st_mode & 0o777, 0o600)
        return chain, serial

    # ---- revproxy ----

    def start_revproxy(self, header_timeout="1s"):
        self.up = Upstream()
        self.addCleanup(self.up.stop)
        self.admin = f"127.0.0.1:{free_port()}"
        self.https, self.redir = free_port(), free_port()
        config = f"""
admin: {{listen: {self.admin}}}
log: {{level: info}}
{director_section(self.stub.port, "revproxy")}
{self.acme_section()}
listeners:
  - {{address: 127.0.0.1:{self.https}, tls: true}}
  - {{address: 127.0.0.1:{self.redir}, redirect: true}}
server_names: [web.lab.test]
upstreams:
  - {{name: web, servers: [{self.up.addr}], tls: false}}
routes:
  - {{prefix: /, upstream: web}}
header_timeout: {header_timeout}
"""
        self.assertFalse(os.path.exists(self.cert))
        self.d = self.daemon("revproxy", config, admin=self.admin)
        return self.d

    def raw(self, port, data, timeout=5):
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            s.sendall(data)
            out = b""
            while True:
                try:
                    d = s.recv(65536)
                except socket.timeout:
                    break
                if not d:
                    break
                out += d
            return out
        finally:
            s.close()

    def get80(self, path, host="web.lab.test", method="GET"):
        out = self.raw(self.redir, f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
                                  f"Connection: close\r\n\r\n".encode())
        head, _, body = out.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        return int(lines[0].split()[1]), headers, body.decode()

    def test_revproxy_port_80_serves_http01_challenges(self):
        d = self.start_revproxy()
        self.placeholder_status("revproxy")
        token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
        ka = token + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
        path = f"/.well-known/acme-challenge/{token}"
        # Not placed yet: 404, not a redirect.
        self.assertEqual(self.get80(path)[0], 404)
        m = self.stub.send(f"challenge http-01 web.lab.test {token} {ka}")
        ready = self.stub.wait(lambda e: e["event"] == "challenge_ready", after=m)
        self.assertEqual((ready["token"], ready["error"]), (token, ""))
        code, h, body = self.get80(path)
        self.assertEqual((code, body), (200, ka))
        self.assertTrue(h["content-type"].startswith("text/plain"), h)
        p = self.run_tool(["curl", "-sS", "--max-time", "10",
                           f"http://127.0.0.1:{self.redir}{path}"], timeout=20)
        self.assertEqual(p.stdout.decode(), ka)
        code, h, body = self.get80(path, method="HEAD")
        self.assertEqual((code, body, h["content-length"]), (200, "", str(len(ka))))
        # Whatever Host the CA sends (it is the name being validated).
        self.assertEqual(self.get80(path, host="other.example")[:3:2], (200, ka))
        # Another token, a token with characters no token has, none: 404; a target the
        # proxy refuses anywhere (an encoded slash): 400.
        self.assertEqual(self.get80(path[:-1] + "x")[0], 404)
        self.assertEqual(self.get80("/.well-known/acme-challenge/a.b!c")[0], 404)
        self.assertEqual(self.get80("/.well-known/acme-challenge/")[0], 404)
        self.assertEqual(self.get80("/.well-known/acme-challenge/a%2Fb")[0], 400)
        # Everything else: the redirect, as before.
        code, h, _ = self.get80("/ABS/ext/x?y=1")
        self.assertEqual((code, h.get("location")), (301, "https://web.lab.test/ABS/ext/x?y=1"))
        code, h, _ = self.get80(path, method="POST")
        self.assertEqual(code, 301)
        # Removed: 404 again.
        self.stub.send(f"remove http-01 web.lab.test {token}")
        wait_for(lambda: self.get80(path)[0] == 404, 5, what="the challenge removed")
        mx = d.metrics()
        self.assertEqual(mx.get('revproxy_acme_http_requests_total{result="served"}'), 4)
        self.assertGreaterEqual(mx.get('revproxy_acme_http_requests_total{result="unknown_token"}'), 4)
        self.assertEqual(mx.get('revproxy_acme_challenges_total{kind="http-01"}'), 1)
        self.assertEqual(mx.get("revproxy_acme_challenges_active"), 0)

    def test_revproxy_port_80_treats_hostile_clients_as_before(self):
        d = self.start_revproxy(header_timeout="1s")
        self.placeholder_status("revproxy")
        before = d.metrics()
        # A slowloris trickling its head a byte at a time: 408 after header_timeout, closed.
        s = socket.create_connection(("127.0.0.1", self.redir), timeout=10)
        t0 = time.time()
        got = b""
        try:
            s.settimeout(0.2)
            for ch in b"GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: web.lab.test\r\nX":
                try:
                    s.send(bytes([ch]))
                except OSError:
                    break
                try:
                    d_ = s.recv(4096)
                    got += d_
                    if not d_:
                        break
                except socket.timeout:
                    pass
                if time.time() - t0 > 8:
                    break
            s.settimeout(5)
            while True:
                try:
                    d_ = s.recv(4096)
                except (socket.timeout, ConnectionResetError):
                    break
                if not d_:
                    break
                got += d_
        finally:
            s.close()
        self.assertTrue(got.startswith(b"HTTP/1.1 408"), got[:80])
        self.assertLess(time.time() - t0, 8)
        # TLS bytes on the plain port, and a head past max_head: 400 and 431.
        self.assertTrue(self.raw(self.redir, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" +
                                 b"\x00" * 40).startswith(b"HTTP/1.1 400"))
        big = b"GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20000
        self.assertTrue(self.raw(self.redir, big + b"\r\n\r\n").startswith(b"HTTP/1.1 431"))
        after = d.metrics()

        def delta(k):
            return after.get(k, 0) - before.get(k, 0)
        self.assertGreaterEqual(delta('revproxy_refused_total{reason="client_timeout"}'), 1)
        self.assertGreaterEqual(delta('revproxy_refused_total{reason="bad_request"}'), 1)
        self.assertGreaterEqual(delta('revproxy_refused_total{reason="head_too_large"}'), 1)
        self.assertEqual(after.get('revproxy_acme_http_requests_total{result="served"}', 0), 0)

    def test_revproxy_installs_a_certificate_and_keeps_open_connections(self):
        d = self.start_revproxy()
        st = self.placeholder_status("revproxy")
        self.assertEqual(st["names"], ["web.lab.test"])
        old_serial = norm_serial(st["serial"])
        self.assertEqual(served_serial(self.https, "web.lab.test"), old_serial)
        # A connection opened on the placeholder, kept alive across the renewal.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        held = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.https), timeout=10),
                               server_hostname="web.lab.test")
        self.addCleanup(held.close)
        held_cert = held.getpeercert(binary_form=True)

        def request_on_held():
            held.sendall(b"GET /hello HTTP/1.1\r\nHost: web.lab.test\r\n\r\n")
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += held.recv(65536)
            head, _, body = buf.partition(b"\r\n\r\n")
            n = int([l.split(b":")[1] for l in head.split(b"\r\n")
                     if l.lower().startswith(b"content-length:")][0])
            while len(body) < n:
                body += held.recv(65536)
            return head.split(b" ")[1]
        self.assertEqual(request_on_held(), b"200")

        chain, serial = self.issue("revproxy", ["web.lab.test"], "o1")
        self.assertNotEqual(serial, old_serial)
        d.wait_log("acme: order o1: installed certificate")
        # certwatch sees the pair and reloads: new handshakes get the CA's certificate.
        wait_for(lambda: served_serial(self.https, "web.lab.test") == serial, 15,
                 what="new handshakes on the new serial")
        p = self.run_tool(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                           "--cacert", f"{CERTS}/ca.crt", "--resolve",
                           f"web.lab.test:{self.https}:127.0.0.1",
                           f"https://web.lab.test:{self.https}/verified"], timeout=20)
        self.assertEqual(p.stdout, b"200", p.stderr)
        # The connection from before still works, on the certificate it started with.
        self.assertEqual(request_on_held(), b"200")
        self.assertEqual(held.getpeercert(binary_form=True), held_cert)
        # A CertIssued for an order that is over is refused; the files stay.
        m = self.stub.send(f"issue o1 {chain}")
        st = self.stub.wait(lambda e: e["event"] == "cert_status", after=m)
        self.assertIn("no certificate request pending for order o1", st["error"])
        self.assertEqual(norm_serial(st["serial"]), serial)
        self.assertEqual(serial_of_pem(self.cert), serial)
        mx = d.metrics()
        self.assertEqual(mx.get("revproxy_acme_certificates_installed_total"), 1)
        self.assertEqual(mx.get("revproxy_acme_install_failures_total"), 1)
        self.assertEqual(mx.get('revproxy_acme_csr_total{result="ok"}'), 1)
        # certwatch reloaded once the pair was whole, never on half of it.
        log = d.log()
        self.assertIn("certificate " + self.cert + " changed", log)
        self.assertNotIn("reload refused", log)

    # ---- access-edge, conf-edge, av-edge: the same issuance, and TLS-ALPN-01 ----

    def edge_config(self, role, tls_port):
        admin = f"127.0.0.1:{free_port()}"
        common = (f"admin: {{listen: {admin}}}\nlog: {{level: info}}\n"
                  f"{director_section(self.stub.port, role)}\n{self.acme_section()}\n")
        if role == "access-edge":
            body = f"""domains: [lab.test]
fqdn: sip.lab.test
external:
  udp: [127.0.0.1:{free_port()}]
  tls: [127.0.0.1:{tls_port}]
internal:
  udp: [127.0.0.1:{free_port()}]
next_hop: {{address: 127.0.0.1:{free_port()}, transport: udp}}
"""
        elif role == "conf-edge":
            body = f"""external:
  listen: 127.0.0.1:{tls_port}
internal:
  listen: 127.0.0.1:{free_port()}
  tls: {{cert: {CERTS}/conf-edge.crt, key: {CERTS}/conf-edge.key, ca: {CERTS}/ca.crt}}
"""
        else:
            base = 20000 + 100 * (os.getpid() % 90)
            body = f"""external:
  listen: [127.0.0.1:{free_port()}]
  tcp_listen: []
  tls_listen: [127.0.0.1:{tls_port}]
internal:
  listen: [127.0.0.1:{free_port()}]
relay: {{addresses: [127.0.0.1], port_min: {base}, port_max: {base + 99}}}
auth: {{realm: lab.test}}
"""
        return admin, common + body

    def alpn_challenge(self, port, name):
        """Places a TLS-ALPN-01 challenge for name and checks what openssl s_client gets."""
        token = "tok" + name.split(".")[0].replace("-", "")
        ka = token + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
        m = self.stub.send(f"challenge tls-alpn-01 {name} {token} {ka}")
        ready = self.stub.wait(lambda e: e["event"] == "challenge_ready", after=m)
        self.assertEqual((ready["token"], ready["error"]), (token, ""))
        p = subprocess.run(f"openssl s_client -connect 127.0.0.1:{port} -servername {name} "
                           f"-alpn acme-tls/1 </dev/null 2>/dev/null | openssl x509 -noout -text",
                           shell=True, capture_output=True, text=True, timeout=20)
        self.assertIn("1.3.6.1.5.5.7.1.31", p.stdout)  # acmeIdentifier
        self.assertIn(f"DNS:{name}", p.stdout)
        self.stub.send(f"remove tls-alpn-01 {name} {token}")

    def issue_on(self, role, name):
        tls_port = free_port()
        admin, config = self.edge_config(role, tls_port)
        d = self.daemon(role, config, admin=admin)
        st = self.placeholder_status(role)
        self.assertEqual(served_serial(tls_port, name), norm_serial(st["serial"]))
        self.alpn_challenge(tls_port, name)
        _, serial = self.issue(role, [name], "o-" + role)
        wait_for(lambda: served_serial(tls_port, name) == serial, 15,
                 what=f"{role}: new handshakes on the new serial")
        prefix = role.replace("-", "_")
        mx = d.metrics()
        self.assertEqual(mx.get(f"{prefix}_acme_certificates_installed_total"), 1)
        self.assertEqual(mx.get(f'{prefix}_acme_challenges_total{{kind="tls-alpn-01"}}'), 1)
        return d

    def test_check_reports_acme_mistakes_at_their_line(self):
        """--check: acme without files, a directory that cannot be written, listeners that
        name other files than acme's; and a good section passes without writing anything."""
        admin, good = self.edge_config("conf-edge", free_port())
        path = os.path.join(self.tmp, "check.yaml")

        def check(text):
            with open(path, "w") as f:
                f.write(text)
            p = subprocess.run([binary("conf-edge"), "--check", "-c", path], capture_output=True,
                               text=True, timeout=20)
            return p.returncode, (p.stdout + p.stderr).strip()
        self.assertEqual(check(good), (0, f"{path}: ok"))
        self.assertFalse(os.path.exists(self.cert))  # --check writes no placeholder
        rc, out = check(good.replace(self.acme_section(), "acme: {enabled: true}"))
        self.assertEqual(rc, 1)
        self.assertRegex(out, rf"^{path}:\d+:\d+: acme.enabled: acme needs cert and key")
        rc, out = check(good.replace(f"cert: {self.cert}", "cert: /nonexistent/edge.crt"))
        self.assertRegex(out, rf"^{path}:\d+:\d+: acme.cert: cannot write in /nonexistent")
        other = good.replace("external:\n", f"external:\n  tls: {{cert: {CERTS}/conf-edge.crt, "
                                            f"key: {CERTS}/conf-edge.key}}\n")
        rc, out = check(other)
        self.assertEqual(rc, 1)
        self.assertRegex(out, rf"^{path}:\d+:\d+: external.tls.cert: with acme enabled")

    def test_access_edge_issuance_and_tls_alpn(self):
        d = self.issue_on("access-edge", "sip.lab.test")
        st = self.stub.wait(lambda e: e["event"] == "cert_status" and e["self_signed"])
        self.assertEqual(st["names"], ["sip.lab.test"])  # the placeholder names fqdn

    def test_conf_edge_issuance_and_tls_alpn(self):
        self.issue_on("conf-edge", "conf.lab.test")

    def test_av_edge_issuance_and_tls_alpn(self):
        self.issue_on("av-edge", "av.lab.test")


if __name__ == "__main__":
    unittest.main()
