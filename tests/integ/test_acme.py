"""ACME end to end: pebble (the test CA) issues the four edges' public certificates through
the Director (RFC 8555), validated for real: TLS-ALPN-01 on the edges' own TLS listeners,
HTTP-01 on revproxy's plain-HTTP listener. The names resolve through a DNS stub
(tests/integ/dnsstub.py) to the edges' lab addresses:

    sip.lab.test  -> 127.0.0.11  access-edge  (tls-alpn-01)
    conf.lab.test -> 127.0.0.12  conf-edge    (tls-alpn-01)
    av.lab.test   -> 127.0.0.13  av-edge      (tls-alpn-01)
    web.lab.test  -> 127.0.0.14  revproxy     (http-01)

pebble validates TLS-ALPN-01 on one port (tlsPort) of whatever address a name has, so every
edge's external TLS listener is on its own address and one shared free port P = tlsPort;
revproxy's plain-HTTP listener is on 127.0.0.14:httpPort.

One lab for the class (pebble, the stub, the Director, four edges), the tests in order:
first issuance, renewal under TLS load, and a CA that is down for a while.
"""
import csv
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

import dnsstub
import harness
import pebblelab
import rp_upstream
from harness import ROOT, Daemon, free_port, http_json, http_request, wait_for
from siplab import SCEN as SIP, udp_port_taken as udp_taken
from test_ce_edge import Client as ConfClient

CERTS = os.path.join(ROOT, "build", "certs")
STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")
# turnutils_peer's address: not 127.0.0.1, where av-edge's admin listener is (a denied peer).
TURN_PEER = "127.0.0.31"
EDGES = {  # role: (lab address, name, challenge)
    "access-edge": ("127.0.0.11", "sip.lab.test", "tls-alpn-01"),
    "conf-edge": ("127.0.0.12", "conf.lab.test", "tls-alpn-01"),
    "av-edge": ("127.0.0.13", "av.lab.test", "tls-alpn-01"),
    "revproxy": ("127.0.0.14", "web.lab.test", "http-01"),
}


def port_free_on_all(addrs):
    """One TCP port free on every address (the edges' shared TLS port)."""
    for _ in range(50):
        p = free_port(addrs[0])
        ok = True
        for a in addrs[1:]:
            s = socket.socket()
            try:
                s.bind((a, p))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return p
    raise RuntimeError("no port free on all lab addresses")


def link(role, ctl):
    return (f"director: {{enabled: true, address: 127.0.0.1:{ctl}, server_name: director, "
            f"report_interval: 500ms, tls: {{cert: {CERTS}/{role}.crt, key: {CERTS}/{role}.key, "
            f"ca: {CERTS}/ca.crt}}}}")


