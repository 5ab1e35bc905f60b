"""Every TLS listener of every daemon, as deploy/config/*.yaml sets them up (ports moved to
free ones), scanned with sslscan as an auditor would: no SSLv2/SSLv3/TLS 1.0/TLS 1.1, only
forward-secret AEAD suites (no CBC, no RSA key exchange), secure renegotiation or none,
TLS 1.2 offered, and TLS 1.3 offered on the OpenSSL build (make TLS=openssl). On that build,
`openssl s_client -tls1_3` and `gnutls-cli` (TLS 1.3 only) also complete a handshake on every
external TLS port, and s_client's session ticket allows no 0-RTT data and resumes."""
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

from harness import ROOT, SuiteTest, binary, free_port, have_binary

ROLES = ["director", "access-edge", "conf-edge", "av-edge", "revproxy"]
# Each role's TLS listeners in its default config, (address, external?, SNI name). av-edge's
# default config names no certificate: it answers with a self-signed one.
TLS_LISTENERS = {
    "director": [("127.0.0.10:7400", False, "director"), ("127.0.0.10:5061", False, "director")],
    "access-edge": [("127.0.0.11:443", True, "access-edge"), ("127.0.0.11:5061", True, "access-edge"),
                    ("127.0.0.11:8443", True, "access-edge"), ("127.0.0.21:5061", False, "access-edge")],
    "conf-edge": [("127.0.0.12:443", True, "conf-edge"), ("127.0.0.22:8057", False, "conf-edge")],
    "av-edge": [("127.0.0.13:5349", True, "av-edge")],
    "revproxy": [("127.0.0.14:443", True, "revproxy")],
}
CERTS = os.path.join(ROOT, "build", "certs")
ADDR = re.compile(r"(?<![\d.])(127\.0\.0\.\d{1,3}):(\d+)")
AEAD = ("GCM", "CHACHA20", "CCM")


