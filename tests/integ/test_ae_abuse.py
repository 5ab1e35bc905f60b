"""The access edge under abuse that costs the attacker little (issue 12 items 8, 9, 10):
reflection of 503s toward spoofed UDP sources, log floods, osip2's own traces in the log,
connections that trickle bytes, oversized messages over TCP, and the Via of the edge's own
answers."""
import socket
import ssl
import time
import uuid

from harness import SuiteTest, wait_for
from siplab import EXT_IP, Lab, StreamUA, UdpUA, WsUA, header, parse_status

UA_IP = "127.0.0.6"


def request(ua, method="OPTIONS", ruri="sip:bob@example.com", max_forwards=70, via=";rport"):
    lines = [f"{method} {ruri} SIP/2.0",
             f"Via: SIP/2.0/UDP {ua.ip}:{ua.port};branch=z9hG4bK{uuid.uuid4().hex[:16]}{via}",
             f"From: <sip:alice@example.com>;tag={uuid.uuid4().hex[:8]}", "To: <sip:bob@example.com>",
             f"Call-ID: {uuid.uuid4().hex}", f"CSeq: 1 {method}", f"Max-Forwards: {max_forwards}",
             "Content-Length: 0"]
    return "\r\n".join(lines) + "\r\n\r\n"


def drain(ua, seconds):
    """Every datagram that arrives within seconds."""
    out, end = [], time.time() + seconds
    while time.time() < end:
        ua.s.settimeout(max(0.01, end - time.time()))
        try:
            out.append(ua.s.recvfrom(65536)[0].decode(errors="replace"))
        except socket.timeout:
            break
    return out


