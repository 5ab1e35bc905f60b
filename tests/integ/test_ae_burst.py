"""Bursts through the access edge: many requests in one go, from a TLS connection and over
UDP, and their answers in one go from the next hop. The edge sends what one loop turn
produced together (one TLS write per connection, one sendmmsg per UDP socket): every
message must still arrive, whole and in the order it was sent."""
import socket
import time
import uuid

from harness import SuiteTest, free_port
from siplab import CERTS, EXT_IP, INT_IP, StreamUA, UdpUA, ensure_certs, header, parse_status

FAKE_DIR_IP = "127.0.0.12"
N = 120


class FakeNextHop:
    """The edge's next hop over UDP: collects requests, answers them when told."""

    def __init__(self):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.s.bind((FAKE_DIR_IP, 0))
        self.port = self.s.getsockname()[1]

    def close(self):
        self.s.close()

    def collect(self, n, timeout):
        got, end = [], time.time() + timeout
        while len(got) < n and time.time() < end:
            self.s.settimeout(max(0.01, end - time.time()))
            try:
                data, peer = self.s.recvfrom(65536)
            except socket.timeout:
                break
            msg = data.decode(errors="replace")
            if msg.startswith("MESSAGE "):
                got.append((msg, peer))
            elif msg.startswith("OPTIONS "):
                self.answer(msg, peer)
        return got

    def answer(self, req, peer):
        head = req.split("\r\n\r\n", 1)[0].split("\r\n")
        keep = [l for l in head[1:] if l.split(":", 1)[0].strip().lower()
                in ("via", "from", "to", "call-id", "cseq")]
        keep = [l + (";tag=nh1" if l.lower().startswith("to:") else "") for l in keep]
        self.s.sendto(("\r\n".join(["SIP/2.0 200 OK"] + keep) +
                       "\r\nContent-Length: 0\r\n\r\n").encode(), peer)


class EdgeBurst(SuiteTest):
    def setUp(self):
        super().setUp()
        ensure_certs()
        self.nh = FakeNextHop()
        self.addCleanup(self.nh.close)
        self.ext_udp = free_port(EXT_IP, socket.SOCK_DGRAM)
        self.ext_tls = free_port(EXT_IP)
        self.int_udp = free_port(INT_IP, socket.SOCK_DGRAM)
        admin = f"{INT_IP}:{free_port(INT_IP)}"
        ae = f"{CERTS}/access-edge"
        self.edge = self.daemon("access-edge", f"""
admin: {{listen: {admin}}}
director: {{enabled: false}}
domains: [example.com]
fqdn: edge.example.com
external:
  udp: [{EXT_IP}:{self.ext_udp}]
  tls: [{EXT_IP}:{self.ext_tls}]
  certs: {{cert: {ae}.crt, key: {ae}.key, ca: {CERTS}/ca.crt}}
internal: {{udp: [{INT_IP}:{self.int_udp}]}}
next_hop: {{address: {FAKE_DIR_IP}:{self.nh.port}, transport: udp}}
limits: {{rate: 100000, burst: 100000}}
""", admin=admin)

    def relay_burst(self, send_all, recv_one):
        ids = [f"burst-{i:04d}-{uuid.uuid4().hex[:8]}" for i in range(N)]
        send_all(ids)
        got = self.nh.collect(N, timeout=20.0)
        fwd = [header(m, "Call-ID")[0] for m, _ in got]
        self.assertEqual(len(fwd), N, f"the next hop got {len(fwd)} of {N} requests")
        self.assertEqual(fwd, ids, "requests reached the next hop out of order")
        for m, peer in got:  # all answers back to back: the edge reads them in batches
            self.nh.answer(m, peer)
        answers = []
        for _ in range(N):
            r = recv_one()
            if r is None:
                break
            self.assertEqual(parse_status(r), 200, r)
            answers.append(header(r, "Call-ID")[0])
        self.assertEqual(len(answers), N, f"the client got {len(answers)} of {N} answers")
        self.assertEqual(answers, ids, "answers reached the client out of order")

    def message(self, via, i, call_id):
        return (f"MESSAGE sip:bob@example.com SIP/2.0\r\n"
                f"Via: SIP/2.0/{via};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
                f"From: <sip:alice@example.com>;tag=b{i}\r\nTo: <sip:bob@example.com>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
                f"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi")

    def test_tls_burst_arrives_whole_and_in_order(self):
        ua = StreamUA(EXT_IP, self.ext_tls, tls=True)
        self.addCleanup(ua.close)
        via = f"TLS {ua.ip}:{ua.port}"
        # One sendall: the edge reads many requests per read and answers in one turn.
        self.relay_burst(lambda ids: ua._send_raw("".join(
            self.message(via, i, c) for i, c in enumerate(ids))),
            lambda: ua.recv(timeout=10.0))

    def test_udp_burst_arrives_whole_and_in_order(self):
        ua = UdpUA("127.0.0.6")
        self.addCleanup(ua.close)
        ua.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        via = f"UDP {ua.ip}:{ua.port}"

        def send_all(ids):
            for i, c in enumerate(ids):
                ua._send_raw(self.message(via, i, c), (EXT_IP, self.ext_udp))
        self.relay_burst(send_all, lambda: ua.recv(timeout=10.0))