def tls_backend():
    out = subprocess.run([binary("director"), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"\(TLS: (\w+)", out)
    return m.group(1) if m else "?"


def violations(st, want_tls13):
    """What an sslscan result (its <ssltest> element) shows against the suite's TLS policy."""
    if st is None:
        return ["sslscan gave no result"]
    out = []
    protos = {(p.get("type"), p.get("version")): p.get("enabled") for p in st.findall("protocol")}
    for kind, ver in (("ssl", "2"), ("ssl", "3"), ("tls", "1.0"), ("tls", "1.1")):
        if protos.get((kind, ver)) != "0":
            out.append(f"{kind} {ver} enabled")
    if protos.get(("tls", "1.2")) != "1":
        out.append("TLS 1.2 not offered")
    if want_tls13 and protos.get(("tls", "1.3")) != "1":
        out.append("TLS 1.3 not offered")
    ciphers = [(c.get("sslversion"), c.get("cipher"))
               for c in st.findall("cipher") if c.get("status") in ("accepted", "preferred")]
    # The suite checks below mean something only if the scan saw the TLS 1.2 suites.
    if not any(v == "TLSv1.2" for v, _ in ciphers):
        out.append(f"no TLS 1.2 suite seen: {ciphers}")
    for ver, name in ciphers:
        # TLS 1.3 suites are all AEAD with (EC)DHE; TLS 1.2 ones must name ECDHE or DHE.
        if ver != "TLSv1.3" and not re.match(r"(ECDHE|DHE)-", name):
            out.append(f"{ver} {name}: no forward secrecy (RSA key exchange)")
        if not any(a in name for a in AEAD):
            out.append(f"{ver} {name}: not AEAD (CBC)")
    reneg = st.find("renegotiation")
    if reneg is not None and reneg.get("supported") == "1" and reneg.get("secure") != "1":
        out.append("insecure renegotiation")
    return out


class TlsScan(SuiteTest):
    def start_suite(self):
        """The five roles with their default configs, every port moved to a free one."""
        for r in ROLES:
            if not have_binary(r):
                self.skipTest(f"{r} is not built")
        ports = {}

        def move(mo):
            key = mo.group(0)
            if key not in ports:
                ports[key] = f"{mo.group(1)}:{free_port(mo.group(1))}"
            return ports[key]

        for role in ROLES:
            with open(os.path.join(ROOT, "deploy", "config", f"{role}.yaml")) as f:
                text = ADDR.sub(move, f.read())
            admin = re.search(r"admin:\s*\{\s*listen:\s*([\d.:]+)", text).group(1)
            self.daemon(role, text, admin=admin)
        return ports

    def scan(self, hostport, sni):
        p = subprocess.run(
            ["sslscan", "--xml=-", "--no-colour", "--no-heartbleed", "--no-compression",
             "--no-fallback", "--no-groups", "--no-check-certificate", "--timeout=5",
             f"--sni-name={sni}", f"--certs={CERTS}/partner.crt", f"--pk={CERTS}/partner.key",
             hostport], capture_output=True, text=True, timeout=120)
        xml = p.stdout[p.stdout.find("<?xml"):]
        return ET.fromstring(xml).find("ssltest")

    def test_every_tls_listener_passes_the_scan(self):
        if not shutil.which("sslscan"):
            self.skipTest("sslscan is not installed")
        ports = self.start_suite()
        openssl = tls_backend() == "OpenSSL"
        targets = [(role, ports[a], sni) for role, ls in TLS_LISTENERS.items() for a, _, sni in ls]
        with ThreadPoolExecutor(4) as ex:
            results = list(ex.map(lambda t: self.scan(t[1], t[2]), targets))
        for (role, hostport, _), st in zip(targets, results):
            with self.subTest(role=role, listener=hostport):
                self.assertEqual(violations(st, want_tls13=openssl), [])

    def test_scan_catches_a_weak_server(self):
        """The checks are not vacuous: a server with TLS 1.0/1.1, a CBC suite and no TLS 1.3
        (openssl s_server, lab certificate) fails each of them."""
        for tool in ("sslscan", "openssl"):
            if not shutil.which(tool):
                self.skipTest(f"{tool} is not installed")
        port = free_port()
        srv = subprocess.Popen(
            ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", f"{CERTS}/director.crt",
             "-key", f"{CERTS}/director.key", "-no_tls1_3", "-www",
             "-cipher", "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-GCM-SHA256:@SECLEVEL=0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(50):
                if subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"],
                                  capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            found = "\n".join(violations(self.scan(f"127.0.0.1:{port}", "director"), want_tls13=True))
        finally:
            srv.kill()
            srv.wait()
        for what in ("tls 1.0 enabled", "tls 1.1 enabled", "TLS 1.3 not offered",
                     "ECDHE-ECDSA-AES128-SHA: not AEAD"):
            self.assertIn(what, found)

    def test_tls13_clients_on_every_external_port(self):
        if tls_backend() != "OpenSSL":
            self.skipTest("TLS 1.3 is the OpenSSL build's (make TLS=openssl)")
        for tool in ("openssl", "gnutls-cli"):
            if not shutil.which(tool):
                self.skipTest(f"{tool} is not installed")
        ports = self.start_suite()
        ext = [(role, ports[a], sni) for role, ls in TLS_LISTENERS.items() for a, e, sni in ls if e]
        for role, hostport, sni in ext:
            host, port = hostport.rsplit(":", 1)
            signed = role != "av-edge"
            with self.subTest(role=role, listener=hostport, client="openssl s_client"):
                sess = os.path.join(self.tmp, f"{port}.sess")
                cmd = ["openssl", "s_client", "-connect", hostport, "-tls1_3", "-servername", sni,
                       "-CAfile", f"{CERTS}/ca.crt", "-cert", f"{CERTS}/partner.crt",
                       "-key", f"{CERTS}/partner.key"] + (["-verify_return_error"] if signed else [])
                # stdin stays open a moment: the session ticket comes after the handshake.
                p = subprocess.run(["bash", "-c", 'sleep 0.5 | "$@"', "-", *cmd, "-brief",
                                    "-sess_out", sess], capture_output=True, text=True, timeout=20)
                out = p.stdout + p.stderr
                self.assertIn("Protocol version: TLSv1.3", out, out)
                if signed:
                    self.assertIn("Verification: OK", out, out)
                # The ticket allows no 0-RTT data, and it resumes.
                info = subprocess.run(["openssl", "sess_id", "-in", sess, "-noout", "-text"],
                                      capture_output=True, text=True, timeout=10).stdout
                self.assertIn("Max Early Data: 0", info, info)
                p = subprocess.run(cmd + ["-sess_in", sess], input="", capture_output=True,
                                   text=True, timeout=20)
                self.assertIn("Reused, TLSv1.3", p.stdout, p.stdout + p.stderr)
            with self.subTest(role=role, listener=hostport, client="gnutls-cli"):
                p = subprocess.run(
                    ["gnutls-cli", "--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.3",
                     "--x509cafile", f"{CERTS}/ca.crt", "--x509certfile", f"{CERTS}/partner.crt",
                     "--x509keyfile", f"{CERTS}/partner.key", "--sni-hostname", sni,
                     "--verify-hostname", sni, "-p", port, host]
                    + ([] if signed else ["--insecure"]),
                    input="", capture_output=True, text=True, timeout=20)
                out = p.stdout + p.stderr
                self.assertIn("(TLS1.3", out, out)
                self.assertIn("Handshake was completed", out, out)
