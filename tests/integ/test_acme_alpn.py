"""ACME TLS-ALPN-01 (RFC 8737) as a validating CA sees it, with `openssl s_client`, against a
TLS listener built as the daemons build theirs (tls_files_ctx with a challenge store,
stream_listen/stream_accept: tests/tools/acme_alpn_serve.c, whose store is filled from its
command line because the daemons' stores are filled only by the Director over the control
channel). A client offering just "acme-tls/1" for a name with a challenge gets the
challenge certificate (with its critical acmeIdentifier extension) and that protocol, and
the connection ends right after the handshake without reaching the server's user; a name
without a challenge fails the handshake; ordinary clients (no ALPN, h2/http/1.1, or
acme-tls/1 among other protocols) get the listener's own certificate and protocol. Run on
both TLS backends (make, make TLS=openssl with --build build-openssl)."""
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import unittest

from harness import ROOT, binary, free_port, have_binary, wait_for

CERTS = os.path.join(ROOT, "build", "certs")
NAME = "conf.lab.test"
ACME_OID = "1.3.6.1.5.5.7.1.31"
PEM = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


def x509(args, pem):
    return subprocess.run(["openssl", "x509"] + args, input=pem.encode(), capture_output=True,
                          check=True).stdout


class AcmeAlpn(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not have_binary("acme-alpn-serve"):
            raise unittest.SkipTest("acme-alpn-serve is not built")
        if not shutil.which("openssl"):
            raise unittest.SkipTest("openssl is not installed")
        cls.tmp = tempfile.mkdtemp(prefix="edgetest-acme-")
        # The challenge certificate as pki_alpn_challenge_cert makes it: the name as its only
        # SAN, the SHA-256 of the key authorization in the critical acmeIdentifier extension.
        cls.digest = secrets.token_hex(32)
        cls.crt = os.path.join(cls.tmp, "chal.crt")
        key = os.path.join(cls.tmp, "chal.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=x",
                        "-addext", f"subjectAltName=DNS:{NAME}",
                        "-addext", f"{ACME_OID}=critical,DER:0420{cls.digest}",
                        "-keyout", key, "-out", cls.crt], check=True, capture_output=True)
        cls.port = free_port()
        cls.out = open(os.path.join(cls.tmp, "out"), "w+")
        cls.err = open(os.path.join(cls.tmp, "err"), "w+")
        cls.proc = subprocess.Popen(
            [binary("acme-alpn-serve"), "--listen", f"127.0.0.1:{cls.port}",
             "--cert", os.path.join(CERTS, "conf-edge.crt"),
             "--key", os.path.join(CERTS, "conf-edge.key"), "--alpn", "h2,http/1.1",
             "--challenge", f"{NAME}:{cls.crt}:{key}"], stdout=cls.out, stderr=cls.err)
        wait_for(lambda: "listening" in cls.lines(), timeout=10, what="acme-alpn-serve")
        with open(cls.crt) as f:
            cls.fingerprint = x509(["-noout", "-fingerprint", "-sha256"], f.read())
        with open(os.path.join(CERTS, "conf-edge.crt")) as f:
            cls.normal = x509(["-noout", "-fingerprint", "-sha256"], f.read())

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        try:
            cls.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cls.proc.kill()
            cls.proc.wait()
        err = cls.errors()
        cls.out.close()
        cls.err.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        if "Sanitizer" in err or "runtime error" in err:
            raise AssertionError(f"sanitizer report from acme-alpn-serve:\n{err}")

    @classmethod
    def lines(cls):
        cls.out.seek(0)
        return cls.out.read()

    @classmethod
    def errors(cls):
        cls.err.seek(0)
        return cls.err.read()

    def events(self, since):
        """The server's lines after the first `since` characters, once the last connection
        has closed there."""
        wait_for(lambda: self.lines()[since:].count("close ") >= 1, timeout=10,
                 what="the server to close the connection")
        return self.lines()[since:]

    def s_client(self, name, alpn=None, extra=()):
        """Runs s_client with stdin left open: it ends only when the server ends the
        connection (or it fails). Returns (exit code, output, first certificate PEM)."""
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}", "-showcerts"]
        argv += ["-servername", name] if name else ["-noservername"]
        if alpn:
            argv += ["-alpn", alpn]
        argv += list(extra)
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            self.fail(f"s_client still connected after 15 s (the server did not end it):\n{out}")
        m = PEM.search(out)
        return p.returncode, out, m.group(0) if m else None

    def test_challenge_certificate_served_then_closed(self):
        # TLS 1.3 where the backend speaks it (OpenSSL build), and TLS 1.2.
        for extra in ((), ("-tls1_2",)):
            with self.subTest(tls=extra or "default"):
                since = len(self.lines())
                code, out, pem = self.s_client(NAME.upper(), "acme-tls/1", extra)
                self.assertIsNotNone(pem, out)
                self.assertIn("ALPN protocol: acme-tls/1", out)
                self.assertEqual(x509(["-noout", "-fingerprint", "-sha256"], pem),
                                 self.fingerprint)
                text = x509(["-noout", "-text"], pem).decode()
                self.assertIn(f"{ACME_OID}: critical", text)
                self.assertIn(f"DNS:{NAME}", text)
                der = x509(["-outform", "DER"], pem)
                self.assertIn(bytes.fromhex("0420" + self.digest), der)
                ev = self.events(since)
                # Ended by the server after the handshake, never shown to its user.
                self.assertIn("close opened=0 err=0 why=ACME TLS-ALPN-01 challenge answered",
                              ev)
                self.assertNotIn("open alpn", ev)

    def test_name_without_challenge_fails(self):
        for name in ("web.lab.test", None):
            with self.subTest(name=name):
                since = len(self.lines())
                code, out, pem = self.s_client(name, "acme-tls/1")
                self.assertIsNone(pem, out)
                self.assertNotEqual(code, 0, out)
                self.assertNotIn("ALPN protocol: acme-tls/1", out)
                self.assertRegex(out, r"unrecognized name|alert number 112|handshake failure")
                ev = self.events(since)
                self.assertIn("why=ACME TLS-ALPN-01: no challenge for", ev)
                self.assertNotIn("open alpn", ev)

    def test_ordinary_clients_get_the_normal_certificate(self):
        for alpn, want in ((None, "-"), ("h2,http/1.1", "h2"), ("http/1.1", "http/1.1"),
                           ("acme-tls/1,http/1.1", "http/1.1")):
            with self.subTest(alpn=alpn):
                since = len(self.lines())
                code, out, pem = self.s_client(NAME, alpn)
                self.assertIsNotNone(pem, out)
                self.assertEqual(x509(["-noout", "-fingerprint", "-sha256"], pem), self.normal)
                if alpn:
                    self.assertIn(f"ALPN protocol: {want}", out)
                else:
                    self.assertIn("No ALPN negotiated", out)
                ev = self.events(since)
                self.assertIn(f"open alpn={want}", ev)
                self.assertIn("close opened=1 err=0", ev)


if __name__ == "__main__":
    unittest.main()
