"""Certificate rotation helpers: fresh certificates with a chosen serial, written the way
certbot-style tools do (new files renamed over the old ones), the serial a new handshake
shows, and a bounded background load that counts failures."""
import os
import socket
import ssl
import subprocess
import threading
import time


def make_cert(certdir, name, serial, cadir, key_first_delay=0.0):
    """Writes certdir/name.key and certdir/name.crt: a new P-256 key and a certificate for
    CN=name (DNS SAN name, IP SAN 127.0.0.1) with this serial, signed by cadir's CA. Both
    are renamed into place; with key_first_delay the key lands that long before the cert
    (a half-renewed pair in between)."""
    tmp = os.path.join(certdir, f".new-{name}-{serial:x}")
    os.makedirs(tmp, exist_ok=True)
    key, csr, crt, ext = (os.path.join(tmp, f) for f in ("k.pem", "r.csr", "c.pem", "x.ext"))
    with open(ext, "w") as f:
        f.write(f"subjectAltName=DNS:{name},IP:127.0.0.1\n")
    run = lambda *a: subprocess.run(list(a), check=True, capture_output=True, timeout=30)
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    run("openssl", "req", "-new", "-key", key, "-subj", f"/CN={name}", "-out", csr)
    run("openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(cadir, "ca.crt"), "-CAkey",
        os.path.join(cadir, "ca.key"), "-set_serial", str(serial), "-days", "30", "-sha256",
        "-extfile", ext, "-out", crt)
    os.rename(key, os.path.join(certdir, f"{name}.key"))
    if key_first_delay:
        time.sleep(key_first_delay)
    os.rename(crt, os.path.join(certdir, f"{name}.crt"))
    for f in (csr, ext):
        os.unlink(f)
    os.rmdir(tmp)
    return os.path.join(certdir, f"{name}.crt"), os.path.join(certdir, f"{name}.key")


def serial_of_der(der):
    p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"], input=der,
                       capture_output=True, check=True, timeout=10)
    return int(p.stdout.decode().strip().split("=", 1)[1], 16)


def peer_serial(host, port, server_name=None, timeout=5.0):
    """The serial of the certificate a new TLS handshake to host:port shows."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname=server_name) as t:
            return serial_of_der(t.getpeercert(binary_form=True))


class Load:
    """Runs fn() over and over in `threads` threads until stop() (at most max_each times
    each, and max_s seconds): counts successes and failures (exceptions)."""

    def __init__(self, fn, threads=2, max_each=100000, max_s=120.0):
        self.fn, self.ok, self.failed, self.errors = fn, 0, 0, []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.deadline = time.time() + max_s
        self.ts = [threading.Thread(target=self.run, args=(max_each,), daemon=True)
                   for _ in range(threads)]
        for t in self.ts:
            t.start()

    def run(self, n):
        for _ in range(n):
            if self.stopping.is_set() or time.time() > self.deadline:
                return
            try:
                self.fn()
                with self.lock:
                    self.ok += 1
            except Exception as e:  # noqa: BLE001 (any failure counts)
                with self.lock:
                    self.failed += 1
                    if len(self.errors) < 5:
                        self.errors.append(f"{time.strftime('%H:%M:%S')}: {e!r}")

    def stop(self):
        self.stopping.set()
        for t in self.ts:
            t.join(30)
        return self.ok, self.failed


class FakeDirector:
    """A mutual-TLS listener standing in for the Director: records the serial of the client
    certificate each connecting edge shows, then closes (the edge reconnects)."""

    def __init__(self, certdir, host="127.0.0.1"):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(os.path.join(certdir, "director.crt"),
                                 os.path.join(certdir, "director.key"))
        self.ctx.load_verify_locations(os.path.join(certdir, "ca.crt"))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.addr = "%s:%d" % self.sock.getsockname()
        self.serials = []
        self.stopping = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            try:
                c.settimeout(5)
                with self.ctx.wrap_socket(c, server_side=True) as t:
                    self.serials.append(serial_of_der(t.getpeercert(binary_form=True)))
            except (OSError, ssl.SSLError, subprocess.SubprocessError):
                c.close()

    def stop(self):
        self.stopping.set()
        self.t.join(5)
        self.sock.close()
