"""The access edge when the inside fails, and when it is told to stop.

Director down (issue: every MESSAGE through the edge went unanswered and an INVITE got 100
Trying then nothing for 180 s, with no log line and no metric): the edge notices within a
few seconds from its health checks, answers new requests with 503 and Retry-After, fails the
INVITEs it forwarded and never heard back about, logs the transition once each way, and
counts the answers. Drain (issue: SIGTERM waited only for INVITE transactions, so a MESSAGE in
flight was cut): the edge waits for every transaction it forwarded."""
import signal
import socket
import threading
import time

from harness import SuiteTest, wait_for
from siplab import DIR_IP, EXT_IP, USERS, Lab, StreamUA, UdpUA, header, parse_status

DOWN = 'access_edge_sip_rejected_total{reason="next_hop_down"}'
DOWN_FINALS = DOWN  # the 503 for the INVITE in flight; its ACK is not counted again


class DirectorDown(SuiteTest):
    def test_director_down_503_with_retry_after_then_back_up(self):
        lab = Lab(self)
        u = UdpUA(ip="127.0.0.6")
        self.addCleanup(u.close)
        lab.wait_director_probed()
        lab.director.kill()
        t0 = time.time()
        wait_for(lambda: "Director not answering: down" in lab.edge.log(), timeout=5,
                 what="the edge to notice")
        print(f"\nDirector down noticed after {time.time() - t0:.1f} s")
        u.request("MESSAGE", "sip:bob@example.com", (EXT_IP, lab.ext_port), body="hi")
        r = u.recv(timeout=2)
        self.assertEqual(parse_status(r), 503, r)
        self.assertRegex(r, r"(?m)^Retry-After: \d+")
        self.assertIn("received=127.0.0.6", r)
        self.assertGreaterEqual(lab.edge_metric(DOWN), 1)
        lab.director.start()
        wait_for(lambda: "Director answering: up" in lab.edge.log(), timeout=5,
                 what="the edge to see it back")
        u.request("MESSAGE", "sip:bob@example.com", (EXT_IP, lab.ext_port), body="hi")
        r = u.recv(timeout=3)
        self.assertNotEqual(parse_status(r), 503, r)
        log = lab.edge.log()
        self.assertEqual(log.count("Director not answering: down"), 1)
        self.assertEqual(log.count("Director answering: up"), 1)

    def test_invite_in_flight_gets_a_final_answer_not_silence(self):
        lab = Lab(self)
        u = UdpUA(ip="127.0.0.6")
        self.addCleanup(u.close)
        lab.wait_director_probed()
        ups = lab.edge.log().count("Director answering: up")
        lab.director.signal(signal.SIGSTOP)  # the INVITE reaches it; nothing comes back
        self.addCleanup(lambda: lab.director.signal(signal.SIGCONT))
        t0 = time.time()
        u.request("INVITE", "sip:bob@example.com", (EXT_IP, lab.ext_port))
        r = u.recv(timeout=20)  # skips the edge's 100 Trying
        took = time.time() - t0
        print(f"\nINVITE in flight to a stopped Director: {parse_status(r)} after {took:.1f} s")
        self.assertIn(parse_status(r), (408, 503), r)
        self.assertLess(took, 32 + 2, "within Timer B")
        self.assertIn("Via: SIP/2.0/UDP 127.0.0.6", r)
        # The caller has the edge's 100 and will not send its INVITE again: a lost answer is
        # the edge's to repeat (Timer G) until the ACK (the soak lost 66 of a burst of 250).
        again = u.recv(timeout=2)
        self.assertEqual(again, r, "the answer sent again before any ACK")
        to = header(r, "To")[0]
        cseq = header(r, "CSeq")[0].split()[0]
        via = header(r, "Via")[0]
        u.send(f"ACK sip:bob@example.com SIP/2.0\r\nVia: {via}\r\n"
               f"From: {header(r, 'From')[0]}\r\nTo: {to}\r\n"
               f"Call-ID: {header(r, 'Call-ID')[0]}\r\nCSeq: {cseq} ACK\r\n"
               "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n", (EXT_IP, lab.ext_port))
        time.sleep(0.3)
        while u.recv(timeout=0.1):
            pass  # one may have crossed the ACK
        self.assertIsNone(u.recv(timeout=5), "sent again after the ACK")
        self.assertEqual(lab.edge_metric(DOWN_FINALS), 1)
        # The edge's own answer, made as if from the Director, is no sign of it.
        self.assertEqual(lab.edge.log().count("Director answering: up"), ups,
                         "the stopped Director was said to be up")

    def test_backup_director_takes_over(self):
        lab = Lab(self, backup=True)
        wait_for(lambda: lab.edge_metric('access_edge_sip_director_up{director="1"}') == 1,
                 timeout=5, what="the backup seen up")
        lab.wait_director_probed()
        lab.director.kill()
        wait_for(lambda: "Director not answering: down" in lab.edge.log(), timeout=5,
                 what="the edge to notice")
        u = UdpUA(ip="127.0.0.6")
        self.addCleanup(u.close)
        u.request("MESSAGE", "sip:bob@example.com", (EXT_IP, lab.ext_port), body="hi")
        r = u.recv(timeout=3)
        self.assertIsNotNone(r)
        self.assertNotEqual(parse_status(r), 503, r)


