"""The network-namespace lab (deploy/lab/): a user behind a NAT reaches the edges' external
addresses and is seen as the NAT's public address; the internet side reaches nothing inside,
not directly, not by routing through an edge, not on ports outside the firewall table; and
tear-down leaves no namespace, link or process, after a failed run too. Root only."""
import fcntl
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = os.path.join(ROOT, "deploy", "lab")
LOCK = "/run/lock/edgelab.lock"  # one lab per machine: the names are fixed (edgelab-*)
OWNER = "/run/edgelab.owner"     # who brought the lab up: "manual DIR" or "test PID DIR"
# up.sh/down.sh run under our lock and mark the lab as this test process's.
LAB_ENV = {"EDGELAB_LOCK_HELD": "1", "EDGELAB_OWNER": f"test {os.getpid()}"}


def load_plan():
    plan = {}
    with open(os.path.join(LAB, "plan.env")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "=" in line:
                k, v = line.split("=", 1)
                plan[k] = v
    return plan


PLAN = load_plan()
P = PLAN["LAB_PREFIX"]

# A listener run inside a namespace: binds, prints "ready", then prints the peer address of each
# TCP connection or UDP datagram it gets, for at most LIFETIME seconds (default 6).
LISTENER = r"""
import socket, sys, time
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
lifetime = float(sys.argv[4]) if len(sys.argv) > 4 else 6
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
if proto == "tcp":
    s.listen(8)
s.settimeout(0.2)
print("ready", flush=True)
end = time.time() + lifetime
while time.time() < end:
    try:
        if proto == "tcp":
            c, peer = s.accept()
            c.close()
        else:
            _, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    print(peer[0], flush=True)
"""

# A client run inside a namespace: tries every HOST:PORT target at once (threads, so a run
# costs one timeout, not one per target) and prints "HOST:PORT connected" or the error for each.
# For UDP "connected" means sent: the listener tells whether it arrived.
CLIENT = r"""
import socket, sys, threading
proto, timeout, targets = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
out = {}
def one(t):
    host, port = t.rsplit(":", 1)
    try:
        if proto == "tcp":
            socket.create_connection((host, int(port)), timeout=timeout).close()
        else:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(3):
                u.sendto(b"probe", (host, int(port)))
        out[t] = "connected"
    except OSError as e:
        out[t] = f"{type(e).__name__} {e}"
ths = [threading.Thread(target=one, args=(t,)) for t in targets]
for th in ths: th.start()
for th in ths: th.join(timeout + 2)
for t in targets:
    print(t, out.get(t, "no answer"))
"""


# A conference participant run inside a namespace: TLS to conf-edge (verified against the lab CA,
# name conf-edge), the preamble with its key, then prints "ANSWER <the edge's answer line>". When
# admitted it sends TEXT (mode "send": at once; "reply": after the first bytes it receives; "none":
# never), reads until SECS have passed since it started and prints "GOT <everything received>".
CONF_CLIENT = r"""
import socket, ssl, sys, time
addr, port, cafile, key, mode, text, secs = (sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4],
                                             sys.argv[5], sys.argv[6].encode(), float(sys.argv[7]))
end = time.time() + secs
ctx = ssl.create_default_context(cafile=cafile)
s = ctx.wrap_socket(socket.create_connection((addr, port), timeout=secs), server_hostname="conf-edge")
s.sendall(b"PSOM-EDGE/1 " + key.encode() + b"\r\n")
def recv():
    s.settimeout(max(0.01, end - time.time()))
    try:
        return s.recv(4096)
    except (socket.timeout, ssl.SSLError, OSError):
        return b""
buf = b""
while b"\n" not in buf and time.time() < end:
    d = recv()
    if not d:
        break
    buf += d
line, _, got = buf.partition(b"\n")
print("ANSWER", line.decode(errors="replace").strip(), flush=True)
if line.startswith(b"PSOM-EDGE/1 200"):
    sent = False
    if mode == "send":
        s.sendall(text)
        sent = True
    while time.time() < end:
        d = recv()
        if not d:
            break
        got += d
        if mode == "reply" and not sent:
            s.sendall(text)
            sent = True
    print("GOT", got.decode(errors="replace"), flush=True)
"""


def sh(*args, timeout=30, env=None):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def lab_leftovers():
    """Namespaces and host links named edgelab-* that are still there."""
    spaces = [l.split()[0] for l in sh("ip", "netns", "list").stdout.splitlines()
              if l.startswith(P + "-")]
    links = [l.split(": ")[1].split("@")[0] for l in sh("ip", "-o", "link", "show").stdout.splitlines()
             if l.split(": ")[1].startswith(P + "-")]
    return spaces, links


def skip_reason():
    if os.geteuid() != 0:
        return "the namespace lab needs root (ip netns, veth, nftables); run make lab-test as root"
    for tool in ("ip", "nft"):
        if sh("sh", "-c", f"command -v {tool}").returncode != 0:
            return f"{tool} is missing (deploy/install-deps.sh installs it)"
    return None


class LabCase(unittest.TestCase):
    """Holds the machine-wide lab lock for the class, since the namespace names are fixed."""

    @classmethod
    def setUpClass(cls):
        reason = skip_reason()
        if reason:
            print(f"\nskip: {reason}", flush=True)
            raise unittest.SkipTest(reason)
        os.makedirs(os.path.dirname(LOCK), exist_ok=True)
        cls.lockf = open(LOCK, "w")
        for _ in range(360):  # at most 180 s for another run's lab to finish
            try:
                fcntl.flock(cls.lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.5)
        else:
            cls.lockf.close()
            reason = f"another lab run holds {LOCK} for over 180 s"
            print(f"\nskip: {reason}", flush=True)
            raise unittest.SkipTest(reason)
        cls.procs = []
        spaces, _ = lab_leftovers()
        if spaces:
            owner = ""
            try:
                with open(OWNER) as f:
                    owner = f.read().split()
            except OSError:
                pass
            stale = not owner or (owner[0] == "test" and not os.path.exists(f"/proc/{owner[1]}"))
            if not stale:
                cls.release()
                reason = (f"a lab is up ({' '.join(owner)}), not left by a dead test run: "
                          "deploy/lab/down.sh (make lab-down) first")
                print(f"\nskip: {reason}", flush=True)
                raise unittest.SkipTest(reason)
            down = sh(os.path.join(LAB, "down.sh"), env=LAB_ENV)  # left by a killed test run
            if down.returncode != 0:
                cls.release()
                raise AssertionError("down.sh could not clean up an old lab:\n" + down.stderr)

    @classmethod
    def release(cls):
        fcntl.flock(cls.lockf, fcntl.LOCK_UN)
        cls.lockf.close()

    @classmethod
    def down(cls):
        r = sh(os.path.join(LAB, "down.sh"), env=LAB_ENV)
        for p in cls.procs:
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()
        return r

    @classmethod
    def up(cls, *args, env=None):
        return sh(os.path.join(LAB, "up.sh"), *args, timeout=120, env=dict(LAB_ENV, **(env or {})))

    def setUp(self):
        self.mine = []

    def tearDown(self):
        for p in self.mine:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()

    def ns(self, host):
        return f"{P}-{host}"

    def listen_many(self, specs, lifetime=6):
        """Starts a listener for each (host, proto, addr, port) at once; waits until all are ready."""
        procs = []
        for host, proto, addr, port in specs:
            p = subprocess.Popen(["ip", "netns", "exec", self.ns(host), sys.executable, "-c",
                                  LISTENER, proto, addr, str(port), str(lifetime)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.mine.append(p)
            procs.append(p)
        for p, (host, proto, addr, port) in zip(procs, specs):
            ready, _, _ = select.select([p.stdout], [], [], 10)
            line = p.stdout.readline().strip() if ready else ""
            if line != "ready":
                p.kill()
                raise AssertionError(f"listener {proto} {addr}:{port} in {self.ns(host)} did not "
                                     f"start: {p.stderr.read() if p.poll() is not None else 'no answer in 10 s'}")
        return procs

    def listen(self, host, proto, addr, port):
        return self.listen_many([(host, proto, addr, port)])[0]

    def peers(self, listener, want=1, timeout=3.0):
        """The peer addresses the listener printed, waiting at most timeout for want of them."""
        out = []
        end = time.time() + timeout
        while len(out) < want and time.time() < end:
            ready, _, _ = select.select([listener.stdout], [], [], max(0.0, end - time.time()))
            if not ready:
                break
            line = listener.stdout.readline()
            if not line:
                break
            out.append(line.strip())
        return out

    def connect_many(self, host, proto, targets, timeout=1.0):
        """{(addr, port): result line} for connections from host's namespace, all at once."""
        r = subprocess.run(["ip", "netns", "exec", self.ns(host), sys.executable, "-c", CLIENT,
                            proto, str(timeout)] + [f"{a}:{p}" for a, p in targets],
                           capture_output=True, text=True, timeout=timeout + 15)
        res = {}
        for line in r.stdout.splitlines():
            t, _, what = line.partition(" ")
            a, _, p = t.rpartition(":")
            res[(a, int(p))] = what
        for t in targets:
            res.setdefault(tuple(t), f"client failed: {r.stderr.strip()}")
        return res

    def connect(self, host, proto, addr, port, timeout=1.0):
        what = self.connect_many(host, proto, [(addr, port)], timeout)[(addr, port)]
        return what == "connected", what


class LabTopology(LabCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        t0 = time.time()
        r = cls.up("--no-daemons")
        if r.returncode != 0:
            cls.down()
            cls.release()
            raise AssertionError(f"deploy/lab/up.sh failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        print(f"\nlab up in {time.time() - t0:.1f}s", flush=True)
        # A process in the lab that somebody started and forgot: down.sh must end it.
        cls.sleeper = subprocess.Popen(["ip", "netns", "exec", f"{P}-director", "sleep", "60"])
        cls.procs.append(cls.sleeper)
        try:
            cls.start_internal_listeners()
        except Exception:
            cls.down()
            cls.release()
            raise

    @classmethod
    def tearDownClass(cls):
        # Tear-down is part of what is tested: nothing may be left, and a second run is harmless.
        r = cls.down()
        spaces, links = lab_leftovers()
        again = cls.down()
        cls.release()
        problems = []
        if r.returncode != 0:
            problems.append(f"down.sh failed: {r.stderr}")
        if spaces or links:
            problems.append(f"down.sh left namespaces {spaces} and host links {links}")
        if cls.sleeper.poll() is None:
            problems.append("a process started in the lab outlived down.sh")
        if again.returncode != 0:
            problems.append(f"a second down.sh failed: {again.stderr}")
        if problems:
            raise AssertionError("; ".join(problems))

    def test_user_behind_nat_reaches_access_edge_over_tcp_seen_as_the_nat_address(self):
        lst = self.listen("access", "tcp", PLAN["ACCESS_EXT"], 5061)
        ok, why = self.connect("user", "tcp", PLAN["ACCESS_EXT"], 5061)
        self.assertTrue(ok, f"user could not reach access-edge {PLAN['ACCESS_EXT']}:5061: {why}")
        self.assertEqual(self.peers(lst), [PLAN["HOMERTR_WAN"]],
                         "access-edge should see the NAT router's public address (masquerade)")

    def test_user_behind_nat_reaches_av_edge_over_udp_seen_as_the_nat_address(self):
        lst = self.listen("av1", "udp", PLAN["AV1_EXT"], 3478)
        ok, why = self.connect("user", "udp", PLAN["AV1_EXT"], 3478)
        self.assertTrue(ok, why)
        self.assertEqual(self.peers(lst)[:1], [PLAN["HOMERTR_WAN"]],
                         "av-edge should get the datagram from the NAT router's public address")

    def test_user_reaches_every_edge_on_its_external_ports(self):
        specs = [("conf", "tcp", PLAN["CONF_EXT"], 443),
                 ("revproxy", "tcp", PLAN["REVPROXY_EXT"], 443),
                 ("av1", "tcp", PLAN["AV1_EXT"], 5349),
                 ("access", "udp", PLAN["ACCESS_EXT"], 5060)]
        listeners = self.listen_many(specs)
        for lst, (host, proto, addr, port) in zip(listeners, specs):
            with self.subTest(edge=host, port=f"{proto}/{port}"):
                ok, why = self.connect("user", proto, addr, port)
                self.assertTrue(ok, why)
                self.assertEqual(self.peers(lst)[:1], [PLAN["HOMERTR_WAN"]],
                                 f"{host} should see the NAT router's public address")

    @classmethod
    def start_internal_listeners(cls):
        """Listeners on every internal address for the whole class, each proved reachable from
        inside, so a failure from outside is the network's doing and not a closed port."""
        targets = [("director", PLAN["DIRECTOR"], 7400), ("web", PLAN["WEB"], 443),
                   ("iuser", PLAN["IUSER"], 5061), ("access", PLAN["ACCESS_INT"], 8080),
                   ("av1", PLAN["AV1_INT"], 3478), ("revproxy", PLAN["REVPROXY_INT"], 8080)]
        helper = cls()  # an instance just for its helpers; its listeners are the class's
        helper.mine = cls.procs
        helper.listen_many([(h, "tcp", a, p) for h, a, p in targets], lifetime=120)
        inside = helper.connect_many("iuser", "tcp", [(a, p) for _, a, p in targets])
        bad = {t: w for t, w in inside.items() if w != "connected"}
        if bad:
            raise AssertionError(f"internal listeners not reachable from the internal network: {bad}")
        cls.internal = [(a, p) for _, a, p in targets]

    def assert_unreachable(self, src, targets):
        t0 = time.time()
        res = self.connect_many(src, "tcp", targets, timeout=1.0)
        for t, what in res.items():
            self.assertNotEqual(what, "connected", f"{self.ns(src)} reached internal {t[0]}:{t[1]}")
        self.assertLess(time.time() - t0, 8.0)

    def test_internet_host_cannot_reach_internal_addresses(self):
        self.assert_unreachable("inet", self.internal)
        self.assert_unreachable("user", self.internal)

    def test_internet_host_cannot_route_through_an_edge_to_the_inside(self):
        # An attacker on the perimeter's external segment points a route at an edge's external
        # address. Edges do not forward, and take packets only for the address of the interface
        # they arrive on, so neither the internal network nor the edge's own internal side answers.
        net = PLAN["DIRECTOR"].rsplit(".", 1)[0] + ".0/24"
        for edge in ("ACCESS_EXT", "AV1_EXT"):
            with self.subTest(via=edge):
                r = sh("ip", "-n", self.ns("inet"), "route", "add", net, "via", PLAN[edge])
                self.assertEqual(r.returncode, 0, r.stderr)
                try:
                    self.assert_unreachable("inet", self.internal)
                finally:
                    sh("ip", "-n", self.ns("inet"), "route", "del", net)

    def test_perimeter_firewall_drops_ports_outside_the_port_table(self):
        self.listen("access", "tcp", PLAN["ACCESS_EXT"], 2222)
        ok, why = self.connect("access", "tcp", PLAN["ACCESS_EXT"], 2222)
        self.assertTrue(ok, f"the listener itself should answer locally: {why}")
        ok, why = self.connect("user", "tcp", PLAN["ACCESS_EXT"], 2222, timeout=1.0)
        self.assertFalse(ok, "tcp/2222 is not in the port table but the firewall let it through")
        self.assertIn("timeout", why.lower(), "a dropped port times out (no RST from the firewall)")


class LabLifecycle(LabCase):
    @classmethod
    def tearDownClass(cls):
        cls.down()
        cls.release()

    def test_failed_run_leaves_nothing_behind(self):
        r = self.up("--no-daemons", env={"EDGELAB_FAIL_AT": "links"})
        self.assertNotEqual(r.returncode, 0, "up.sh should fail when told to")
        self.assertIn("tearing down", r.stderr)
        spaces, links = lab_leftovers()
        self.assertEqual(spaces, [], "namespaces left after a failed up.sh")
        self.assertEqual(links, [], "host links left after a failed up.sh")


class LabWithDaemons(LabCase):
    """The lab with every built daemon started (up.sh without --no-daemons), and the helpers to
    drive it; no tests of its own. LAB_AV is how many av-edge hosts (EDGELAB_AV)."""

    LAB_AV = 1

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="edgelab-")
        build = cls.build = os.environ.get("SUITE_BUILD", os.path.join(ROOT, "build"))
        t0 = time.time()
        r = cls.up(env={"EDGELAB_BUILD": build, "EDGELAB_DIR": cls.tmp, "EDGELAB_AV": str(cls.LAB_AV)})
        cls.up_out = r.stdout + r.stderr
        if r.returncode != 0:
            cls.down()
            cls.release()
            shutil.rmtree(cls.tmp)
            raise AssertionError(f"deploy/lab/up.sh failed ({r.returncode}):\n{cls.up_out}")
        print(f"\nlab with daemons up in {time.time() - t0:.1f}s", flush=True)
        print("\n".join(l for l in cls.up_out.splitlines() if "skipped" in l), flush=True)
        cls.started = {}
        with open(os.path.join(cls.tmp, "pids")) as f:
            for line in f:
                pid, inst, host = line.split()
                cls.started[inst] = (int(pid), host)

    @classmethod
    def tearDownClass(cls):
        # down.sh must stop every daemon and leave nothing behind.
        r = cls.down()
        alive = [f"{inst} (pid {pid})" for inst, (pid, _) in cls.started.items()
                 if os.path.exists(f"/proc/{pid}")]
        spaces, links = lab_leftovers()
        cls.release()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        if r.returncode != 0 or alive or spaces or links:
            raise AssertionError(f"down.sh: rc {r.returncode} {r.stderr.strip()}; still running: {alive}; "
                                 f"left: {spaces} {links}")

    @classmethod
    def down(cls):
        r = subprocess.run([os.path.join(LAB, "down.sh")], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, EDGELAB_DIR=getattr(cls, "tmp", ""), **LAB_ENV))
        return r

    def admin_of(self, inst):
        with open(os.path.join(self.tmp, inst + ".yaml")) as f:
            text = f.read()
        m = re.search(r"^admin:\s*(?:\{\s*listen:\s*|\n\s+listen:\s*)([0-9.]+):(\d+)", text, re.M)
        self.assertIsNotNone(m, f"no admin listen address in the lab config of {inst}")
        return m.group(1), int(m.group(2))

    def healthz(self, host, addr, port):
        code = ("import http.client, sys; c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=1);"
                "c.request('GET', '/healthz'); print(c.getresponse().status)")
        r = subprocess.run(["ip", "netns", "exec", self.ns(host), sys.executable, "-c", code, addr, str(port)],
                           capture_output=True, text=True, timeout=15)
        return r.stdout.strip() or r.stderr.strip().splitlines()[-1]

    def curl(self, host, *args):
        r = subprocess.run(["ip", "netns", "exec", self.ns(host), "curl", "-sS", "-m", "5"] + list(args),
                           capture_output=True, text=True, timeout=20)
        return r.returncode, r.stdout, r.stderr

    def sipua(self, host, *args, timeout=8):
        """deploy/lab/sipua.py in host's namespace, started now; returns the Popen."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(host), sys.executable,
                              os.path.join(LAB, "sipua.py"), "--timeout", str(timeout)] + list(args),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.mine.append(p)
        p.seen = ""
        return p

    def read_until(self, p, prefix, timeout=10.0):
        """Reads p's output (kept in p.seen) until a line starts with prefix; that line, or ""
        after timeout or at EOF. Unbuffered reads: select() cannot see a file object's buffer."""
        end = time.time() + timeout
        fd = p.stdout.fileno()
        while True:
            lines = p.seen.split("\n")
            done = lines[:-1][getattr(p, "scanned", 0):]
            for i, line in enumerate(done):
                if line.startswith(prefix):
                    p.scanned = getattr(p, "scanned", 0) + i + 1
                    return line.strip()
            p.scanned = len(lines) - 1
            ready, _, _ = select.select([fd], [], [], max(0.0, end - time.time()))
            data = os.read(fd, 4096).decode(errors="replace") if ready else ""
            if not data:
                return ""
            p.seen += data

    def need(self, *roles):
        missing = [r for r in roles if r not in self.started]
        if missing:
            reason = f"{', '.join(missing)} not running in the lab (see up.sh's output above)"
            print(f"\nskip: {reason}", flush=True)
            self.skipTest(reason)

    def director_api(self, method, path):
        """(status, JSON answer) of the Director's admin listener, asked from the internal user's
        host (the internal service that hands credentials and keys out over SIP)."""
        import json
        addr, port = self.admin_of("director")
        rc, out, err = self.curl("iuser", "-X", method, "-w", "\n%{http_code}", f"http://{addr}:{port}{path}")
        self.assertEqual(rc, 0, f"Director {method} {path}: {err}")
        body, _, code = out.rpartition("\n")
        return int(code), json.loads(body)

    def sip_parties(self):
        """(external user, internal user, sipua.py arguments of each) from the Director's lab
        config: the external user behind the NAT uses access-edge's external address as its
        proxy, the internal user the Director."""
        self.need("director", "access-edge")
        from deployutil import load_yaml
        sip = load_yaml(os.path.join(self.tmp, "director.yaml")).get("sip", {})
        users = {u["name"]: u["password"] for u in sip.get("users", [])}
        domain = (sip.get("domains") or ["example.com"])[0]
        if len(users) < 2:
            self.skipTest("the Director's default config has fewer than two SIP users")
        (ext, ext_pw), (inside, in_pw) = list(users.items())[:2]
        return (ext, inside,
                ["--proxy", PLAN["ACCESS_EXT"], "--user", ext, "--password", ext_pw, "--domain", domain,
                 "--local", PLAN["USER"]],
                ["--proxy", PLAN["DIRECTOR"], "--user", inside, "--password", in_pw, "--domain", domain,
                 "--local", PLAN["IUSER"]])

    def call_credentials(self):
        """The relay credentials of a call's two parties from the Director: the external user's
        (location internet) and the internal user's (location intranet)."""
        creds = {}
        for user, loc in (("alice", "internet"), ("bob", "intranet")):
            code, c = self.director_api("GET", f"/credentials?user={user}&location={loc}")
            self.assertEqual(code, 200, c)
            creds[loc] = c
        return creds

    def start_probe(self, ext, internal, creds, seconds=2, rate=50):
        """av-probe playing a call's two parties through the av-edge at ext/internal (HOST:PORT):
        it runs in the internal user's namespace and --external-netns makes the external user's
        socket behind the NAT. Returns the Popen; probe_result() waits for it."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns("iuser"), os.path.join(self.build, "bin", "av-probe"),
                              "--external", ext, "--internal", internal,
                              "--user", creds["intranet"]["username"], "--password", creds["intranet"]["password"],
                              "--external-user", creds["internet"]["username"],
                              "--external-password", creds["internet"]["password"],
                              "--external-netns", self.ns("user"), "--seconds", str(seconds), "--rate", str(rate)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.mine.append(p)
        return p

    def probe_result(self, p, inst):
        """Waits for av-probe and asserts every SRTP packet arrived authenticated; its output."""
        out, _ = p.communicate(timeout=30)
        m = re.search(r"sent=(\d+) received=(\d+) loss_pct=([\d.]+) auth_failures=(\d+) malformed=(\d+)", out)
        self.assertIsNotNone(m, f"av-probe did not finish (rc {p.returncode}):\n{out}\n{self.log_tail(inst)}")
        sent, got, loss, auth, bad = int(m[1]), int(m[2]), float(m[3]), int(m[4]), int(m[5])
        self.assertGreater(sent, 0, out)
        self.assertEqual((got, loss, auth, bad), (sent, 0.0, 0, 0), f"SRTP through {inst}:\n{out}")
        self.assertEqual(p.returncode, 0, out)
        return out

    def log_tail(self, inst):
        try:
            with open(os.path.join(self.tmp, inst + ".log")) as f:
                return "".join(f.readlines()[-20:])
        except OSError as e:
            return str(e)


class LabDaemons(LabWithDaemons):
    """up.sh starts every role whose binary and default config exist, in its own namespace with a
    config generated for the lab addresses; each answers /healthz on its internal address, which
    the internet side cannot reach; down.sh stops them. Roles not built yet are skipped by up.sh
    with the reason printed (and so here)."""

    def test_daemons_started_are_healthy_inside_and_unreachable_from_outside(self):
        if not self.started:
            reason = "no role is built with a default config yet: up.sh started nothing"
            print(f"\nskip: {reason}", flush=True)
            self.skipTest(reason)
        for inst, (pid, host) in self.started.items():
            if inst == "web":
                continue  # the lab's web server, no daemon of ours
            addr, port = self.admin_of(inst)
            with self.subTest(daemon=inst):
                status = None
                for _ in range(50):  # at most ~10 s for the daemon to come up
                    status = self.healthz("iuser", addr, port)
                    if status == "200":
                        break
                    time.sleep(0.2)
                self.assertEqual(status, "200", f"{inst} /healthz on {addr}:{port} from the internal "
                                                f"network; its log:\n{self.log_tail(inst)}")
                ok, why = self.connect("inet", "tcp", addr, port)
                self.assertFalse(ok, f"the internet host reached {inst}'s admin listener {addr}:{port}")

    def test_external_user_downloads_the_address_book_through_revproxy(self):
        if "revproxy" not in self.started:
            reason = "revproxy is not running in the lab (see up.sh's output above)"
            print(f"\nskip: {reason}", flush=True)
            self.skipTest(reason)
        ext = PLAN["REVPROXY_EXT"]
        tls = ["--cacert", os.path.join(self.tmp, "certs", "ca.crt"), "--resolve", f"revproxy:443:{ext}"]
        with open(os.path.join(ROOT, "deploy", "compose", "web", "htdocs", "ABS", "int", "Files",
                               "sample.lsabs")) as f:
            want = f.read()
        rc, body, err = "", "", ""
        for _ in range(25):  # revproxy may still be starting: at most ~5 s
            rc, body, err = self.curl("user", *tls, "https://revproxy/ABS/ext/Files/sample.lsabs")
            if rc == 0:
                break
            time.sleep(0.2)
        self.assertEqual((rc, body), (0, want), f"address book through revproxy: {err}\n{self.log_tail('revproxy')}")
        # Only the configured routes pass: an internal path asked for directly is not served.
        rc, code, err = self.curl("user", *tls, "-o", "/dev/null", "-w", "%{http_code}",
                                  "https://revproxy/ABS/int/Files/sample.lsabs")
        self.assertEqual(rc, 0, err)
        self.assertNotEqual(code, "200", "revproxy served an internal path that no route maps")
        # The proxy saw the user as the home NAT's public address, and the web server saw the proxy.
        self.assertIn(PLAN["HOMERTR_WAN"], self.log_tail("revproxy"))
        self.assertIn(PLAN["REVPROXY_INT"], self.log_tail("web"))

    def test_external_user_registers_through_access_edge_and_exchanges_messages(self):
        ext, inside, outside_args, inside_args = self.sip_parties()

        def run(p):
            out, _ = p.communicate(timeout=30)
            return p.seen + out

        def registered(p):  # the waiter's binding is in place before the sender starts
            self.assertTrue(self.read_until(p, "REGISTER"), p.seen)

        # Outside -> inside: the internal user waits; the external user registers through the
        # access edge (Digest challenge from the Director) and sends a MESSAGE.
        waiter = self.sipua("iuser", *inside_args, "--wait-message")
        registered(waiter)
        sender = self.sipua("user", *outside_args, "--send-to", inside, "--text", "hello from outside")
        out_s, out_w = run(sender), run(waiter)
        self.assertIn("REGISTER 200", out_s, f"external user's REGISTER through access-edge:\n{out_s}\n"
                                             f"{self.log_tail('access-edge')}")
        self.assertIn("MESSAGE 200", out_s, out_s)
        self.assertIn("GOT hello from outside", out_w, out_w)
        # Inside -> outside: the Director reaches the external user back through the access edge,
        # over the flow the user's REGISTER opened through the NAT.
        waiter = self.sipua("user", *outside_args, "--wait-message")
        registered(waiter)
        sender = self.sipua("iuser", *inside_args, "--send-to", ext, "--text", "hello from inside")
        out_s, out_w = run(sender), run(waiter)
        self.assertIn("MESSAGE 200", out_s, f"{out_s}\n{self.log_tail('director')}")
        self.assertIn("GOT hello from inside", out_w, out_w)

    def relay_setup(self):
        """Relay credentials for the external user from the Director (the av-edge accepts only
        the Director's secrets while its link is up), or a skip with the reason printed."""
        reason = None
        if "av-edge-1" not in self.started:
            reason = "av-edge is not running in the lab (see up.sh's output above)"
        elif not shutil.which("turnutils_uclient"):
            reason = "coturn's turnutils_uclient is missing (deploy/install-deps.sh, TEST group)"
        if reason:
            print(f"\nskip: {reason}", flush=True)
            self.skipTest(reason)
        code, c = self.director_api("GET", "/credentials?user=alice&location=internet")
        self.assertEqual(code, 200, c)
        return c

    def uclient(self, cred, peer, port, count):
        # -u/-w: the Director's TURN REST credentials; -X: IPv4 relay; -c: RTP only (no RTCP
        # stream); one client, UDP.
        r = subprocess.run(["ip", "netns", "exec", self.ns("user"), "turnutils_uclient",
                            "-u", cred["username"], "-w", cred["password"], "-e", peer, "-r", str(port),
                            "-n", str(count), "-l", "120", "-m", "1", "-c", "-X", PLAN["AV1_EXT"]],
                           capture_output=True, text=True, timeout=40)
        return r.stdout + r.stderr

    def test_external_user_relays_through_av_edge_to_an_internet_peer_without_loss(self):
        secret = self.relay_setup()
        peer = subprocess.Popen(["ip", "netns", "exec", self.ns("inet"), "turnutils_peer", "-L", PLAN["INET"],
                                 "-p", "3480"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.mine.append(peer)
        time.sleep(0.3)
        out = self.uclient(secret, PLAN["INET"], 3480, 20)
        got = re.findall(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", out)
        self.assertTrue(got, f"turnutils_uclient did not finish:\n{out[-2000:]}")
        s_, r_ = map(int, got[-1])
        self.assertGreater(s_, 0, out[-2000:])
        self.assertEqual(r_, s_, f"lost packets through av-edge:\n{out[-2000:]}")
        self.assertIn("Total lost packets 0 ", out)
        # av-edge saw the client from the home NAT's public address, on its external side.
        self.assertRegex(self.log_tail("av-edge-1"),
                         re.escape(f"[{PLAN['HOMERTR_WAN']}:") + r"\d+\] allocation for .* on the external side")

    def test_relaying_from_outside_into_the_internal_network_is_refused(self):
        secret = self.relay_setup()
        lst = self.listen("iuser", "udp", PLAN["IUSER"], 3480)
        out = self.uclient(secret, PLAN["IUSER"], 3480, 5)
        self.assertEqual(self.peers(lst, want=1, timeout=1.0), [],
                         "a datagram relayed from outside reached the internal network")
        self.assertRegex(out, r"error 403|Forbidden", out[-2000:])
        self.assertIn("internal_network", self.log_tail("av-edge-1"), "av-edge should log why it refused")

    def test_external_user_calls_internal_user_through_access_edge_with_srtp_media(self):
        """A call: the external user behind the NAT INVITEs the internal user (registered with
        the Director) through access-edge, gets 180 and 200 and ACKs along the route set the edge
        recorded; both parties get relay credentials from the Director and SRTP flows through
        av-edge with zero loss; then BYE/200 along the same route, through the edge again."""
        self.need("director", "access-edge", "av-edge-1")
        ext, inside, outside_args, inside_args = self.sip_parties()
        callee = self.sipua("iuser", *inside_args, "--answer", timeout=30)
        self.assertTrue(self.read_until(callee, "REGISTER"), callee.seen)
        self.assertIn("REGISTER 200", callee.seen)
        caller = self.sipua("user", *outside_args, "--call", inside, timeout=30)
        in_call = self.read_until(caller, "IN CALL")
        self.assertTrue(in_call, f"the call was not set up:\n{caller.seen}\n---callee:\n{callee.seen}\n"
                                 f"{self.log_tail('access-edge')}\n{self.log_tail('director')}")
        for want in ("REGISTER 200", "INVITE 180", "INVITE 200", "ACK sent"):
            self.assertIn(want, caller.seen)
        # The route set is access-edge: its external address first, then its internal one
        # (both signed with the flow's token in the user part); the ACK took it and crossed
        # the edge into the inside.
        route = re.search(r"^ROUTE (.*)$", caller.seen, re.M).group(1).split()
        self.assertEqual(len(route), 2, route)
        self.assertRegex(route[0], r"^<sip:[^>]*@" + re.escape(PLAN["ACCESS_EXT"]) + r"[;>:]")
        self.assertRegex(route[1], r"^<sip:[^>@]*@" + re.escape(PLAN["ACCESS_INT"]) + r"[;>:]")
        ack = self.read_until(callee, "ACK via")
        self.assertIn(PLAN["ACCESS_INT"], ack.split(), f"the ACK did not cross access-edge:\n{callee.seen}")
        self.assertIn(f"INVITE from <sip:{ext}@", callee.seen)
        # The call's media.
        creds = self.call_credentials()
        self.probe_result(self.start_probe(f"{PLAN['AV1_EXT']}:3478", f"{PLAN['AV1_INT']}:3478", creds),
                          "av-edge-1")
        caller.stdin.write("bye\n")
        caller.stdin.flush()
        self.assertTrue(self.read_until(caller, "BYE"), caller.seen)
        self.assertIn("BYE 200", caller.seen, f"{caller.seen}\n{self.log_tail('access-edge')}")
        bye = self.read_until(callee, "BYE via")
        self.assertIn(PLAN["ACCESS_INT"], bye.split(), f"the BYE did not cross access-edge:\n{callee.seen}")
        for p in (caller, callee):
            p.wait(timeout=10)
            self.assertEqual(p.returncode, 0, p.seen)

    def test_call_media_srtp_through_av_edge_between_external_and_internal_user_without_loss(self):
        """Both parties get relay credentials from the Director (the external user's for the
        internet, the internal user's for the intranet); SRTP then flows through av-edge between
        the external user behind the NAT and the internal user. av-probe plays both parties in
        one process (it needs both ends to time every packet): it runs in the internal user's
        namespace, and --external-netns makes the external user's socket in the external user's
        namespace, so that allocation really comes from behind the NAT."""
        self.need("director", "av-edge-1")
        creds = self.call_credentials()
        # The Director lists the lab's av-edge: its external side for the internet user, its
        # internal side for the intranet user.
        ext_uri = f"turn:{PLAN['AV1_EXT']}:3478?transport=udp"
        int_uri = f"turn:{PLAN['AV1_INT']}:3478?transport=udp"
        self.assertIn(ext_uri, creds["internet"]["uris"], creds["internet"])
        self.assertIn(int_uri, creds["intranet"]["uris"], creds["intranet"])
        self.assertFalse([u for u in creds["internet"]["uris"] if PLAN["AV1_INT"] in u],
                         "the internet user was given the av-edge's internal address")
        self.probe_result(self.start_probe(f"{PLAN['AV1_EXT']}:3478", f"{PLAN['AV1_INT']}:3478", creds),
                          "av-edge-1")
        # av-edge saw the external user as the home NAT's public address on its external side,
        # the internal user on its internal side, each with the Director's credentials.
        log = self.log_tail("av-edge-1")
        self.assertRegex(log, re.escape(f"[{PLAN['HOMERTR_WAN']}:") + r"\d+\] allocation for "
                         + re.escape(creds["internet"]["username"]) + " on the external side")
        self.assertRegex(log, re.escape(f"[{PLAN['IUSER']}:") + r"\d+\] allocation for "
                         + re.escape(creds["intranet"]["username"]) + " on the internal side")

    def conf_key(self, conf, user, extra=""):
        code, k = self.director_api("POST", f"/conference-keys?conf={conf}&user={user}{extra}")
        self.assertEqual(code, 200, k)
        return k["key"]

    def participant(self, host, key, mode, text, secs):
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(host), sys.executable, "-c", CONF_CLIENT,
                              PLAN["CONF_EXT"], "443", os.path.join(self.tmp, "certs", "ca.crt"), key,
                              mode, text, str(secs)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.mine.append(p)
        return p

    def admitted(self, p, timeout=8.0):
        """Waits (bounded) for the participant's answer line; it stays part of conf_result's output."""
        ready, _, _ = select.select([p.stdout], [], [], timeout)
        p.first = p.stdout.readline() if ready else ""
        return p.first.startswith("ANSWER PSOM-EDGE/1 200")

    def conf_result(self, p):
        p.wait(timeout=20)  # each participant stops by itself after its SECS; its output is a few lines
        out = getattr(p, "first", "") + p.stdout.read()  # read() also takes what readline buffered
        answer = re.search(r"^ANSWER (.*)$", out, re.M)
        got = re.search(r"^GOT (.*)$", out, re.M)
        return (answer.group(1) if answer else f"no answer: {out}"), (got.group(1) if got else None), out

    def conf_setup(self):
        self.need("director", "conf-edge")
        # The lab's Director dials the lab's conf-edge (genconf maps the stub's edge address).
        from deployutil import load_yaml
        cs = load_yaml(os.path.join(self.tmp, "director.yaml")).get("confserver") or {}
        self.assertIn(f"{PLAN['CONF_INT']}:8057", cs.get("edges", []), cs)
        log = ""
        for _ in range(50):  # at most ~10 s for the stub to dial in
            log = self.log_tail("conf-edge")
            if "conferencing server director connected" in log:
                break
            time.sleep(0.2)
        self.assertIn("conferencing server director connected", log)

    def test_external_user_joins_a_conference_through_conf_edge_and_exchanges_data(self):
        """The external user (behind the NAT) and a second participant of the same conference
        exchange bytes through conf-edge and the Director's conferencing stub; a participant of
        another conference sees none of them. Internal hosts have no route to conf-edge's external
        listener, so the second participant joins from the internet host."""
        self.conf_setup()
        k_alice, k_bob, k_carol = (self.conf_key("board", "alice"), self.conf_key("board", "bob"),
                                   self.conf_key("other", "carol"))
        bob = self.participant("inet", k_bob, "reply", "bytes-from-bob", 6)
        carol = self.participant("inet", k_carol, "send", "bytes-from-carol", 6)
        for p in (bob, carol):  # both admitted before alice speaks
            self.admitted(p)
        alice = self.participant("user", k_alice, "send", "bytes-from-alice", 3.5)
        (a_ans, a_got, a_out), (b_ans, b_got, b_out), (c_ans, c_got, c_out) = (
            self.conf_result(alice), self.conf_result(bob), self.conf_result(carol))
        log = self.log_tail("conf-edge")
        for who, ans in (("alice", a_ans), ("bob", b_ans), ("carol", c_ans)):
            self.assertEqual(ans, "PSOM-EDGE/1 200 admitted", f"{who}:\n{log}")
        self.assertEqual(b_got, "bytes-from-alice", b_out)
        self.assertEqual(a_got, "bytes-from-bob", a_out)
        self.assertEqual(c_got, "", f"a participant of another conference got: {c_out}")
        self.assertRegex(log, re.escape(f"[{PLAN['HOMERTR_WAN']}:") + r"\d+\] admitted: conference board "
                                                                       r"participant alice")

    def test_conference_keys_that_are_forged_or_expired_are_refused_from_outside(self):
        """conf-edge answers a tampered key with 403 invalid-key and an expired one with
        403 expired-key (conf-edge/README.md), and forwards nothing of theirs to the conference."""
        self.conf_setup()
        good = self.conf_key("board2", "alice")
        dot = good.rfind(".")
        i = dot + 5  # a character inside the signature (the last one carries padding bits)
        forged = good[:i] + ("B" if good[i] != "B" else "C") + good[i + 1:]
        expired = self.conf_key("board2", "mallory", "&ttl=1")
        listener = self.participant("inet", self.conf_key("board2", "bob"), "none", "", 6)
        t0 = time.time()
        self.admitted(listener)
        time.sleep(max(0.0, 2.2 - (time.time() - t0)))  # the 1 s key is past its exp (whole seconds)
        for key, want in ((forged, "PSOM-EDGE/1 403 invalid-key"), (expired, "PSOM-EDGE/1 403 expired-key"),
                          ("not-a-key", "PSOM-EDGE/1 403 invalid-key")):
            with self.subTest(want=want, key=key[:20]):
                ans, got, out = self.conf_result(self.participant("user", key, "send", "sneaked-in", 2))
                self.assertEqual(ans, want, out)
                self.assertIsNone(got, out)
        ans, got, out = self.conf_result(listener)
        self.assertEqual(ans, "PSOM-EDGE/1 200 admitted", out)
        self.assertEqual(got, "", f"a refused client's bytes reached the conference: {out}")
        self.assertIn("client refused: expired-key", self.log_tail("conf-edge"))

if __name__ == "__main__":
    unittest.main()
