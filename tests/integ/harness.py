"""Integration-test harness: start real daemons on loopback, talk to them, stop them.

Every daemon runs in the foreground with a YAML config written to a temp dir; its stderr
is kept in a file so a test can assert on log lines, and sanitizer reports fail the test.
"""
import collections
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("SUITE_BUILD", os.path.join(ROOT, "build"))

# The default configs name the lab certificates in build/certs: make them once, before any
# test, so no test depends on another having run first (idempotent, quick when present).
subprocess.run([os.path.join(ROOT, "deploy", "certs.sh"), os.path.join(ROOT, "build", "certs")],
               check=True, capture_output=True)


def binary(name):
    return os.path.join(BUILD, "bin", name)


def have_binary(name):
    return os.access(binary(name), os.X_OK)


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


_recent_ports = collections.deque(maxlen=4000)


def free_port(host="127.0.0.1", kind=socket.SOCK_STREAM):
    """A port free for both TCP and UDP on host right now.

    Ports come from below the kernel's ephemeral range: a port the kernel handed out
    (bind to 0) can be taken again at once by any outgoing connection, before the daemon
    under test binds it. A port handed out lately is not handed out again: a test asks
    for several before its daemon binds any, and two draws of the same port made the
    daemon fail with "address already in use"."""
    lo, _ = _ephemeral_range()
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        port = random.randrange(max(1024, lo - 22000), lo - 200)
        if port in _recent_ports:
            continue
        ok = True
        for k in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            t = socket.socket(fam, k)
            try:
                t.bind((host, port))
            except OSError:
                ok = False
            finally:
                t.close()
            if not ok:
                break
        if ok:
            _recent_ports.append(port)
            return port
    raise RuntimeError("no free port")


def rss_kib(pid):
    """A process's resident set size in KiB (0 if /proc does not say)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_for(pred, timeout=5.0, interval=0.05, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # the daemon may not be up yet
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def http_request(hostport, path, method="GET", body=None, timeout=3.0, headers=None):
    host, port = hostport.rsplit(":", 1)
    c = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def http_json(hostport, path, method="GET", body=None):
    st, text = http_request(hostport, path, method, body)
    return st, (json.loads(text) if text.strip().startswith(("{", "[")) else text)


class Daemon:
    """One running daemon. Use as a context manager or call stop()."""

    def __init__(self, name, config_text, workdir, args=(), admin=None, env=None):
        self.name = name
        self.workdir = workdir
        self.config = os.path.join(workdir, f"{name}-{id(self)}.yaml")
        with open(self.config, "w") as f:
            f.write(config_text)
        self.logpath = self.config + ".log"
        self.admin = admin
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.proc = None

    def start(self, wait_healthy=True):
        self.logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen([binary(self.name), "-c", self.config] + self.args,
                                     stdout=self.logf, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=ROOT)
        if wait_healthy and self.admin:
            wait_for(lambda: self.alive() and http_request(self.admin, "/healthz")[0] == 200,
                     timeout=10, what=f"{self.name} /healthz on {self.admin}")
        return self

    def alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        return True

    def log(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, needle, timeout=5.0):
        return wait_for(lambda: needle in self.log(), timeout, what=f"log line {needle!r} from {self.name}")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def metrics(self):
        st, text = http_request(self.admin, "/metrics")
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def stop(self, sig=None, timeout=10):
        # (A default of signal.SIGTERM would name the method above, not the module.)
        sig = signal.SIGTERM if sig is None else sig
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()
        rc = self.proc.returncode
        self.check_sanitizers()
        return rc

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        self.logf.close()

    def check_sanitizers(self):
        text = self.log()
        for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if bad in text:
                raise AssertionError(f"{self.name}: sanitizer report:\n{text[-4000:]}")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def edit_config(d, old, new):
    """Rewrites d's config file with old replaced by new (which must occur)."""
    with open(d.config) as f:
        text = f.read()
    assert old in text, f"{old!r} not in {d.config}"
    with open(d.config, "w") as f:
        f.write(text.replace(old, new))


def assert_restart_refused(d, key, timeout=5.0):
    """SIGHUP after a change to a restart-only key: refused the same way by every daemon,
    naming the key at its file:line:col; returns the log line."""
    import re
    d.signal(signal.SIGHUP)
    pat = re.compile(r"reload refused, keeping the running config: " + re.escape(d.config) +
                     r":\d+:\d+: " + re.escape(key) + r": can only change with a restart")
    wait_for(lambda: pat.search(d.log()) or "reloaded" in d.log(), timeout,
             what=f"{d.name} refusing a change to {key}")
    assert "reloaded" not in d.log(), f"{d.name} accepted a change to {key}:\n{d.log()[-2000:]}"
    return pat.search(d.log()).group(0)


class SuiteTest(unittest.TestCase):
    """Base class: a temp dir per test and daemons stopped at the end."""

    # Signal the daemons get at the end (None: SIGTERM). A class whose daemons still hold
    # work that SIGTERM would drain (av-edge allocations) sets SIGINT, which stops at once.
    stop_signal = None

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="edgetest-")
        self.daemons = []

    def tearDown(self):
        errors = []
        for d in reversed(self.daemons):
            try:
                d.stop(self.stop_signal)
            except AssertionError as e:
                errors.append(str(e))
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise AssertionError("\n".join(errors))

    def daemon(self, name, config_text, admin=None, args=(), start=True, env=None):
        if not have_binary(name):
            self.skipTest(f"{name} is not built")
        d = Daemon(name, config_text, self.tmp, args=args, admin=admin, env=env)
        self.daemons.append(d)
        return d.start() if start else d

    def run_tool(self, argv, timeout=30, input=None, check=False):
        if not shutil.which(argv[0]):
            self.skipTest(f"{argv[0]} is not installed")
        p = subprocess.run(argv, capture_output=True, timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise AssertionError(f"{argv} failed ({p.returncode}):\n{p.stdout.decode(errors='replace')}\n{p.stderr.decode(errors='replace')}")
        return p
