"""Federation between two of our suites on loopback: two Directors, two access edges, and a
local DNS server (dnsmasq) serving the _sipfederationtls._tcp SRV records. A MESSAGE
crosses from a user of one domain to a user of the other over mutual TLS between the edges."""
import shutil
import socket
import subprocess
import time

from harness import SuiteTest, free_port, wait_for
from siplab import USERS, Lab, UdpUA, parse_status, header

A_IPS = ("127.0.0.10", "127.0.0.11", "127.0.0.21")
B_IPS = ("127.0.0.30", "127.0.0.31", "127.0.0.41")


class Federation(SuiteTest):
    def dnsmasq(self, records):
        if not shutil.which("dnsmasq"):
            self.skipTest("dnsmasq is not installed")
        port = free_port("127.0.0.1", socket.SOCK_DGRAM)
        argv = ["dnsmasq", "--keep-in-foreground", "--no-daemon", f"--port={port}",
                "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                "--conf-file=/dev/null", "--pid-file=", "--user=root", "--log-queries"]
        # (domain, ip, port) or (domain, ip, port, priority, target host)
        for domain, ip, p, *more in records:
            prio, host = more if more else (0, domain)
            argv += [f"--srv-host=_sipfederationtls._tcp.{domain},{host},{p},{prio}",
                     f"--host-record={host},{ip}"]
        d = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (d.terminate(), d.wait()))
        time.sleep(0.3)
        return f"127.0.0.1:{port}"

    def two_suites(self, dns, a_mtls, b_mtls):
        """Suite A (access-edge.lab) and suite B (partner.lab), both discovering partners
        through the DNS server dns; each domain is a name its edge certificate carries."""
        fed = "federation: {{discovery: true, dns_servers: \"{dns}\"}}\n".format(dns=dns)
        a = Lab(self, domain="access-edge.lab", ips=A_IPS, cert="access-edge", extra_edge=fed,
                mtls_port=a_mtls)
        b = Lab(self, domain="partner.lab", ips=B_IPS, cert="partner", extra_edge=fed,
                mtls_port=b_mtls)
        return a, b

    def bob_waits_for_a_message(self, b):
        """bob, a user of suite B, registered at its Director, with a sipp UAS that answers
        one MESSAGE (the process is returned)."""
        bob_port = free_port("127.0.0.5", socket.SOCK_DGRAM)
        u = UdpUA("127.0.0.5", bob_port, domain="partner.lab")
        r, _ = u.register((B_IPS[0], b.dir_sip), "bob", USERS["bob"])
        u.close()
        self.assertEqual(parse_status(r), 200, r)
        uas = b.sipp("message_uas.xml", None, "bob", ip="127.0.0.5", port=bob_port, background=True)
        time.sleep(0.3)
        return uas

    def test_message_crosses_between_two_suites(self):
        a_mtls, b_mtls = free_port(A_IPS[1]), free_port(B_IPS[1])
        dns = self.dnsmasq([("access-edge.lab", A_IPS[1], a_mtls), ("partner.lab", B_IPS[1], b_mtls)])
        a, b = self.two_suites(dns, a_mtls, b_mtls)
        uas = self.bob_waits_for_a_message(b)
        # alice of suite A sends from inside A (to A's Director).
        ua = UdpUA("127.0.0.6", domain="access-edge.lab")
        self.addCleanup(ua.close)
        ua.request("MESSAGE", "sip:bob@partner.lab", (A_IPS[0], a.dir_sip), user="alice",
                   to_uri="sip:bob@partner.lab", body="hello across",
                   headers="Content-Type: text/plain\r\n")
        r = ua.recv(timeout=8)
        self.assertEqual(parse_status(r), 200, r)
        out, _ = uas.communicate(timeout=10)
        self.assertEqual(uas.returncode, 0, out.decode(errors="replace")[-2000:])
        self.assertIn("federation lookup: partner.lab", a.edge.log())
        # And back: bob's MESSAGE to alice reuses the connection A's edge opened (RFC 5923
        # alias), so B's edge opens none of its own (one connection on each side).
        alice = UdpUA("127.0.0.4", domain="access-edge.lab")
        self.addCleanup(alice.close)
        r, _ = alice.register((A_IPS[0], a.dir_sip), "alice", USERS["alice"])
        self.assertEqual(parse_status(r), 200, r)
        bob = UdpUA("127.0.0.5", domain="partner.lab")
        self.addCleanup(bob.close)
        bob.request("MESSAGE", "sip:alice@access-edge.lab", (B_IPS[0], b.dir_sip), user="bob",
                    to_uri="sip:alice@access-edge.lab", body="hello back")
        req = alice.recv(timeout=8)
        self.assertIsNotNone(req, "MESSAGE from B did not reach alice")
        self.assertTrue(req.startswith("MESSAGE "), req)
        self.assertEqual(b.edge_metric("access_edge_sip_connections"), 1)

    def test_unreachable_srv_target_is_passed_over_for_the_next(self):
        # partner.lab's first SRV target (priority 10) refuses connections; the second
        # (priority 20) is B's edge. The request that met the dead edge is lost, as a
        # datagram would be; its retransmission, and every request after it, goes to the
        # next target instead of failing against the first again.
        a_mtls, b_mtls = free_port(A_IPS[1]), free_port(B_IPS[1])
        dead = free_port(B_IPS[1])
        dns = self.dnsmasq([("access-edge.lab", A_IPS[1], a_mtls),
                            ("partner.lab", B_IPS[1], dead, 10, "edge1.partner.lab"),
                            ("partner.lab", B_IPS[1], b_mtls, 20, "edge2.partner.lab")])
        a, b = self.two_suites(dns, a_mtls, b_mtls)
        uas = self.bob_waits_for_a_message(b)
        ua = UdpUA("127.0.0.6", domain="access-edge.lab")
        self.addCleanup(ua.close)

        def message(cid):
            ua.request("MESSAGE", "sip:bob@partner.lab", (A_IPS[0], a.dir_sip), user="alice",
                       to_uri="sip:bob@partner.lab", body="to the next edge", call_id=cid,
                       headers="Content-Type: text/plain\r\n")
            return ua.recv(timeout=3)

        cid = "srv-failover-1"
        self.assertIsNone(message(cid), "an answer came back from the refusing edge")
        wait_for(lambda: "partner edge unreachable" in a.edge.log(), what="the failure logged")
        r = message(cid)
        self.assertEqual(parse_status(r), 200, r)
        out, _ = uas.communicate(timeout=10)
        self.assertEqual(uas.returncode, 0, out.decode(errors="replace")[-2000:])
        self.assertIn(f"{B_IPS[1]}:{dead}", a.edge.log())

    def test_federation_to_unknown_domain_404(self):
        dns = self.dnsmasq([])
        fed = "federation: {{discovery: true, dns_servers: \"{dns}\"}}\n".format(dns=dns)
        a = Lab(self, domain="access-edge.lab", ips=A_IPS, cert="access-edge", extra_edge=fed)
        ua = UdpUA("127.0.0.6", domain="access-edge.lab")
        self.addCleanup(ua.close)
        ua.request("MESSAGE", "sip:bob@nowhere.lab", (A_IPS[0], a.dir_sip), user="alice",
                   to_uri="sip:bob@nowhere.lab", body="x")
        r = ua.recv(timeout=8)
        self.assertEqual(parse_status(r), 404, r)
        self.assertIn("No federation route to nowhere.lab", header(r, "Warning")[0])

    def test_outbound_to_blocked_domain_403(self):
        a = Lab(self, domain="access-edge.lab", ips=A_IPS, cert="access-edge",
                extra_edge="federation: {block: [partner.lab], discovery: true}")
        ua = UdpUA("127.0.0.6", domain="access-edge.lab")
        self.addCleanup(ua.close)
        ua.request("MESSAGE", "sip:bob@partner.lab", (A_IPS[0], a.dir_sip), user="alice",
                   to_uri="sip:bob@partner.lab", body="x")
        r = ua.recv(timeout=5)
        self.assertEqual(parse_status(r), 403, r)

    def test_static_route_to_allowed_partner_without_dns(self):
        from harness import free_port as fp
        b_mtls = fp(B_IPS[1])
        a = Lab(self, domain="access-edge.lab", ips=A_IPS, cert="access-edge",
                extra_edge=f"federation: {{allow: [partner.lab], discovery: false, routes: "
                           f"[{{domain: partner.lab, address: '{B_IPS[1]}:{b_mtls}'}}]}}\n")
        b = Lab(self, domain="partner.lab", ips=B_IPS, cert="partner", mtls_port=b_mtls,
                extra_edge="federation: {allow: [access-edge.lab], discovery: false}\n")
        uas = self.bob_waits_for_a_message(b)
        ua = UdpUA("127.0.0.6", domain="access-edge.lab")
        self.addCleanup(ua.close)
        ua.request("MESSAGE", "sip:bob@partner.lab", (A_IPS[0], a.dir_sip), user="alice",
                   to_uri="sip:bob@partner.lab", body="static", headers="Content-Type: text/plain\r\n")
        r = ua.recv(timeout=8)
        self.assertEqual(parse_status(r), 200, r)
        out, _ = uas.communicate(timeout=10)
        self.assertEqual(uas.returncode, 0, out.decode(errors="replace")[-2000:])
