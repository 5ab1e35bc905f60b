"""Adversarial routing through the access edge (issue 12): whatever Route set or Request-URI an
outsider writes, no packet reaches a listener the edge's policy did not choose. Decoy UDP and
TCP listeners sit on loopback addresses standing for an inside host and an outside host; a
matrix of {initial, in-dialog} x {Route to inside, Route via the edge's internal side to
outside, strict route, Request-URI inside} x {UDP, TCP, TLS, WSS} is sent from outside, and
after each request the decoys must have received nothing."""
import select
import socket
import time
import uuid

from harness import SuiteTest, free_port
from siplab import DIR_IP, EXT_IP, INT_IP, Lab, StreamUA, UdpUA, WsUA, header, parse_status

DECOY_IN, DECOY_OUT = "127.0.0.30", "127.0.0.31"
CLIENT_IP = "127.0.0.4"


class Decoy:
    """A UDP socket and a TCP listener on one address and port that must never be reached."""

    def __init__(self, ip):
        self.ip = ip
        for _ in range(20):
            self.port = free_port(ip)
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                self.tcp.bind((ip, self.port))
                self.udp.bind((ip, self.port))
                break
            except OSError:
                self.tcp.close()
                self.udp.close()
        self.tcp.listen(16)
        self.tcp.setblocking(False)
        self.udp.setblocking(False)

    def hits(self):
        """What reached it since the last call: datagrams and connections."""
        got = []
        while select.select([self.udp], [], [], 0)[0]:
            data, frm = self.udp.recvfrom(65536)
            got.append(f"UDP from {frm}: {data[:120]!r}")
        while select.select([self.tcp], [], [], 0)[0]:
            c, frm = self.tcp.accept()
            got.append(f"TCP connection from {frm}")
            c.close()
        return got

    def close(self):
        self.tcp.close()
        self.udp.close()


class Client:
    """One outside client on a transport; builds requests with its own Via and Contact."""

    def __init__(self, lab, tp):
        self.tp = tp
        if tp == "udp":
            self.ua = UdpUA(CLIENT_IP)
        elif tp == "tcp":
            self.ua = StreamUA(EXT_IP, lab.ext_port, ip=CLIENT_IP)
        elif tp == "tls":
            self.ua = StreamUA(EXT_IP, lab.ext_tls, tls=True, ip=CLIENT_IP)
        else:
            self.ua = WsUA(EXT_IP, lab.ext_wss, tls=True, ip=CLIENT_IP)
        self.to = (EXT_IP, lab.ext_port)
        self.ip, self.port = self.ua.ip, self.ua.port

    def close(self):
        self.ua.close()

    def send(self, method, ruri, routes, in_dialog):
        vtp = {"udp": "UDP", "tcp": "TCP", "tls": "TLS", "wss": "WSS"}[self.tp]
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/{vtp} {self.ip}:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
                 f"From: <sip:alice@example.com>;tag={uuid.uuid4().hex[:8]}",
                 "To: <sip:bob@example.com>" + (";tag=callee1" if in_dialog else ""),
                 f"Call-ID: {uuid.uuid4().hex}", f"CSeq: 2 {method}", "Max-Forwards: 70",
                 f"Contact: <sip:alice@{self.ip}:{self.port};transport={self.tp}>"]
        lines += [f"Route: {r}" for r in routes]
        body = ""
        if method == "MESSAGE":
            lines.append("Content-Type: text/plain")
            body = "hi"
        text = "\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n" + body
        if self.tp == "udp":
            self.ua.send(text, self.to)
        else:
            self.ua.send(text)

    def recv(self, timeout):
        return self.ua.recv(timeout=timeout)


