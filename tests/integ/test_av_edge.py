"""av-edge end to end: stock clients (coturn's turnutils_*, stun-client) over UDP, TCP and TLS,
every error code a client can see (and the daemon serving others afterwards), the enterprise
rule, metrics, reload."""
import os
import random
import re
import signal
import socket
import struct
import subprocess
import time
import unittest

from harness import SuiteTest, assert_restart_refused, edit_config, free_port, wait_for, http_request
import avturn as T

EXT = "127.0.0.113"   # external listener and relay address
INT = "127.0.0.123"   # internal listener
ADMIN = "127.0.0.124"  # admin listener
SECRET = "integ-secret"


class AvEdgeTest(SuiteTest):
    # SIGTERM would drain the allocations a test leaves behind for drain_timeout.
    stop_signal = signal.SIGINT

    def start_edge(self, extra="", allow_loopback=False, limits="", auth="", tls=False, relay6=False,
                   relay_tcp=True):
        self.ext_port = free_port(EXT)
        self.int_port = free_port(INT)
        self.tls_port = free_port(EXT) if tls else None
        # An address of its own: the admin listener is a denied peer, and tests relay to 127.0.0.1.
        self.admin = f"{ADMIN}:{free_port(ADMIN)}"
        base = random.randrange(20000, 29000, 100)
        self.relay_range = (base, base + 99)
        limits_text = limits or "  user_quota: 50\n"
        allow = "  allow_peers: [127.0.0.1/32]\n" if allow_loopback else ""
        tls_line = f"  tls_listen: [{EXT}:{self.tls_port}]\n" if tls else "  tls_listen: []\n"
        cfg = f"""admin: {{ listen: {self.admin} }}
log: {{ level: debug }}
external:
  listen: [{EXT}:{self.ext_port}]
  tcp_listen: []
{tls_line}{allow}internal:
  listen: [{INT}:{self.int_port}]
relay: {{ addresses: [{EXT}{', "::1"' if relay6 else ''}], port_min: {base}, port_max: {base + 99}{'' if relay_tcp else ', tcp: false'} }}
auth:
  realm: edge.lab
  secret: {SECRET}
  users: [{{name: alice, password: wonder}}, {{name: bob, password: builder}}]
{auth}limits:
{limits_text}director: {{ enabled: false }}
{extra}"""
        self.edge = self.daemon("av-edge", cfg, admin=self.admin)
        return self.edge

    def ext(self, user="alice", password="wonder", **kw):
        c = T.Client((EXT, self.ext_port), user, password, **kw)
        self.addCleanup(c.close)
        return c

    def int_(self, user="bob", password="builder", **kw):
        c = T.Client((INT, self.int_port), user, password, **kw)
        self.addCleanup(c.close)
        return c

    def wait_metric(self, name, at_least):
        wait_for(lambda: self.edge.metrics().get(name, 0) >= at_least, timeout=5,
                 what=f"{name} >= {at_least}")

    def assert_serving(self):
        """Another client still gets an allocation and a Binding answer."""
        c = self.ext()
        self.assertEqual(c.allocate().code, 0)
        self.assertEqual(c.request(T.BINDING, auth=False).code, 0)
        self.assertEqual(c.refresh(0).code, 0)
        self.edge.alive()


