"""TLS-ALPN-01 on the four edges' real external TLS listeners (not a stand-in): with a
challenge placed over the control channel (acme-dirstub as the Director), a client offering
just acme-tls/1 gets the challenge certificate and its connection ends after the handshake,
whatever it sends next (a conference preamble, SIP, a TURN request, HTTP): none of it reaches
the daemon, nothing is answered. Ordinary clients (no ALPN, other protocols, acme-tls/1 among
others) never get the challenge certificate. An ordinary session offered with acme-tls/1 is
not resumed, and a challenge connection leaves none to resume. Run once per backend (--build build-openssl)."""
import os
import socket
import ssl
import struct
import subprocess
import time
import unittest

from harness import wait_for
import test_acme_edge as tae

OID = bytes.fromhex("06082b0601050507011f")  # id-pe-acmeIdentifier, DER


def setUpModule():
    tae.setUpModule()


def tearDownModule():
    tae.tearDownModule()


def handshake(port, name, alpn):
    """(cert DER, negotiated ALPN, socket) or raises ssl.SSLError."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s = ctx.wrap_socket(raw, server_hostname=name)
    except Exception:
        raw.close()
        raise
    return s.getpeercert(binary_form=True), s.selected_alpn_protocol(), s


def answer_after(s, data):
    """Everything the server sends after data, until it closes (or 3 s pass)."""
    out = b""
    try:
        s.sendall(data)
        s.settimeout(3)
        while True:
            d = s.recv(4096)
            if not d:
                break
            out += d
    except (OSError, ssl.SSLError):
        pass
    finally:
        s.close()
    return out


def s_client(port, name, alpn, sess_in=None, sess_out=None):
    """openssl s_client's report of one handshake (sessions across ALPN lists, which Python's
    ssl cannot offer: its sessions belong to one context, and ALPN is the context's)."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name,
            "-alpn", alpn]
    if sess_in:
        argv += ["-sess_in", sess_in]
    if sess_out:
        argv += ["-sess_out", sess_out]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    time.sleep(0.3)  # TLS 1.3 tickets come after the handshake
    out, _ = p.communicate(b"", timeout=20)
    return out.decode(errors="replace")


STUN_BINDING = struct.pack(">HHI", 1, 0, 0x2112A442) + os.urandom(12)
FIRST_BYTES = {
    "conf-edge": b"PSOM-EDGE/1 JOIN key=abc\r\n",
    "access-edge": (b"OPTIONS sip:sip.lab.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5;"
                    b"branch=z9hG4bK1\r\nFrom: <sip:a@lab.test>;tag=1\r\nTo: <sip:sip.lab.test>\r\n"
                    b"Call-ID: 1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"),
    "av-edge": struct.pack(">H", len(STUN_BINDING)) + STUN_BINDING,
    "revproxy": b"GET / HTTP/1.1\r\nHost: web.lab.test\r\n\r\n",
}
NAMES = {"conf-edge": "conf.lab.test", "access-edge": "sip.lab.test",
         "av-edge": "av.lab.test", "revproxy": "web.lab.test"}


class EdgesAlpnAttack(tae.AcmeEdgeTest):
    def check_edge(self, role, port):
        name = NAMES[role]
        token = "tok" + role.replace("-", "")
        ka = token + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
        # Before the challenge: an acme-tls/1 client fails the handshake.
        with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
            handshake(port, name, ["acme-tls/1"])
        m = self.stub.send(f"challenge tls-alpn-01 {name} {token} {ka}")
        ready = self.stub.wait(lambda e: e["event"] == "challenge_ready", after=m)
        self.assertEqual(ready["error"], "")
        der, alpn, s = handshake(port, name, ["acme-tls/1"])
        self.assertIn(OID, der)
        self.assertEqual(alpn, "acme-tls/1")
        self.assertEqual(answer_after(s, FIRST_BYTES[role]), b"", role)
        # Resumption: an ordinary client's session offered with acme-tls/1 is not resumed
        # (the CA checks the certificate, which a resumed handshake does not show), and a
        # challenge connection leaves no session an ordinary client could resume.
        ordinary = os.path.join(self.tmp, f"{role}.sess")
        chal = os.path.join(self.tmp, f"{role}-acme.sess")
        out = s_client(port, name, "h2,http/1.1", sess_out=ordinary)
        # (the edge does resume ordinary sessions: else this part would prove nothing)
        self.assertIn("Reused,", s_client(port, name, "h2,http/1.1", sess_in=ordinary), role)
        out = s_client(port, name, "acme-tls/1", sess_in=ordinary, sess_out=chal)
        self.assertIn("New,", out, role)
        self.assertIn("ALPN protocol: acme-tls/1", out)
        if os.path.exists(chal):
            out = s_client(port, name, "h2,http/1.1", sess_in=chal)
            self.assertNotIn("Reused,", out, role)
        # Case does not matter for the name; another name, or none, fails.
        der, _, s = handshake(port, name.upper(), ["acme-tls/1"])
        s.close()
        self.assertIn(OID, der)
        for other in ("other.lab.test", None):
            with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
                handshake(port, other, ["acme-tls/1"])
        # Ordinary clients for the same name: never the challenge certificate.
        for protos in (None, ["h2", "http/1.1"], ["http/1.1", "acme-tls/1"],
                       ["acme-tls/1", "acme-tls/1"], ["acme-tls/1x"], ["sip", "turn"]):
            try:
                der, alpn, s = handshake(port, name, protos)
            except (ssl.SSLError, ConnectionError, OSError):
                continue  # refused (no protocol in common): fine, no challenge either
            s.close()
            self.assertNotIn(OID, der, f"{role}: {protos}")
            self.assertNotEqual(alpn, "acme-tls/1")
        self.stub.send(f"remove tls-alpn-01 {name} {token}")
        # Answered challenges are counted (they are no failed handshakes, and no sessions):
        # a flood of them shows; so do hellos for names without a challenge.
        prefix = role.replace("-", "_")
        mx = self.d_.metrics()
        self.assertEqual(mx.get(f'{prefix}_acme_tls_alpn_hellos_total{{result="served"}}'), 3)
        self.assertEqual(mx.get(f'{prefix}_acme_tls_alpn_hellos_total{{result="unknown_name"}}'),
                         2)  # the name before its challenge, and other.lab.test

    def test_all_four_edges(self):
        for role in ("conf-edge", "access-edge", "av-edge"):
            with self.subTest(role=role):
                port = tae.free_port()
                admin, config = self.edge_config(role, port)
                d = self.d_ = self.daemon(role, config, admin=admin)
                self.stub.wait(lambda e: e["event"] == "cert_status" and e["role"] == role)
                self.check_edge(role, port)
                d.stop()
                os.unlink(self.cert)
                os.unlink(self.key)
        with self.subTest(role="revproxy"):
            self.d_ = self.start_revproxy()
            self.stub.wait(lambda e: e["event"] == "cert_status" and e["role"] == "revproxy")
            self.check_edge("revproxy", self.https)
            self.assertEqual(self.up.requests, [])


for _n in [n for n in dir(tae.AcmeEdgeTest) if n.startswith("test_")]:
    setattr(EdgesAlpnAttack, _n, None)

if __name__ == "__main__":
    unittest.main()