class DrainEveryTransaction(SuiteTest):
    def test_sigterm_waits_for_a_message_in_flight(self):
        lab = Lab(self)
        ua = StreamUA(EXT_IP, lab.ext_port)
        self.addCleanup(ua.close)
        self.assertEqual(parse_status(ua.register(USERS["alice"])), 200)
        sender = lab.sipp("message_uac.xml", f"{DIR_IP}:{lab.dir_sip}", "alice", ip="127.0.0.5",
                          background=True)
        req = ua.recv(timeout=5)
        self.assertTrue(req and req.startswith("MESSAGE "), req)
        lab.edge.signal(signal.SIGTERM)  # the MESSAGE is in flight: its answer must get out
        time.sleep(1.0)
        self.assertIsNone(lab.edge.proc.poll(), "the edge left with a MESSAGE in flight")
        ua.answer(req)
        out, _ = sender.communicate(timeout=15)
        self.assertEqual(sender.returncode, 0, out.decode(errors="replace")[-2000:])
        lab.edge.proc.wait(10)
        self.assertIn("drained", lab.edge.log())


class DeafNextHop(SuiteTest):
    def test_a_next_hop_that_ignores_options_is_judged_by_its_answers(self):
        # A PBX or test UAS that never answers OPTIONS is not taken for down (the edge
        # refused every request once its health checks went unanswered, make bench-sip saw it).
        from harness import free_port
        from siplab import INT_IP, CERTS
        uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        uas.bind(("127.0.0.3", 0))
        self.addCleanup(uas.close)
        stop = threading.Event()
        self.addCleanup(stop.set)

        def serve():
            uas.settimeout(0.2)
            while not stop.is_set():
                try:
                    data, src = uas.recvfrom(65536)
                except (socket.timeout, OSError):
                    continue
                msg = data.decode(errors="replace")
                if msg.startswith(("OPTIONS", "SIP/")):
                    continue  # deaf to health checks
                head = msg.split("\r\n\r\n")[0].split("\r\n")
                keep = [l for l in head[1:] if l.split(":")[0].lower() in
                        ("via", "from", "to", "call-id", "cseq")]
                uas.sendto(("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) +
                            "\r\nContent-Length: 0\r\n\r\n").encode(), src)

        threading.Thread(target=serve, daemon=True).start()
        ext, intp, admin = free_port(EXT_IP), free_port(INT_IP), f"{INT_IP}:{free_port(INT_IP)}"
        edge = self.daemon("access-edge", f"""
admin: {{listen: {admin}}}
director: {{enabled: false}}
domains: [example.com]
external: {{udp: [{EXT_IP}:{ext}]}}
internal: {{udp: [{INT_IP}:{intp}]}}
next_hop: {{address: 127.0.0.3:{uas.getsockname()[1]}, transport: udp, health_interval: 300ms}}
""", admin=admin)
        u = UdpUA(ip="127.0.0.6")
        self.addCleanup(u.close)
        time.sleep(1.5)  # five unanswered health checks
        for i in range(3):
            u.request("MESSAGE", "sip:bob@example.com", (EXT_IP, ext), body="hi")
            r = u.recv(timeout=2)
            self.assertEqual(parse_status(r), 200, r)
            time.sleep(0.5)
        self.assertNotIn("Director not answering", edge.log())
