"""RFC 4475 (SIP torture test messages) against the access edge, over UDP and over TCP.

The messages in sip/rfc4475/*.dat are the RFC's own, byte for byte (see the README there).
Each is sent from an external client to a default edge; the test observes what a user would
see and what reached the Director, and compares with the table below. After every message
the edge must still serve a normal request from the same client.

Outcomes:
  "fwd"    the request reached the Director (whatever it answered: 401, 404, 480 ...)
  "resp"   a response from outside that is not for one of our transactions: parsed (not
           counted as unparseable), and dropped, as RFC 3261 §18.1.2 says
  "drop"   nothing reached the Director and nothing came back
  "wait"   (stream only) the message is incomplete: the edge waits for the rest, answers
           nothing and forwards nothing
  a number (or a set of them): the edge answered with that status itself; for a valid
           message this is policy (not ours: 403, method: 405, scheme: 416, ...), never 400
"""
import os
import socket
import time
import uuid

from harness import SuiteTest
from siplab import EXT_IP, Lab, StreamUA, UdpUA, parse_status

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sip", "rfc4475")

# name, RFC 4475 section, UDP outcome, TCP outcome, why
TABLE = [
    # §3.1.1 valid messages: parsed and handled, never 400.
    ("wsinv", "3.1.1.1", 403, 403,
     "valid (folding, LWS, leading zeros); Request-URI chair-dnrc.example.com is not ours"),
    ("intmeth", "3.1.1.2", 405, 405, "valid; an unknown method is refused by policy, with Allow"),
    ("esc01", "3.1.1.3", 403, 403, "valid escaping; Request-URI host example.net is not ours"),
    ("escnull", "3.1.1.4", "fwd", "fwd", "valid: escaped NULs in URIs are just bytes"),
    ("esc02", "3.1.1.5", 405, 405, "valid: RE%47IST%45R is a method of its own, not REGISTER"),
    ("lwsdisp", "3.1.1.6", "fwd", "fwd", "valid: no LWS between display name and <"),
    ("longreq", "3.1.1.7", "fwd", "fwd", "valid: long values and many headers"),
    ("dblreq", "3.1.1.8", "fwd", "fwd2",
     "valid: UDP discards the bytes after Content-Length (RFC 3261 §18.3); TCP frames two, "
     "then the INVITE's 5 bytes beyond its Content-Length cannot be framed: closed"),
    ("semiuri", "3.1.1.9", "fwd", "fwd", "valid: ; in the user part"),
    ("transports", "3.1.1.10", "fwd", "fwd", "valid: unknown Via transports"),
    ("mpart01", "3.1.1.11", 403, 403, "valid multipart body; Request-URI example.org not ours"),
    ("unreason", "3.1.1.12", "resp", "resp", "valid response with a UTF-8 reason phrase"),
    ("noreason", "3.1.1.13", "resp", "resp", "valid response with an empty reason phrase"),
    # §3.1.2 invalid messages: 400 (or the RFC's specific code), responses dropped.
    ("badinv01", "3.1.2.1", 400, 400, "empty Via/Contact parameters"),
    ("clerr", "3.1.2.2", 400, "wait",
     "Content-Length past the datagram: 400; on a stream the edge waits for the rest"),
    ("ncl", "3.1.2.3", 400, 400, "negative Content-Length"),
    ("scalar02", "3.1.2.4", 400, 400, "CSeq number and Max-Forwards out of range"),
    ("scalarlg", "3.1.2.5", "drop", "drop", "response with out-of-range scalars"),
    ("quotbal", "3.1.2.6", 400, 400, "unterminated quoted string in To"),
    ("ltgtruri", "3.1.2.7", 400, 400, "<> around the Request-URI"),
    ("lwsruri", "3.1.2.8", 400, 400, "LWS inside the Request-URI"),
    ("lwsstart", "3.1.2.9", 400, 400, "several SP between Request-Line elements"),
    ("trws", "3.1.2.10", 400, 400, "SP after the SIP-Version"),
    ("escruri", "3.1.2.11", 400, 400, "escaped headers in the Request-URI"),
    ("baddate", "3.1.2.12", "fwd", "fwd", "non-GMT Date: a proxy may forward it unchanged"),
    ("regbadct", "3.1.2.13", {400, "fwd"}, {400, "fwd"},
     "Contact with ?headers outside <>: the registrar's call; a proxy may forward it"),
    ("badaspec", "3.1.2.14", {400, 403}, {400, 403},
     "SP inside <>; Request-URI example.org is not ours either"),
    ("baddn", "3.1.2.15", {400, 403}, {400, 403},
     "unquoted display name with a comma; Request-URI example.org is not ours either"),
    ("badvers", "3.1.2.16", 505, 505, "SIP/7.0"),
    ("mismatch01", "3.1.2.17", 400, 400, "CSeq method differs from the Request-Line's"),
    ("mismatch02", "3.1.2.18", 400, 400, "unknown method, and CSeq method differs"),
    ("bigcode", "3.1.2.19", "drop", "drop", "response with a status code over 699"),
    # §3.2 transaction layer.
    ("badbranch", "3.2.1", "fwd", "fwd", "a bare z9hG4bK branch is still a branch"),
    # §3.3 application layer: the edge is a proxy.
    ("insuf", "3.3.1", 400, 400, "no To, From, Call-ID, Max-Forwards"),
    ("unkscm", "3.3.2", 416, 416, "unknown Request-URI scheme"),
    ("novelsc", "3.3.3", 416, 416, "soap.beep Request-URI scheme"),
    ("unksm2", "3.3.4", "fwd", "fwd", "unknown schemes in To/From/Contact: not the proxy's business"),
    ("bext01", "3.3.5", 420, 420, "Proxy-Require with an option-tag the edge does not support"),
    ("invut", "3.3.6", "fwd", "fwd", "unknown Content-Type: the UAS answers 415"),
    ("regaut01", "3.3.7", "fwd", "fwd", "unknown authorization scheme: the registrar's call"),
    ("multi01", "3.3.8", 400, 400, "several values in single-value headers"),
    ("mcl01", "3.3.9", 400, 400, "two Content-Length values"),
    ("bcast", "3.3.10", "resp", "resp", "response with a broadcast received: not ours, dropped"),
    ("zeromf", "3.3.11", 483, 483, "Max-Forwards 0 at a proxy"),
    ("cparam01", "3.3.12", "fwd", "fwd", "Contact parameters without <>"),
    ("cparam02", "3.3.13", "fwd", "fwd", "Contact parameters inside <>"),
    ("regescrt", "3.3.14", "fwd", "fwd", "escaped Route in a Contact URI: the registrar's call"),
    ("sdp01", "3.3.15", "fwd", "fwd", "Accept the UAS cannot satisfy: the UAS's call"),
    # §3.4 backward compatibility: an RFC 2543 INVITE (no Max-Forwards: the edge adds one,
    # RFC 3261 §16.6; no branch cookie) is handled over UDP; on TCP it has no Content-Length,
    # which a stream must carry (RFC 3261 §18.3), so it cannot be framed: 400.
    ("inv2543", "3.4.1", "fwd", 400,
     "RFC 2543 INVITE without Max-Forwards (and, on TCP, without Content-Length)"),
]

