"""Access edge end to end with the Director: Digest registration, calls and MESSAGEs both
ways, CANCEL, over UDP, TCP and TLS (stunnel in front of sipp), driven by sipp and small
Python user agents."""
import os
import shutil
import socket
import subprocess
import time

from harness import SuiteTest, free_port, wait_for
from siplab import CERTS, DIR_IP, EXT_IP, INT_IP, USERS, Lab, UdpUA, parse_status, header


class EdgeSip(SuiteTest):
    def lab(self, **kw):
        return Lab(self, **kw)

    def assert_sipp_ok(self, p, what):
        out = p.stdout.decode(errors="replace") if isinstance(p.stdout, bytes) else p.stdout
        self.assertEqual(p.returncode, 0, f"{what}: sipp failed:\n{out[-3000:]}")

    def register_udp(self, lab, user, port, ip="127.0.0.4", via="edge"):
        """Registers user from ip:port (through the edge or straight at the Director)."""
        ua = UdpUA(ip, port)
        try:
            to = (EXT_IP, lab.ext_port) if via == "edge" else (DIR_IP, lab.dir_sip)
            r, _ = ua.register(to, user, USERS[user])
            self.assertEqual(parse_status(r), 200, r)
        finally:
            ua.close()

    # ---- registration ----

    def test_register_digest_challenge_via_edge_sipp_udp(self):
        lab = self.lab(algorithms=("MD5",))
        p = lab.sipp("register.xml", f"{EXT_IP}:{lab.ext_port}", "alice",
                     extra=["-au", "alice", "-ap", USERS["alice"]])
        self.assert_sipp_ok(p, "register")
        self.assertEqual(lab.dir_metric("director_sip_registrations_total"), 1)
        self.assertEqual(lab.dir_metric("director_sip_challenges_total"), 1)

    def test_register_sha256_offered_first_rfc8760(self):
        lab = self.lab(algorithms=("SHA-256", "MD5"))  # the Director's default order
        ua = UdpUA("127.0.0.4")
        self.addCleanup(ua.close)
        r, chals = ua.register((EXT_IP, lab.ext_port), "alice", USERS["alice"], alg_pref="SHA-256")
        self.assertEqual(parse_status(r), 200, r)
        self.assertIn("algorithm=SHA-256", chals[0])
        self.assertIn("algorithm=MD5", chals[1])
        r, _ = ua.register((EXT_IP, lab.ext_port), "bob", "wrong-password", alg_pref="MD5")
        self.assertEqual(parse_status(r), 401)

    # ---- calls ----

    def call_ext_to_int(self, transport):
        lab = self.lab()
        bob_port = free_port("127.0.0.5", socket.SOCK_DGRAM)
        self.register_udp(lab, "bob", bob_port, ip="127.0.0.5", via="director")
        uas = lab.sipp("call_uas.xml", None, "bob", ip="127.0.0.5", port=bob_port, background=True)
        time.sleep(0.3)
        target, tp, extra = self.external(lab, transport)
        p = lab.sipp("call_uac.xml", target, "bob", transport=tp, extra=extra)
        self.assert_sipp_ok(p, "caller")
        out, _ = uas.communicate(timeout=15)
        self.assertEqual(uas.returncode, 0, out.decode(errors="replace")[-2000:])
        return lab

    def call_int_to_ext(self):
        lab = self.lab()
        alice_port = free_port("127.0.0.4", socket.SOCK_DGRAM)
        self.register_udp(lab, "alice", alice_port, ip="127.0.0.4")
        uas = lab.sipp("call_uas.xml", None, "alice", ip="127.0.0.4", port=alice_port,
                       background=True)
        time.sleep(0.3)
        p = lab.sipp("call_uac.xml", f"{DIR_IP}:{lab.dir_sip}", "alice", ip="127.0.0.5")
        self.assert_sipp_ok(p, "caller")
        out, _ = uas.communicate(timeout=15)
        self.assertEqual(uas.returncode, 0, out.decode(errors="replace")[-2000:])
        return lab

    def external(self, lab, transport):
        """sipp target, -t value and extra args for the external side over transport."""
        if transport == "udp":
            return f"{EXT_IP}:{lab.ext_port}", "u1", []
        if transport == "tcp":
            return f"{EXT_IP}:{lab.ext_port}", "t1", []
        # TLS: sipp as packaged has no TLS; stunnel turns its TCP into TLS to the edge.
        if not shutil.which("stunnel4") and not shutil.which("stunnel"):
            self.skipTest("stunnel is not installed")
        port = free_port("127.0.0.1")
        conf = os.path.join(self.tmp, "stunnel.conf")
        with open(conf, "w") as f:
            f.write(f"foreground = yes\npid =\n[sip]\nclient = yes\naccept = 127.0.0.1:{port}\n"
                    f"connect = {EXT_IP}:{lab.ext_tls}\nCAfile = {CERTS}/ca.crt\nverifyChain = yes\n")
        st = subprocess.Popen([shutil.which("stunnel4") or "stunnel", conf],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (st.terminate(), st.wait()))
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), 0.2).close() or True,
                 what="stunnel")
        return f"127.0.0.1:{port}", "t1", []

    def test_call_external_to_internal_udp(self):
        lab = self.call_ext_to_int("udp")
        self.assertGreaterEqual(lab.edge_metric('access_edge_sip_messages_in_total{side="external"}'), 3)  # INVITE, ACK, BYE

    def test_call_external_to_internal_tcp(self):
        self.call_ext_to_int("tcp")

    def test_call_external_to_internal_tls(self):
        self.call_ext_to_int("tls")

    def test_call_internal_to_external_udp_over_flow(self):
        self.call_int_to_ext()

    # ---- MESSAGE ----

    def message_ext_to_int(self, transport):
        lab = self.lab()
        bob_port = free_port("127.0.0.5", socket.SOCK_DGRAM)
        self.register_udp(lab, "bob", bob_port, ip="127.0.0.5", via="director")
        uas = lab.sipp("message_uas.xml", None, "bob", ip="127.0.0.5", port=bob_port,
                       background=True)
        time.sleep(0.3)
        target, tp, extra = self.external(lab, transport)
        p = lab.sipp("message_uac.xml", target, "bob", transport=tp, extra=extra)
        self.assert_sipp_ok(p, "sender")
        out, _ = uas.communicate(timeout=15)
        self.assertEqual(uas.returncode, 0, out.decode(errors="replace")[-2000:])

    def test_message_external_to_internal_udp(self):
        self.message_ext_to_int("udp")

    def test_message_external_to_internal_tcp(self):
        self.message_ext_to_int("tcp")

    def test_message_external_to_internal_tls(self):
        self.message_ext_to_int("tls")

    def test_message_internal_to_external_udp(self):
        lab = self.lab()
        alice_port = free_port("127.0.0.4", socket.SOCK_DGRAM)
        self.register_udp(lab, "alice", alice_port, ip="127.0.0.4")
        uas = lab.sipp("message_uas.xml", None, "alice", ip="127.0.0.4", port=alice_port,
                       background=True)
        time.sleep(0.3)
        p = lab.sipp("message_uac.xml", f"{DIR_IP}:{lab.dir_sip}", "alice", ip="127.0.0.5")
        self.assert_sipp_ok(p, "sender")
        out, _ = uas.communicate(timeout=15)
        self.assertEqual(uas.returncode, 0, out.decode(errors="replace")[-2000:])

    # ---- CANCEL ----

    def cancel_ext_to_int(self, transport):
        lab = self.lab()
        bob_port = free_port("127.0.0.5", socket.SOCK_DGRAM)
        self.register_udp(lab, "bob", bob_port, ip="127.0.0.5", via="director")
        uas = lab.sipp("cancel_uas.xml", None, "bob", ip="127.0.0.5", port=bob_port,
                       background=True)
        time.sleep(0.3)
        target, tp, extra = self.external(lab, transport)
        p = lab.sipp("cancel_uac.xml", target, "bob", transport=tp, extra=extra)
        self.assert_sipp_ok(p, "caller")
        out, _ = uas.communicate(timeout=15)
        self.assertEqual(uas.returncode, 0, out.decode(errors="replace")[-2000:])

    def test_cancel_ringing_call_udp(self):
        self.cancel_ext_to_int("udp")

    def test_cancel_ringing_call_tcp(self):
        self.cancel_ext_to_int("tcp")

    def test_cancel_ringing_call_tls(self):
        self.cancel_ext_to_int("tls")
