"""Registrations survive a Director restart (issue: a restart lost every registration, 480
until each user registered again, although the README said the Director holds no state the
edges cannot rebuild). With sip.store set, the Director writes each binding change to an
append-only file and reads it back at start."""
import os

from harness import SuiteTest
from siplab import DIR_IP, EXT_IP, USERS, Lab, StreamUA, parse_status


class DirectorRestart(SuiteTest):
    def test_registration_survives_kill_9_and_restart(self):
        store = os.path.join(self.tmp, "registrations")
        lab = Lab(self, extra_director=f"  store: {store}")
        ua = StreamUA(EXT_IP, lab.ext_port)
        self.addCleanup(ua.close)
        self.assertEqual(parse_status(ua.register(USERS["alice"])), 200)
        lab.director.kill()  # kill -9: nothing is flushed on the way out
        lab.director.start()
        lab.director.wait_log("1 registrations restored from")
        sender = lab.sipp("message_uac.xml", f"{DIR_IP}:{lab.dir_sip}", "alice", ip="127.0.0.5",
                          background=True)
        req = ua.recv(timeout=5)
        self.assertIsNotNone(req, "MESSAGE did not reach alice after the restart")
        self.assertTrue(req.startswith("MESSAGE "), req)
        ua.answer(req)
        out, _ = sender.communicate(timeout=15)
        self.assertEqual(sender.returncode, 0, out.decode(errors="replace")[-2000:])

    def test_unregister_is_stored_too(self):
        store = os.path.join(self.tmp, "registrations")
        lab = Lab(self, extra_director=f"  store: {store}")
        ua = StreamUA(EXT_IP, lab.ext_port)
        self.addCleanup(ua.close)
        self.assertEqual(parse_status(ua.register(USERS["alice"])), 200)
        with open(store) as f:
            self.assertEqual(len(f.read().splitlines()), 1)
        self.assertEqual(parse_status(ua.register(USERS["alice"], expires=0)), 200)
        lab.director.kill()
        lab.director.start()
        self.assertNotIn("registrations restored", lab.director.log())
        sender = lab.sipp("message_uac.xml", f"{DIR_IP}:{lab.dir_sip}", "alice", ip="127.0.0.5",
                          background=True)
        out, _ = sender.communicate(timeout=20)
        self.assertNotEqual(sender.returncode, 0, "a removed binding came back")
        self.assertIsNone(ua.recv(timeout=0.5))


class DirectorAsOutboundProxy(SuiteTest):
    def test_register_with_a_route_to_the_director_itself_is_handled_there(self):
        # baresip inside, with the Director as its outbound proxy, preloads a Route naming it:
        # the Director took that for somewhere to forward to and answered 404.
        from siplab import UdpUA
        lab = Lab(self)
        u = UdpUA(ip="127.0.0.9")
        self.addCleanup(u.close)
        u.request("REGISTER", "sip:example.com", (DIR_IP, lab.dir_sip),
                  headers=f"Route: <sip:{DIR_IP}:{lab.dir_sip};lr>\r\nExpires: 60\r\n")
        r = u.recv(timeout=3)
        self.assertEqual(parse_status(r), 401, r)
