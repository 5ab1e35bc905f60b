"""Flows and federation at the access edge: requests reach a remote user over the very
connection it registered on (RFC 5626), CRLF keep-alive, mutual TLS to the Director, and
federated partners over mutual TLS (From domain checked against the certificate, no
REGISTER, blocked domains refused)."""
import socket
import time

from harness import SuiteTest, free_port
from siplab import DIR_IP, EXT_IP, USERS, Lab, StreamUA, header, parse_status


class EdgeFlows(SuiteTest):
    def message_to_stream_user(self, tls, edge_to_director="udp"):
        lab = Lab(self, edge_to_director=edge_to_director)
        ua = StreamUA(EXT_IP, lab.ext_tls if tls else lab.ext_port, tls=tls)
        self.addCleanup(ua.close)
        r = ua.register(USERS["alice"])
        self.assertEqual(parse_status(r), 200, r)
        sender = lab.sipp("message_uac.xml", f"{DIR_IP}:{lab.dir_sip}", "alice", ip="127.0.0.5",
                          background=True)
        req = ua.recv(timeout=5)
        self.assertIsNotNone(req, "MESSAGE did not arrive over the registered connection")
        self.assertTrue(req.startswith("MESSAGE "), req)
        trust = header(req, "ms-edge-proxy-message-trust")
        self.assertEqual(trust, [], "trust marking leaked to the outside")
        ua.answer(req)
        out, _ = sender.communicate(timeout=15)
        self.assertEqual(sender.returncode, 0, out.decode(errors="replace")[-2000:])

    def test_message_internal_to_external_over_tcp_flow(self):
        self.message_to_stream_user(tls=False)

    def test_message_internal_to_external_over_tls_flow(self):
        self.message_to_stream_user(tls=True)

    def test_edge_to_director_mutual_tls(self):
        self.message_to_stream_user(tls=True, edge_to_director="tls")

    def test_user_listeners_ask_for_no_client_certificate(self):
        # The TLS and WSS listeners for users sent a certificate request (they were built with
        # the partners' CA), and headless Chromium abandoned the WebSocket handshake; only the
        # mutual-TLS listener asks.
        lab = Lab(self)
        for port, asks in ((lab.ext_tls, False), (lab.ext_wss, False), (lab.ext_mtls, True)):
            p = self.run_tool(["openssl", "s_client", "-connect", f"{EXT_IP}:{port}",
                               "-tls1_2"], input=b"", timeout=15)
            out = p.stdout.decode(errors="replace")
            self.assertIn("Server certificate", out)
            self.assertEqual("Acceptable client certificate CA names" in out, asks, out[-1500:])

    def test_crlf_keepalive_ping_gets_pong_rfc5626(self):
        lab = Lab(self)
        ua = StreamUA(EXT_IP, lab.ext_port)
        self.addCleanup(ua.close)
        ua.send(b"\r\n\r\n")
        ua.s.settimeout(2)
        self.assertEqual(ua.s.recv(16), b"\r\n")

    def test_unparseable_stream_closes_connection(self):
        lab = Lab(self)
        ua = StreamUA(EXT_IP, lab.ext_port)
        self.addCleanup(ua.close)
        ua.send(b"NOT SIP AT ALL\r\n\r\n")
        ua.s.settimeout(2)
        self.assertEqual(ua.s.recv(16), b"")
        self.assertIn("unparseable stream data", lab.edge.log())

    FED = "federation: {allow: [partner.lab], block: [blocked.lab], discovery: false}"

    def partner(self, lab, cert="partner"):
        ua = StreamUA(EXT_IP, lab.ext_mtls, tls=True, cert=cert, user="carol", domain="partner.lab")
        self.addCleanup(ua.close)
        return ua

    def test_partner_message_reaches_internal_user(self):
        lab = Lab(self, extra_edge=self.FED)
        bob_port = free_port("127.0.0.5", socket.SOCK_DGRAM)
        from siplab import UdpUA
        u = UdpUA("127.0.0.5", bob_port)
        r, _ = u.register((DIR_IP, lab.dir_sip), "bob", USERS["bob"])
        u.close()
        self.assertEqual(parse_status(r), 200)
        uas = lab.sipp("message_uas.xml", None, "bob", ip="127.0.0.5", port=bob_port, background=True)
        time.sleep(0.3)
        p = self.partner(lab)
        p.request("MESSAGE", "sip:bob@example.com", to_uri="sip:bob@example.com", body="hi",
                  headers="Content-Type: text/plain\r\n")
        r = p.recv(timeout=5)
        self.assertEqual(parse_status(r), 200, r)
        out, _ = uas.communicate(timeout=10)
        self.assertEqual(uas.returncode, 0, out.decode(errors="replace")[-2000:])

    def test_partner_from_domain_must_match_certificate_403(self):
        lab = Lab(self, extra_edge=self.FED)
        p = self.partner(lab)
        p.request("MESSAGE", "sip:bob@example.com", to_uri="sip:bob@example.com",
                  from_domain="example.com", body="spoof")
        r = p.recv()
        self.assertEqual(parse_status(r), 403, r)
        self.assertIn("From domain does not match", header(r, "Warning")[0])
        self.assertEqual(lab.dir_metric("director_sip_messages_in_total"), 0)

    def test_partner_may_not_register_405(self):
        lab = Lab(self, extra_edge=self.FED)
        p = self.partner(lab)
        p.request("REGISTER", "sip:example.com", to_uri="sip:carol@example.com")
        r = p.recv()
        self.assertEqual(parse_status(r), 405, r)

    def test_partner_not_on_allow_list_refused_without_discovery(self):
        lab = Lab(self, extra_edge="federation: {allow: [other.lab], discovery: false}")
        p = self.partner(lab)
        p.request("MESSAGE", "sip:bob@example.com", to_uri="sip:bob@example.com", body="x")
        self.assertIsNone(p.recv(timeout=2))
        self.assertEqual(lab.dir_metric("director_sip_messages_in_total"), 0)

    def test_blocked_domain_gets_403(self):
        lab = Lab(self, extra_edge="federation: {block: [partner.lab], discovery: true}")
        p = self.partner(lab)
        p.request("MESSAGE", "sip:bob@example.com", to_uri="sip:bob@example.com", body="x")
        r = p.recv()
        self.assertEqual(parse_status(r), 403, r)
        self.assertIn("Domain blocked: partner.lab", header(r, "Warning")[0])
        self.assertEqual(lab.dir_metric("director_sip_messages_in_total"), 0)
        self.assertEqual(lab.edge_metric('access_edge_sip_rejected_total{reason="blocked"}'), 1)

    def test_discovered_partner_over_rate_limit_gets_503(self):
        lab = Lab(self, extra_edge="federation: {discovery: true, discovered_rate: 5}")
        p = self.partner(lab)
        for i in range(15):
            p.request("MESSAGE", "sip:bob@example.com", to_uri="sip:bob@example.com", body="x")
        statuses = []
        for i in range(15):
            r = p.recv(timeout=3)
            if r is None:
                break
            statuses.append(parse_status(r))
            if parse_status(r) == 503:
                self.assertTrue(header(r, "Retry-After"), r)
        self.assertIn(503, statuses)
        self.assertIn(480, statuses)  # the first few reached the Director (bob not registered)

    def test_partner_addressing_too_many_users_goes_on_watch_list(self):
        lab = Lab(self, extra_edge="federation: {discovery: true, max_contacts: 3}")
        p = self.partner(lab)
        got = []
        for u in ("u1", "u2", "u3", "u4", "u5"):
            p.request("MESSAGE", f"sip:{u}@example.com", to_uri=f"sip:{u}@example.com", body="x")
            got.append(parse_status(p.recv()))
        self.assertEqual(got, [480, 480, 480, 403, 403])  # unknown users: 480, as unregistered ones
        from harness import http_json
        st, j = http_json(lab.edge_admin, "/watchlist")
        self.assertEqual(st, 200)
        self.assertEqual(j["partners"][0]["domain"], "partner.lab")
        self.assertTrue(j["partners"][0]["watched"])
        self.assertEqual(lab.edge_metric("access_edge_sip_watchlist_additions_total"), 1)

    def test_edge_reports_to_director_over_ctl(self):
        from harness import http_json, wait_for
        lab = Lab(self, ctl=True)

        def listed():
            st, j = http_json(lab.dir_admin, "/edges?role=access-edge")
            edges = j.get("edges", j) if isinstance(j, dict) else j
            return st == 200 and any(e.get("connected") for e in edges)
        wait_for(listed, timeout=10, what="access-edge in the Director's /edges")

    def ws_message_to_user(self, tls):
        from siplab import WsUA
        lab = Lab(self)
        ua = WsUA(EXT_IP, lab.ext_wss if tls else lab.ext_ws, tls=tls)
        self.addCleanup(ua.close)
        self.assertIn("101 Switching Protocols", ua.handshake)
        self.assertIn("Sec-WebSocket-Protocol: sip", ua.handshake)
        self.assertTrue(ua.accept_ok, ua.handshake)
        r = ua.register(USERS["alice"])
        self.assertEqual(parse_status(r), 200, r)
        sender = lab.sipp("message_uac.xml", f"{DIR_IP}:{lab.dir_sip}", "alice", ip="127.0.0.5",
                          background=True)
        req = ua.recv(timeout=5)
        self.assertIsNotNone(req, "MESSAGE did not arrive over the WebSocket")
        self.assertTrue(req.startswith("MESSAGE "), req)
        self.assertTrue(header(req, "Via")[0].startswith("SIP/2.0/WS"), req)
        ua.answer(req)
        out, _ = sender.communicate(timeout=15)
        self.assertEqual(sender.returncode, 0, out.decode(errors="replace")[-2000:])

    def test_register_and_message_over_websocket_rfc7118(self):
        self.ws_message_to_user(tls=False)

    def test_register_and_message_over_secure_websocket_rfc7118(self):
        self.ws_message_to_user(tls=True)

    def test_websocket_without_sip_subprotocol_426(self):
        from siplab import WsUA
        lab = Lab(self)
        ua = WsUA(EXT_IP, lab.ext_ws, protocol=None)
        self.addCleanup(ua.close)
        self.assertTrue(ua.handshake.startswith("HTTP/1.1 426"), ua.handshake)

    def test_director_failover_to_backup_when_first_stops_answering(self):
        from harness import wait_for
        from siplab import UdpUA
        lab = Lab(self, backup=True)
        wait_for(lambda: lab.edge_metric('access_edge_sip_director_up{director="1"}') == 1,
                 timeout=5, what="backup Director seen up")
        lab.wait_director_probed()
        lab.director.stop()
        wait_for(lambda: lab.edge_metric('access_edge_sip_director_up{director="0"}') == 0,
                 timeout=5, what="first Director marked down")
        ua = UdpUA("127.0.0.4")
        self.addCleanup(ua.close)
        r, _ = ua.register((EXT_IP, lab.ext_port), "alice", USERS["alice"])
        self.assertEqual(parse_status(r), 200, r)
        self.assertEqual(lab.director2.metrics().get("director_sip_registrations_total"), 1)
        self.assertIn("Director not answering: down", lab.edge.log())

    def test_topology_hiding_seals_inside_vias(self):
        lab = Lab(self, extra_edge="topology_hiding: true")
        ua = StreamUA(EXT_IP, lab.ext_port)
        self.addCleanup(ua.close)
        self.assertEqual(parse_status(ua.register(USERS["alice"])), 200)
        sender = lab.sipp("message_uac.xml", f"{DIR_IP}:{lab.dir_sip}", "alice", ip="127.0.0.5",
                          background=True)
        req = ua.recv(timeout=5)
        self.assertIsNotNone(req)
        vias = header(req, "Via")
        self.assertEqual(len(vias), 1, vias)
        self.assertIn(";ae-th=", vias[0])
        self.assertNotIn(DIR_IP, req.split("\r\n\r\n")[0].replace("Route", ""))
        self.assertNotIn("127.0.0.5", "\n".join(vias))
        ua.answer(req)
        out, _ = sender.communicate(timeout=15)
        self.assertEqual(sender.returncode, 0, out.decode(errors="replace")[-2000:])
