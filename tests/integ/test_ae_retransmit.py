"""INVITEs the access edge forwards over UDP are its own to repeat (RFC 3261 §17.1.1.2): its
100 Trying stops the caller's retransmissions, so an INVITE lost on the way to the Director
must go again from the edge (Timer A), and only until the next hop answers. That 100 goes
only when the next hop has not answered within 200 ms (RFC 3261 §17.2.1)."""
import socket
import time

from harness import SuiteTest, free_port, wait_for
from siplab import CERTS, EXT_IP, INT_IP, UdpUA, ensure_certs, header, parse_status

FAKE_DIR_IP = "127.0.0.12"


class FakeDirector:
    """The edge's next hop: a UDP socket the test answers from by hand."""

    def __init__(self):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind((FAKE_DIR_IP, 0))
        self.port = self.s.getsockname()[1]

    def close(self):
        self.s.close()

    def recv_invite(self, timeout):
        """The next INVITE (health-check OPTIONS are answered and skipped), with its arrival
        time and sender, or None."""
        end = time.time() + timeout
        while time.time() < end:
            self.s.settimeout(max(0.01, end - time.time()))
            try:
                data, peer = self.s.recvfrom(65536)
            except socket.timeout:
                return None
            msg = data.decode(errors="replace")
            if msg.startswith("OPTIONS "):
                self.answer(msg, peer, 200, "OK")
            elif msg.startswith("INVITE "):
                return msg, time.time(), peer
        return None

    def answer(self, req, peer, status, phrase):
        head = req.split("\r\n\r\n", 1)[0].split("\r\n")
        keep = [l for l in head[1:] if l.split(":", 1)[0].strip().lower()
                in ("via", "from", "to", "call-id", "cseq")]
        keep = [l + (";tag=fd1" if l.lower().startswith("to:") and status > 100 else "")
                for l in keep]
        self.s.sendto(("\r\n".join([f"SIP/2.0 {status} {phrase}"] + keep) +
                       "\r\nContent-Length: 0\r\n\r\n").encode(), peer)


class EdgeInviteRetransmission(SuiteTest):
    def setUp(self):
        super().setUp()
        ensure_certs()
        self.fd = FakeDirector()
        self.addCleanup(self.fd.close)
        self.ext_port = free_port(EXT_IP, socket.SOCK_DGRAM)
        self.int_port = free_port(INT_IP, socket.SOCK_DGRAM)
        admin = f"{INT_IP}:{free_port(INT_IP)}"
        self.edge = self.daemon("access-edge", f"""
admin: {{listen: {admin}}}
director: {{enabled: false}}
domains: [example.com]
fqdn: edge.example.com
external: {{udp: [{EXT_IP}:{self.ext_port}]}}
internal: {{udp: [{INT_IP}:{self.int_port}]}}
next_hop: {{address: {FAKE_DIR_IP}:{self.fd.port}, transport: udp}}
""", admin=admin)
        self.ua = UdpUA("127.0.0.6")
        self.addCleanup(self.ua.close)

    def metric(self, name):
        return self.edge.metrics().get(f"access_edge_{name}", 0.0)

    def invite(self):
        self.ua.request("INVITE", "sip:bob@example.com", (EXT_IP, self.ext_port),
                        headers="Content-Type: application/sdp\r\n", body="v=0\r\n")
        r = self.ua.recv(timeout=2.0, skip_provisional=False)
        self.assertIsNotNone(r, "no 100 Trying from the edge")
        self.assertEqual(parse_status(r), 100, r)

    def test_lost_invite_is_sent_again_by_the_edge_and_the_call_completes(self):
        self.invite()
        first = self.fd.recv_invite(3.0)
        self.assertIsNotNone(first, "the INVITE never reached the next hop")
        # The first copy is "lost": not answered. The edge repeats it after T1 (500 ms).
        again = self.fd.recv_invite(3.0)
        self.assertIsNotNone(again, "the edge did not retransmit the unanswered INVITE")
        self.assertGreaterEqual(again[1] - first[1], 0.35, "retransmitted before T1")
        branch = lambda m: header(m, "Via")[0]
        self.assertEqual(branch(again[0]), branch(first[0]), "a retransmission keeps its branch")
        self.fd.answer(again[0], again[2], 200, "OK")
        ok = self.ua.recv(timeout=3.0)
        self.assertIsNotNone(ok, "the caller never got the 200 OK")
        self.assertEqual(parse_status(ok), 200, ok)
        self.assertGreaterEqual(self.metric("sip_invite_retransmissions_total"), 1)
        # Answered: no more copies. A copy Timer A sent before the 200 reached the edge (a
        # slow machine may answer late) is already queued here; take those out first.
        sent = self.metric("sip_invite_retransmissions_total")
        while self.fd.recv_invite(0.05):
            pass
        self.assertIsNone(self.fd.recv_invite(2.5), "the edge went on retransmitting after 200")
        self.assertEqual(self.metric("sip_invite_retransmissions_total"), sent)

    def test_provisional_answer_stops_retransmission(self):
        self.invite()
        first = self.fd.recv_invite(3.0)
        self.assertIsNotNone(first)
        self.fd.answer(first[0], first[2], 100, "Trying")
        self.assertIsNone(self.fd.recv_invite(2.0), "retransmitted after the next hop's 100")
        self.assertEqual(self.metric("sip_invite_retransmissions_total"), 0)
        self.fd.answer(first[0], first[2], 180, "Ringing")
        r = self.ua.recv(timeout=2.0, skip_provisional=False)
        self.assertEqual(parse_status(r), 180, r)

    def test_100_trying_waits_for_a_silent_next_hop_then_comes_within_200_ms(self):
        t0 = time.time()
        self.invite()
        waited = time.time() - t0
        self.assertGreaterEqual(waited, 0.08, "the 100 did not wait for the next hop's answer")
        self.assertLess(waited, 0.45, "the 100 came later than 200 ms and a margin")
        self.assertIsNotNone(self.fd.recv_invite(3.0), "the INVITE never reached the next hop")

    def test_quick_answer_goes_to_the_caller_with_no_100_of_the_edge(self):
        self.ua.request("INVITE", "sip:bob@example.com", (EXT_IP, self.ext_port),
                        headers="Content-Type: application/sdp\r\n", body="v=0\r\n")
        first = self.fd.recv_invite(3.0)
        self.assertIsNotNone(first, "the INVITE never reached the next hop")
        self.fd.answer(first[0], first[2], 180, "Ringing")
        r = self.ua.recv(timeout=2.0, skip_provisional=False)
        self.assertIsNotNone(r, "the caller never got the 180")
        self.assertEqual(parse_status(r), 180, r)
        self.assertIsNone(self.ua.recv(timeout=0.6, skip_provisional=False),
                          "a 100 Trying after the next hop's 180")
        self.fd.answer(first[0], first[2], 200, "OK")
        ok = self.ua.recv(timeout=2.0, skip_provisional=False)
        self.assertIsNotNone(ok, "the caller never got the 200 OK")
        self.assertEqual(parse_status(ok), 200, ok)
