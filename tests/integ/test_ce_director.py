"""Conference data end to end with the real Director: it issues the conference-key signing
secret to conf-edge over the control channel, mints keys (POST /conference-keys), dials the
edge's internal port as the conferencing server, relays between participants, and pushes
revocations."""
import os
import signal
import subprocess
import time

from harness import ROOT, SuiteTest, free_port, http_json, http_request, wait_for
from test_ce_edge import CERTS, Client, distinct_ports, tool_session


def director_config(ctl, admin, edge_int, extra=""):
    return f"""instance_id: director-test
log: {{level: debug}}
admin: {{listen: {admin}}}
drain_timeout: 1s
ctl: {{listen: {ctl}, heartbeat: 500ms}}
tls: {{cert: {CERTS}/director.crt, key: {CERTS}/director.key, ca: {CERTS}/ca.crt}}
confserver:
  edges: [{edge_int}]
  tls: {{cert: {CERTS}/confserver.crt, key: {CERTS}/confserver.key, ca: {CERTS}/ca.crt}}
{extra}"""


def edge_config(ext, internal, admin, ctl):
    return f"""instance_id: conf-edge-test
log: {{level: debug}}
admin: {{listen: {admin}}}
drain_timeout: 2s
external:
  listen: {ext}
  tls: {{cert: {CERTS}/conf-edge.crt, key: {CERTS}/conf-edge.key}}
internal:
  listen: {internal}
  tls: {{cert: {CERTS}/conf-edge.crt, key: {CERTS}/conf-edge.key, ca: {CERTS}/ca.crt}}
  allowed_names: [confserver]
  ping_interval: 1s
server_wait: 8s
director:
  address: {ctl}
  tls: {{cert: {CERTS}/conf-edge.crt, key: {CERTS}/conf-edge.key, ca: {CERTS}/ca.crt}}
  report_interval: 500ms
"""


