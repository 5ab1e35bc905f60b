"""av-edge with the Director: the relay secret arrives over the control channel and rotates
(current and previous accepted), av-edge reports its load, and the Director's credential
endpoint hands users working TURN credentials with the av-edges' URIs."""
import os
import shutil
import signal
import subprocess
import tempfile
import unittest

import harness
from harness import ROOT, SuiteTest, free_port, http_json, http_request, wait_for
import avturn as T

EXT, INT = "127.0.0.113", "127.0.0.123"


class AvDirectorTest(SuiteTest):
    # SIGTERM would drain the allocations a test leaves behind for drain_timeout.
    stop_signal = signal.SIGINT

    @classmethod
    def setUpClass(cls):
        if not (harness.have_binary("director") and harness.have_binary("av-edge")):
            raise unittest.SkipTest("director or av-edge is not built")
        cls.certs = tempfile.mkdtemp(prefix="avcerts-")
        subprocess.run([os.path.join(ROOT, "deploy", "certs.sh"), cls.certs], check=True,
                       capture_output=True, timeout=120)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certs, ignore_errors=True)

    def start(self):
        c = self.certs
        self.ctl_port = free_port()
        self.dir_admin = f"127.0.0.1:{free_port()}"
        self.director = self.daemon("director", f"""instance_id: director-test
admin: {{listen: "{self.dir_admin}"}}
ctl: {{ listen: 127.0.0.1:{self.ctl_port}, heartbeat: 300ms }}
tls: {{ cert: {c}/director.crt, key: {c}/director.key, ca: {c}/ca.crt }}
secrets: {{ rotate_interval: 1h, lifetime: 2h }}
credentials: {{ ttl: 10m }}
""", admin=self.dir_admin)
        self.ext_port, self.int_port = free_port(EXT), free_port(INT)
        self.av_admin = f"127.0.0.1:{free_port()}"
        self.edge = self.daemon("av-edge", f"""instance_id: av-test
admin: {{ listen: {self.av_admin} }}
external: {{ listen: [{EXT}:{self.ext_port}], tcp_listen: [], tls_listen: [] }}
internal: {{ listen: [{INT}:{self.int_port}] }}
relay: {{ addresses: [{EXT}], port_min: 29100, port_max: 29199 }}
auth: {{ realm: edge.lab }}
director:
  address: 127.0.0.1:{self.ctl_port}
  server_name: director
  report_interval: 200ms
  tls: {{ cert: {c}/av-edge.crt, key: {c}/av-edge.key, ca: {c}/ca.crt }}
""", admin=self.av_admin)
        self.edge.wait_log("from the Director installed", timeout=10)

    def credentials(self, user, location="internet"):
        st, body = http_json(self.dir_admin, f"/credentials?user={user}&location={location}")
        self.assertEqual(st, 200, body)
        return body

    def test_credentials_from_director_work_on_av_edge(self):
        self.start()
        cred = self.credentials("alice")
        self.assertEqual(cred["ttl"], 600)
        self.assertTrue(cred["username"].endswith(":alice"))
        self.assertIn(f"turn:{EXT}:{self.ext_port}?transport=udp", cred["uris"])
        self.assertIn(f"turn:{EXT}:{self.ext_port}?transport=tcp", cred["uris"])
        inside = self.credentials("bob", "intranet")
        self.assertIn(f"turn:{INT}:{self.int_port}?transport=udp", inside["uris"])
        c = T.Client((EXT, self.ext_port), cred["username"], cred["password"])
        self.addCleanup(c.close)
        self.assertEqual(c.allocate().code, 0)
        # av-edge reports its load: the Director sees one allocation.
        def reported():
            st, edges = http_json(self.dir_admin, "/edges?role=av-edge")
            e = [x for x in edges["edges"] if x.get("instance") == "av-test"]
            return e and (e[0].get("report") or {}).get("allocations") == 1
        wait_for(reported, timeout=5, what="av-edge load report with 1 allocation")
        # bad requests
        self.assertEqual(http_request(self.dir_admin, "/credentials")[0], 400)
        self.assertEqual(http_request(self.dir_admin, "/credentials?user=a:b")[0], 400)

    def test_secret_rotation_keeps_previous(self):
        self.start()
        old = self.credentials("carol")
        st, _ = http_request(self.dir_admin, "/rotate?kind=relay", method="POST")
        self.assertEqual(st, 200)
        wait_for(lambda: self.edge.log().count("from the Director installed") >= 2, timeout=5,
                 what="second secret")
        new = self.credentials("dave")
        self.assertNotEqual(old["password"], self.credentials("carol")["password"])
        for cred in (old, new):
            c = T.Client((EXT, self.ext_port), cred["username"], cred["password"])
            self.addCleanup(c.close)
            self.assertEqual(c.allocate().code, 0, cred)
        # a made-up password is refused
        wrong = ("y" if new["password"][0] == "x" else "x") + new["password"][1:]
        c = T.Client((EXT, self.ext_port), new["username"], wrong)
        self.addCleanup(c.close)
        self.assertEqual(c.allocate().code, 401)


if __name__ == "__main__":
    unittest.main()
