"""Whole calls through the access edge in every direction (issue 12): external->external (a
hairpin: the call crosses the edge twice, RFC 5658 double Record-Route on both legs),
external->internal, internal->external and partner->internal, each with a re-INVITE and a BYE
(from either side) and a CANCELled call, over UDP, TCP, TLS, WSS and mixed transports on the
two legs. An external party never sees the trust header or a Via other than the edge's on
top, and with topology hiding on, no inside address at all."""
import re
import socket
import time

from harness import SuiteTest, free_port
from siplab import DIR_IP, EXT_IP, INT_IP, USERS, Lab, UdpUA, header, parse_status
from sipdialog import Phone

FED = "federation: {allow: [partner.lab], discovery: false}"
IPS = iter(f"127.0.0.{i}" for i in range(50, 250))
INSIDE_ADDRS = (DIR_IP, INT_IP)


class Calls(SuiteTest):
    def phone(self, lab, tp, user, domain="example.com", register=True):
        p = Phone(lab, tp, user, next(IPS), domain=domain)
        self.addCleanup(p.close)
        if register:
            r = p.register()
            self.assertEqual(parse_status(r), 200, r)
        return p

    def deliver_invite(self, caller, callee):
        """The INVITE at the callee, the caller answering a challenge on the way."""
        end = time.time() + 10
        while time.time() < end:
            inv = callee.recv_request("INVITE", timeout=0.3)
            if inv:
                return inv
            r = caller.recv(lambda m: parse_status(m) in (401, 407), timeout=0.3)
            if r:
                caller.ack_non2xx(r)
                caller.dlg["cseq"] += 1
                caller.send_invite(caller.auth_header(r, "INVITE", caller.dlg["ruri"]))
        self.fail(f"the INVITE never reached the callee; the caller saw {caller.seen}")

    def check_request(self, phone, req, what):
        """What an external party may see of a request the edge sent it."""
        self.assertIsNotNone(req, f"{what} never reached {phone.user} ({phone.tp})")
        if not phone.external:
            return
        head = req.split("\r\n\r\n", 1)[0]
        self.assertFalse(header(req, "ms-edge-proxy-message-trust"), head)
        top = header(req, "Via")[0]
        self.assertIn(EXT_IP, top.split(",")[0], head)
        # It crossed the edge (whose Max-Forwards decrement shows), not only the Director.
        self.assertLessEqual(int(header(req, "Max-Forwards")[0]), 69, head)

    def in_dialog(self, frm, to, method):
        cseq = frm.in_dialog(method)
        req = to.recv_request(method)
        self.check_request(to, req, f"in-dialog {method}")
        to.answer(req, 200, "OK")
        r = frm.recv_response(method)
        self.assertEqual(parse_status(r), 200, f"{method} from {frm.user}: {r}")
        self.assertEqual(header(r, "CSeq")[0], f"{cseq} {method}")
        if method == "INVITE":
            frm.ack()
            self.check_request(to, to.recv_request("ACK"), "ACK of the re-INVITE")

    @staticmethod
    def fresh(*phones):
        for p in phones:
            p.dlg = None
            p.pending = []

    def full_call(self, caller, callee, reinvite_from, bye_from, domain="example.com"):
        self.fresh(caller, callee)
        caller.invite(callee.user, domain)
        inv = self.deliver_invite(caller, callee)
        self.check_request(callee, inv, "INVITE")
        callee.answer(inv, 180, "Ringing")
        callee.answer(inv, 200, "OK")
        ok = caller.recv_response("INVITE")
        self.assertEqual(parse_status(ok), 200, ok)
        caller.established(ok)
        self.check_request(callee, callee.recv_request("ACK"), "ACK")
        side = {"caller": caller, "callee": callee}
        other = {"caller": callee, "callee": caller}
        self.in_dialog(side[reinvite_from], other[reinvite_from], "INVITE")
        self.in_dialog(side[bye_from], other[bye_from], "BYE")

    def cancelled_call(self, caller, callee, domain="example.com"):
        self.fresh(caller, callee)
        caller.invite(callee.user, domain)
        inv = self.deliver_invite(caller, callee)
        callee.answer(inv, 180, "Ringing")
        ringing = caller.recv(lambda m: parse_status(m) == 180)
        self.assertIsNotNone(ringing, "no 180 at the caller")
        caller.cancel()
        r = caller.recv_response("CANCEL")
        self.assertEqual(parse_status(r), 200, r)
        cancel = callee.recv_request("CANCEL")
        self.check_request(callee, cancel, "CANCEL")
        callee.answer(cancel, 200, "OK", dialog=False)
        callee.answer(inv, 487, "Request Terminated")
        r = caller.recv_response("INVITE")
        self.assertEqual(parse_status(r), 487, r)
        caller.ack_non2xx(r)

    def assert_nothing_inside(self, *phones):
        for p in phones:
            if not p.external:
                continue
            self.assertTrue(p.seen)
            for msg in p.seen:
                head = msg.split("\r\n\r\n", 1)[0]
                for ip in INSIDE_ADDRS:
                    self.assertIsNone(re.search(re.escape(ip) + r"(?!\d)", head),
                                      f"inside address {ip} reached {p.user}:\n{head}")

    # ---- external -> external (hairpin) ----

    def hairpin(self, tp_a, tp_b, reinvite_from, bye_from, link="udp"):
        lab = Lab(self, edge_to_director=link)
        alice = self.phone(lab, tp_a, "alice")
        bob = self.phone(lab, tp_b, "bob")
        self.full_call(alice, bob, reinvite_from, bye_from)
        self.cancelled_call(bob, alice)

    def test_external_to_external_udp(self):
        self.hairpin("udp", "udp", "callee", "caller")

    def test_external_to_external_tcp_to_tls(self):
        self.hairpin("tcp", "tls", "caller", "callee")

    def test_external_to_external_udp_over_a_tls_director_link(self):
        self.hairpin("udp", "tcp", "callee", "caller", link="tls")

    def test_external_to_external_wss_to_udp(self):
        self.hairpin("wss", "udp", "callee", "callee")

    def test_external_to_external_tls_to_wss(self):
        self.hairpin("tls", "wss", "caller", "caller")

    def test_sipp_call_between_two_outside_users(self):
        # Real clients: a sipp UAS registered through the edge, called by a sipp UAC from
        # outside that answers the Director's challenge if one comes.
        lab = Lab(self, algorithms=("MD5",))
        ip = next(IPS)
        port = free_port(ip, socket.SOCK_DGRAM)
        u = UdpUA(ip, port)
        r, _ = u.register((EXT_IP, lab.ext_port), "bob", USERS["bob"])
        u.close()
        self.assertEqual(parse_status(r), 200, r)
        uas = lab.sipp("call_uas.xml", None, "bob", ip=ip, port=port, background=True)
        uac = lab.sipp("call_uac_auth.xml", f"{EXT_IP}:{lab.ext_port}", "bob", ip=next(IPS),
                       background=True, extra=["-au", "alice", "-ap", USERS["alice"]])
        for p, who in ((uac, "caller"), (uas, "callee")):
            out, _ = p.communicate(timeout=30)
            self.assertEqual(p.returncode, 0, f"{who}: " + out.decode(errors="replace")[-3000:])
        # The BYE crossed the edge on both legs: in from the caller and out to the callee,
        # and twice through the Director's side of the edge.
        self.assertGreaterEqual(lab.edge_metric('access_edge_sip_messages_in_total{side="internal"}'), 8)

    def test_external_to_external_hidden_topology(self):
        lab = Lab(self, extra_edge="topology_hiding: true")
        alice = self.phone(lab, "udp", "alice")
        bob = self.phone(lab, "tcp", "bob")
        self.full_call(alice, bob, "callee", "callee")
        self.cancelled_call(alice, bob)
        self.assert_nothing_inside(alice, bob)

    # ---- through the edge once ----

    def test_external_to_internal_and_back(self):
        lab = Lab(self)
        for tp, rf, bf in (("udp", "callee", "caller"), ("wss", "caller", "callee"),
                           ("tls", "callee", "callee")):
            alice = self.phone(lab, tp, "alice")
            bob = self.phone(lab, "inside", "bob")
            self.full_call(alice, bob, rf, bf)
            self.cancelled_call(alice, bob)
            self.full_call(bob, alice, bf, rf)  # internal -> external
            self.cancelled_call(bob, alice)

    def test_partner_to_internal(self):
        lab = Lab(self, extra_edge=FED)
        bob = self.phone(lab, "inside", "bob")
        carol = self.phone(lab, "mtls", "carol", domain="partner.lab", register=False)
        self.full_call(carol, bob, "callee", "callee", domain="example.com")
        self.full_call(carol, bob, "caller", "caller")
        self.cancelled_call(carol, bob)
