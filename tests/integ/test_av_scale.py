"""A/V edges scaled out: one Director and three av-edges on loopback. Credentials minted by
the Director work on every edge; the credential answer lists the edges least loaded first;
an edge killed outright leaves the list within one heartbeat timeout; an edge told to
stop (SIGTERM) redirects new allocations to a healthy peer (300), keeps relaying the live one without loss, leaves
the list, and exits as soon as that allocation is released."""
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
from harness import ROOT, SuiteTest, free_port, http_json, wait_for
import avturn as T

NAMES = ("av1", "av2", "av3")
EXT = {"av1": "127.0.0.131", "av2": "127.0.0.132", "av3": "127.0.0.133"}
INT = {"av1": "127.0.0.141", "av2": "127.0.0.142", "av3": "127.0.0.143"}
HEARTBEAT_MS = 300  # the Director drops an edge silent for 3 of these
DRAIN_TIMEOUT_S = 20


class AvScaleTest(SuiteTest):
    # Edges left holding allocations would drain for drain_timeout on SIGTERM.
    stop_signal = signal.SIGINT

    @classmethod
    def setUpClass(cls):
        if not (harness.have_binary("director") and harness.have_binary("av-edge")):
            raise unittest.SkipTest("director or av-edge is not built")
        cls.certs = tempfile.mkdtemp(prefix="avscale-certs-")
        subprocess.run([os.path.join(ROOT, "deploy", "certs.sh"), cls.certs], check=True,
                       capture_output=True, timeout=120)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certs, ignore_errors=True)

    def setUp(self):
        super().setUp()
        c = self.certs
        self.ctl_port = free_port()
        self.dir_admin = f"127.0.0.1:{free_port()}"
        self.director = self.daemon("director", f"""instance_id: director-scale
admin: {{listen: "{self.dir_admin}"}}
ctl: {{ listen: 127.0.0.1:{self.ctl_port}, heartbeat: {HEARTBEAT_MS}ms }}
tls: {{ cert: {c}/director.crt, key: {c}/director.key, ca: {c}/ca.crt }}
secrets: {{ rotate_interval: 1h, lifetime: 2h }}
credentials: {{ ttl: 10m }}
""", admin=self.dir_admin)
        self.edges, self.int_port = {}, {}
        bases = random.sample(range(20000, 29000, 100), 3)
        for name, base in zip(NAMES, bases):
            self.int_port[name] = free_port(INT[name])
            ext_port = free_port(EXT[name])
            admin = f"127.0.0.1:{free_port()}"
            self.edges[name] = self.daemon("av-edge", f"""instance_id: {name}
admin: {{ listen: {admin} }}
drain_timeout: {DRAIN_TIMEOUT_S}s
external: {{ listen: [{EXT[name]}:{ext_port}], tcp_listen: [], tls_listen: [] }}
internal: {{ listen: [{INT[name]}:{self.int_port[name]}] }}
relay: {{ addresses: [{EXT[name]}], port_min: {base}, port_max: {base + 99} }}
auth: {{ realm: edge.lab }}
limits: {{ total_quota: 10, user_quota: 10 }}
director:
  address: 127.0.0.1:{self.ctl_port}
  server_name: director
  report_interval: 100ms
  tls: {{ cert: {c}/av-edge.crt, key: {c}/av-edge.key, ca: {c}/ca.crt }}
""", admin=admin)
        for e in self.edges.values():
            e.wait_log("from the Director installed", timeout=10)

    # ---- helpers ----

    def credentials(self, user):
        st, body = http_json(self.dir_admin, f"/credentials?user={user}&location=intranet")
        self.assertEqual(st, 200, body)
        return body

    def order(self):
        """The edges named by the credential answer's UDP URIs, in the answer's order."""
        by_uri = {f"turn:{INT[n]}:{self.int_port[n]}?transport=udp": n for n in NAMES}
        return [by_uri[u] for u in self.credentials("probe")["uris"] if u in by_uri]

    def client(self, name, cred):
        c = T.Client((INT[name], self.int_port[name]), cred["username"], cred["password"])
        self.addCleanup(c.close)
        return c

    def wait_order(self, want, timeout=3.0):
        wait_for(lambda: self.order() == want, timeout=timeout,
                 what=f"credential answer ordered {want} (last: {self.order()})")

    def redirect_from(self, name, cred):
        """A draining edge's answer to a new Allocate once it knows a peer (an edge that has
        just connected hears of its peers with its first report)."""
        last = []

        def answer():
            last[:] = [self.client(name, cred).allocate()]
            return last[0].code == 300
        try:
            wait_for(answer, timeout=3, what=f"a 300 from the draining {name}")
        except AssertionError:
            pass
        return last[0]

    def redirected_to(self, m):
        """The edge a 300 Try Alternate names in ALTERNATE-SERVER (its internal listener)."""
        self.assertEqual(m.code, 300)
        v = m.get(0x8023)
        addr = (socket.inet_ntoa(v[4:8]), struct.unpack("!H", v[2:4])[0])
        names = [n for n in NAMES if (INT[n], self.int_port[n]) == addr]
        self.assertEqual(len(names), 1, addr)
        return names[0]

    # ---- tests ----

    def test_a_credentials_valid_everywhere_and_ordered_by_load(self):
        self.wait_order(["av1", "av2", "av3"])  # all idle: by instance id
        cred = self.credentials("alice")
        for n in NAMES:  # one credential, three edges
            self.assertEqual(self.client(n, cred).allocate().code, 0, n)
        self.wait_order(["av1", "av2", "av3"])  # one allocation each: still a tie
        # av1 gets busy: after its next report it is listed last.
        for _ in range(3):
            self.assertEqual(self.client("av1", cred).allocate().code, 0)
        self.wait_order(["av2", "av3", "av1"])
        # and av3 busier still goes behind it
        for _ in range(4):
            self.assertEqual(self.client("av3", cred).allocate().code, 0)
        self.wait_order(["av2", "av1", "av3"])

    def test_b_killed_edge_leaves_the_list_within_a_heartbeat_timeout(self):
        self.wait_order(["av1", "av2", "av3"])
        self.edges["av1"].kill()
        t0 = time.monotonic()
        # 3 heartbeats of silence + one poll of slack
        self.wait_order(["av2", "av3"], timeout=3 * HEARTBEAT_MS / 1000 + 1.0)
        self.assertLess(time.monotonic() - t0, 3 * HEARTBEAT_MS / 1000 + 1.0)
        cred = self.credentials("bob")
        first = self.order()[0]
        c = self.client(first, cred)
        self.assertEqual(c.allocate().code, 0)

    def test_c_sigterm_drains_without_loss_and_exits_when_released(self):
        self.wait_order(["av1", "av2", "av3"])
        cred = self.credentials("carol")
        c = self.client("av2", cred)
        self.assertEqual(c.allocate().code, 0)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(2)
        self.addCleanup(peer.close)
        self.assertEqual(c.channel_bind(0x4001, *peer.getsockname()).code, 0)

        edge = self.edges["av2"]
        edge.signal(signal.SIGTERM)
        t0 = time.monotonic()
        edge.wait_log("draining", timeout=3)
        # a new allocation is sent to a healthy peer (300 ALTERNATE-SERVER) ...
        self.assertIn(self.redirected_to(self.redirect_from("av2", self.credentials("dave"))),
                      ("av1", "av3"))
        # ... while the live one is still served: Refresh, and data both ways, all of it.
        self.assertEqual(c.refresh().code, 0)
        for i in range(100):
            c.send_channel(0x4001, b"out-%d" % i)
            self.assertEqual(peer.recvfrom(2000), (b"out-%d" % i, c.relay))
            peer.sendto(b"in-%d" % i, c.relay)
            self.assertEqual(c.recv_data(), ("channel", 0x4001, b"in-%d" % i))
        self.assertTrue(edge.alive())
        # the Director no longer offers it
        self.wait_order(["av1", "av3"])
        # released: the edge exits at once, long before its drain deadline
        self.assertEqual(c.refresh(0).code, 0)
        wait_for(lambda: edge.proc.poll() is not None, timeout=3, what="av2 to exit")
        self.assertEqual(edge.proc.returncode, 0, edge.log()[-2000:])
        self.assertLess(time.monotonic() - t0, DRAIN_TIMEOUT_S / 2)
        self.assertIn("drained: nothing left in flight", edge.log())
        # the remaining edges still take new allocations with fresh credentials
        fresh = self.credentials("erin")
        self.assertEqual(self.client(self.order()[0], fresh).allocate().code, 0)

    def test_d_director_drain_refuses_new_and_exits_when_empty(self):
        self.wait_order(["av1", "av2", "av3"])
        cred = self.credentials("frank")
        c = self.client("av3", cred)
        self.assertEqual(c.allocate().code, 0)
        st, body = http_json(self.dir_admin, "/drain?instance=av3&deadline_ms=15000",
                             method="POST")
        self.assertEqual(st, 200, body)
        edge = self.edges["av3"]
        edge.wait_log("the Director asks to drain", timeout=3)
        self.wait_order(["av1", "av2"])
        self.assertIn(self.redirected_to(self.redirect_from("av3", cred)), ("av1", "av2"))
        self.assertEqual(c.refresh().code, 0)  # the live allocation is still served
        self.assertEqual(c.refresh(0).code, 0)
        wait_for(lambda: edge.proc.poll() is not None, timeout=3, what="av3 to exit")
        self.assertEqual(edge.proc.returncode, 0, edge.log()[-2000:])


if __name__ == "__main__":
    unittest.main()
