"""Topology hiding at the access edge (PROTOCOLS.md §1.4): with `topology_hiding: true`, an
INVITE dialog in either direction shows the external party no inside address (the Director,
the edge's internal side, the inside user's host) in any header, while its ACK and BYE still
cross the edge along the hidden route set; a forged token coming back in gets 403."""
import re
import socket
import time
import uuid

from harness import SuiteTest, free_port
from siplab import DIR_IP, EXT_IP, INT_IP, USERS, Lab, StreamUA, UdpUA, header, parse_status

INSIDE_USER_IP = "127.0.0.5"
INSIDE = (DIR_IP, INT_IP, INSIDE_USER_IP)
# sipp's default Call-ID names its host; RFC 3261 §8.1.1.4 asks for a random one, and the edge
# (like Kamailio's topoh by default) does not rewrite Call-IDs.
CALL_ID = ["-cid_str", "%u-%p@inside-ua"]


class ExternalUA:
    """An outside user agent over UDP or TCP that keeps every message it receives."""

    def __init__(self, lab, transport, ip="127.0.0.4"):
        self.tp = transport
        if transport == "udp":
            self.ua = UdpUA(ip)
            self.to = (EXT_IP, lab.ext_port)
        else:
            self.ua = StreamUA(EXT_IP, lab.ext_port, ip=ip)
        self.ip, self.port = self.ua.ip, self.ua.port
        self.seen = []

    def close(self):
        self.ua.close()

    def send(self, text):
        if self.tp == "udp":
            self.ua.send(text, self.to)
        else:
            self.ua.send(text)

    def recv(self, timeout=5.0, provisional=False):
        """The next message (skipping provisional responses unless asked); all are kept."""
        end = time.time() + timeout
        while time.time() < end:
            msg = self.ua.recv(timeout=max(0.1, end - time.time()), skip_provisional=False)
            if msg is None:
                return None
            self.seen.append(msg)
            st = parse_status(msg)
            if provisional or st is None or st >= 200:
                return msg
        return None

    def register(self):
        if self.tp == "udp":
            r, _ = self.ua.register(self.to, "alice", USERS["alice"])
        else:
            r = self.ua.register(USERS["alice"])
        return r

    def via(self):
        return (f"Via: SIP/2.0/{self.tp.upper()} {self.ip}:{self.port};"
                f"branch=z9hG4bK{uuid.uuid4().hex[:16]};rport")

    def contact(self):
        return f"<sip:alice@{self.ip}:{self.port};transport={self.tp}>"

    def request(self, method, ruri, dialog, cseq, routes=(), to_tag=""):
        lines = [f"{method} {ruri} SIP/2.0", self.via(),
                 f"From: <sip:alice@example.com>;tag={dialog['tag']}",
                 f"To: <sip:bob@example.com>{to_tag}", f"Call-ID: {dialog['call_id']}",
                 f"CSeq: {cseq} {method}", "Max-Forwards: 70", f"Contact: {self.contact()}"]
        lines += [f"Route: {r}" for r in routes]
        self.send("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n")

    def answer(self, req, status=200, phrase="OK"):
        out = [f"SIP/2.0 {status} {phrase}"]
        for name in ("Via", "Record-Route", "From", "To", "Call-ID", "CSeq"):
            for v in header(req, name):
                if name == "To" and "tag=" not in v:
                    v += ";tag=alice1"
                out.append(f"{name}: {v}")
        out.append(f"Contact: {self.contact()}")
        self.send("\r\n".join(out) + "\r\nContent-Length: 0\r\n\r\n")


def uri_of(value):
    m = re.search(r"<([^>]*)>", value)
    return m.group(1) if m else value.split(";")[0]


