"""pebble (Let's Encrypt's test ACME CA, Debian package `pebble`) on loopback for the ACME tests.

Pebble serves its ACME API over HTTPS; the Debian package ships no test certificate, so
this makes one (openssl CLI: a throwaway CA and a leaf for 127.0.0.1/localhost) whose CA
file the Director's `acme.ca` trusts. Pebble validates HTTP-01 on httpPort and TLS-ALPN-01
on tlsPort of whatever address the DNS stub gives for a name. PEBBLE_VA_NOSLEEP=1 (no
random validation delays); never PEBBLE_VA_ALWAYS_VALID: the validation is what we test.
Pebble keeps everything in memory: a restarted pebble has a new root, no accounts, no orders.
"""
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request

import harness


def available():
    return shutil.which("pebble") is not None


def make_https_cert(d):
    """(ca_file, cert_file, key_file) for pebble's own HTTPS listeners."""
    ca_key, ca = os.path.join(d, "pebble-ca.key"), os.path.join(d, "pebble-ca.crt")
    key, csr, crt = (os.path.join(d, "pebble-https." + x) for x in ("key", "csr", "crt"))
    ext = os.path.join(d, "pebble-https.ext")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=pebble lab https CA")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", crt, "-days", "2", "-extfile", ext)
    return ca, crt, key


class Pebble:
    """One pebble process. start() may be called again after stop() (same ports, new CA)."""

    def __init__(self, workdir, dns_addr, http_port, tls_port, env=None):
        self.workdir = workdir
        self.ca, crt, key = make_https_cert(workdir)
        self.port = harness.free_port()
        self.mgmt_port = harness.free_port()
        self.config = os.path.join(workdir, "pebble.json")
        with open(self.config, "w") as f:
            json.dump({"pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
                "certificate": crt, "privateKey": key,
                "httpPort": http_port, "tlsPort": tls_port,
                "ocspResponderURL": "", "externalAccountBindingRequired": False}}, f)
        self.dns_addr = dns_addr
        self.env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", **(env or {}))
        self.logpath = os.path.join(workdir, "pebble.log")
        self.proc = None
        self.ctx = ssl.create_default_context(cafile=self.ca)

    @property
    def directory(self):
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self, timeout=20):
        self.log = open(self.logpath, "ab")
        self.proc = subprocess.Popen(["pebble", "-config", self.config, "-dnsserver", self.dns_addr],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        harness.wait_for(lambda: self._get(self.directory), timeout=timeout, what="pebble's directory")
        return self

    def _get(self, url):
        with urllib.request.urlopen(url, context=self.ctx, timeout=3) as r:
            return r.read()

    def root_pem(self):
        """The root this pebble run issues under (management API; new on every start)."""
        return self._get(f"https://127.0.0.1:{self.mgmt_port}/roots/0").decode()

    def intermediate_pem(self):
        return self._get(f"https://127.0.0.1:{self.mgmt_port}/intermediates/0").decode()

    def logtext(self):
        with open(self.logpath, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
            self.log = None
