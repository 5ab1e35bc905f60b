"""TLS-ALPN-01 listeners against hand-built ClientHellos (no scapy: the bytes are written
here). A hello offering just "acme-tls/1" makes an mbedTLS listener look at the hello
before mbedTLS reads it; that look must not let an outsider hold a connection, or the edge's
CPU, longer than an ordinary hello does. Run against acme-alpn-serve (the daemons' listener
code) on whichever backend the build has."""
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import unittest

from harness import ROOT, binary, free_port, have_binary, wait_for

CERTS = os.path.join(ROOT, "build", "certs")


def ext(t, body):
    return struct.pack(">HH", t, len(body)) + body


def client_hello(name=b"conf.lab.test", protos=(b"acme-tls/1",), pad=0):
    l = b"\0" + struct.pack(">H", len(name)) + name
    a = b"".join(bytes([len(p)]) + p for p in protos)
    exts = [ext(0, struct.pack(">H", len(l)) + l), ext(16, struct.pack(">H", len(a)) + a),
            ext(10, b"\x00\x04\x00\x17\x00\x1d"), ext(11, b"\x01\x00"),
            ext(13, b"\x00\x08\x04\x03\x08\x04\x04\x01\x05\x03")]
    if pad:
        exts.append(ext(21, b"\0" * pad))
    e = b"".join(exts)
    suites = b"\xc0\x2b\xc0\x2f\xc0\x2c\xc0\x30\x00\x9c"
    body = (b"\x03\x03" + os.urandom(32) + b"\x00" + struct.pack(">H", len(suites)) + suites +
            b"\x01\x00" + struct.pack(">H", len(e)) + e)
    return b"\x01" + struct.pack(">I", len(body))[1:] + body


def records(hs, size):
    return b"".join(b"\x16\x03\x01" + struct.pack(">H", len(hs[i:i + size])) + hs[i:i + size]
                    for i in range(0, len(hs), size))


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


class AcmeHelloAttack(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not have_binary("acme-alpn-serve"):
            raise unittest.SkipTest("acme-alpn-serve is not built")
        cls.tmp = tempfile.mkdtemp(prefix="edgetest-acmeatk-")
        cls.port = free_port()
        cls.err = open(os.path.join(cls.tmp, "err"), "w+")
        cls.proc = subprocess.Popen(
            [binary("acme-alpn-serve"), "--listen", f"127.0.0.1:{cls.port}",
             "--cert", os.path.join(CERTS, "conf-edge.crt"),
             "--key", os.path.join(CERTS, "conf-edge.key"), "--alpn", "h2,http/1.1"],
            stdout=subprocess.DEVNULL, stderr=cls.err)

        def up():
            try:
                socket.create_connection(("127.0.0.1", cls.port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(up, timeout=10, what="acme-alpn-serve")

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(10)
        cls.err.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.addCleanup(s.close)
        return s

    def closed_within(self, s, seconds):
        """Reads until the server closes (or seconds pass): how long that took, or None."""
        t0 = time.monotonic()
        s.settimeout(0.2)
        while time.monotonic() - t0 < seconds:
            try:
                d = s.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return time.monotonic() - t0
            if not d:
                return time.monotonic() - t0
        return None

    def is_mbedtls(self):
        v = subprocess.run([binary("acme-alpn-serve"), "--version"], capture_output=True,
                           text=True).stdout
        return "openssl" not in v.lower()

    def test_fragmented_acme_hello_is_not_waited_for(self):
        """A hello offering acme-tls/1 whose first record holds only its 4-byte header: mbedTLS
        refuses a fragmented ClientHello, so the listener must not hold the connection (up to
        the handshake timeout, 5 s here) waiting for the rest, one record at a time."""
        if not self.is_mbedtls():
            self.skipTest("OpenSSL reassembles a fragmented hello itself (no peek)")
        hs = client_hello(pad=3000)
        s = self.connect()
        s.sendall(records(hs[:4], 4) + records(hs[4:40], 1))
        took = self.closed_within(s, 8)
        self.assertIsNotNone(took, "the connection was held past the handshake timeout")
        self.assertLess(took, 2.5, "the listener waited for a hello mbedTLS would refuse")

    def test_trickled_acme_hello_costs_little_cpu(self):
        """A hello trickled as ~11,000 one-byte records over ~2 s: the edge's CPU for
        the whole connection stays that of a few handshakes (it was ~0.3 s, quadratic in the
        records, when every read re-scanned every record so far)."""
        if not self.is_mbedtls():
            # OpenSSL has no peek: it reassembles the hello itself, a read per record, the
            # same for any hello (~0.1 s for these 11,000 records, linear), ACME or not.
            self.skipTest("the peek is the mbedTLS backend's")
        hs = client_hello(pad=11000)
        recs = records(hs[:4], 4) + records(hs[4:], 1)
        c0 = cpu_seconds(self.proc.pid)
        s = self.connect()
        t0 = time.monotonic()
        try:
            for i in range(0, len(recs), 6):
                s.send(recs[i:i + 6])
                time.sleep(0.0001)
                if time.monotonic() - t0 > 4:
                    break
        except OSError:
            pass  # the listener gave up on it: as it should
        self.closed_within(s, 8)
        self.assertLess(cpu_seconds(self.proc.pid) - c0, 0.1)


if __name__ == "__main__":
    unittest.main()
