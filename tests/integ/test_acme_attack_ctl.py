"""ACME from a hostile or broken Director, as an edge sees it (issue 14 item 3, the perimeter's
standard: every byte is hostile). acme-dirstub plays the Director; the test signs the edge's
CSR itself (python cryptography, the lab CA) and sends CertIssued chains that are wrong in one
way each. The edge must refuse each with a log line and a counted metric, leave its key and
certificate files as they were, keep serving its current certificate, and still install a
good chain for the same order afterwards.
"""
import base64
import datetime
import os
import subprocess
import unittest

from harness import SuiteTest, binary, free_port, have_binary, wait_for
import test_acme_edge as tae
from test_acme_edge import DirStub, norm_serial, served_serial

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
except ImportError:  # pragma: no cover
    x509 = None

NAME = "conf.lab.test"


def setUpModule():
    tae.setUpModule()


def tearDownModule():
    tae.tearDownModule()


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class AcmeChainAttackTest(SuiteTest):
    acme_section = tae.AcmeEdgeTest.acme_section
    edge_config = tae.AcmeEdgeTest.edge_config

    def setUp(self):
        super().setUp()
        if not have_binary("acme-dirstub") or x509 is None:
            self.skipTest("acme-dirstub or python3-cryptography missing")
        self.stub = DirStub(self.tmp)
        self.addCleanup(self.stub.stop)
        self.cert = os.path.join(self.tmp, "edge.crt")
        self.key = os.path.join(self.tmp, "edge.key")
        with open(f"{tae.CERTS}/ca.crt", "rb") as f:
            self.ca = x509.load_pem_x509_certificate(f.read())
        with open(f"{tae.CERTS}/ca.key", "rb") as f:
            self.ca_key = serialization.load_pem_private_key(f.read(), None)

    def leaf(self, csr_der, names, days=(-1, 2), issuer=None, issuer_key=None):
        csr = x509.load_der_x509_csr(csr_der)
        now = datetime.datetime.now(datetime.timezone.utc)
        issuer = issuer or self.ca
        b = (x509.CertificateBuilder().subject_name(csr.subject)
             .issuer_name(issuer.subject).public_key(csr.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now + datetime.timedelta(days=days[0]))
             .not_valid_after(now + datetime.timedelta(days=days[1]))
             .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False))
        return b.sign(issuer_key or self.ca_key, hashes.SHA256())

    def other_ca(self):
        k = ec.generate_private_key(ec.SECP256R1())
        n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Not The Issuer CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        c = (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(k.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
             .sign(k, hashes.SHA256()))
        return c, k

    def send_chain(self, order, text, i):
        path = os.path.join(self.tmp, f"chain{i}.pem")
        with open(path, "w") as f:
            f.write(text)
        m = self.stub.send(f"issue {order} {path}")
        return self.stub.wait(lambda e: e["event"] == "cert_status", after=m)

    def test_edge_refuses_bad_chains_and_keeps_serving(self):
        tls_port = free_port()
        admin, config = self.edge_config("conf-edge", tls_port)
        d = self.daemon("conf-edge", config, admin=admin)
        st = self.stub.wait(lambda e: e["event"] == "cert_status")
        placeholder = norm_serial(st["serial"])
        with open(self.cert, "rb") as f:
            cert0 = f.read()
        with open(self.key, "rb") as f:
            key0 = f.read()
        m = self.stub.send(f"csr o1 {NAME}")
        csr = self.stub.wait(lambda e: e["event"] == "csr" and e["order"] == "o1", after=m)
        self.assertEqual(csr["error"], "")
        der = bytes.fromhex(csr["der"])
        good = self.leaf(der, [NAME])
        other, other_key = self.other_ca()
        garbage = ("-----BEGIN CERTIFICATE-----\n" +
                   base64.encodebytes(os.urandom(600)).decode() + "-----END CERTIFICATE-----\n")
        with open(self.key) as f:
            edge_key_block = f.read()
        attacks = [
            ("intermediate is garbage", pem(good) + garbage, "certificate"),
            ("intermediate does not sign the leaf", pem(good) + pem(other), "does not sign"),
            ("leaf signed by another CA than the one that follows",
             pem(self.leaf(der, [NAME], issuer=other, issuer_key=other_key)) + pem(self.ca),
             "does not sign"),
            ("text outside the PEM blocks", "hello\n" + pem(good) + "junk\n" + pem(self.ca),
             "outside"),
            ("a private key in the chain", pem(good) + edge_key_block, "outside"),
            ("over-long chain", pem(good) + pem(self.ca) * 9, "certificates"),
            ("names not requested", pem(self.leaf(der, ["evil.lab.test"])) + pem(self.ca),
             "does not name"),
            ("a name not requested besides the one requested",
             pem(self.leaf(der, [NAME, "evil.lab.test"])) + pem(self.ca), "not requested"),
            ("expired", pem(self.leaf(der, [NAME], days=(-10, -1))) + pem(self.ca), "expired"),
            ("not yet valid", pem(self.leaf(der, [NAME], days=(2, 9))) + pem(self.ca),
             "not valid yet"),
            ("empty", "", "certificate"),
        ]
        seen = []
        for i, (what, text, word) in enumerate(attacks):
            st = self.send_chain("o1", text, i)
            seen.append((what, st["error"]))
            self.assertNotEqual(st["error"], "", f"{what}: accepted")
            self.assertIn(word, st["error"], what)
            self.assertEqual(norm_serial(st["serial"]), placeholder, what)
            with open(self.cert, "rb") as f:
                self.assertEqual(f.read(), cert0, f"{what}: the certificate file changed")
            with open(self.key, "rb") as f:
                self.assertEqual(f.read(), key0, f"{what}: the key file changed")
        # A stale order and a CertIssued with nothing pending for it.
        st = self.send_chain("o0", pem(good) + pem(self.ca), 99)
        self.assertIn("no certificate request pending for order o0", st["error"])
        self.assertEqual(d.metrics().get("conf_edge_acme_install_failures_total"),
                         len(attacks) + 1)
        log = d.log()
        self.assertEqual(log.count("acme: order o1: certificate refused"), len(attacks), seen)
        self.assertEqual(served_serial(tls_port, NAME), placeholder)
        # The pending key survived every refusal: the good chain installs.
        st = self.send_chain("o1", pem(good) + pem(self.ca), 100)
        self.assertEqual(st["error"], "")
        serial = norm_serial(format(good.serial_number, "X"))
        self.assertEqual(norm_serial(st["serial"]), serial)
        wait_for(lambda: served_serial(tls_port, NAME) == serial, 15,
                 what="new handshakes on the new serial")
        self.assertNotIn("reload refused", d.log())


if __name__ == "__main__":
    unittest.main()