class ConfEdgeWithDirector(SuiteTest):
    def setUp(self):
        super().setUp()
        subprocess.run(["deploy/certs.sh", "build/certs"], cwd=ROOT, check=True, capture_output=True)
        self.ext, self.int, self.eadmin, self.ctl, self.dadmin = (
            f"127.0.0.1:{p}" for p in distinct_ports(5))

    def start_director(self):
        self.director = self.daemon("director", director_config(self.ctl, self.dadmin, self.int),
                                    admin=self.dadmin)
        return self.director

    def start_all(self):
        self.start_director()
        self.edge = self.daemon("conf-edge", edge_config(self.ext, self.int, self.eadmin, self.ctl),
                                admin=self.eadmin)
        wait_for(lambda: self.edge.metrics().get("conf_edge_servers") == 1, timeout=10,
                 what="the Director's conferencing server connected to the edge")
        self.edge.wait_log("conference-key signing secret", timeout=10)

    def key(self, conf, user, **extra):
        q = f"/conference-keys?conf={conf}&user={user}" + "".join(f"&{k}={v}" for k, v in extra.items())
        st, j = http_json(self.dadmin, q, method="POST")
        self.assertEqual(st, 200, j)
        return j

    def test_keys_from_director_admit_and_participants_exchange(self):
        self.start_all()
        a = Client(self.ext, key=self.key("board", "alice")["key"])
        b = Client(self.ext, key=self.key("board", "bob")["key"])
        c = Client(self.ext, key=self.key("standup", "carol")["key"])
        for p in (a, b, c):
            self.assertEqual(p.line(), "PSOM-EDGE/1 200 admitted\r\n")
        a.send(b"whiteboard stroke 1\n")
        self.assertEqual(b.read_exact(20), b"whiteboard stroke 1\n")
        b.send(b"bob's cursor\n")
        self.assertEqual(a.read_exact(13), b"bob's cursor\n")
        self.assertFalse(c.closed_within(0.5))
        self.assertEqual(c.buf, b"", "another conference sees nothing")
        self.director.wait_log("alice joined conference board")

    def test_openssl_and_gnutls_in_one_conference(self):
        self.start_all()
        k1 = self.key("mixed", "ossl")["key"]
        k2 = self.key("mixed", "gtls")["key"]
        py = Client(self.ext, key=self.key("mixed", "py")["key"])
        self.assertEqual(py.line(), "PSOM-EDGE/1 200 admitted\r\n")
        out, _ = tool_session(["openssl", "s_client", "-connect", self.ext, "-quiet",
                               "-CAfile", f"{CERTS}/ca.crt"],
                              f"PSOM-EDGE/1 {k1}\r\nfrom openssl\n".encode(), expect=b"admitted")
        self.assertIn(b"PSOM-EDGE/1 200 admitted", out)
        self.assertEqual(py.read_exact(13), b"from openssl\n")
        host, port = self.ext.rsplit(":", 1)
        out, _ = tool_session(["gnutls-cli", "--x509cafile", f"{CERTS}/ca.crt", "--port", port, host],
                              f"PSOM-EDGE/1 {k2}\nfrom gnutls\n".encode(), expect=b"admitted")
        self.assertIn(b"PSOM-EDGE/1 200 admitted", out)
        self.assertEqual(py.read_exact(12), b"from gnutls\n")

    def test_expired_and_foreign_keys_from_director_refused(self):
        self.start_all()
        expired = self.key("board", "late", ttl=-5)["key"]
        c = Client(self.ext, key=expired)
        self.assertEqual(c.line(), "PSOM-EDGE/1 403 expired-key\r\n")
        self.assertTrue(c.closed_within(2))
        # A key from another Director (another secret) is foreign here.
        from test_ce_edge import mint
        c = Client(self.ext, key=mint("board", "x", kid="c-other", secret="zzz"))
        self.assertEqual(c.line(), "PSOM-EDGE/1 403 unknown-key-id\r\n")

    def test_director_revocation_closes_live_session_within_1s(self):
        self.start_all()
        k = self.key("board", "eve")
        a = Client(self.ext, key=k["key"])
        self.assertEqual(a.line(), "PSOM-EDGE/1 200 admitted\r\n")
        t0 = time.time()
        st, _ = http_json(self.dadmin, f"/revoke?conference_key={k['jti']}", method="POST")
        self.assertEqual(st, 200)
        self.assertTrue(a.closed_within(1.0), "closed within 1 s of the Director's Revoke")
        self.assertLess(time.time() - t0, 1.0)
        again = Client(self.ext, key=k["key"])
        self.assertEqual(again.line(), "PSOM-EDGE/1 403 revoked-key\r\n")

    def test_conferencing_server_killed_then_back(self):
        self.start_all()
        a = Client(self.ext, key=self.key("board", "ann")["key"])
        self.assertEqual(a.line(), "PSOM-EDGE/1 200 admitted\r\n")
        self.director.kill()
        self.daemons.remove(self.director)
        self.assertTrue(a.closed_within(4.0), "clients closed when the server is gone")
        wait_for(lambda: self.edge.metrics().get("conf_edge_servers") == 0, what="server gone")
        # The edge keeps the secret it had; a new client waits for a server.
        self.start_director()
        wait_for(lambda: self.edge.metrics().get("conf_edge_servers") == 1, timeout=10,
                 what="server back")
        # The new Director has new secrets: keys come from it.
        self.edge.wait_log("previous: ", timeout=10)
        b = Client(self.ext, key=self.key("board", "ann")["key"])
        c = Client(self.ext, key=self.key("board", "ben")["key"])
        self.assertEqual(b.line(), "PSOM-EDGE/1 200 admitted\r\n")
        self.assertEqual(c.line(), "PSOM-EDGE/1 200 admitted\r\n")
        b.send(b"we are back\n")
        self.assertEqual(c.read_exact(12), b"we are back\n")