class TopologyHiding(SuiteTest):
    def lab(self):
        return Lab(self, extra_edge="topology_hiding: true")

    def outside(self, lab, transport):
        ua = ExternalUA(lab, transport)
        self.addCleanup(ua.close)
        r = ua.register()
        self.assertEqual(parse_status(r), 200, r)
        return ua

    def assert_hidden(self, ua):
        """No inside address in any header of anything the outside party received."""
        self.assertTrue(ua.seen)
        for msg in ua.seen:
            head = msg.split("\r\n\r\n", 1)[0]
            for ip in INSIDE:
                self.assertNotIn(ip, head, f"inside address {ip} leaked:\n{head}")
            self.assertFalse(header(msg, "ms-edge-proxy-message-trust"), head)
            self.assertFalse(header(msg, "Path"), head)
            if parse_status(msg) is None:  # a request: only the edge's Via
                self.assertEqual(len(header(msg, "Via")), 1, head)

    def inside_callee(self, lab):
        """bob, registered straight at the Director from an inside host, answering one call."""
        port = free_port(INSIDE_USER_IP, socket.SOCK_DGRAM)
        u = UdpUA(INSIDE_USER_IP, port)
        r, _ = u.register((DIR_IP, lab.dir_sip), "bob", USERS["bob"])
        u.close()
        self.assertEqual(parse_status(r), 200, r)
        return lab.sipp("call_uas.xml", None, "bob", ip=INSIDE_USER_IP, port=port,
                        background=True)

    # ---- inside user calls an outside user ----

    def call_inside_to_outside(self, transport):
        lab = self.lab()
        alice = self.outside(lab, transport)
        caller = lab.sipp("call_uac.xml", f"{DIR_IP}:{lab.dir_sip}", "alice", ip=INSIDE_USER_IP,
                          background=True, extra=CALL_ID)
        invite = alice.recv()
        self.assertIsNotNone(invite, "INVITE did not reach the outside user")
        self.assertTrue(invite.startswith("INVITE "), invite)
        rr = header(invite, "Record-Route")
        self.assertEqual(len(rr), 1, rr)
        self.assertIn(f"@{EXT_IP}:{lab.ext_port}", rr[0])
        self.assertIn(";ae-rr=", rr[0])
        self.assertIn("sip:ae-c.", header(invite, "Contact")[0])
        alice.answer(invite)
        ack = alice.recv()
        self.assertIsNotNone(ack, "the in-dialog ACK did not cross the edge")
        self.assertTrue(ack.startswith("ACK "), ack)
        bye = alice.recv()
        self.assertIsNotNone(bye, "the in-dialog BYE did not cross the edge")
        self.assertTrue(bye.startswith("BYE "), bye)
        alice.answer(bye)
        out, _ = caller.communicate(timeout=15)
        self.assertEqual(caller.returncode, 0, out.decode(errors="replace")[-3000:])
        self.assert_hidden(alice)

    def test_outside_callee_hangs_up_through_the_hidden_route_set(self):
        # The outside callee's BYE goes to the encoded Contact along the one Record-Route
        # entry it saw; the edge puts the inside route set and the caller's Contact back.
        lab = self.lab()
        alice = self.outside(lab, "tcp")
        caller = lab.sipp("call_uac_peer_bye.xml", f"{DIR_IP}:{lab.dir_sip}", "alice",
                          ip=INSIDE_USER_IP, background=True, extra=CALL_ID)
        invite = alice.recv()
        self.assertIsNotNone(invite, "INVITE did not reach the outside user")
        alice.answer(invite)
        ack = alice.recv()
        self.assertTrue(ack and ack.startswith("ACK "), ack)
        # A UAS's route set is the Record-Route list in order (RFC 3261 §12.1.1).
        routes = [v.strip() for h in header(invite, "Record-Route") for v in h.split(",")]
        target = uri_of(header(invite, "Contact")[0])
        caller_tag = re.search(r"tag=([^;>\s]+)", header(invite, "From")[0]).group(1)
        lines = [f"BYE {target} SIP/2.0", alice.via(),
                 "From: <sip:alice@example.com>;tag=alice1",  # the tag answer() gave
                 f"To: <sip:caller@example.com>;tag={caller_tag}",
                 f"Call-ID: {header(invite, 'Call-ID')[0]}", "CSeq: 1 BYE", "Max-Forwards: 70"]
        lines += [f"Route: {r}" for r in routes]
        alice.send("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n")
        r = alice.recv()
        self.assertEqual(parse_status(r), 200, r)
        out, _ = caller.communicate(timeout=15)
        self.assertEqual(caller.returncode, 0, out.decode(errors="replace")[-3000:])
        self.assert_hidden(alice)

    def test_inside_calls_outside_udp_no_inside_address_shows(self):
        self.call_inside_to_outside("udp")

    def test_inside_calls_outside_tcp_no_inside_address_shows(self):
        self.call_inside_to_outside("tcp")

    # ---- outside user calls an inside user ----

    def call_outside_to_inside(self, transport, tamper=False):
        lab = self.lab()
        callee = self.inside_callee(lab)
        time.sleep(0.3)
        alice = self.outside(lab, transport)
        dialog = {"tag": uuid.uuid4().hex[:8], "call_id": uuid.uuid4().hex}
        alice.request("INVITE", "sip:bob@example.com", dialog, 1)
        ok = alice.recv(timeout=8)
        self.assertEqual(parse_status(ok), 200, ok)
        # The 200's Record-Route set holds only our external entry; the UAC walks it reversed.
        rr = [v.strip() for h in header(ok, "Record-Route") for v in h.split(",")]
        self.assertEqual(len(rr), 1, rr)
        routes = list(reversed(rr))
        target = uri_of(header(ok, "Contact")[0])
        self.assertTrue(target.startswith("sip:ae-c."), target)
        to_tag = ";tag=" + re.search(r"tag=([^;>\s]+)", header(ok, "To")[0]).group(1)
        alice.request("ACK", target, dialog, 1, routes, to_tag)
        if tamper:
            self.forged_tokens_refused(lab, alice, dialog, target, routes, to_tag)
        alice.request("BYE", target, dialog, 2, routes, to_tag)
        r = alice.recv()
        self.assertEqual(parse_status(r), 200, r)
        out, _ = callee.communicate(timeout=15)
        self.assertEqual(callee.returncode, 0, out.decode(errors="replace")[-3000:])
        self.assert_hidden(alice)

    def forged_tokens_refused(self, lab, alice, dialog, target, routes, to_tag):
        user, _, rest = target.partition("@")
        flip = lambda s, i: s[:i] + ("A" if s[i] != "A" else "B") + s[i + 1:]
        alice.request("BYE", flip(user, 12) + "@" + rest, dialog, 5, routes, to_tag)
        r = alice.recv()
        self.assertEqual(parse_status(r), 403, r)
        self.assertIn("Forged topology-hiding token", header(r, "Warning")[0])
        at = routes[0].index(";ae-rr=") + 10
        alice.request("BYE", target, dialog, 6, [flip(routes[0], at)], to_tag)
        r = alice.recv()
        self.assertEqual(parse_status(r), 403, r)
        self.assertEqual(lab.edge_metric('access_edge_sip_rejected_total{reason="tampered"}'), 2)

    def test_outside_calls_inside_udp_no_inside_address_shows(self):
        self.call_outside_to_inside("udp")

    def test_outside_calls_inside_tcp_no_inside_address_shows(self):
        self.call_outside_to_inside("tcp")

    def test_forged_contact_or_route_token_gets_403_and_is_counted(self):
        self.call_outside_to_inside("udp", tamper=True)
