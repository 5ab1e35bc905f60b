"""av-edge abuse-proof defaults (issue 13): the lab secret stops serving once the Director's
secrets arrive, a revoked user loses its allocations and credentials until reinstated, the
admin listener and the control channel are denied peers, per-allocation limits, and a
draining edge redirects new Allocates (300 ALTERNATE-SERVER) to its least-loaded peer."""
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest

import harness
from harness import ROOT, SuiteTest, free_port, http_json, http_request, wait_for
import avturn as T

LAB_SECRET = "lab-relay-secret"  # deploy/config/av-edge.yaml: published
EXT = {"av1": "127.0.0.151", "av2": "127.0.0.152", "av3": "127.0.0.153"}
INT = {"av1": "127.0.0.161", "av2": "127.0.0.162", "av3": "127.0.0.163"}
ADMIN = {"av1": "127.0.0.171", "av2": "127.0.0.172", "av3": "127.0.0.173"}
A_ALTERNATE_SERVER = 0x8023


class AvAbuseTest(SuiteTest):
    # SIGTERM would drain the allocations a test leaves behind for drain_timeout.
    stop_signal = signal.SIGINT

    @classmethod
    def setUpClass(cls):
        if not (harness.have_binary("director") and harness.have_binary("av-edge")):
            raise unittest.SkipTest("director or av-edge is not built")
        cls.certs = tempfile.mkdtemp(prefix="avabuse-certs-")
        subprocess.run([os.path.join(ROOT, "deploy", "certs.sh"), cls.certs], check=True,
                       capture_output=True, timeout=120)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certs, ignore_errors=True)

    def start(self, names=("av1",), auth="", limits="", drain_timeout="20s"):
        c = self.certs
        self.ctl_port = free_port()
        self.dir_admin = f"127.0.0.1:{free_port()}"
        self.director = self.daemon("director", f"""instance_id: director-abuse
admin: {{listen: "{self.dir_admin}"}}
ctl: {{ listen: 127.0.0.1:{self.ctl_port}, heartbeat: 300ms }}
tls: {{ cert: {c}/director.crt, key: {c}/director.key, ca: {c}/ca.crt }}
secrets: {{ rotate_interval: 1h, lifetime: 2h }}
credentials: {{ ttl: 10m }}
""", admin=self.dir_admin)
        self.edges, self.ext_port, self.int_port, self.admin = {}, {}, {}, {}
        bases = random.sample(range(20000, 29000, 100), len(names))
        for name, base in zip(names, bases):
            self.ext_port[name] = free_port(EXT[name])
            self.int_port[name] = free_port(INT[name])
            self.admin[name] = f"{ADMIN[name]}:{free_port(ADMIN[name])}"
            self.edges[name] = self.daemon("av-edge", f"""instance_id: {name}
admin: {{ listen: {self.admin[name]} }}
drain_timeout: {drain_timeout}
external:
  listen: [{EXT[name]}:{self.ext_port[name]}]
  tcp_listen: []
  tls_listen: []
  allow_peers: [127.0.0.0/8]
internal: {{ listen: [{INT[name]}:{self.int_port[name]}] }}
relay: {{ addresses: [{EXT[name]}], port_min: {base}, port_max: {base + 99} }}
auth:
  realm: edge.lab
{auth}limits:
  total_quota: 50
{limits}director:
  address: 127.0.0.1:{self.ctl_port}
  server_name: director
  report_interval: 100ms
  tls: {{ cert: {c}/av-edge.crt, key: {c}/av-edge.key, ca: {c}/ca.crt }}
""", admin=self.admin[name])
        for e in self.edges.values():
            e.wait_log("from the Director installed", timeout=10)

    def credentials(self, user, status=200, ttl=""):
        st, body = http_json(self.dir_admin, f"/credentials?user={user}" + (f"&ttl={ttl}" if ttl else ""))
        self.assertEqual(st, status, body)
        return body

    def client(self, cred=None, name="av1", user=None, password=None, **kw):
        u, p = (cred["username"], cred["password"]) if cred else (user, password)
        c = T.Client((EXT[name], self.ext_port[name]), u, p, **kw)
        self.addCleanup(c.close)
        return c

    def wait_metric(self, name, metric, at_least):
        wait_for(lambda: self.edges[name].metrics().get(metric, 0) >= at_least, timeout=5,
                 what=f"{metric} >= {at_least} (metrics: {self.edges[name].metrics()})")

    # ---- item 1: the lab secret ----

    def test_lab_secret_refused_once_the_directors_secrets_arrive(self):
        self.start(auth=f"  secret: {LAB_SECRET}\n")
        user, pw = T.rest_credentials(LAB_SECRET, "mallory")
        self.assertEqual(self.client(user=user, password=pw).allocate().code, 401)
        self.edges["av1"].wait_log("auth.secret is ignored", timeout=5)
        # the Director's credentials still work
        self.assertEqual(self.client(self.credentials("alice")).allocate().code, 0)

    def test_check_warns_about_the_published_default_secret(self):
        p = subprocess.run([harness.binary("av-edge"), "--check", "-c",
                            os.path.join(ROOT, "deploy", "config", "av-edge.yaml")],
                           capture_output=True, text=True, timeout=20, cwd=ROOT)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("warning: auth.secret", p.stderr)
        self.assertIn("published", p.stderr)

    # ---- item 2: revocation ----

    def test_revoked_user_loses_allocations_and_credentials_until_reinstated(self):
        self.start()
        live, spare, other = (self.credentials(u) for u in ("mallory", "mallory", "alice"))
        a = self.client(live)
        self.assertEqual(a.allocate().code, 0)
        b = self.client(other)
        self.assertEqual(b.allocate().code, 0)
        st, body = http_json(self.dir_admin, "/revoke?user=mallory", method="POST")
        self.assertEqual(st, 200, body)
        t0 = time.time()
        # The allocation ends within a second: its Refresh finds nothing (437) or is refused.
        wait_for(lambda: a.refresh().code != 0, timeout=1.0, interval=0.05,
                 what="the revoked user's allocation to end")
        self.assertLess(time.time() - t0, 1.0)
        self.assertEqual(self.client(spare).allocate().code, 403)  # minted before the revocation
        self.credentials("mallory", status=403)                      # no new ones
        self.assertEqual(b.refresh().code, 0)                        # others unaffected
        # reinstated: credentials again, and they work
        st, body = http_json(self.dir_admin, "/reinstate?user=mallory", method="POST")
        self.assertEqual(st, 200, body)
        self.assertEqual(http_json(self.dir_admin, "/reinstate?user=mallory", method="POST")[0], 404)
        fresh = self.credentials("mallory")
        self.assertGreater(fresh["ttl"], 3600)  # expires after any pre-revocation credential
        wait_for(lambda: self.client(fresh).allocate().code == 0, timeout=3,
                 what="a reinstated user's allocation")
        # credentials minted before the revocation stay refused
        self.assertEqual(self.client(spare).allocate().code, 403)
        self.wait_metric("av1", 'av_edge_auth_failures_total{reason="revoked"}', 1)

    def test_an_edge_that_connects_later_learns_the_revocation(self):
        self.start()
        cred = self.credentials("eve")
        st, _ = http_json(self.dir_admin, "/revoke?user=eve", method="POST")
        self.assertEqual(st, 200)
        self.edges["av1"].stop(signal.SIGINT)
        self.edges["av1"].start()
        wait_for(lambda: self.edges["av1"].log().count("user eve revoked") >= 2, timeout=10,
                 what="the revocation sent again to the reconnected edge")
        self.assertEqual(self.client(cred).allocate().code, 403)

    # ---- item 3: the edge's own services are denied peers ----

    def test_admin_listener_and_control_channel_are_denied_peers(self):
        self.start()
        c = self.client(self.credentials("alice"))
        self.assertEqual(c.allocate().code, 0)
        admin_host, admin_port = self.admin["av1"].rsplit(":", 1)
        self.assertEqual(c.permit(admin_host, int(admin_port)).code, 403)
        self.assertEqual(c.channel_bind(0x4000, admin_host, int(admin_port)).code, 403)
        self.assertEqual(c.permit("127.0.0.1", self.ctl_port).code, 403)  # the Director
        self.assertEqual(c.permit("127.0.0.2", 9).code, 0)  # allow_peers still admits others
        self.wait_metric("av1", 'av_edge_denied_peers_total{reason="own_address"}', 3)


    # ---- item 5: per-allocation limits ----

    def test_a_credential_opens_ten_allocations_by_default(self):
        self.start()
        cred = self.credentials("leaky")
        for i in range(10):
            self.assertEqual(self.client(cred).allocate().code, 0, f"allocation {i + 1}")
        self.assertEqual(self.client(cred).allocate().code, 486)
        # another credential of the same user still works (user_quota counts them together)
        self.assertEqual(self.client(self.credentials("leaky", ttl=300)).allocate().code, 0)
        self.wait_metric("av1", 'av_edge_quota_refusals_total{quota="credential"}', 1)

    def test_new_peers_per_second_per_allocation(self):
        self.start()  # default: 10 new peers a second, bursts of 20
        c = self.client(self.credentials("scanner"))
        self.assertEqual(c.allocate().code, 0)

        def peers(first, n):
            return lambda tid: [(T.A_PEER, T.xaddr(f"127.0.1.{i}", 9, tid))
                                for i in range(first, first + n)]
        self.assertEqual(c.request(T.CREATE_PERMISSION, peers(1, 30)).code, 508)  # a scan
        self.assertEqual(c.request(T.CREATE_PERMISSION, peers(1, 15)).code, 0)
        self.assertEqual(c.request(T.CREATE_PERMISSION, peers(1, 15)).code, 0)  # not new: free
        self.wait_metric("av1", 'av_edge_limit_refusals_total{limit="new_peers"}', 1)

    def test_packets_per_second_per_allocation(self):
        self.start(limits="  packets_per_second: 50\n")
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.2", 0))  # 127.0.0.1 is the Director's: a denied peer
        peer.settimeout(0.5)
        self.addCleanup(peer.close)
        c = self.client(self.credentials("flood"))
        self.assertEqual(c.allocate().code, 0)
        self.assertEqual(c.channel_bind(0x4001, *peer.getsockname()).code, 0)
        t0 = time.time()
        for i in range(300):
            c.send_channel(0x4001, b"x" * 100)
        got = 0
        try:
            while got < 300:
                peer.recv(2000)
                got += 1
        except socket.timeout:
            pass
        elapsed = time.time() - t0
        # one second's burst plus what the rate refilled meanwhile
        self.assertGreater(got, 0)
        self.assertLessEqual(got, 50 + int(50 * elapsed) + 5, f"{got} in {elapsed:.2f}s")
        self.wait_metric("av1", 'av_edge_dropped_packets_total{reason="packet_rate"}', 300 - got - 5)


    # ---- item 6: drain with redirection ----

    def test_draining_edge_redirects_new_allocations_to_the_least_loaded_peer(self):
        self.start(names=("av1", "av2", "av3"))
        cred = self.credentials("walker")
        live = self.client(cred, "av1")
        self.assertEqual(live.allocate().code, 0)
        busy = [self.client(self.credentials(f"busy{i}"), "av2") for i in range(2)]
        for c in busy:
            self.assertEqual(c.allocate().code, 0)

        def reported(name, n):
            st, edges = http_json(self.dir_admin, "/edges?role=av-edge")
            e = [x for x in edges["edges"] if x.get("instance") == name]
            return e and (e[0].get("report") or {}).get("allocations") == n
        wait_for(lambda: reported("av2", 2), timeout=5, what="av2's load reported")
        st, body = http_json(self.dir_admin, "/drain?instance=av1&deadline_ms=20000", method="POST")
        self.assertEqual(st, 200, body)
        self.edges["av1"].wait_log("draining", timeout=5)

        def redirected(tcp=False):
            c = self.client(self.credentials("newcomer"), "av1", tcp=tcp)
            m = c.allocate()
            if m.code != 300:
                return None
            v = m.get(A_ALTERNATE_SERVER)
            return socket.inet_ntoa(v[4:8]), struct.unpack("!H", v[2:4])[0]
        # av3 is the least loaded healthy peer (av2 holds two allocations, av1 drains)
        want = (EXT["av3"], self.ext_port["av3"])
        self.assertEqual(wait_for(redirected, timeout=5, what="a 300 from the draining edge"), want)
        self.assertEqual(redirected(tcp=True), want)  # the TCP listener on the same address
        # the client follows the redirection
        c = T.Client(want, cred["username"], cred["password"])
        self.addCleanup(c.close)
        self.assertEqual(c.allocate().code, 0)
        # the live allocation on the draining edge runs on
        self.assertEqual(live.refresh().code, 0)
        self.assertEqual(live.permit("127.0.0.2").code, 0)
        self.wait_metric("av1", "av_edge_redirected_allocations_total", 2)


if __name__ == "__main__":
    unittest.main()