UDP_IP, TCP_IP = "127.0.0.6", "127.0.0.7"


def load(name):
    with open(os.path.join(DATA, name + ".dat"), "rb") as f:
        return f.read()


def wanted(exp):
    return exp if isinstance(exp, set) else {exp}


class Rfc4475(SuiteTest):
    @classmethod
    def setUpClass(cls):
        cls.shared = None

    def setUp(self):
        super().setUp()
        self.lab = Lab(self, extra_edge=f"limits: {{exempt: [{UDP_IP}/32, {TCP_IP}/32]}}")

    def test_table_lists_every_message(self):
        names = sorted(f[:-4] for f in os.listdir(DATA) if f.endswith(".dat"))
        self.assertEqual(sorted(r[0] for r in TABLE), names)
        self.assertEqual(len(names), 49)

    def dir_in(self):
        """Messages the Director got, less the edge's own retransmissions of INVITEs it
        forwarded in an earlier row (Timer A goes on for 32 s when no answer matches)."""
        return (self.lab.dir_metric("director_sip_messages_in_total") -
                self.lab.edge_metric("access_edge_sip_invite_retransmissions_total"))

    def unparseable(self):
        """Messages the edge found broken (unparseable, or refused as malformed)."""
        return (self.lab.edge_metric("access_edge_sip_unparseable_total") +
                self.lab.edge_metric('access_edge_sip_rejected_total{reason="malformed"}'))

    def settle(self):
        """Waits until nothing more reaches the Director (a slow forward of the row before,
        on a loaded machine, would otherwise be taken for this row's)."""
        last, end = self.dir_in(), time.time() + 3.0
        while time.time() < end:
            time.sleep(0.3)
            now = self.dir_in()
            if now == last:
                return
            last = now

    def observe(self, recv, before, unp_before, is_response, stream):
        """What the edge did with one message: a status, fwd/fwd2, resp, drop or wait."""
        r, end = None, time.time() + 1.5
        while r is None and time.time() < end:
            r = recv(0.1)
            if r is None and self.dir_in() > before:
                time.sleep(0.2)  # a second message of the same datagram or segment
                break
        got = self.dir_in() - before
        if got >= 2:
            return "fwd2"
        if got == 1:
            return "fwd"
        if r is not None:
            return parse_status(r)
        if is_response:
            return "resp" if self.unparseable() == unp_before else "drop"
        return "wait" if stream and self.unparseable() == unp_before else "drop"

    def normal_request_udp(self, ua):
        ua.request("REGISTER", "sip:example.com", (EXT_IP, self.lab.ext_port))
        return parse_status(ua.recv(3.0) or "")

    def test_udp(self):
        ua = UdpUA(UDP_IP)
        ua.auto_auth = False  # a 407 answered behind the table's back lands in a later row
        self.addCleanup(ua.close)
        seen = {}
        for name, sec, exp, _, why in TABLE:
            data = load(name)
            self.settle()
            before, unp = self.dir_in(), self.unparseable()
            ua.send(data, (EXT_IP, self.lab.ext_port))
            seen[name] = self.observe(ua.recv, before, unp, data.startswith(b"SIP/2.0 "), False)
            with self.subTest(msg=name, section=sec):
                self.assertIn(seen[name], wanted(exp), f"{name} (§{sec}, {why})")
                self.assertEqual(self.normal_request_udp(ua), 401,
                                 f"no normal service after {name}")
        self.assertTrue(self.lab.edge.alive() and self.lab.director.alive())

    def test_tab_in_cseq_is_lws(self):
        """RFC 3261 §25.1: HTAB is LWS like SP; "CSeq: 1<TAB>OPTIONS" was dropped (issue 12)."""
        ua = UdpUA(UDP_IP)
        self.addCleanup(ua.close)
        before = self.dir_in()
        text = (f"REGISTER sip:example.com SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {ua.ip}:{ua.port};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
                f"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n"
                f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1\tREGISTER\r\nMax-Forwards: 70\r\n"
                f"Contact: <sip:alice@{ua.ip}:{ua.port}>\r\nContent-Length: 0\r\n\r\n")
        ua.send(text, (EXT_IP, self.lab.ext_port))
        r = ua.recv(2.0)
        self.assertIsNotNone(r, "no answer")
        self.assertEqual(parse_status(r), 401, r)  # the registrar's challenge
        self.assertEqual(self.dir_in() - before, 1, "the REGISTER did not reach the Director")

    def test_tcp(self):
        seen = {}
        for name, sec, _, exp, why in TABLE:
            data = load(name)
            ua = StreamUA(EXT_IP, self.lab.ext_port, ip=TCP_IP)
            ua.auto_auth = False
            self.addCleanup(ua.close)
            self.settle()
            before, unp = self.dir_in(), self.unparseable()
            ua.send(data)
            seen[name] = self.observe(ua.recv, before, unp, data.startswith(b"SIP/2.0 "), True)
            with self.subTest(msg=name, section=sec):
                self.assertIn(seen[name], wanted(exp), f"{name} (§{sec}, {why})")
                # The same connection when the edge kept it usable, else a new one.
                if seen[name] in ("wait", "drop", "resp", "fwd2") or seen[name] == 400:
                    ua.close()
                    ua = StreamUA(EXT_IP, self.lab.ext_port, ip=TCP_IP)
                    ua.auto_auth = False
                    self.addCleanup(ua.close)
                ua.request("REGISTER", "sip:example.com", call_id=uuid.uuid4().hex)
                self.assertEqual(parse_status(ua.recv(3.0) or ""), 401,
                                 f"no normal service after {name}")
            ua.close()
        self.assertTrue(self.lab.edge.alive() and self.lab.director.alive())


if __name__ == "__main__":
    import unittest
    unittest.main()
