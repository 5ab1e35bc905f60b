"""Control channel between edges and the Director, over real mutual TLS on loopback.

Edges are played by build/bin/ctl-probe (the same ctl client API the edges use), which
prints every event it receives as a JSON line; bad peers are played by Python sockets.
"""
import json
import os
import queue
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import shutil
import threading
import time
import unittest

import harness
from harness import SuiteTest, free_port, http_json, wait_for, binary, ROOT


def _ld(field, payload):
    """A protobuf length-delimited field (payloads here are short)."""
    return bytes([(field << 3) | 2]) + _varint(len(payload)) + payload


def _varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def frame(body):
    return struct.pack(">I", len(body)) + body


def hello_frame(role, instance):
    """Envelope{hello: Hello{role, instance_id}} as the edges send it."""
    return frame(_ld(1, b"\x08" + _varint(role) + _ld(2, instance.encode())))


ROLE_ACCESS_EDGE = 2


class Probe:
    """One ctl-probe process: an edge stand-in whose received events we can wait for."""

    def __init__(self, test, role, instance, cert, subscribe=(), backoff_max=None, external=()):
        self.instance = instance
        certs = test.certs
        argv = [binary("ctl-probe"), "--director", f"127.0.0.1:{test.ctl_port}",
                "--role", role, "--instance", instance,
                "--cert", os.path.join(certs, f"{cert}.crt"),
                "--key", os.path.join(certs, f"{cert}.key"),
                "--ca", os.path.join(certs, "ca.crt"), "--name", "director",
                "--report-interval", "500"]
        if subscribe:
            argv += ["--subscribe", ",".join(subscribe)]
        if backoff_max:
            argv += ["--backoff-max", str(backoff_max)]
        for a in external:
            argv += ["--external", a]
        self.errpath = os.path.join(test.tmp, f"probe-{instance}.log")
        self.errf = open(self.errpath, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errf, cwd=ROOT)
        self.events = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"event": "unparsable", "line": line.decode(errors="replace")}
            with self.lock:
                self.events.append(ev)

    def all(self, kind=None):
        with self.lock:
            return [e for e in self.events if kind is None or e["event"] == kind]

    def wait(self, pred, timeout=5.0, what="event"):
        def check():
            for e in self.all():
                if pred(e):
                    return e
            return None
        return wait_for(check, timeout, what=f"{what} at probe {self.instance} "
                                              f"(got {self.all()[-8:]}; log: {self.log()[-800:]})")

    def send(self, line):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def log(self):
        with open(self.errpath, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # EOF: the probe stops its client and exits
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(2)
        self.errf.close()
        text = self.log()
        for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if bad in text:
                raise AssertionError(f"probe {self.instance}: sanitizer report:\n{text[-3000:]}")


class CtlTest(SuiteTest):
    @classmethod
    def setUpClass(cls):
        if not (harness.have_binary("director") and harness.have_binary("ctl-probe")):
            raise unittest.SkipTest("director or ctl-probe is not built")
        cls.certdir = tempfile.mkdtemp(prefix="ctlcerts-")
        subprocess.run([os.path.join(ROOT, "deploy", "certs.sh"), cls.certdir], check=True,
                       capture_output=True, timeout=120)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certdir, ignore_errors=True)

    def setUp(self):
        super().setUp()
        self.certs = self.certdir
        self.ctl_port = free_port()
        self.admin_port = free_port()
        self.admin = f"127.0.0.1:{self.admin_port}"
        self.probes = []

    def tearDown(self):
        errors = []
        for p in self.probes:
            try:
                p.stop()
            except AssertionError as e:
                errors.append(str(e))
        try:
            super().tearDown()
        finally:
            if errors:
                raise AssertionError("\n".join(errors))

    def director_config(self):
        c = self.certs
        return f"""instance_id: director-test
admin: {{listen: "{self.admin}"}}
log: {{level: debug}}
ctl:
  listen: 127.0.0.1:{self.ctl_port}
  heartbeat: 300ms
tls:
  cert: {c}/director.crt
  key: {c}/director.key
  ca: {c}/ca.crt
secrets:
  rotate_interval: 1h
  lifetime: 2h
"""

    def start_director(self):
        d = self.daemon("director", self.director_config(), admin=self.admin)
        return d

    def probe(self, role, instance, cert=None, subscribe=(), **kw):
        p = Probe(self, role, instance, cert or role, subscribe, **kw)
        self.probes.append(p)
        return p

    def edges(self):
        st, body = http_json(self.admin, "/edges")
        self.assertEqual(st, 200, body)
        return {e["instance"]: e for e in body["edges"]}

    def connected(self, *instances):
        e = self.edges()
        return all(i in e and e[i]["connected"] for i in instances)

    def mtls_socket(self, cert="access-edge"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(os.path.join(self.certs, "ca.crt"))
        ctx.load_cert_chain(os.path.join(self.certs, f"{cert}.crt"),
                            os.path.join(self.certs, f"{cert}.key"))
        raw = socket.create_connection(("127.0.0.1", self.ctl_port), timeout=5)
        return ctx.wrap_socket(raw, server_hostname="director")

    def assert_closed_by_server(self, s, timeout=5.0):
        """Reads until the Director closes the connection; fails if it stays open."""
        s.settimeout(timeout)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                data = s.recv(65536)
            except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
                return
            except socket.timeout:
                break
            if not data:
                return
        self.fail("the Director kept the connection open")

    # ---------------------------------------------------------------------------------

    def two_av_edges(self):
        self.start_director()
        a = self.probe("av-edge", "av1", subscribe=["av-edge"])
        b = self.probe("av-edge", "av2", subscribe=["av-edge"])
        return a, b

    def relay_uris(self):
        st, body = http_json(self.admin, "/credentials?user=alice")
        self.assertEqual(st, 200, body)
        return body["uris"]

    def test_credentials_list_relays_least_loaded_first_without_draining_or_unhealthy(self):
        self.start_director()
        uri = {n: f"turn:127.0.0.{n}:3478?transport=udp" for n in (31, 32, 33)}
        p = {n: self.probe("av-edge", f"av{n}", external=[uri[n]]) for n in (31, 32, 33)}
        p[31].send("allocations=9 load=700")
        p[32].send("allocations=5 load=100")
        p[33].send("allocations=2 load=100")
        want = [uri[33], uri[32], uri[31]]
        wait_for(lambda: self.relay_uris() == want, timeout=5,
                 what=f"uris ordered by load {want} (got {self.relay_uris()})")
        # The busiest becomes the idlest with its next report; a draining edge and an
        # unhealthy one are no longer offered.
        p[31].send("allocations=0 load=0")
        p[32].send("draining=1")
        p[33].send("healthy=0")
        wait_for(lambda: self.relay_uris() == [uri[31]], timeout=5,
                 what=f"only {uri[31]} (got {self.relay_uris()})")
        # An edge that goes away is no longer offered either.
        p[33].send("healthy=1")
        wait_for(lambda: self.relay_uris() == [uri[31], uri[33]], timeout=5,
                 what="av31 and av33")
        p[31].proc.kill()
        wait_for(lambda: self.relay_uris() == [uri[33]], timeout=3, what="av33 only")

    def test_two_edges_register_and_report_visible_in_edges_within_2s(self):
        a, b = self.two_av_edges()
        t0 = time.time()
        a.send("connections=5 allocations=2 load=300")
        b.send("connections=9 allocations=4 load=600")

        def both_reported():
            e = self.edges()
            return (e.get("av1", {}).get("connected") and e.get("av2", {}).get("connected")
                    and (e["av1"]["report"] or {}).get("connections") == 5
                    and (e["av2"]["report"] or {}).get("connections") == 9)
        wait_for(both_reported, timeout=2.0, what="both edges with their reports in GET /edges")
        self.assertLess(time.time() - t0, 2.0)
        e = self.edges()
        self.assertEqual(e["av1"]["role"], "av-edge")
        self.assertEqual(e["av1"]["certificate"], "av-edge")
        self.assertEqual(e["av1"]["report"]["allocations"], 2)
        self.assertEqual(e["av2"]["report"]["load_permille"], 600)
        st, body = http_json(self.admin, "/edges?role=conf-edge")
        self.assertEqual((st, body["edges"]), (200, []))

    def test_report_from_one_edge_reaches_its_subscriber_only(self):
        a, b = self.two_av_edges()
        c = self.probe("conf-edge", "conf1")  # subscribes to nothing
        for p in (a, b, c):
            p.wait(lambda e: e["event"] == "welcome", what="welcome")
        a.send("connections=7 note=watch:partner.example")
        ev = b.wait(lambda e: e["event"] == "report" and e["instance"] == "av1"
                    and e["connections"] == 7, what="av1's report")
        self.assertEqual(ev["role"], "av-edge")
        self.assertEqual(ev["notes"], ["watch:partner.example"])
        # a does not get its own report back; c subscribed to nothing.
        time.sleep(0.7)
        self.assertFalse([e for e in a.all("report") if e["instance"] == "av1"])
        self.assertEqual(c.all("report"), [])

    def test_secret_rotation_reaches_both_edges(self):
        a, b = self.two_av_edges()
        first = [p.wait(lambda e: e["event"] == "secret" and e["kind"] == "relay",
                        what="relay secret in Welcome") for p in (a, b)]
        self.assertEqual(first[0]["key_id"], first[1]["key_id"])
        self.assertEqual(len(first[0]["secret"]), 64)  # 32 bytes, hex
        st, body = http_json(self.admin, "/rotate?kind=relay", method="POST")
        self.assertEqual(st, 200, body)
        new_id = body["rotated"][0]["key_id"]
        self.assertNotEqual(new_id, first[0]["key_id"])
        got = [p.wait(lambda e: e["event"] == "secret" and e["key_id"] == new_id,
                      what="rotated relay secret") for p in (a, b)]
        self.assertEqual(got[0]["secret"], got[1]["secret"])
        self.assertNotEqual(got[0]["secret"], first[0]["secret"])
        self.assertGreater(got[0]["not_after"], time.time() + 3600)
        # An edge arriving now gets both, oldest first, so its keyring ends as the Director's.
        c = self.probe("av-edge", "av3")
        c.wait(lambda e: len(c.all("secret")) == 2, what="previous and current secrets")
        self.assertEqual([e["key_id"] for e in c.all("secret")], [first[0]["key_id"], new_id])

    def test_each_role_gets_only_the_secrets_it_needs(self):
        self.start_director()
        av = self.probe("av-edge", "av1")
        conf = self.probe("conf-edge", "conf1")
        ae = self.probe("access-edge", "ae1")
        for p in (av, conf, ae):
            p.wait(lambda e: e["event"] == "welcome", what="welcome")
        av.wait(lambda e: e["event"] == "secret")
        conf.wait(lambda e: e["event"] == "secret")
        st, body = http_json(self.admin, "/rotate", method="POST")
        self.assertEqual(st, 200, body)
        ids = {r["kind"]: r["key_id"] for r in body["rotated"]}
        av.wait(lambda e: e["event"] == "secret" and e["key_id"] == ids["relay"])
        conf.wait(lambda e: e["event"] == "secret" and e["key_id"] == ids["conference"])
        time.sleep(0.3)
        self.assertEqual({e["kind"] for e in av.all("secret")}, {"relay"})
        self.assertEqual({e["kind"] for e in conf.all("secret")}, {"conference"})
        self.assertEqual(ae.all("secret"), [])

    def test_director_restart_both_edges_registered_again_within_5s(self):
        a, b = self.two_av_edges()
        wait_for(lambda: self.connected("av1", "av2"), timeout=2.0, what="both registered")
        d = self.daemons[-1]
        d.kill()
        for p in (a, b):
            p.wait(lambda e: e["event"] == "disconnected", what="disconnected")
        t0 = time.time()
        self.start_director()
        wait_for(lambda: self.connected("av1", "av2"), timeout=5.0,
                 what="both edges registered with the restarted Director")
        for p in (a, b):  # and each edge has its second Welcome
            p.wait(lambda e: len(p.all("welcome")) == 2, timeout=max(0.1, t0 + 5.0 - time.time()),
                   what="a second Welcome")
        self.assertLess(time.time() - t0, 5.0)

    def test_rogue_certificate_is_refused_and_others_unaffected(self):
        a, b = self.two_av_edges()
        wait_for(lambda: self.connected("av1", "av2"), timeout=2.0, what="both registered")
        d = self.daemons[-1]
        rogue = self.probe("av-edge", "rogue1", cert="rogue")
        line = d.wait_log("refused control connection")
        log = d.log()
        refused = [l for l in log.splitlines() if "refused control connection" in l]
        self.assertTrue(refused)
        self.assertIn("127.0.0.1:", refused[0])  # names the peer
        self.assertIn("certificate", refused[0].lower())
        time.sleep(0.5)
        self.assertEqual(rogue.all("welcome"), [])
        self.assertNotIn("rogue1", self.edges())
        self.assertGreaterEqual(d.metrics()['director_ctl_refused_total{reason="tls"}'], 1)
        self.assertTrue(self.connected("av1", "av2"))
        a.send("connections=3")
        b.wait(lambda e: e["event"] == "report" and e["instance"] == "av1"
               and e["connections"] == 3, what="report after the rogue attempt")
        self.assertEqual(a.all("disconnected") + b.all("disconnected"), [])

    def test_garbage_truncated_and_oversized_frames_close_only_that_connection(self):
        a, b = self.two_av_edges()
        wait_for(lambda: self.connected("av1", "av2"), timeout=2.0, what="both registered")
        d = self.daemons[-1]

        # Garbage instead of a TLS handshake.
        raw = socket.create_connection(("127.0.0.1", self.ctl_port), timeout=5)
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
        self.assert_closed_by_server(raw)
        raw.close()
        d.wait_log("TLS handshake failed")

        # Garbage inside mutual TLS: a frame whose body is not a control message.
        s = self.mtls_socket()
        s.sendall(frame(b"\xff" * 5))
        self.assert_closed_by_server(s)
        s.close()
        d.wait_log("undecodable frame")

        # An oversized frame: the length prefix alone is refused.
        s = self.mtls_socket()
        s.sendall(struct.pack(">I", 1 << 20) + b"x" * 100)
        self.assert_closed_by_server(s)
        s.close()
        d.wait_log("oversized frame: length 1048576 exceeds 65536")

        # A truncated frame after a good Hello: the peer goes silent mid-frame and is
        # dropped by the heartbeat timeout (3 x 300 ms here).
        s = self.mtls_socket()
        s.sendall(hello_frame(ROLE_ACCESS_EDGE, "raw1"))
        wait_for(lambda: self.connected("raw1"), timeout=2.0, what="raw1 registered")
        s.sendall(struct.pack(">I", 100) + b"\x0a" * 10)
        self.assert_closed_by_server(s, timeout=5.0)
        s.close()
        d.wait_log("truncated frame: 10 of 100 bytes")
        wait_for(lambda: not self.edges()["raw1"]["connected"], timeout=2.0,
                 what="raw1 shown as gone")

        # The good edges never noticed.
        self.assertTrue(self.connected("av1", "av2"))
        self.assertEqual(a.all("disconnected") + b.all("disconnected"), [])
        m = d.metrics()
        self.assertEqual(m['director_ctl_refused_total{reason="frame"}'], 2)
        self.assertGreaterEqual(m['director_ctl_refused_total{reason="tls"}'], 1)
        self.assertEqual(m['director_ctl_heartbeat_timeouts_total'], 1)
        self.assertEqual(m['director_ctl_edges_connected{role="av-edge"}'], 2)
        a.send("connections=11")
        b.wait(lambda e: e["event"] == "report" and e["connections"] == 11,
               what="report after the bad peers")

    def test_drain_and_revoke_reach_the_edges(self):
        a, b = self.two_av_edges()
        for p in (a, b):
            p.wait(lambda e: e["event"] == "welcome", what="welcome")
        st, body = http_json(self.admin, "/drain?instance=av2&deadline_ms=1234", method="POST")
        self.assertEqual(st, 200, body)
        b.wait(lambda e: e["event"] == "drain" and e["deadline_ms"] == 1234, what="drain")
        self.assertEqual(a.all("drain"), [])
        st, body = http_json(self.admin, "/drain?instance=nope", method="POST")
        self.assertEqual(st, 404)
        st, body = http_json(self.admin, "/revoke?user=bob%40example.com&until=2000000000",
                             method="POST")
        self.assertEqual((st, body["sent"]), (200, 2))
        for p in (a, b):
            ev = p.wait(lambda e: e["event"] == "revoke", what="revoke")
            self.assertEqual((ev["user"], ev["until"]), ("bob@example.com", 2000000000))
        st, body = http_json(self.admin, "/revoke", method="POST")
        self.assertEqual(st, 400)

    def test_silent_edge_is_dropped_after_three_heartbeats(self):
        self.start_director()
        s = self.mtls_socket()
        s.sendall(hello_frame(ROLE_ACCESS_EDGE, "mute1"))
        wait_for(lambda: self.connected("mute1"), timeout=2.0, what="mute1 registered")
        t0 = time.time()
        # Never answer the Director's pings.
        self.assert_closed_by_server(s, timeout=5.0)
        self.assertLess(time.time() - t0, 3.0)
        s.close()
        self.daemons[-1].wait_log("heartbeat timeout")
        e = self.edges()["mute1"]
        self.assertFalse(e["connected"])
        self.assertIn("heartbeat", e["gone"])

    def test_second_connection_for_a_connected_instance_is_refused_with_a_reason(self):
        a, b = self.two_av_edges()
        wait_for(lambda: self.connected("av1", "av2"), timeout=2.0, what="both registered")
        d = self.daemons[-1]
        dup = self.probe("av-edge", "av1")
        d.wait_log("refusing Hello: av-edge/av1 is already connected from 127.0.0.1:")
        wait_for(lambda: "the Director closed the connection: av-edge/av1 is already connected"
                 in dup.log(), timeout=3.0, what="the refused edge logging the Director's reason")
        self.assertEqual(dup.all("welcome"), [])
        self.assertEqual(a.all("disconnected"), [])
        # The first av1 stays the registered one; once it leaves, the other gets in.
        first_peer = self.edges()["av1"]["peer"]
        a.stop()
        self.probes.remove(a)
        dup.wait(lambda e: e["event"] == "welcome", timeout=8.0, what="welcome after av1 left")
        wait_for(lambda: self.connected("av1") and self.edges()["av1"]["peer"] != first_peer,
                 timeout=2.0, what="av1 registered from the second connection")

    def test_an_edge_cannot_claim_a_role_its_certificate_does_not_name(self):
        d = self.start_director()
        impostor = self.probe("av-edge", "av9", cert="conf-edge")  # wants the relay secret
        d.wait_log('refusing av-edge/av9: its certificate (CN "conf-edge") does not name the role av-edge')
        wait_for(lambda: "the Director closed the connection: refused by the Director" in impostor.log(),
                 timeout=3.0, what="the impostor logging its refusal")
        self.assertEqual(impostor.all("secret"), [])
        self.assertEqual(impostor.all("welcome"), [])
        self.assertNotIn("av9", self.edges())

    def test_edges_json_survives_odd_instance_names(self):
        self.start_director()
        odd = 'av "1"\\ \u00e9<x>'
        p = self.probe("av-edge", odd)
        p.wait(lambda e: e["event"] == "welcome", what="welcome")
        p.send("note=watch:\"quoted\"")
        wait_for(lambda: (self.edges().get(odd, {}).get("report") or {}).get("notes")
                 == ['watch:"quoted"'], timeout=2.0, what="the odd edge and its note in /edges")
        self.assertEqual(self.edges()[odd]["instance"], odd)
        # Control characters never reach the wire (nor the Director's log lines).
        bad = self.probe("av-edge", "av\nforged")
        self.assertEqual(bad.proc.wait(5), 1)
        self.assertIn("UTF-8 without control characters", bad.log())

    def test_certificate_rotation_under_load_by_sighup_and_by_file_change(self):
        """Edges keep connecting while the Director's certificate is renewed by SIGHUP, then by
        new files renamed into place: new handshakes show the new serial, a connected edge
        stays connected, and no handshake fails."""
        import rotation as R
        crt, key = R.make_cert(self.tmp, "director", 0x4001, self.certs)
        cfg = self.director_config().replace(f"cert: {self.certs}/director.crt",
                                             f"cert: {crt}").replace(
            f"key: {self.certs}/director.key", f"key: {key}")
        d = self.daemon("director", cfg, admin=self.admin)
        a = self.probe("av-edge", "av1")
        a.wait(lambda e: e["event"] == "secret", what="first relay secret")

        def serial():
            s = self.mtls_socket()
            try:
                return R.serial_of_der(s.getpeercert(binary_form=True))
            finally:
                s.close()

        self.assertEqual(serial(), 0x4001)
        load = R.Load(serial, threads=2, max_s=90)
        try:
            time.sleep(0.5)
            R.make_cert(self.tmp, "director", 0x4002, self.certs)
            d.signal(signal.SIGHUP)
            wait_for(lambda: serial() == 0x4002, timeout=10, what="serial 0x4002 after SIGHUP")
            R.make_cert(self.tmp, "director", 0x4003, self.certs, key_first_delay=0.3)
            wait_for(lambda: serial() == 0x4003, timeout=15,
                     what="serial 0x4003 after the files changed")
            time.sleep(0.5)
        finally:
            ok, failed = load.stop()
        self.assertEqual(failed, 0, load.errors)
        self.assertGreater(ok, 5)
        self.assertTrue(self.connected("av1"))
        self.assertEqual(a.all("disconnected"), [])
        self.assertRegex(d.log(), r"certificate .*director.crt changed: subject CN=director, serial 40:03")

    def test_reload_changing_the_listener_is_refused(self):
        d = self.start_director()
        a = self.probe("av-edge", "av1")
        a.wait(lambda e: e["event"] == "secret", what="first relay secret")
        harness.edit_config(d, f"127.0.0.1:{self.ctl_port}", f"127.0.0.1:{free_port()}")
        harness.assert_restart_refused(d, "ctl.listen")
        self.assertTrue(self.connected("av1"))

    def test_sighup_applies_a_new_rotation_interval_and_refuses_a_bad_one(self):
        d = self.start_director()
        a = self.probe("av-edge", "av1")
        a.wait(lambda e: e["event"] == "secret", what="first relay secret")
        good = self.director_config()
        # lifetime shorter than two intervals: validated and refused; the old config stays.
        with open(d.config, "w") as f:
            f.write(good.replace("lifetime: 2h", "lifetime: 90m"))
        d.signal(signal.SIGHUP)
        d.wait_log("reload refused")
        self.assertIn("secrets.lifetime", d.log())
        # A one-second interval: rotations now reach the edge without any admin call.
        with open(d.config, "w") as f:
            f.write(good.replace("rotate_interval: 1h", "rotate_interval: 1s"))
        d.signal(signal.SIGHUP)
        d.wait_log("reloaded")
        a.wait(lambda e: len(a.all("secret")) >= 3, timeout=4.0, what="two timed rotations")
        self.assertTrue(self.connected("av1"))
        self.assertEqual(a.all("disconnected"), [])


if __name__ == "__main__":
    unittest.main()
