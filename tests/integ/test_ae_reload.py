"""access-edge reloads: a listener change is refused (the edge would advertise addresses it
does not listen on), and the certificate rotates under SIP-over-TLS load, by SIGHUP and by
new files renamed into place, with no failed transaction and connections kept."""
import itertools
import os
import signal
import time

import rotation as R
from harness import SuiteTest, assert_restart_refused, edit_config, free_port, wait_for
from siplab import CERTS, EXT_IP, USERS, Lab, StreamUA, ensure_certs, parse_status


class AccessEdgeReload(SuiteTest):
    def test_reload_changing_a_listener_is_refused(self):
        lab = Lab(self)
        edit_config(lab.edge, f"tls: [{EXT_IP}:{lab.ext_tls}]",
                    f"tls: [{EXT_IP}:{free_port(EXT_IP)}]")
        assert_restart_refused(lab.edge, "external.tls")
        ua = StreamUA(EXT_IP, lab.ext_tls, tls=True)
        self.addCleanup(ua.close)
        self.assertEqual(parse_status(ua.register(USERS["alice"])), 200)

    def test_reload_with_a_key_that_does_not_match_is_refused(self):
        """The new generation's certificates fail to load: the reload is refused whole (no
        policy from it is kept) and the running certificate serves on."""
        ensure_certs()
        R.make_cert(self.tmp, "access-edge", 0x5101, CERTS)
        lab = Lab(self, cert=os.path.relpath(os.path.join(self.tmp, "access-edge"), CERTS))
        edit_config(lab.edge, "domains: [example.com]", "domains: [example.com, other.example]")
        edit_config(lab.edge, f"key: {CERTS}/{os.path.relpath(self.tmp, CERTS)}/access-edge.key",
                    f"key: {CERTS}/web.key")
        lab.edge.signal(signal.SIGHUP)
        lab.edge.wait_log("reload refused by access-edge")
        self.assertIn("does not match", lab.edge.log())
        self.assertEqual(R.peer_serial(EXT_IP, lab.ext_tls), 0x5101)
        ua = StreamUA(EXT_IP, lab.ext_tls, tls=True)
        self.addCleanup(ua.close)
        self.assertEqual(parse_status(ua.register(USERS["alice"])), 200)

    def test_certificate_rotation_under_load_by_sighup_and_by_file_change(self):
        ensure_certs()
        R.make_cert(self.tmp, "access-edge", 0x5001, CERTS)
        lab = Lab(self, cert=os.path.relpath(os.path.join(self.tmp, "access-edge"), CERTS))
        self.assertEqual(R.peer_serial(EXT_IP, lab.ext_tls), 0x5001)
        held = StreamUA(EXT_IP, lab.ext_tls, tls=True)
        self.addCleanup(held.close)
        self.assertEqual(parse_status(held.register(USERS["alice"])), 200)
        ips = itertools.cycle(f"127.0.1.{i}" for i in range(1, 200))

        def one():  # a new TLS connection and a Digest REGISTER through it
            ua = StreamUA(EXT_IP, lab.ext_tls, tls=True, ip=next(ips))
            try:
                st = parse_status(ua.register(USERS["alice"]))
                if st != 200:
                    raise AssertionError(f"REGISTER: {st}")
            finally:
                ua.close()

        load = R.Load(one, threads=2, max_s=90)
        try:
            time.sleep(0.5)
            R.make_cert(self.tmp, "access-edge", 0x5002, CERTS)
            lab.edge.signal(signal.SIGHUP)
            wait_for(lambda: R.peer_serial(EXT_IP, lab.ext_tls) == 0x5002, timeout=10,
                     what="serial 0x5002 after SIGHUP")
            self.assertEqual(parse_status(held.register(USERS["alice"])), 200)
            R.make_cert(self.tmp, "access-edge", 0x5003, CERTS, key_first_delay=0.3)
            wait_for(lambda: R.peer_serial(EXT_IP, lab.ext_tls) == 0x5003, timeout=15,
                     what="serial 0x5003 after the files changed")
            self.assertEqual(parse_status(held.register(USERS["alice"])), 200)
            time.sleep(0.5)
        finally:
            ok, failed = load.stop()
        self.assertEqual(failed, 0, load.errors)
        self.assertGreater(ok, 5)
        self.assertRegex(lab.edge.log(),
                         r"certificate .*access-edge.crt changed: subject CN=access-edge, serial 50:03")