class AdversarialRouting(SuiteTest):
    def test_no_packet_reaches_a_listener_the_edge_did_not_choose(self):
        lab = Lab(self)
        dec_in, dec_out = Decoy(DECOY_IN), Decoy(DECOY_OUT)
        self.addCleanup(dec_in.close)
        self.addCleanup(dec_out.close)
        edge_ext, edge_int = f"{EXT_IP}:{lab.ext_port}", f"{INT_IP}:{lab.int_port}"
        director = f"{DIR_IP}:{lab.dir_sip}"
        leaks, answers = [], {}
        for tp in ("udp", "tcp", "tls", "wss"):
            client = Client(lab, tp)
            self.addCleanup(client.close)
            stream = "" if tp == "udp" else ";transport=tcp"
            din, dout = f"{DECOY_IN}:{dec_in.port}", f"{DECOY_OUT}:{dec_out.port}"
            cases = {
                "route to inside": ("sip:bob@example.com", [f"<sip:{din};lr{stream}>"]),
                "route via the internal side to outside": (
                    "sip:bob@example.com",
                    [f"<sip:{director};lr>, <sip:{edge_int};lr>, <sip:{dout};lr{stream}>"]),
                "strict route": (f"sip:{edge_ext}", [f"<sip:{din}{stream}>", f"<sip:{dout}{stream}>"]),
                "request-uri inside": (f"sip:bob@{din}{stream}", [f"<sip:{edge_ext};lr>"]),
            }
            for mode in ("initial", "in-dialog"):
                in_dialog = mode == "in-dialog"
                for kind, (ruri, routes) in cases.items():
                    if in_dialog and kind == "route via the internal side to outside":
                        ruri = f"sip:x@{dout}{stream}"  # an in-dialog target outside
                    if in_dialog and kind == "request-uri inside":
                        routes = [f"<sip:{edge_ext};lr>, <sip:{edge_int};lr>"]
                    method = ("BYE" if tp in ("udp", "tls") else "INVITE") if in_dialog else \
                        ("INVITE" if tp in ("udp", "tls") else "MESSAGE")
                    client.send(method, ruri, routes, in_dialog)
                    r = client.recv(timeout=4)
                    name = f"{mode} / {kind} / {tp} ({method})"
                    answers[name] = parse_status(r) if r else None
                    time.sleep(0.3)
                    for d in (dec_in, dec_out):
                        leaks += [f"{name}: {d.ip}: {h}" for h in d.hits()]
        time.sleep(1.0)
        for d in (dec_in, dec_out):
            leaks += [f"late: {d.ip}: {h}" for h in d.hits()]
        self.assertEqual(leaks, [], "\n".join(leaks) + f"\nanswers: {answers}")
        # Every request was answered (the edge decided, and nobody hung), never with a 2xx.
        self.assertNotIn(None, answers.values(), answers)
        self.assertFalse([k for k, s in answers.items() if 200 <= s < 300], answers)
        # The edge stripped the foreign entries (counted); the Director refused the in-dialog
        # request whose Request-URI named an inside host it never learned.
        self.assertGreaterEqual(lab.edge_metric("access_edge_sip_routes_stripped_total"), 4 * 7)
        self.assertIn("never learned", lab.director.log())

    def test_in_dialog_request_is_not_relayed_to_a_partner(self):
        # An outsider's "in-dialog" request with the edge's own addresses as Route (unsigned)
        # and a federated partner's domain as Request-URI must not leave toward the partner.
        dec = Decoy(DECOY_OUT)
        self.addCleanup(dec.close)
        lab = Lab(self, extra_edge="federation: {allow: [partner.lab], discovery: false, routes: "
                                   f"[{{domain: partner.lab, address: '{DECOY_OUT}:{dec.port}'}}]}}")
        client = Client(lab, "tcp")
        self.addCleanup(client.close)
        for routes in ([f"<sip:{EXT_IP}:{lab.ext_port};lr>, <sip:{INT_IP}:{lab.int_port};lr>"],
                       [f"<sip:{EXT_IP}:{lab.ext_port};lr>"]):
            client.send("BYE", "sip:carol@partner.lab", routes, True)
            r = client.recv(timeout=4)
            time.sleep(0.3)
            self.assertEqual(dec.hits(), [], f"relayed to the partner with Route {routes}")
            self.assertEqual(parse_status(r) if r else None, 403, r)

    def test_reject_policy_refuses_foreign_routes_with_403(self):
        lab = Lab(self, extra_edge="route_policy: reject")
        dec = Decoy(DECOY_IN)
        self.addCleanup(dec.close)
        client = Client(lab, "udp")
        self.addCleanup(client.close)
        client.send("MESSAGE", "sip:bob@example.com", [f"<sip:{DECOY_IN}:{dec.port};lr>"], False)
        r = client.recv(timeout=4)
        self.assertEqual(parse_status(r), 403, r)
        self.assertIn("Route not allowed", header(r, "Warning")[0])
        self.assertEqual(lab.edge_metric('access_edge_sip_rejected_total{reason="route"}'), 1)
        # The edge's own outbound-proxy entry alone is not foreign.
        client.send("MESSAGE", "sip:bob@example.com", [f"<sip:{EXT_IP}:{lab.ext_port};lr>"], False)
        r = client.recv(timeout=4)
        self.assertNotEqual(parse_status(r), 403, r)
        time.sleep(0.3)
        self.assertEqual(dec.hits(), [])

    def test_options_to_the_edge_itself_gets_200(self):
        # Clients' and partners' keep-alives (issue 12 item 10): answered by the edge, not 482.
        lab = Lab(self, extra_edge="federation: {allow: [partner.lab], discovery: false}")
        for tp, ruri in (("udp", f"sip:{EXT_IP}:{lab.ext_port}"), ("tls", f"sip:{EXT_IP}:{lab.ext_tls}"),
                         ("wss", f"sip:{EXT_IP}:{lab.ext_wss};transport=ws")):
            client = Client(lab, tp)
            self.addCleanup(client.close)
            client.send("OPTIONS", ruri, [], False)
            r = client.recv(timeout=4)
            self.assertEqual(parse_status(r), 200, f"{tp}: {r}")
            self.assertIn("INVITE", header(r, "Allow")[0])
        p = StreamUA(EXT_IP, lab.ext_mtls, tls=True, cert="partner", user="carol",
                     domain="partner.lab", ip=CLIENT_IP)
        self.addCleanup(p.close)
        p.request("OPTIONS", f"sip:{EXT_IP}:{lab.ext_mtls};transport=tls",
                  to_uri=f"sip:{EXT_IP}:{lab.ext_mtls}")
        r = p.recv(timeout=4)
        self.assertEqual(parse_status(r), 200, r)
        self.assertEqual(lab.dir_metric("director_sip_messages_in_total"), 0)