class EdgeAbuse(SuiteTest):
    @classmethod
    def setUpClass(cls):
        cls.shared = None

    def ua(self):
        ua = UdpUA(UA_IP)
        self.addCleanup(ua.close)
        return ua

    # ---- item 10: the edge's own answers carry rport/received like forwarded ones ----

    def test_own_answers_fill_rport_and_received(self):
        lab = Lab(self, extra_edge="limits: {rate: 1, burst: 2}")
        ua = self.ua()
        to = (EXT_IP, lab.ext_port)
        want = f"rport={ua.port};received={ua.ip}"
        cases = [("403 relay", request(ua, "MESSAGE", "sip:bob@elsewhere.example"), 403),
                 ("483 hops", request(ua, max_forwards=0), 483)]
        for what, text, status in cases:
            with self.subTest(what):
                ua.send(text, to)
                r = ua.recv()
                self.assertEqual(parse_status(r or ""), status, r)
                self.assertIn(want, header(r, "Via")[0])
        # Over the rate (1/s, burst 2, spent above): 503.
        ua.send(request(ua), to)
        r = ua.recv()
        self.assertEqual(parse_status(r or ""), 503, r)
        self.assertIn(want, header(r, "Via")[0])

    # ---- item 8: reflection and log noise ----

    def test_over_limit_udp_requests_get_few_503s(self):
        lab = Lab(self, extra_edge="limits: {rate: 1, burst: 1, reject_rate: 2}")
        ua = self.ua()
        to = (EXT_IP, lab.ext_port)
        n, start = 200, time.time()
        for i in range(n):
            ua.send(request(ua), to)
            if i % 20 == 19:
                time.sleep(0.05)  # the socket buffers stay far from full
        elapsed = time.time() - start
        answers = [a for a in drain(ua, 1.5) if parse_status(a) == 503]
        # Burst 2 * reject_rate, then reject_rate a second (one second of slack for timing).
        bound = 4 + 2 * (elapsed + 1.5 + 1)
        self.assertGreaterEqual(len(answers), 1, "no 503 at all")
        self.assertLessEqual(len(answers), bound, f"{len(answers)} 503s for {n} requests")
        silent = lab.edge_metric("access_edge_sip_rate_limited_silent_total")
        self.assertGreaterEqual(silent, n - 2 - bound)
        self.assertLessEqual(silent + len(answers), n)

    def test_unparseable_flood_is_summarized_in_the_log(self):
        lab = Lab(self)
        ua = self.ua()
        to = (EXT_IP, lab.ext_port)
        n = 2000
        for i in range(n):
            ua.send(b"\x00\x01 not SIP " + str(i).encode(), to)
            if i % 100 == 99:
                time.sleep(0.02)
        wait_for(lambda: lab.edge_metric("access_edge_sip_unparseable_total") >= n * 0.8,
                 timeout=5, what="the datagrams counted")
        wait_for(lambda: "lines about bad input suppressed" in lab.edge.log(), timeout=5,
                 what="a summary line")
        lines = lab.edge.log().count("unparseable datagram")
        self.assertLess(lines, 100, f"{lines} log lines for {n} bad datagrams")
        # The edge still answers.
        ua.send(request(ua, "MESSAGE", "sip:bob@elsewhere.example"), to)
        self.assertEqual(parse_status(ua.recv() or ""), 403)

    def test_osip_traces_never_reach_the_logs(self):
        lab = Lab(self, extra_edge="limits: {exempt: [127.0.0.6/32]}")
        ua = self.ua()
        to = (EXT_IP, lab.ext_port)
        bad = [  # frame and carry every mandatory header, but osip2 cannot parse them
            request(ua).replace("To: <sip:bob@example.com>", 'To: "Mr. J. User <sip:bob@example.com>'),
            request(ua).replace("To: <sip:bob@example.com>", "To: Watson, Thomas < sip:bob@example.com >"),
            request(ua).replace(";rport", ";;,;,,"),
        ]
        for text in bad:
            ua.send(text, to)
            self.assertEqual(parse_status(ua.recv() or ""), 400)
        time.sleep(0.3)
        self.assertNotIn("| ERROR |", lab.edge.log())
        self.assertNotIn("| ERROR |", lab.director.log())

    # ---- item 9: slow and oversized stream messages ----

    def test_trickled_message_is_cut_off_at_the_deadline(self):
        lab = Lab(self, extra_edge="limits: {message_timeout: 1s}")
        slow = [StreamUA(EXT_IP, lab.ext_port, ip=UA_IP),
                StreamUA(EXT_IP, lab.ext_tls, tls=True, ip=UA_IP),
                WsUA(EXT_IP, lab.ext_ws, ip=UA_IP)]
        text = request(slow[0]).encode()
        mask = b"\x01\x02\x03\x04"  # one masked text frame (RFC 6455), for the WebSocket
        frame = (bytes([0x81, 0x80 | 126]) + len(text).to_bytes(2, "big") + mask +
                 bytes(b ^ mask[i % 4] for i, b in enumerate(text)))
        data = [text, text, frame]
        for c in slow:
            self.addCleanup(c.close)
        # A client that completes its messages and then idles is left alone.
        idle = StreamUA(EXT_IP, lab.ext_port, ip=UA_IP)
        self.addCleanup(idle.close)
        idle.request("REGISTER", "sip:example.com")
        self.assertEqual(parse_status(idle.recv() or ""), 401)
        start, closed = time.time(), {}
        i = 0
        while len(closed) < len(slow) and time.time() - start < 8:
            for k, c in enumerate(slow):
                if k in closed:
                    continue
                try:
                    c.s.sendall(data[k][i:i + 1])
                except OSError:
                    closed[k] = time.time() - start
            i = min(i + 1, len(text) - 20)  # never completes the message
            time.sleep(0.25)
        self.assertEqual(sorted(closed), [0, 1, 2], "a trickling connection was held open")
        self.assertTrue(all(t < 6 for t in closed.values()), closed)
        self.assertGreaterEqual(lab.edge_metric("access_edge_sip_slow_messages_total"), 3)
        idle.request("REGISTER", "sip:example.com")
        self.assertEqual(parse_status(idle.recv() or ""), 401, "an idle client was cut off")

    def test_oversized_tcp_message_gets_513_before_the_close(self):
        lab = Lab(self, extra_edge="limits: {max_client_message: 4k}")
        for tls in (False, True):
            with self.subTest(tls=tls):
                self.oversized(lab, tls)

    def oversized(self, lab, tls):
        body = "a=x\r\n" * 20000  # 100 kB, the limit is 4 kB
        c2 = StreamUA(EXT_IP, lab.ext_tls if tls else lab.ext_port, tls=tls, ip=UA_IP)
        self.addCleanup(c2.close)
        cid = uuid.uuid4().hex
        head = (f"MESSAGE sip:bob@example.com SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP {c2.ip}:{c2.port};branch=z9hG4bK{cid[:12]}\r\n"
                f"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
                f"Call-ID: {cid}\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
                f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n")
        c2.send(head)
        try:
            for k in range(0, len(body), 8192):
                c2.send(body[k:k + 8192])
        except OSError:
            pass  # the edge may close while we still send
        r = c2.recv(3.0)
        self.assertIsNotNone(r, "no answer before the close")
        self.assertEqual(parse_status(r), 513, r)
        self.assertEqual(header(r, "Call-ID"), [cid])
        c2.s.settimeout(5)
        try:
            rest = c2.s.recv(65536)
        except (ConnectionResetError, socket.timeout, ssl.SSLError):
            rest = b""
        self.assertEqual(rest, b"", "the connection stays open after the 513")


if __name__ == "__main__":
    import unittest
    unittest.main()