class TestStockClients(AvEdgeTest):
    def test_turnutils_stunclient_binding(self):
        # turnutils_stunclient sends one 20-byte Binding and never retransmits: its 32-byte
        # answer is larger, so by default (strict_amplification) it gets none. Retransmitting
        # clients (RFC 8489, browsers) are answered once their retransmissions cover it.
        self.start_edge(auth="  strict_amplification: false\n")
        p = self.run_tool(["turnutils_stunclient", "-p", str(self.ext_port), EXT], timeout=20)
        out = p.stdout.decode() + p.stderr.decode()
        self.assertIn("UDP reflexive addr: 127.0.0.1:", out)

    def test_stun_client_gets_mapped_address(self):
        """stun-client speaks RFC 3489 (no magic cookie): it still gets MAPPED-ADDRESS."""
        self.start_edge()
        p = self.run_tool(["stun", f"{EXT}:{self.ext_port}", "-v"], timeout=30)
        out = p.stdout.decode() + p.stderr.decode()
        self.assertRegex(out, r"MappedAddress = 127\.0\.0\.1:\d+")
        self.assertIn("test I = 1", out)

    def uclient(self, args, host, port, n=50, m=4):
        p = self.run_tool(["turnutils_uclient"] + args + ["-p", str(port), "-n", str(n), "-m", str(m),
                                                          "-l", "172", host], timeout=60)
        out = p.stdout.decode() + p.stderr.decode()
        self.assertIn("Total lost packets 0 (0.000000%)", out, out[-2000:])
        sent = re.findall(r"tot_send_msgs=(\d+)", out)
        self.assertTrue(sent and max(map(int, sent)) >= n * m, out[-1000:])
        return out

    def test_uclient_udp_rest_credentials(self):
        """-W: TURN REST credentials from the shared secret, client-to-client through the
        internal side (the external side would refuse the edge's own relay address)."""
        self.start_edge()
        self.uclient(["-W", SECRET, "-y"], INT, self.int_port)
        self.wait_metric('av_edge_relayed_packets_total{direction="to_peer"}', 200)
        self.wait_metric('av_edge_relayed_packets_total{direction="to_client"}', 200)

    def test_uclient_udp_static_user_with_peer(self):
        """-u/-w over the external side to a peer (turnutils_peer) allowed for labs."""
        self.start_edge(allow_loopback=True)
        peer_port = free_port("127.0.0.1", socket.SOCK_DGRAM)
        if not __import__("shutil").which("turnutils_peer"):
            self.skipTest("turnutils_peer is not installed")
        peer = subprocess.Popen(["turnutils_peer", "-L", "127.0.0.1", "-p", str(peer_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (peer.kill(), peer.wait()))
        time.sleep(0.3)
        self.uclient(["-u", "alice", "-w", "wonder", "-e", "127.0.0.1", "-r", str(peer_port)],
                     EXT, self.ext_port)

    def test_uclient_two_workers_reservations_cross_workers(self):
        """workers: 2 with SO_REUSEPORT: uclient's EVEN-PORT reservation tokens are redeemed
        from other sockets, which may land on the other worker."""
        # 10 clients, each with a peer allocation, on one REST credential
        self.start_edge(extra="workers: 2\n", limits="  user_quota: 50\n  allocations_per_credential: 20\n")
        self.uclient(["-W", SECRET, "-y"], INT, self.int_port, n=50, m=10)

    def test_uclient_tcp(self):
        self.start_edge()
        self.uclient(["-t", "-W", SECRET, "-y"], INT, self.int_port)

    def test_uclient_tls(self):
        self.start_edge(tls=True, allow_loopback=True)
        peer_port = free_port("127.0.0.1", socket.SOCK_DGRAM)
        peer = subprocess.Popen(["turnutils_peer", "-L", "127.0.0.1", "-p", str(peer_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (peer.kill(), peer.wait()))
        time.sleep(0.3)
        self.uclient(["-t", "-S", "-W", SECRET, "-e", "127.0.0.1", "-r", str(peer_port)],
                     EXT, self.tls_port)


class TestErrorCodes(AvEdgeTest):
    def test_401_unauthenticated_wrong_password_unknown_user(self):
        self.start_edge()
        c = self.ext()
        m = c.request(T.ALLOCATE, [(T.A_TRANSPORT, bytes([17, 0, 0, 0]))], auth=False)
        self.assertEqual(m.code, 401)
        self.assertIsNotNone(m.get(T.A_NONCE))
        self.assertIsNotNone(m.get(T.A_REALM))
        self.assertEqual(self.ext("alice", "wrong").allocate().code, 401)
        self.assertEqual(self.ext("nobody", "x").allocate().code, 401)
        user, _ = T.rest_credentials(SECRET, "carol", ttl=-10)  # expired REST username
        _, pw = T.rest_credentials(SECRET, "carol")
        self.assertEqual(self.ext(user, pw).allocate().code, 401)
        self.assert_serving()
        self.wait_metric('av_edge_auth_failures_total{reason="bad_integrity"}', 1)
        self.wait_metric('av_edge_auth_failures_total{reason="unknown_user"}', 1)
        self.wait_metric('av_edge_auth_failures_total{reason="expired"}', 1)

    def test_401_is_not_larger_than_needed(self):
        """The challenge to an unauthenticated request carries only ERROR-CODE (no phrase),
        REALM and NONCE: no SOFTWARE, no reason text."""
        self.start_edge()
        c = self.ext()
        raw, tid = T.build(T.ALLOCATE, T.REQUEST, [(T.A_TRANSPORT, bytes([17, 0, 0, 0]))],
                           fingerprint=False)
        m = c.transact(raw, tid)
        self.assertEqual(m.code, 401)
        self.assertEqual(len(m.raw), 20 + 8 + (4 + 8) + (4 + 16))

    def test_400_bad_request(self):
        self.start_edge()
        c = self.ext()
        self.assertEqual(c.request(T.ALLOCATE, []).code, 400)  # no REQUESTED-TRANSPORT
        self.assertEqual(c.allocate().code, 0)
        self.assertEqual(c.request(T.CHANNEL_BIND, lambda tid: [
            (T.A_CHANNEL, struct.pack("!HH", 0x3000, 0)),
            (T.A_PEER, T.xaddr("192.0.2.1", 9, tid))]).code, 400)
        self.assertEqual(c.request(T.CREATE_PERMISSION, []).code, 400)
        self.assert_serving()

    def test_420_unknown_comprehension_required(self):
        self.start_edge()
        c = self.ext()
        m = c.request(T.ALLOCATE, [(T.A_TRANSPORT, bytes([17, 0, 0, 0])), (0x0031, b"zz")])
        self.assertEqual(m.code, 420)
        self.assertEqual(m.get(T.A_UNKNOWN), b"\x00\x31")
        m = c.request(T.BINDING, [(0x0003, b"\0\0\0\0")], auth=False)
        self.assertEqual(m.code, 420)
        self.assert_serving()

    def test_437_allocation_mismatch(self):
        self.start_edge()
        c = self.ext()
        self.assertEqual(c.refresh().code, 437)
        self.assertEqual(c.permit("192.0.2.1").code, 437)
        self.assertEqual(c.allocate().code, 0)
        self.assertEqual(c.allocate().code, 437)  # a second Allocate on the same 5-tuple
        self.assertEqual(c.refresh(0).code, 0)
        self.assertEqual(c.refresh().code, 437)
        self.assert_serving()

    def test_438_stale_nonce(self):
        self.start_edge(auth="")
        c = self.ext()
        self.assertEqual(c.allocate().code, 0)
        c.nonce = b"AAAAAAAAAAAAAAAA"
        raw, tid = T.build(T.REFRESH, T.REQUEST, [
            (T.A_USERNAME, b"alice"), (T.A_REALM, b"edge.lab"), (T.A_NONCE, c.nonce)],
            key=T.long_term_key("alice", "edge.lab", "wonder"))
        m = c.transact(raw, tid)
        self.assertEqual(m.code, 438)
        self.assertIsNotNone(m.get(T.A_NONCE))
        self.assertEqual(c.refresh().code, 0)  # the new nonce works
        self.assert_serving()

    def test_438_nonce_expires(self):
        self.start_edge(auth="  nonce_lifetime: 1s\n".replace("  ", "", 0))
        c = self.ext()
        self.assertEqual(c.allocate().code, 0)
        time.sleep(2.1)
        nonce = c.nonce
        raw, tid = T.build(T.REFRESH, T.REQUEST, [
            (T.A_USERNAME, b"alice"), (T.A_REALM, b"edge.lab"), (T.A_NONCE, nonce)],
            key=T.long_term_key("alice", "edge.lab", "wonder"))
        self.assertEqual(c.transact(raw, tid).code, 438)
        self.assert_serving()

    def test_440_442_family_and_transport(self):
        self.start_edge()
        c = self.ext()
        m = c.allocate([(T.A_RAF, bytes([2, 0, 0, 0]))])  # IPv6: no IPv6 relay address
        self.assertEqual(m.code, 440)
        self.assertEqual(c.allocate(transport=132).code, 442)  # SCTP: no such relay
        self.assertEqual(c.allocate(transport=6).code, 400)  # TCP relay over UDP (RFC 6062 §5.1)
        self.assertEqual(c.allocate().code, 0)
        self.assert_serving()

    def test_441_wrong_credentials(self):
        self.start_edge()
        c = self.ext()
        self.assertEqual(c.allocate().code, 0)
        m = c.request(T.REFRESH, [], user="bob", password="builder")
        self.assertEqual(m.code, 441)
        self.assertEqual(c.refresh().code, 0)
        self.assert_serving()

    def test_486_user_quota(self):
        self.start_edge(limits="  user_quota: 5\n")
        clients = [self.ext() for _ in range(5)]
        for c in clients:
            self.assertEqual(c.allocate().code, 0)
        self.assertEqual(self.ext().allocate().code, 486)
        self.assertEqual(self.ext("bob", "builder").allocate().code, 0)  # others unaffected
        self.wait_metric('av_edge_quota_refusals_total{quota="user"}', 1)

    def test_508_total_quota(self):
        self.start_edge(limits="  total_quota: 2\n")
        a, b = self.ext(), self.ext("bob", "builder")
        self.assertEqual(a.allocate().code, 0)
        self.assertEqual(b.allocate().code, 0)
        c = self.ext()
        self.assertEqual(c.allocate().code, 508)
        self.assertEqual(a.refresh(0).code, 0)
        self.assertEqual(c.allocate().code, 0)

    def test_403_external_cannot_reach_inside(self):
        """The enterprise rule: loopback, internal networks, the edge's own addresses,
        link-local and multicast are refused to external allocations."""
        self.start_edge()
        c = self.ext()
        self.assertEqual(c.allocate().code, 0)
        for host in ("127.0.0.1", "10.1.2.3", "192.168.1.1", "172.16.0.9", EXT, INT,
                     "169.254.0.1", "224.0.0.5", "0.0.0.0"):
            self.assertEqual(c.permit(host).code, 403, host)
        self.assertEqual(c.channel_bind(0x4000, "127.0.0.1", 9).code, 403)
        self.assertEqual(c.permit("192.0.2.10").code, 0)  # public addresses are fine
        self.edge.wait_log("refused CreatePermission from user alice: loopback")
        self.wait_metric('av_edge_denied_peers_total{reason="loopback"}', 1)
        self.wait_metric('av_edge_denied_peers_total{reason="internal_network"}', 3)
        self.wait_metric('av_edge_denied_peers_total{reason="own_address"}', 2)
        self.assert_serving()


class TestRelayReuse(AvEdgeTest):
    def test_a_released_relay_port_carries_nothing_of_its_last_allocation(self):
        """A released allocation's UDP relay socket is kept for the next allocation (it saves
        the socket set-up and tear-down of every Allocate): the port's next owner gets
        nothing the last owner's peer sent, in the gap or after, until it permits that peer
        itself."""
        self.start_edge(allow_loopback=True)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        self.addCleanup(peer.close)
        first = self.ext()
        self.assertEqual(first.allocate().code, 0)
        self.assertEqual(first.permit("127.0.0.1").code, 0)
        peer.sendto(b"to-first", first.relay)
        self.assertEqual(first.recv_data(), ("data", peer.getsockname(), b"to-first"))
        old = first.relay
        self.assertEqual(first.refresh(0).code, 0)
        peer.sendto(b"in-the-gap", old)
        time.sleep(0.2)
        # The next allocation on the same worker takes the port (two workers: try a few).
        second = None
        for _ in range(8):
            c = self.ext("bob", "builder", timeout=0.5)
            self.assertEqual(c.allocate().code, 0)
            if c.relay == old:
                second = c
                break
        self.assertIsNotNone(second, f"no new allocation got the released relay port {old}")
        peer.sendto(b"unpermitted", old)
        with self.assertRaises(socket.timeout):
            second.recv_data()
        self.assertEqual(second.permit("127.0.0.1").code, 0)
        peer.sendto(b"to-second", old)
        self.assertEqual(second.recv_data(), ("data", peer.getsockname(), b"to-second"))
        self.assertEqual(second.refresh(0).code, 0)
        self.assert_serving()

    def test_kept_relay_sockets_give_their_ports_back_when_the_range_runs_out(self):
        """Released sockets kept for reuse hold ports of the range; an allocation that cannot
        take one (DONT-FRAGMENT sets its own socket option) still gets a port when they
        hold all that is left."""
        self.start_edge(limits="  user_quota: 500\n  allocations_per_credential: 500\n")
        size = self.relay_range[1] - self.relay_range[0] + 1
        plain = [self.ext(timeout=1.0) for _ in range(size)]
        for c in plain:
            self.assertEqual(c.allocate().code, 0)
        for c in plain:
            self.assertEqual(c.refresh(0).code, 0)
        for i in range(size):
            c = self.ext(timeout=1.0)
            self.assertEqual(c.allocate([(T.A_DF, b"")]).code, 0, f"DONT-FRAGMENT allocation {i}")


class TestEnterpriseFlow(AvEdgeTest):
    def test_internal_user_admits_external_party_both_ways(self):
        """An internal user's allocation with a permission for the external party relays both
        ways; an unpermitted sender gets nothing through; the external party's own
        allocation cannot name the internal relay."""
        self.start_edge()
        inside = self.int_()
        self.assertEqual(inside.allocate().code, 0)
        relay = inside.relay
        self.assertEqual(relay[0], EXT)  # relayed addresses live on the external side
        party = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        party.bind(("127.0.0.1", 0))
        party.settimeout(2)
        self.addCleanup(party.close)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.2", 0))
        self.addCleanup(stranger.close)
        self.assertEqual(inside.permit("127.0.0.1").code, 0)
        # external party -> relay -> internal user (Data indication)
        stranger.sendto(b"not-admitted", relay)
        party.sendto(b"hello-inside", relay)
        kind, peer, data = inside.recv_data()
        self.assertEqual((kind, data), ("data", b"hello-inside"))
        self.assertEqual(peer, party.getsockname())
        # internal user -> relay -> external party (Send indication)
        inside.send_indication(*party.getsockname(), b"hello-outside")
        data, src = party.recvfrom(2000)
        self.assertEqual((data, src), (b"hello-outside", relay))
        # with a channel both ways
        self.assertEqual(inside.channel_bind(0x4001, *party.getsockname()).code, 0)
        for i in range(20):
            inside.send_channel(0x4001, b"c%d" % i)
            self.assertEqual(party.recvfrom(2000)[0], b"c%d" % i)
            party.sendto(b"p%d" % i, relay)
            self.assertEqual(inside.recv_data(), ("channel", 0x4001, b"p%d" % i))
        # the stranger's datagram never arrived
        self.wait_metric('av_edge_dropped_packets_total{reason="no_permission"}', 1)
        # the external party's own allocation may not name the internal user's relay
        outside = self.ext()
        self.assertEqual(outside.allocate().code, 0)
        self.assertEqual(outside.permit(relay[0], relay[1]).code, 403)

    def test_tcp_client_allocation_ends_with_connection(self):
        self.start_edge()
        c = self.int_(tcp=True)
        self.assertEqual(c.allocate().code, 0)
        self.assertEqual(c.permit("127.0.0.1").code, 0)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        self.addCleanup(peer.close)
        self.assertEqual(c.channel_bind(0x4002, *peer.getsockname()).code, 0)
        peer.sendto(b"abcde", c.relay)  # 5 bytes: padded to 12 on the stream
        self.assertEqual(c.recv_data(), ("channel", 0x4002, b"abcde"))
        wait_for(lambda: self.edge.metrics()["av_edge_allocations"] == 1, what="gauge at 1")
        # Refresh 0 over TCP is answered on the same connection, which stays usable.
        self.assertEqual(c.refresh(0).code, 0)
        self.assertEqual(c.allocate().code, 0)
        c.close()
        wait_for(lambda: self.edge.metrics()["av_edge_allocations"] == 0, what="gauge at 0")


class TestOperations(AvEdgeTest):
    def test_reload_changes_secret_and_keeps_allocations(self):
        self.start_edge()
        a = self.ext()
        self.assertEqual(a.allocate().code, 0)
        with open(self.edge.config) as f:
            text = f.read()
        with open(self.edge.config, "w") as f:
            f.write(text.replace(SECRET, "rotated-secret"))
        self.edge.signal(signal.SIGHUP)
        wait_for(lambda: self.edge.metrics().get('av_edge_config_reloads_total{result="ok"}') == 1,
                 what="reload")
        user, pw = T.rest_credentials("rotated-secret", "dave")
        self.assertEqual(self.ext(user, pw).allocate().code, 0)
        user, pw = T.rest_credentials(SECRET, "erin")  # previous secret still accepted
        self.assertEqual(self.ext(user, pw).allocate().code, 0)
        self.assertEqual(a.refresh().code, 0)

    def test_reload_changing_a_listener_is_refused(self):
        """The sockets stay bound where they are: a reload that moves a listener is refused
        with the key's position (it used to be accepted, and the edge then advertised an
        address it did not listen on)."""
        self.start_edge()
        edit_config(self.edge, f"{EXT}:{self.ext_port}", f"{EXT}:{free_port(EXT)}")
        assert_restart_refused(self.edge, "external.listen")
        self.assertEqual(self.edge.metrics()['av_edge_config_reloads_total{result="refused"}'], 1)
        self.assert_serving()

    def test_bad_config_is_refused_with_position(self):
        d = self.daemon("av-edge", "admin: { listen: 127.0.0.1:1 }\n"
                        "relay: { port_min: 60000, port_max: 50000 }\n"
                        "director: { enabled: false }\n", start=False)
        p = subprocess.run([d.name and os.path.join(os.environ.get("SUITE_BUILD", "build"), "bin", "av-edge"),
                            "--check", "-c", d.config], capture_output=True, timeout=10)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("port_min", p.stderr.decode() + p.stdout.decode())


class TestCertificateRotation(AvEdgeTest):
    def test_rotation_under_load_by_sighup_and_by_file_change(self):
        """TURN over TLS under load while the certificate is renewed twice: by SIGHUP, then by
        renaming new files over the old ones (no signal). New handshakes show the new serial,
        a TLS connection held from before keeps its allocation, and no request fails."""
        import ssl
        from harness import ROOT
        import rotation as R
        cadir = os.path.join(ROOT, "build", "certs")
        subprocess.run(["deploy/certs.sh", "build/certs"], cwd=ROOT, check=True, capture_output=True)
        crt, key = R.make_cert(self.tmp, "av-edge", 0x1001, cadir)
        # All the load comes from 127.0.0.1: no per-source limit on its challenges.
        self.start_edge(tls=True, auth="  unauth_rate: 0\n",
                        extra=f"tls: {{cert: {crt}, key: {key}}}\n")
        self.assertEqual(R.peer_serial(EXT, self.tls_port), 0x1001)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        def tls_client():
            c = T.Client((EXT, self.tls_port), "alice", "wonder", tcp=True, timeout=10)
            c.sock = ctx.wrap_socket(c.sock)
            return c

        held = tls_client()
        self.addCleanup(held.close)
        self.assertEqual(held.allocate(transport=T.TCP).code, 0)

        def one():  # a new TLS connection, an allocation on it and its release
            c = tls_client()
            try:
                for what, m in (("allocate", lambda: c.allocate(transport=T.TCP)),
                                ("release", lambda: c.refresh(0))):
                    if m().code != 0:
                        raise AssertionError(f"{what} failed")
            finally:
                c.close()

        load = R.Load(one, threads=2, max_s=90)
        try:
            time.sleep(0.5)
            R.make_cert(self.tmp, "av-edge", 0x1002, cadir)
            self.edge.signal(signal.SIGHUP)
            wait_for(lambda: R.peer_serial(EXT, self.tls_port) == 0x1002, timeout=10,
                     what="serial 0x1002 after SIGHUP")
            self.assertEqual(held.refresh().code, 0)
            # A renewal tool writes the key, then (a moment later) the certificate: the
            # edge waits for a matching pair and then takes it without a signal.
            R.make_cert(self.tmp, "av-edge", 0x1003, cadir, key_first_delay=0.3)
            wait_for(lambda: R.peer_serial(EXT, self.tls_port) == 0x1003, timeout=15,
                     what="serial 0x1003 after the files changed")
            self.assertEqual(held.refresh().code, 0)
            time.sleep(0.5)
        finally:
            ok, failed = load.stop()
        self.assertEqual(failed, 0, "\n".join(load.errors))
        self.assertGreater(ok, 10)
        log = self.edge.log()
        self.assertRegex(log, r"certificate .*av-edge.crt changed: subject CN=av-edge, serial 10:03, "
                              r"notAfter \d{4}-\d\d-\d\dT")
        m = self.edge.metrics()
        na = [v for k, v in m.items() if k.startswith("av_edge_tls_certificate_not_after_seconds{")
              and "av-edge.crt" in k]
        self.assertEqual(len(na), 1, m.keys())
        self.assertGreater(na[0], time.time() + 29 * 86400)


class TestControlChannelCertificate(AvEdgeTest):
    def test_reload_renews_the_director_link_certificate(self):
        """The control channel's client certificate is reloaded too: after a renewal (by
        SIGHUP, then by the files alone) the next connection to the Director shows it."""
        from harness import ROOT
        import rotation as R
        cadir = os.path.join(ROOT, "build", "certs")
        subprocess.run(["deploy/certs.sh", "build/certs"], cwd=ROOT, check=True, capture_output=True)
        fake = R.FakeDirector(cadir)
        self.addCleanup(fake.stop)
        crt, key = R.make_cert(self.tmp, "av-edge", 0x6001, cadir)
        self.start_edge(extra="").stop()
        link = (f"director: {{enabled: true, address: {fake.addr}, server_name: director, "
                f"tls: {{cert: {crt}, key: {key}, ca: {cadir}/ca.crt}}}}\n")
        edit_config(self.edge, "director: { enabled: false }\n", link)
        self.edge.start()
        wait_for(lambda: 0x6001 in fake.serials, timeout=10, what="first link certificate")
        R.make_cert(self.tmp, "av-edge", 0x6002, cadir)
        self.edge.signal(signal.SIGHUP)
        wait_for(lambda: 0x6002 in fake.serials, timeout=15, what="renewed link certificate")
        R.make_cert(self.tmp, "av-edge", 0x6003, cadir, key_first_delay=0.3)
        wait_for(lambda: 0x6003 in fake.serials, timeout=15, what="link certificate from files")


class TestUserBandwidth(AvEdgeTest):
    def test_per_user_cap_holds_across_two_workers(self):
        """bandwidth_per_user is one budget for the user whatever worker each of its
        allocations landed on: 16 of alice's allocations (spread over two SO_REUSEPORT
        workers by their source ports) flood a peer, and what arrives stays within the burst
        plus the rate for the time taken, not twice that."""
        self.start_edge(extra="workers: 2\n", allow_loopback=True,
                        limits="  user_quota: 50\n  allocations_per_credential: 50\n"
                               "  bandwidth_per_user: 20k\n")
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(0.5)
        self.addCleanup(peer.close)
        clients = []
        for _ in range(16):
            c = self.ext()
            self.assertEqual(c.allocate().code, 0)
            self.assertEqual(c.channel_bind(0x4001, *peer.getsockname()).code, 0)
            clients.append(c)
        payload = os.urandom(1000)
        t0 = time.time()
        for _ in range(40):  # 640 KB offered in well under a second
            for c in clients:
                c.send_channel(0x4001, payload)
        got = 0
        try:
            while True:
                got += len(peer.recv(2000))
        except socket.timeout:
            pass
        elapsed = time.time() - t0
        cap = 20 * 1024
        # The burst, the rate for the time taken, and one 20 ms slice each worker may hold.
        allowed = cap + cap * elapsed + 2 * cap / 50
        self.assertGreater(got, cap / 2, "the cap let nothing through")
        self.assertLessEqual(got, allowed, f"{got} bytes in {elapsed:.2f} s past a 20 KiB/s cap")
        self.wait_metric('av_edge_dropped_packets_total{reason="bandwidth"}', 1)


class TestProbe(AvEdgeTest):
    def test_av_probe_50_streams_zero_loss(self):
        """av-probe: 50 SRTP streams of 50 packets/s each way through the internal user's
        relay; every packet arrives, authenticates and decrypts."""
        if not os.access(os.path.join(os.environ.get("SUITE_BUILD", "build"), "bin", "av-probe"), os.X_OK):
            self.skipTest("av-probe is not built")
        self.start_edge()
        probe = os.path.join(os.environ.get("SUITE_BUILD", "build"), "bin", "av-probe")
        p = subprocess.run([probe, "--external", f"{EXT}:{self.ext_port}",
                            "--internal", f"{INT}:{self.int_port}", "--secret", SECRET,
                            "--streams", "50", "--rate", "50", "--seconds", "3"],
                           capture_output=True, timeout=60)
        out = p.stdout.decode() + p.stderr.decode()
        self.assertEqual(p.returncode, 0, out)
        self.assertIn("loss_pct=0.000 auth_failures=0 malformed=0", out)
        self.assertIn("sent=15000 received=15000", out)
        self.wait_metric('av_edge_relayed_packets_total{direction="to_client"}', 7500)
        self.wait_metric('av_edge_relayed_packets_total{direction="to_peer"}', 7500)

    def probe(self, *args, timeout=60):
        probe = os.path.join(os.environ.get("SUITE_BUILD", "build"), "bin", "av-probe")
        if not os.access(probe, os.X_OK):
            self.skipTest("av-probe is not built")
        p = subprocess.run([probe, "--external", f"{EXT}:{self.ext_port}",
                            "--internal", f"{INT}:{self.int_port}", "--secret", SECRET] + list(args),
                           capture_output=True, timeout=timeout)
        return p.returncode, p.stdout.decode() + p.stderr.decode()

    def test_av_probe_outlives_permission_channel_and_allocation_lifetimes(self):
        """Issue 19.7: av-probe lost every packet once its permissions expired (300 s). Here
        av-edge grants 2 s permissions, 3 s channels and allocations and 1 s nonces: the probe
        refreshes each before it expires (answering 438 Stale Nonce) and loses nothing."""
        self.start_edge(limits="  user_quota: 50\n  permission_lifetime: 2s\n  channel_lifetime: 3s\n"
                               "  default_lifetime: 3s\n  max_lifetime: 3s\n",
                        auth="  nonce_lifetime: 1s\n")
        rc, out = self.probe("--streams", "2", "--rate", "50", "--seconds", "8",
                             "--permission-lifetime", "2", "--channel-lifetime", "3")
        self.assertEqual(rc, 0, out)
        self.assertIn("sent=1600 received=1600 loss_pct=0.000", out)
        self.assertIn("released=4/4", out)
        m = re.search(r"refreshes=(\d+) refresh_failures=(\d+)", out)
        self.assertTrue(m, out)
        # 8 s: allocations (4) about every 1.5 s, permissions and channels (2 each) every 1-1.5 s
        self.assertGreaterEqual(int(m.group(1)), 4 * 4, out)
        self.assertEqual(int(m.group(2)), 0, out)

    def test_av_probe_release_answers_stale_nonce(self):
        """A release whose nonce went stale (438) is sent again with the fresh nonce: the
        allocations end at once instead of living out their lifetime (10 min here)."""
        self.start_edge(auth="  nonce_lifetime: 1s\n")
        rc, out = self.probe("--streams", "1", "--rate", "20", "--seconds", "2.5")
        self.assertEqual(rc, 0, out)
        self.assertIn("released=2/2", out)
        # The gauge is folded from the workers every 250 ms.
        wait_for(lambda: self.edge.metrics().get("av_edge_allocations") == 0, timeout=3,
                 what="the probe's allocations gone (released, not left to expire)")


class TestIPv6(AvEdgeTest):
    def test_ipv6_and_dual_stack_relays(self):
        """REQUESTED-ADDRESS-FAMILY IPv6 gets an IPv6 relay that relays both ways;
        ADDITIONAL-ADDRESS-FAMILY gets one relayed address of each family."""
        if not socket.has_ipv6:
            self.skipTest("no IPv6")
        self.start_edge(relay6=True)
        c = self.int_()
        m = c.allocate([(T.A_RAF, bytes([2, 0, 0, 0]))])
        self.assertEqual(m.code, 0)
        relay = T.parse_xaddr(m.get(T.A_RELAYED), m.tid)
        self.assertEqual(relay[0], "::1")
        peer = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        peer.bind(("::1", 0))
        peer.settimeout(2)
        self.addCleanup(peer.close)
        self.assertEqual(c.permit("::1").code, 0)
        self.assertEqual(c.permit("127.0.0.1").code, 443)  # IPv4 peer on an IPv6-only relay
        peer.sendto(b"v6-in", relay)
        kind, src, data = c.recv_data()
        self.assertEqual((kind, src[0], data), ("data", "::1", b"v6-in"))
        c.send_indication("::1", peer.getsockname()[1], b"v6-out")
        data, src = peer.recvfrom(100)
        self.assertEqual((data, src[:2]), (b"v6-out", relay))
        d = self.int_()
        m = d.allocate([(0x8000, bytes([2, 0, 0, 0]))])
        self.assertEqual(m.code, 0)
        fams = sorted(":" in T.parse_xaddr(v, m.tid)[0] for v in m.all(T.A_RELAYED))
        self.assertEqual(fams, [False, True])


if __name__ == "__main__":
    unittest.main()