class AcmeLab(unittest.TestCase):
    lab = None

    @classmethod
    def setUpClass(cls):
        if not pebblelab.available():
            raise unittest.SkipTest("pebble is not installed (deploy/install-deps.sh, group test)")
        for b in ("director", *EDGES):
            if not harness.have_binary(b):
                raise unittest.SkipTest(f"{b} is not built")
        cls.tmp = tempfile.mkdtemp(prefix="acmetest-")
        cls.daemons = {}
        try:
            cls.start_lab()
        except BaseException:
            cls.stop_lab()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.stop_lab()

    @classmethod
    def stop_lab(cls):
        errors = []
        for d in reversed(list(cls.daemons.values())):
            try:
                d.stop()
            except AssertionError as e:
                errors.append(str(e))
        if getattr(cls, "pebble", None):
            cls.pebble.stop()
        if getattr(cls, "dns", None):
            cls.dns.stop()
        if getattr(cls, "web", None):
            cls.web.stop()
        if os.environ.get("ACME_TEST_KEEP"):
            print("acme test files kept in", cls.tmp)
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)
        if errors:
            raise AssertionError("\n".join(errors))

    @classmethod
    def start_lab(cls):
        t = cls.tmp
        cls.dns = dnsstub.DnsStub({name: addr for addr, name, _ in EDGES.values()}).start()
        cls.tls_port = port_free_on_all([a for a, _, _ in EDGES.values()])
        cls.http_port = free_port("127.0.0.14")
        cls.pebble = pebblelab.Pebble(t, cls.dns.addr, cls.http_port, cls.tls_port,
                                      env={"PEBBLE_AUTHZREUSE": "0"}).start()
        cls.ctl = free_port()
        cls.dadmin = f"127.0.0.1:{free_port()}"
        certs = "\n".join(f"    - {{edge: {r}, names: [{n}], challenge: {c}}}"
                          for r, (_, n, c) in EDGES.items())
        # The renewal test's clients: the conferencing server behind conf-edge (the Director's,
        # which mints the conference keys), the SIP UAS behind access-edge (sipp, started by
        # that test), the web server behind revproxy.
        cls.ce_int = free_port("127.0.0.22")
        cls.sip_uas = free_port("127.0.0.1", socket.SOCK_DGRAM)
        cls.web = rp_upstream.Upstream()
        cls.daemons["director"] = Daemon("director", f"""instance_id: director-acme
log: {{level: debug}}
admin: {{listen: {cls.dadmin}}}
ctl: {{listen: 127.0.0.1:{cls.ctl}, heartbeat: 500ms}}
tls: {{cert: {CERTS}/director.crt, key: {CERTS}/director.key, ca: {CERTS}/ca.crt}}
confserver:
  edges: [127.0.0.22:{cls.ce_int}]
  tls: {{cert: {CERTS}/confserver.crt, key: {CERTS}/confserver.key, ca: {CERTS}/ca.crt}}
acme:
  enabled: true
  directory: {cls.pebble.directory}
  ca: {cls.pebble.ca}
  contact: mailto:ops@lab.test
  account_key: {t}/acme-account.key
  retry_min: 1s
  retry_max: 3s
  check_interval: 1s
  challenge_timeout: 5s
  order_timeout: 30s
  certificates:
{certs}
""", t, admin=cls.dadmin).start()
        P = cls.tls_port
        cls.files = {r: (f"{t}/{r}-acme.crt", f"{t}/{r}-acme.key") for r in EDGES}
        cls.admins = {r: f"127.0.0.1:{free_port()}" for r in EDGES}

        def acme(r):
            c, k = cls.files[r]
            return f"acme: {{enabled: true, cert: {c}, key: {k}}}"  # the external listeners' files

        ae_int, ae_udp = free_port("127.0.0.21"), free_port("127.0.0.11", socket.SOCK_DGRAM)
        cls.daemons["access-edge"] = Daemon("access-edge", f"""instance_id: access-edge-acme
admin: {{listen: {cls.admins['access-edge']}}}
{link('access-edge', cls.ctl)}
{acme('access-edge')}
domains: [lab.test, example.com]  # tests/integ/sip/message_uac.xml sends to example.com
fqdn: sip.lab.test
external:
  udp: [127.0.0.11:{ae_udp}]
  tls: [127.0.0.11:{P}]
internal:
  udp: [127.0.0.21:{ae_int}]
next_hop: {{address: 127.0.0.1:{cls.sip_uas}, transport: udp}}
""", t, admin=cls.admins["access-edge"])
        cls.daemons["conf-edge"] = Daemon("conf-edge", f"""instance_id: conf-edge-acme
admin: {{listen: {cls.admins['conf-edge']}}}
{link('conf-edge', cls.ctl)}
{acme('conf-edge')}
external:
  listen: 127.0.0.12:{P}
internal:
  listen: 127.0.0.22:{cls.ce_int}
  tls: {{cert: {CERTS}/conf-edge.crt, key: {CERTS}/conf-edge.key, ca: {CERTS}/ca.crt}}
  allowed_names: [confserver]
""", t, admin=cls.admins["conf-edge"])
        cls.av_udp = free_port("127.0.0.13", socket.SOCK_DGRAM)
        cls.daemons["av-edge"] = Daemon("av-edge", f"""instance_id: av-edge-acme
admin: {{listen: {cls.admins['av-edge']}}}
{link('av-edge', cls.ctl)}
{acme('av-edge')}
external: {{listen: [127.0.0.13:{cls.av_udp}], tcp_listen: [], tls_listen: [127.0.0.13:{P}],
           allow_peers: [{TURN_PEER}/32]}}  # turnutils_peer, for the renewal test
internal: {{listen: [127.0.0.23:{free_port('127.0.0.23', socket.SOCK_DGRAM)}]}}
relay: {{addresses: [127.0.0.13], port_min: 29300, port_max: 29349}}
auth: {{realm: lab.test}}
""", t, admin=cls.admins["av-edge"])
        cls.daemons["revproxy"] = Daemon("revproxy", f"""instance_id: revproxy-acme
admin: {{listen: {cls.admins['revproxy']}}}
{link('revproxy', cls.ctl)}
{acme('revproxy')}
listeners:
  - {{address: 127.0.0.14:{P}, tls: true}}
  - {{address: 127.0.0.14:{cls.http_port}, redirect: true}}
server_names: [web.lab.test]
upstreams:
  - {{name: web, servers: [{cls.web.addr}], tls: false, connect_timeout: 5s}}
routes:
  - {{prefix: /, upstream: web}}
""", t, admin=cls.admins["revproxy"])
        for r in EDGES:
            cls.daemons[r].start()

    # ---- helpers ----

    def acme_status(self):
        st, body = http_json(self.dadmin, "/acme")
        self.assertEqual(st, 200, body)
        return {c["role"]: c for c in body["certificates"]}

    def renew(self, edge):
        st, body = http_json(self.dadmin, f"/acme/renew?edge={edge}", method="POST")
        self.assertEqual(st, 200, body)
        return body

    def root_file(self):
        """pebble's root (of this pebble run) in a file; replaced whole (rename), as the
        renewal test's clients read it while the test polls."""
        path = os.path.join(self.tmp, "pebble-root.pem")
        with open(path + ".new", "w") as f:
            f.write(self.pebble.root_pem())
        os.replace(path + ".new", path)
        return path

    def served(self, role, cafile=None):
        """(serial hex upper-case, subject, issuer) the edge's TLS listener serves for its name,
        verified against cafile when given."""
        addr, name, _ = EDGES[role]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if cafile:
            ctx.load_verify_locations(cafile)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection((addr, self.tls_port), timeout=3) as s:
            with ctx.wrap_socket(s, server_hostname=name) as tls:
                der = tls.getpeercert(binary_form=True)
        p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial", "-subject",
                            "-issuer"], input=der, capture_output=True, check=True)
        out = p.stdout.decode()
        serial = re.search(r"serial=([0-9A-F]+)", out).group(1)
        return serial, out

    def wait_all_issued(self, timeout=60, not_serials=None):
        """Until every edge serves a pebble-issued certificate for its name (and, with
        not_serials, not the one it served before). Returns {role: serial}."""
        root = self.root_file()

        def check():
            got = {}
            for r in EDGES:
                try:
                    serial, _ = self.served(r, root)
                except (ssl.SSLError, OSError):
                    return None
                if not_serials and serial == not_serials.get(r):
                    return None
                got[r] = serial
            return got
        try:
            return wait_for(check, timeout=timeout, interval=0.5, what="every edge's ACME certificate")
        except AssertionError:
            raise AssertionError(f"/acme: {json.dumps(self.acme_status(), indent=1)}\n"
                                 f"director log:\n{self.daemons['director'].log()[-6000:]}")

    def ensure_issued(self):
        if not getattr(type(self), "serials", None):
            type(self).serials = self.wait_all_issued()
        return type(self).serials

    # ---- tests ----

    def test_1_first_issuance_for_the_four_edge_names(self):
        serials = self.ensure_issued()
        root = self.root_file()
        for r, (addr, name, _) in EDGES.items():
            # What a user's client would check: the chain verifies to pebble's root, for the name.
            p = subprocess.run(["openssl", "s_client", "-connect", f"{addr}:{self.tls_port}",
                                "-servername", name, "-verify_return_error", "-CAfile", root,
                                "-verify_hostname", name],
                               input=b"", capture_output=True, timeout=10)
            out = p.stdout.decode(errors="replace")
            self.assertEqual(p.returncode, 0, f"{r}: {out[-1500:]}{p.stderr.decode()[-800:]}")
            self.assertIn("Verify return code: 0 (ok)", out, r)
            self.assertRegex(out, r"i:\s*CN\s*=\s*Pebble Intermediate CA", r)
            self.assertRegex(out, rf"s:\s*CN\s*=\s*{re.escape(name)}", r)
        status = self.acme_status()
        for r in EDGES:
            self.assertEqual(status[r]["state"], "idle", status[r])
            self.assertFalse(status[r]["self_signed"], status[r])
            self.assertEqual(status[r]["serial"].replace(":", "").lstrip("0"),
                             serials[r].lstrip("0"), status[r])
        m = self.daemons["director"].metrics()
        self.assertGreaterEqual(m.get('director_acme_orders_total{result="issued"}', 0), 4, m)
        self.assertGreater(m.get('director_acme_certificate_not_after_seconds{edge="revproxy"}', 0),
                           time.time())
        # The admin endpoint refuses what it cannot do.
        self.assertEqual(http_request(self.dadmin, "/acme/renew?edge=nosuch", "POST")[0], 404)
        self.assertEqual(http_request(self.dadmin, "/acme/renew", "POST")[0], 400)
        self.assertEqual(http_request(self.dadmin, "/acme/renew?edge=av-edge")[0], 405)
        self.assertEqual(http_json(self.dadmin, "/acme")[1]["waiting"], [])
        # Both challenge kinds were validated for real by pebble.
        log = self.pebble.logtext()
        self.assertNotIn("ALWAYS_VALID", log)
        dlog = self.daemons["director"].log()
        self.assertIn("http-01 challenge for web.lab.test", dlog)
        self.assertIn("tls-alpn-01 challenge for sip.lab.test", dlog)

    # ---- the renewal test's clients (real ones: sipp, wrk, turnutils_uclient, conference
    # participants), each bounded in count and time ----

    def leaf(self, role, root):
        """The certificate (PEM) a new handshake with the edge gets, verified for its name."""
        addr, name, _ = EDGES[role]
        ctx = ssl.create_default_context(cafile=root)
        with socket.create_connection((addr, self.tls_port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname=name) as t:
                return ssl.DER_cert_to_PEM_cert(t.getpeercert(binary_form=True))

    def stunnel(self, tag, pinned_pem):
        """sipp as Debian packages it has no TLS: a local stunnel turns its TCP into TLS to
        access-edge, accepting only pinned_pem (verifyPeer: the peer's certificate must be the
        one in CAfile), so the SIP that crosses it rode a handshake with that certificate.
        Returns the local port."""
        addr, name, _ = EDGES["access-edge"]
        pin = os.path.join(self.tmp, f"stunnel-{tag}.pem")
        with open(pin, "w") as f:
            f.write(pinned_pem)
        port = free_port()
        conf = os.path.join(self.tmp, f"stunnel-{tag}.conf")
        with open(conf, "w") as f:
            f.write(f"foreground = yes\npid =\n[sip]\nclient = yes\naccept = 127.0.0.1:{port}\n"
                    f"connect = {addr}:{self.tls_port}\nsni = {name}\nCAfile = {pin}\n"
                    f"verifyPeer = yes\n")
        log = open(os.path.join(self.tmp, f"stunnel-{tag}.log"), "wb")
        p = subprocess.Popen([STUNNEL, conf], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.addCleanup(lambda: (p.terminate(), p.wait()))
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), 0.5).close() or True,
                 what="stunnel")
        return port

    def sipp_uac(self, port, calls, rate, tag):
        """sipp sending `calls` MESSAGEs at `rate`/s over one TCP connection (-t t1) to the
        stunnel on port; the UAS behind access-edge answers them."""
        lport = free_port("127.0.0.2")
        stat = os.path.join(self.tmp, f"sipp-{tag}.csv")
        out = open(os.path.join(self.tmp, f"sipp-{tag}.out"), "wb")
        p = subprocess.Popen(
            ["sipp", f"127.0.0.1:{port}", "-sf", os.path.join(SIP, "message_uac.xml"), "-s", "bob",
             "-key", "caller", "alice", "-i", "127.0.0.2", "-p", str(lport), "-t", "t1",
             "-r", str(rate), "-m", str(calls), "-l", "100", "-nostdin", "-timeout", "90s",
             "-recv_timeout", "8000", "-trace_stat", "-stf", stat, "-fd", "1"],
            cwd=self.tmp, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.addCleanup(lambda: p.poll() is None and p.kill())
        p.stat = stat
        return p

    def sipp_counts(self, p):
        """(created, successful, failed) in sipp's last statistics row (-fd 1: every second)."""
        try:
            with open(p.stat) as f:
                rows = list(csv.reader(f, delimiter=";"))
            h, last = rows[0], rows[-1]
            return tuple(int(last[h.index(k)]) for k in
                         ("TotalCallCreated", "SuccessfulCall(C)", "FailedCall(C)"))
        except (OSError, IndexError, ValueError):
            return (0, 0, 0)

    def sipp_result(self, p, what):
        """(created, successful, failed) from sipp's last statistics row."""
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            self.fail(f"{what}: sipp did not finish")
        got = self.sipp_counts(p)
        self.assertEqual(p.returncode, 0, f"{what}: sipp exit {p.returncode}, {got}")
        return got

    def wrk(self, secs, conns, tag):
        """wrk over HTTPS to revproxy: `conns` keep-alive connections, each sending a request
        every 100 ms (a Lua delay: a load, not a flood, on a shared 2-core machine)."""
        _, name, _ = EDGES["revproxy"]
        lua = os.path.join(self.tmp, "wrk-pace.lua")
        with open(lua, "w") as f:
            f.write("function delay()\n  return 100\nend\n")
        out = open(os.path.join(self.tmp, f"wrk-{tag}.out"), "wb")
        p = subprocess.Popen(["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--timeout", "10s",
                              "-s", lua, "-H", f"Host: {name}",
                              f"https://{EDGES['revproxy'][0]}:{self.tls_port}/acme-load"],
                             stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.addCleanup(lambda: p.poll() is None and p.kill())
        p.out = out.name
        return p

    def wrk_result(self, p, what):
        """wrk's own count of requests; asserts no socket error and no non-2xx/3xx answer."""
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            self.fail(f"{what}: wrk did not finish")
        with open(p.out) as f:
            text = f.read()
        self.assertEqual(p.returncode, 0, f"{what}:\n{text}")
        m = re.search(r"(\d+) requests in", text)
        self.assertIsNotNone(m, f"{what}:\n{text}")
        self.assertNotIn("Socket errors", text, what)
        self.assertNotIn("Non-2xx or 3xx responses", text, what)
        return int(m.group(1))

    def uclient(self, cred, peer_port, n, m, root):
        """coturn's turnutils_uclient over TLS (-t -S, the chain verified against root: -E):
        m clients, each relaying n packets (one per 20 ms) to turnutils_peer and back."""
        argv = ["turnutils_uclient", "-t", "-S", "-E", root, "-u", cred["username"], "-w",
                cred["password"], "-e", TURN_PEER, "-r", str(peer_port), "-p", str(self.tls_port),
                "-n", str(n), "-m", str(m), "-l", "172", EDGES["av-edge"][0]]
        try:
            return subprocess.run(argv, capture_output=True, timeout=30)
        except subprocess.TimeoutExpired as e:  # it waits forever for what it never gets
            return subprocess.CompletedProcess(argv, -1, (e.stdout or b"") + b"\n(timed out)",
                                               e.stderr or b"")

    def uclient_check(self, p, n, m, what):
        out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
        # What test_av_edge.TestStockClients accepts for TLS: no margin, 0 lost.
        self.assertIn("Total lost packets 0 (0.000000%)", out, f"{what}:\n{out[-2000:]}")
        sent = [int(x) for x in re.findall(r"tot_send_msgs=(\d+)", out)]
        self.assertTrue(sent and max(sent) >= n * m, f"{what}:\n{out[-1000:]}")
        return max(sent)

    def conf_key(self, conf, user):
        st, j = http_json(self.dadmin, f"/conference-keys?conf={conf}&user={user}", method="POST")
        self.assertEqual(st, 200, j)
        return j["key"]

    def participant(self, conf, user, root):
        """A conference participant (test_ce_edge.Client) with a key the Director minted,
        the edge's chain verified for conf.lab.test; admitted."""
        addr, name, _ = EDGES["conf-edge"]
        c = ConfClient(f"{addr}:{self.tls_port}", key=self.conf_key(conf, user), cafile=root,
                       server_name=name)
        c.der = c.sock.getpeercert(binary_form=True)
        line = c.line(timeout=10)
        if line != "PSOM-EDGE/1 200 admitted\r\n":
            c.close()
            raise AssertionError(f"{user} in {conf}: {line!r}")
        return c

    def test_2_renewal_under_tls_load(self):
        """Every edge renews (POST /acme/renew) while real clients load it: sipp over TLS
        (through stunnel), wrk over HTTPS, turnutils_uclient over TLS, conference participants.
        None fails; the connections opened before the renewal keep working on the old
        certificate; new ones get the new certificate."""
        for tool in ("sipp", "wrk", "turnutils_uclient", "turnutils_peer"):
            if not shutil.which(tool):
                self.skipTest(f"{tool} is not installed (deploy/install-deps.sh, group test)")
        if not STUNNEL:
            self.skipTest("stunnel is not installed (deploy/install-deps.sh, group test)")
        before = self.ensure_issued()
        root = self.root_file()
        old = {r: self.leaf(r, root) for r in EDGES}
        # The servers behind the edges: a sipp UAS behind access-edge, turnutils_peer for
        # av-edge's relay, the Director's conferencing server (and the web server, from setUpClass).
        uas = subprocess.Popen(["sipp", "-sf", os.path.join(SIP, "message_uas.xml"), "-i",
                                "127.0.0.1", "-p", str(self.sip_uas), "-t", "u1", "-nostdin"],
                               cwd=self.tmp, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.addCleanup(lambda: (uas.kill(), uas.wait()))
        peer_port = free_port(TURN_PEER, socket.SOCK_DGRAM)
        peer = subprocess.Popen(["turnutils_peer", "-L", TURN_PEER, "-p", str(peer_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (peer.kill(), peer.wait()))
        ce = self.daemons["conf-edge"]
        wait_for(lambda: ce.metrics().get("conf_edge_servers") == 1, timeout=15,
                 what="the Director's conferencing server on conf-edge")
        ce.wait_log("conference-key signing secret", timeout=10)
        cred = http_json(self.dadmin, "/credentials?user=acme-load")[1]
        wait_for(lambda: udp_taken("127.0.0.1", self.sip_uas) and
                 udp_taken(TURN_PEER, peer_port), what="the sipp UAS and turnutils_peer")

        # Established before the renewal, on the old certificates.
        held = [self.participant("held", f"p{i}", root) for i in range(4)]
        for c in held:
            self.addCleanup(c.close)
        self.assertTrue(all(c.der == ssl.PEM_cert_to_DER_cert(old["conf-edge"]) for c in held))
        addr, name, _ = EDGES["av-edge"]
        av_held = ssl.create_default_context(cafile=root).wrap_socket(
            socket.create_connection((addr, self.tls_port), timeout=5), server_hostname=name)
        self.addCleanup(av_held.close)
        sip_old = self.stunnel("old", old["access-edge"])
        sip = self.sipp_uac(sip_old, calls=2400, rate=40, tag="during")  # <= 60 s
        web = self.wrk(60, 20, "during")
        renewed = threading.Event()
        stop = threading.Event()
        conf_load = {"ok": 0, "fail": [], "certs": []}
        turn_runs = []

        def conference_clients():
            """Pairs of new participants, each pair in a conference of its own, one line
            from one to the other; bounded in count and time."""
            deadline = time.time() + 90
            i = 0
            while not stop.is_set() and time.time() < deadline and i < 1500:
                i += 1
                a = b = None
                try:
                    a = self.participant(f"load{i}", "a", root)
                    b = self.participant(f"load{i}", "b", root)
                    conf_load["certs"] += [a.der, b.der]
                    a.send(b"slide %d\n" % i)
                    got = b.read_exact(len(b"slide %d\n" % i), timeout=10)
                    if got != b"slide %d\n" % i:
                        raise AssertionError(f"pair {i}: {got!r}")
                    conf_load["ok"] += 1
                except Exception as e:  # every failure counts
                    conf_load["fail"].append(repr(e))
                finally:
                    for c in (a, b):
                        if c:
                            c.close()
                time.sleep(0.05)

        def turn_clients():
            """Back-to-back uclient runs (5 s each) until the renewal is done, then one more
            (2 s) that starts after it."""
            deadline = time.time() + 90
            while time.time() < deadline:
                last = renewed.is_set()
                t0 = time.time()
                n = 100 if last else 250
                p = self.uclient(cred, peer_port, n, 3, root)
                turn_runs.append((t0, time.time(), last, p, n))
                if last:
                    break

        threads = [threading.Thread(target=conference_clients),
                   threading.Thread(target=turn_clients)]
        for th in threads:
            th.start()
        try:
            # Every client under way on the old certificates (on a loaded machine they may
            # take a while to start).
            time.sleep(1.0)
            wait_for(lambda: conf_load["ok"] >= 2 and len(self.web.requests) >= 20 and
                     self.sipp_counts(sip)[1] >= 20, timeout=30,
                     what="sipp, wrk, uclient and the conference pairs under way")
            t_renew = time.time()
            for r in EDGES:
                self.renew(r)
            after = self.wait_all_issued(timeout=60, not_serials=before)
            t_new = time.time()
            renewed.set()
            time.sleep(1.0)  # the load goes on a moment on the new certificates
            sip.send_signal(signal.SIGUSR1)  # sipp: no new calls, finish those under way
            web.send_signal(signal.SIGINT)  # wrk: stop and report
            new = {r: self.leaf(r, root) for r in EDGES}
            # New connections after the renewal, by the same clients.
            sip_new = self.stunnel("new", new["access-edge"])
            sip2 = self.sipp_uac(sip_new, calls=100, rate=50, tag="after")
            web2 = self.wrk(2, 5, "after")
            joined = [self.participant("held", f"n{i}", root) for i in range(2)]
            for c in joined:
                self.addCleanup(c.close)
        finally:
            stop.set()
            renewed.set()
            for th in threads:
                th.join(120)
        # Each client's verdict in a subTest of its own: a renewal that drops connections
        # shows at once which clients saw it.
        got = {}
        with self.subTest("sipp over TLS (stunnel) to access-edge"):
            # Every MESSAGE answered 200, on the connection opened before the renewal (pinned
            # to the old certificate) and on one opened after it (pinned to the new one).
            created, got["sip"], failed = self.sipp_result(sip, "sipp during the renewal")
            self.assertEqual((got["sip"], failed), (created, 0), "sipp during the renewal")
            self.assertGreaterEqual(got["sip"], 80, "sipp: MESSAGEs across the renewal")
            got["sip2"] = self.sipp_result(sip2, "sipp after the renewal")
            self.assertEqual(got["sip2"], (100, 100, 0), "sipp after the renewal")
            # A new connection through the stunnel pinned to the old certificate is refused
            # now (stunnel closes it after the failed verification): the pins are real.
            with socket.create_connection(("127.0.0.1", sip_old), timeout=10) as s:
                try:
                    self.assertEqual(s.recv(1), b"", "the old certificate after the renewal")
                except ConnectionResetError:
                    pass
        with self.subTest("wrk over HTTPS to revproxy"):
            # 20 keep-alive connections across the renewal, 5 new ones after it.
            got["web"] = self.wrk_result(web, "wrk during the renewal")
            self.assertGreaterEqual(got["web"], 100, "wrk: requests across the renewal")
            got["web2"] = self.wrk_result(web2, "wrk after the renewal")
            self.assertGreater(got["web2"], 10)
        with self.subTest("turnutils_uclient over TLS to av-edge"):
            # Every run 0 lost, one started before the renewal, one after it.
            self.assertTrue(turn_runs, "no uclient run")
            got["turn"] = sum(self.uclient_check(p, n, 3, f"uclient run {i}")
                              for i, (_, _, _, p, n) in enumerate(turn_runs))
            self.assertLess(turn_runs[0][0], t_renew)
            self.assertTrue(turn_runs[-1][2] and turn_runs[-1][0] >= t_new, "a run after")
            got["spanned"] = any(t0 < t_renew and t1 > t_new for t0, t1, _, _, _ in turn_runs)
            # A TLS connection opened before the renewal still answers a Binding.
            txid = os.urandom(12)
            av_held.sendall(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + txid)
            resp = av_held.recv(512)
            self.assertEqual(resp[:2], b"\x01\x01", resp)  # Binding success
            self.assertEqual(resp[8:20], txid)
            self.assertEqual(av_held.getpeercert(binary_form=True),
                             ssl.PEM_cert_to_DER_cert(old["av-edge"]))
        with self.subTest("conference participants on conf-edge"):
            # The pairs all exchanged; each new handshake got the old certificate until the
            # first got the new one, and only the new one from then on.
            self.assertEqual(conf_load["fail"], [], "conference participants")
            self.assertGreater(conf_load["ok"], 5)
            ce_old, ce_new = (ssl.PEM_cert_to_DER_cert(x["conf-edge"]) for x in (old, new))
            seq = conf_load["certs"]
            self.assertEqual(set(seq), {ce_old, ce_new}, "conference handshakes: old then new")
            first_new = seq.index(ce_new)
            self.assertNotIn(ce_old, seq[first_new:], "an old certificate after the new one")
            # The participants admitted before the renewal talk with those who joined after.
            for c in joined:
                self.assertEqual(c.der, ce_new)
            for i, c in enumerate(held + joined):
                c.send(b"from %d\n" % i)
                for o in held + joined:
                    if o is not c:
                        self.assertEqual(o.read_exact(len(b"from %d\n" % i), timeout=10),
                                         b"from %d\n" % i)
        # Every new handshake now shows the new serial.
        for r in EDGES:
            self.assertNotEqual(after[r], before[r], r)
            self.assertNotEqual(new[r], old[r], r)
            for _ in range(5):
                self.assertEqual(self.leaf(r, root), new[r], r)
        type(self).serials = after
        print(f"\nrenewal under load ({t_new - t_renew:.1f} s): sipp MESSAGEs {got.get('sip')} "
              f"then (created, ok, failed) {got.get('sip2')} after; wrk requests {got.get('web')} "
              f"+ {got.get('web2')} after; uclient runs {len(turn_runs)}, packets sent "
              f"{got.get('turn')}, one spanned the swap: {got.get('spanned')}; conference pairs "
              f"{conf_load['ok']} (failed {len(conf_load['fail'])}), {len(held)} held, "
              f"{len(joined)} joined after", flush=True)

    def test_3_failing_ca_keeps_old_certificates_and_retries(self):
        before = self.ensure_issued()
        d = self.daemons["director"]
        failed0 = d.metrics().get('director_acme_orders_total{result="failed"}', 0)
        self.pebble.stop()
        try:
            self.renew("av-edge")
            # Logged, retried with backoff: at least two failed attempts, visible in /acme.
            st = wait_for(lambda: (lambda s: s if s["failures"] >= 2 else None)(
                self.acme_status()["av-edge"]), timeout=20, what="two failed attempts")
            self.assertEqual(st["state"], "backoff", st)
            self.assertIsNotNone(st["next_attempt"], st)
            self.assertIn("directory", st["last_error"], st)
            m = d.metrics()
            self.assertGreaterEqual(m.get('director_acme_orders_total{result="failed"}', 0),
                                    failed0 + 2, m)
            self.assertIn("failed at directory", d.log())
            # The edge still serves the certificate it had.
            serial, _ = self.served("av-edge")
            self.assertEqual(serial, before["av-edge"])
        finally:
            self.pebble.start()  # a new pebble run: new root, the account forgotten
        root = self.root_file()

        def renewed():
            s = self.acme_status()["av-edge"]
            if s["state"] != "idle" or s["failures"]:
                return None
            serial, _ = self.served("av-edge", root)
            return serial if serial != before["av-edge"] else None
        new = wait_for(renewed, timeout=30, interval=0.5, what="the renewal after pebble came back")
        self.assertNotEqual(new, before["av-edge"])
        self.assertIn("registering again", d.log())
        type(self).serials = None  # the others still chain to the old root


if __name__ == "__main__":
    unittest.main()


class FakeCA:
    """An HTTPS server that answers like an ACME CA up to the order, then gives no nonce
    (no Replay-Nonce on the order, none from newNonce the second time): a CA misbehaving or
    going away mid-order. No signature is checked."""

    def __init__(self, workdir):
        import http.server
        self.ca, crt, key = pebblelab.make_https_cert(workdir)
        self.port = free_port()
        base = f"https://127.0.0.1:{self.port}"
        self.nonces = 0
        self.paths = []
        fake = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, status, body=None, headers=()):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def do_GET(self):
                fake.paths.append(("GET", self.path))
                self.reply(200, {"newNonce": base + "/nonce", "newAccount": base + "/acct",
                                 "newOrder": base + "/order"})

            def do_HEAD(self):
                fake.paths.append(("HEAD", self.path))
                fake.nonces += 1
                self.reply(200, None, [("Replay-Nonce", "n1")] if fake.nonces == 1 else [])

            def do_POST(self):
                fake.paths.append(("POST", self.path))
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/acct":
                    self.reply(201, {"status": "valid"},
                               [("Location", base + "/acct/1"), ("Replay-Nonce", "n2")])
                elif self.path == "/order":
                    self.reply(201, {"status": "pending", "identifiers": [
                        {"type": "dns", "value": "av.lab.test"}],
                        "authorizations": [base + "/authz/1"], "finalize": base + "/fin/1"},
                        [("Location", base + "/order/1")])
                else:
                    self.reply(500, {"type": "urn:ietf:params:acme:error:serverInternal"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class AcmeCaMisbehaving(harness.SuiteTest):
    def test_ca_without_nonce_mid_order_fails_the_order_cleanly(self):
        """A CA that stops giving nonces after the order was created: the order fails at the
        authorization step with that reason, is retried with backoff, and the Director lives
        on (it once freed an uninitialised answer there)."""
        ca = FakeCA(self.tmp)
        self.addCleanup(ca.stop)
        ctl, dadmin = free_port(), f"127.0.0.1:{free_port()}"
        d = self.daemon("director", f"""instance_id: director-acme-fake
admin: {{listen: {dadmin}}}
ctl: {{listen: 127.0.0.1:{ctl}, heartbeat: 500ms}}
tls: {{cert: {CERTS}/director.crt, key: {CERTS}/director.key, ca: {CERTS}/ca.crt}}
confserver: {{enabled: false}}
acme:
  enabled: true
  directory: https://127.0.0.1:{ca.port}/dir
  ca: {ca.ca}
  account_key: {self.tmp}/acme-account.key
  retry_min: 30s
  retry_max: 60s
  certificates: [{{edge: av-edge, names: [av.lab.test]}}]
""", admin=dadmin)
        aadmin = f"127.0.0.1:{free_port()}"
        self.daemon("av-edge", f"""instance_id: av-edge-fake
admin: {{listen: {aadmin}}}
{link('av-edge', ctl)}
acme: {{enabled: true, cert: {self.tmp}/av.crt, key: {self.tmp}/av.key}}
external: {{listen: [127.0.0.1:{free_port()}], tcp_listen: [], tls_listen: [127.0.0.1:{free_port()}]}}
internal: {{listen: [127.0.0.1:{free_port()}]}}
relay: {{addresses: [127.0.0.1], port_min: 29350, port_max: 29399}}
auth: {{realm: lab.test}}
""", admin=aadmin)
        st = wait_for(lambda: (lambda s: s if s.get("failures") else None)(
            http_json(dadmin, "/acme")[1]["certificates"][0] if http_json(dadmin, "/acme")[1]
            ["certificates"] else {}), timeout=15, what="the failed order")
        self.assertEqual(st["state"], "backoff", st)
        self.assertIn("authorization", st["last_error"], st)
        self.assertIn("gave no Replay-Nonce", st["last_error"], st)
        self.assertIn(("POST", "/order"), ca.paths)
        d.alive()
        self.assertEqual(http_request(dadmin, "/healthz")[0], 200)
        m = d.metrics()
        self.assertEqual(m.get('director_acme_orders_total{result="failed"}'), 1, m)
        self.assertIn("failed at authorization", d.log())


class AriProxy:
    """pebble 2.4 has no ARI: this HTTPS proxy in front of it adds renewalInfo to the
    directory and answers renewalInfo/<certID> with the window the test sets (RFC 9773),
    passing everything else to pebble (whose URLs then name the proxy: it builds them from
    the Host header)."""

    def __init__(self, pebble):
        import http.server
        import urllib.error
        import urllib.request
        self.port = free_port()
        base = f"https://127.0.0.1:{self.port}"
        now = int(time.time())
        self.window = (now + 30 * 86400, now + 31 * 86400)
        self.asked = []
        proxy = self
        ctx = ssl.create_default_context(cafile=pebble.ca)

        def rfc3339(t):
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def send(self, status, headers, data):
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def forward(self):
                if self.path.startswith("/renewal-info/"):
                    proxy.asked.append(self.path.split("/", 2)[2])
                    s, e = proxy.window
                    body = json.dumps({"suggestedWindow": {"start": rfc3339(s), "end": rfc3339(e)}})
                    return self.send(200, [("Content-Type", "application/json"),
                                           ("Retry-After", "1")], body.encode())
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n) if n else None
                hdrs = {k: v for k, v in self.headers.items()
                        if k.lower() in ("content-type", "accept")}
                hdrs["Host"] = f"127.0.0.1:{proxy.port}"
                req = urllib.request.Request(f"https://127.0.0.1:{pebble.port}{self.path}",
                                             data=data, headers=hdrs, method=self.command)
                try:
                    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                        status, headers, body = r.status, r.getheaders(), r.read()
                except urllib.error.HTTPError as e:
                    status, headers, body = e.code, e.headers.items(), e.read()
                if self.path == "/dir" and status == 200:
                    d = json.loads(body)
                    d["renewalInfo"] = base + "/renewal-info"
                    body = json.dumps(d).encode()
                self.send(status, headers, body)

            do_GET = do_POST = do_HEAD = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(os.path.join(pebble.workdir, "pebble-https.crt"),
                             os.path.join(pebble.workdir, "pebble-https.key"))
        self.server.socket = sctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def b64u(b):
    import base64
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class AcmeAri(harness.SuiteTest):
    def test_renewal_follows_the_ca_renewal_info_window(self):
        """With renewalInfo in the directory the Director asks it about each certificate it
        issued (certID = AKI keyIdentifier . serial, RFC 9773) and renews when the CA's
        window has begun, long before two thirds of the lifetime."""
        if not pebblelab.available():
            self.skipTest("pebble is not installed (deploy/install-deps.sh, group test)")
        addr, name = "127.0.0.13", "av.lab.test"
        dns = dnsstub.DnsStub({name: addr}).start()
        self.addCleanup(dns.stop)
        tls_port = free_port(addr)
        pebble = pebblelab.Pebble(self.tmp, dns.addr, free_port(), tls_port,
                                  env={"PEBBLE_AUTHZREUSE": "0"}).start()
        self.addCleanup(pebble.stop)
        proxy = AriProxy(pebble)
        self.addCleanup(proxy.stop)
        ctl, dadmin = free_port(), f"127.0.0.1:{free_port()}"
        d = self.daemon("director", f"""instance_id: director-acme-ari
admin: {{listen: {dadmin}}}
ctl: {{listen: 127.0.0.1:{ctl}, heartbeat: 500ms}}
tls: {{cert: {CERTS}/director.crt, key: {CERTS}/director.key, ca: {CERTS}/ca.crt}}
confserver: {{enabled: false}}
acme:
  enabled: true
  directory: https://127.0.0.1:{proxy.port}/dir
  ca: {pebble.ca}
  account_key: {self.tmp}/acme-account.key
  retry_min: 1s
  retry_max: 3s
  check_interval: 1s
  certificates: [{{edge: av-edge, names: [{name}]}}]
""", admin=dadmin)
        aadmin = f"127.0.0.1:{free_port()}"
        self.daemon("av-edge", f"""instance_id: av-edge-ari
admin: {{listen: {aadmin}}}
{link('av-edge', ctl)}
acme: {{enabled: true, cert: {self.tmp}/av.crt, key: {self.tmp}/av.key}}
external: {{listen: [{addr}:{free_port(addr, socket.SOCK_DGRAM)}], tcp_listen: [], tls_listen: [{addr}:{tls_port}]}}
internal: {{listen: [127.0.0.23:{free_port('127.0.0.23', socket.SOCK_DGRAM)}]}}
relay: {{addresses: [{addr}], port_min: 29400, port_max: 29449}}
auth: {{realm: lab.test}}
""", admin=aadmin)
        root = os.path.join(self.tmp, "root.pem")
        with open(root, "w") as f:
            f.write(pebble.root_pem())

        def served():
            ctx = ssl.create_default_context(cafile=root)
            with socket.create_connection((addr, tls_port), timeout=3) as s:
                with ctx.wrap_socket(s, server_hostname=name) as t:
                    return t.getpeercert(binary_form=True)
        first = wait_for(lambda: served(), timeout=30, interval=0.5, what="the first certificate")
        # The certID the Director must use, from the certificate with the openssl CLI.
        out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial", "-ext",
                              "authorityKeyIdentifier"], input=first, capture_output=True,
                             check=True).stdout.decode()
        serial = bytes.fromhex(re.search(r"serial=([0-9A-F]+)", out).group(1))
        if serial[0] & 0x80:
            serial = b"\0" + serial
        aki = bytes.fromhex(re.search(r"([0-9A-F]{2}(:[0-9A-F]{2})+)", out.split("Identifier")[1])
                            .group(1).replace(":", ""))
        cert_id = f"{b64u(aki)}.{b64u(serial)}"
        wait_for(lambda: cert_id in proxy.asked, timeout=10, what=f"GET renewal-info/{cert_id}")
        st = wait_for(lambda: http_json(dadmin, "/acme")[1]["certificates"][0]["ari"], timeout=5,
                      what="the window in GET /acme")
        self.assertEqual(st["start"], proxy.window[0])
        time.sleep(1.5)
        self.assertEqual(served(), first)  # window in a month: nothing to do yet
        # The CA moves the window to now (as for a revocation): renewed at once.
        now = int(time.time())
        proxy.window = (now - 60, now + 3600)
        second = wait_for(lambda: (lambda c: c if c != first else None)(served()), timeout=30,
                          interval=0.5, what="the renewal the ARI window asked for")
        self.assertNotEqual(second, first)
        self.assertIn("(ARI)", d.log())
        self.assertIn("certificate needs replacing (renew)", d.log())
