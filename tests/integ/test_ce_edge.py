"""conf-edge end to end: real TLS clients (openssl s_client, gnutls-cli, Python ssl) on the
external side, a mock conferencing server (confmock.py) dialed in on the internal side."""
import base64
import hashlib
import hmac
import os
import select
import socket
import ssl
import subprocess
import threading
import time

from confmock import ConfMock
from harness import ROOT, SuiteTest, assert_restart_refused, edit_config, free_port, http_request, wait_for

CERTS = os.path.join(ROOT, "build", "certs")
SECRET = "lab-secret-1"
KID = "lab1"


def distinct_ports(n):
    """n different free ports: free_port() may hand the same port out twice in a row."""
    out = []
    for _ in range(100):
        p = free_port()
        if p not in out:
            out.append(p)
        if len(out) == n:
            return out
    raise RuntimeError("no distinct free ports")


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def mint(conf, user, exp_in=300, role="attendee", jti=None, kid=KID, secret=SECRET):
    """A conference session key in the common/token.h format."""
    jti = jti or f"{conf}-{user}-{time.time_ns()}"
    claims = f"conf={conf};user={user};role={role};exp={int(time.time()) + exp_in};jti={jti}"
    head = f"v1.{kid}.{b64u(claims.encode())}"
    mac = hmac.new(secret.encode(), head.encode(), hashlib.sha256).digest()
    return f"{head}.{b64u(mac)}"


def edge_config(ext, internal, admin, extra="", allowed="[confserver, director]"):
    return f"""instance_id: ce-test
log: {{level: debug}}
admin: {{listen: {admin}}}
drain_timeout: 3s
external:
  listen: {ext}
  tls: {{cert: {CERTS}/conf-edge.crt, key: {CERTS}/conf-edge.key}}
  handshake_timeout: 3s
internal:
  listen: {internal}
  tls: {{cert: {CERTS}/conf-edge.crt, key: {CERTS}/conf-edge.key, ca: {CERTS}/ca.crt}}
  allowed_names: {allowed}
  ping_interval: 1s
preamble_timeout: 2s
server_wait: 5s
conference_key: {{id: {KID}, secret: {SECRET}}}
director: {{enabled: false}}
{extra}"""


class Client:
    """A participant over Python ssl. cafile/server_name: verify the edge against another CA,
    for that name (test_acme: pebble's certificates)."""

    def __init__(self, addr, key=None, preamble=None, verify=True, cafile=None, server_name=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile or f"{CERTS}/ca.crt")
        ctx.check_hostname = server_name is not None
        if not verify:
            ctx.verify_mode = ssl.CERT_NONE
        host, port = addr.rsplit(":", 1)
        self.sock = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=5),
                                    server_hostname=server_name)
        self.buf = b""
        if preamble is not None:
            self.sock.sendall(preamble)
        elif key is not None:
            self.sock.sendall(f"PSOM-EDGE/1 {key}\r\n".encode())

    def line(self, timeout=5):
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            d = self.sock.recv(4096)
            if not d:
                break
            self.buf += d
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace") + ("\n" if _ else "")

    def read_exact(self, n, timeout=5):
        self.sock.settimeout(timeout)
        while len(self.buf) < n:
            d = self.sock.recv(65536)
            if not d:
                break
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def closed_within(self, seconds):
        """True if the edge closes the connection within `seconds` (EOF or reset)."""
        self.sock.settimeout(seconds)
        t0 = time.time()
        try:
            while time.time() - t0 < seconds:
                d = self.sock.recv(65536)
                if not d:
                    return True
                self.buf += d
        except (socket.timeout, TimeoutError):
            return False
        except (ssl.SSLError, ConnectionResetError, OSError):
            return True
        return False

    def send(self, b):
        self.sock.sendall(b)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def tool_session(argv, stdin_bytes, expect=None, timeout=8.0, keep_stdin_open=True):
    """Runs a TLS command-line client; returns (stdout, exited_by_itself)."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    out = bytearray()

    def reader():
        for chunk in iter(lambda: p.stdout.read1(4096), b""):
            out.extend(chunk)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.3)  # the handshake first: stdin is only read after it
    p.stdin.write(stdin_bytes)
    p.stdin.flush()
    if not keep_stdin_open:
        p.stdin.close()
    deadline = time.time() + timeout
    exited = False
    while time.time() < deadline:
        if expect and expect in out:
            break
        if p.poll() is not None:
            exited = True
            break
        time.sleep(0.05)
    if p.poll() is None:
        p.kill()
    else:
        exited = True
    p.wait()
    t.join(2)
    return bytes(out), exited


class ConfEdgeTest(SuiteTest):
    def setUp(self):
        super().setUp()
        subprocess.run(["deploy/certs.sh", "build/certs"], cwd=ROOT, check=True, capture_output=True)
        self.ext, self.int, self.admin = (f"127.0.0.1:{p}" for p in distinct_ports(3))
        self.mocks = []

    def tearDown(self):
        for m in self.mocks:
            m.stop()
        super().tearDown()

    def start_edge(self, extra="", **kw):
        self.edge = self.daemon("conf-edge", edge_config(self.ext, self.int, self.admin, extra, **kw),
                                admin=self.admin)
        return self.edge

    def mock(self, **kw):
        m = ConfMock(self.int, CERTS, **kw)
        self.mocks.append(m)
        m.start()
        wait_for(lambda: self.edge.metrics().get("conf_edge_servers", 0) >= len(
            [x for x in self.mocks if not x.stopped.is_set()]), what="edge sees the server")
        return m

    def openssl(self, data, expect=None, keep_open=True):
        host, port = self.ext.rsplit(":", 1)
        return tool_session(["openssl", "s_client", "-connect", self.ext, "-quiet",
                             "-CAfile", f"{CERTS}/ca.crt", "-verify_return_error"],
                            data, expect, keep_stdin_open=keep_open)

    # ---- admission
    def test_valid_key_admitted_and_bytes_round_trip_openssl(self):
        self.start_edge()
        m = self.mock(mode="echo")
        key = mint("conf-a", "alice", role="presenter")
        out, _ = self.openssl(f"PSOM-EDGE/1 {key}\r\nhello through the edge\n".encode(),
                              expect=b"hello through the edge")
        self.assertIn(b"PSOM-EDGE/1 200 admitted\r\n", out)
        self.assertIn(b"hello through the edge", out)
        m.wait(lambda: m.opens, what="OPEN")
        sid, client, conf, user, role, jti = m.opens[0]
        self.assertEqual((conf, user, role), ("conf-a", "alice", "presenter"))
        self.assertTrue(client.startswith("127.0.0.1:"), client)
        self.assertEqual(m.received_by_user("alice"), b"hello through the edge\n")

    def test_valid_key_admitted_and_bytes_round_trip_gnutls(self):
        self.start_edge()
        m = self.mock(mode="echo")
        key = mint("conf-g", "gina")
        host, port = self.ext.rsplit(":", 1)
        out, _ = tool_session(["gnutls-cli", "--x509cafile", f"{CERTS}/ca.crt", "--port", port,
                               host], f"PSOM-EDGE/1 {key}\nping from gnutls\n".encode(),
                              expect=b"ping from gnutls")
        self.assertIn(b"PSOM-EDGE/1 200 admitted", out)
        self.assertIn(b"ping from gnutls", out)
        self.assertEqual(m.received_by_user("gina"), b"ping from gnutls\n")

    def check_refused(self, preamble, line):
        out, exited = self.openssl(preamble, expect=None)
        self.assertIn(line.encode(), out)
        self.assertTrue(exited, "the edge closes the connection after a refusal")

    def test_bad_keys_refused_with_documented_line_and_server_sees_nothing(self):
        self.start_edge()
        m = self.mock(mode="echo")
        expired = mint("conf-a", "bob", exp_in=-10)
        good = mint("conf-a", "bob")
        tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BA")
        foreign = mint("conf-a", "bob", kid="other", secret="not-ours")
        forged = mint("conf-a", "bob", secret="guessed-secret")
        cases = [
            (f"PSOM-EDGE/1 {expired}\r\nsecret data\n", "PSOM-EDGE/1 403 expired-key\r\n"),
            (f"PSOM-EDGE/1 {tampered}\r\nsecret data\n", "PSOM-EDGE/1 403 invalid-key\r\n"),
            (f"PSOM-EDGE/1 {forged}\r\nsecret data\n", "PSOM-EDGE/1 403 invalid-key\r\n"),
            (f"PSOM-EDGE/1 {foreign}\r\nsecret data\n", "PSOM-EDGE/1 403 unknown-key-id\r\n"),
            ("PSOM-EDGE/1\r\nsecret data\n", "PSOM-EDGE/1 401 missing-key\r\n"),
            ("GET / HTTP/1.1\r\n\r\n", "PSOM-EDGE/1 400 malformed-preamble\r\n"),
            (f"PSOM-EDGE/7 {good}\r\n", "PSOM-EDGE/1 505 unsupported-version\r\n"),
        ]
        for pre, line in cases:
            with self.subTest(line=line.strip()):
                self.check_refused(pre.encode(), line)
        # revoked (through the admin endpoint, as a Director Revoke would)
        rkey = mint("conf-a", "rita", jti="rita-key-1")
        st, _ = http_request(self.admin, "/revoke?jti=rita-key-1", method="POST")
        self.assertEqual(st, 200)
        self.check_refused(f"PSOM-EDGE/1 {rkey}\r\nsecret\n".encode(), "PSOM-EDGE/1 403 revoked-key\r\n")
        time.sleep(0.3)
        self.assertEqual(m.opens, [], "the conferencing server saw no refused client")
        self.assertEqual(sum(len(s.received) for s in m.streams.values()), 0)
        mt = self.edge.metrics()
        self.assertEqual(mt['conf_edge_clients_refused_total{reason="expired-key"}'], 1)
        self.assertEqual(mt['conf_edge_clients_refused_total{reason="invalid-key"}'], 2)
        self.assertEqual(mt['conf_edge_clients_refused_total{reason="revoked-key"}'], 1)

    def test_silent_client_gets_preamble_timeout(self):
        self.start_edge()
        c = Client(self.ext)
        t0 = time.time()
        self.assertEqual(c.line(timeout=5), "PSOM-EDGE/1 408 preamble-timeout\r\n")
        self.assertLess(time.time() - t0, 4)

    def test_plaintext_client_dropped_at_once_and_counted(self):
        self.start_edge()
        s = socket.create_connection(self.ext.rsplit(":", 1), timeout=3)
        key = mint("conf-a", "mallory")
        s.sendall(f"PSOM-EDGE/1 {key}\r\n".encode())
        t0 = time.time()
        data = b""
        try:
            while True:
                d = s.recv(4096)
                if not d:
                    break
                data += d
        except ConnectionResetError:
            pass
        self.assertLess(time.time() - t0, 1.0, "closed at once")
        self.assertNotIn(b"PSOM-EDGE", data)
        wait_for(lambda: self.edge.metrics().get('conf_edge_clients_dropped_total{reason="not_tls"}') == 1,
                 what="not_tls counted")

    # ---- live sessions
    def test_key_revoked_mid_session_closed_within_1s(self):
        self.start_edge()
        m = self.mock(mode="echo")
        c = Client(self.ext, key=mint("conf-r", "ron", jti="ron-key"))
        self.assertEqual(c.line(), "PSOM-EDGE/1 200 admitted\r\n")
        c.send(b"still here\n")
        self.assertEqual(c.read_exact(11), b"still here\n")
        other = Client(self.ext, key=mint("conf-r", "sue", jti="sue-key"))
        self.assertEqual(other.line(), "PSOM-EDGE/1 200 admitted\r\n")
        t0 = time.time()
        st, _ = http_request(self.admin, "/revoke?jti=ron-key", method="POST")
        self.assertEqual(st, 200)
        self.assertTrue(c.closed_within(1.0), "revoked session closed within 1 s")
        self.assertLess(time.time() - t0, 1.0)
        other.send(b"sue stays\n")
        self.assertEqual(other.read_exact(10), b"sue stays\n")
        m.wait(lambda: any(r == "revoked" for _, r in m.closes), what="CLOSE revoked at the server")

    def test_two_participants_exchange_other_conference_does_not_see(self):
        self.start_edge()
        self.mock(mode="relay")
        a = Client(self.ext, key=mint("conf-x", "alice"))
        b = Client(self.ext, key=mint("conf-x", "bob"))
        c = Client(self.ext, key=mint("conf-y", "carol"))
        for p in (a, b, c):
            self.assertEqual(p.line(), "PSOM-EDGE/1 200 admitted\r\n")
        a.send(b"slide 1 from alice\n")
        self.assertEqual(b.read_exact(19), b"slide 1 from alice\n")
        b.send(b"ack from bob\n")
        self.assertEqual(a.read_exact(13), b"ack from bob\n")
        c.sock.settimeout(0.5)
        with self.assertRaises((socket.timeout, TimeoutError, ssl.SSLError)):
            d = c.sock.recv(100)
            if not d:
                raise AssertionError("carol was disconnected")
        for p in (a, b, c):
            p.close()

    def test_conferences_spread_and_pinned_to_one_server(self):
        self.start_edge()
        m1 = self.mock(mode="echo", name="cs1")
        m2 = self.mock(mode="echo", name="cs2")
        clients = []
        for conf in ("c1", "c2", "c3", "c4"):
            for user in ("u1", "u2"):
                cl = Client(self.ext, key=mint(conf, user))
                self.assertEqual(cl.line(), "PSOM-EDGE/1 200 admitted\r\n")
                clients.append(cl)
        time.sleep(0.2)
        confs1 = {o[2] for o in m1.opens}
        confs2 = {o[2] for o in m2.opens}
        self.assertEqual(confs1 & confs2, set(), "each conference on one server")
        self.assertEqual(len(confs1), 2)
        self.assertEqual(len(confs2), 2)
        for cl in clients:
            cl.close()

    def test_server_killed_clients_closed_then_new_ones_wait_for_reconnect(self):
        self.start_edge()
        m = self.mock(mode="echo")
        c = Client(self.ext, key=mint("conf-k", "kim"))
        self.assertEqual(c.line(), "PSOM-EDGE/1 200 admitted\r\n")
        m.kill()
        self.assertTrue(c.closed_within(2.0), "client closed when its server died")
        wait_for(lambda: self.edge.metrics().get("conf_edge_servers") == 0, what="server gone")
        # A new client is admitted and waits; a server reconnecting takes it.
        n = Client(self.ext, key=mint("conf-k", "kim"))
        time.sleep(0.3)
        m2 = ConfMock(self.int, CERTS, mode="echo", name="cs-again")
        self.mocks.append(m2)
        m2.start()
        self.assertEqual(n.line(), "PSOM-EDGE/1 200 admitted\r\n")
        n.send(b"back again\n")
        self.assertEqual(n.read_exact(11), b"back again\n")
        self.assertIn("conferencing server", self.edge.log())

    def test_no_server_within_wait_gets_503(self):
        self.start_edge(extra="")
        c = Client(self.ext, key=mint("conf-z", "zed"))
        t0 = time.time()
        self.assertEqual(c.line(timeout=8), "PSOM-EDGE/1 503 no-conferencing-server\r\n")
        self.assertGreater(time.time() - t0, 4)

    def test_server_with_foreign_certificate_refused(self):
        self.start_edge()
        m = ConfMock(self.int, CERTS, cert_name="rogue")
        with self.assertRaises(Exception):
            m.start(timeout=2)
        m.stop()
        m2 = ConfMock(self.int, CERTS, cert_name="av-edge")  # signed by our CA, wrong name
        with self.assertRaises(Exception):
            m2.start(timeout=2)
        m2.stop()
        self.assertEqual(self.edge.metrics().get("conf_edge_servers"), 0)

    def test_allowed_names_ignore_case(self):
        # Certificate names are DNS names: compared without regard to case (RFC 4343), so an
        # allowed name written "ConfServer" admits the server whose certificate says
        # "confserver"; a name that differs by more than case still does not.
        self.start_edge(allowed="[ConfServer]")
        self.mock(mode="echo")
        self.assertEqual(self.edge.metrics().get("conf_edge_servers"), 1)
        m2 = ConfMock(self.int, CERTS, cert_name="av-edge")
        with self.assertRaises(Exception):
            m2.start(timeout=2)
        m2.stop()
        self.assertEqual(self.edge.metrics().get("conf_edge_servers"), 1)

    def test_per_conference_cap_answers_429(self):
        self.start_edge(extra="limits: {per_conference: 2}\n")
        self.mock(mode="echo")
        a = Client(self.ext, key=mint("small", "a"))
        b = Client(self.ext, key=mint("small", "b"))
        self.assertEqual(a.line(), "PSOM-EDGE/1 200 admitted\r\n")
        self.assertEqual(b.line(), "PSOM-EDGE/1 200 admitted\r\n")
        c = Client(self.ext, key=mint("small", "c"))
        self.assertEqual(c.line(), "PSOM-EDGE/1 429 too-many-connections\r\n")
        d = Client(self.ext, key=mint("other", "d"))
        self.assertEqual(d.line(), "PSOM-EDGE/1 200 admitted\r\n")

    def test_server_half_close_reaches_client_after_its_data(self):
        self.start_edge()
        self.mock(mode="source", source_bytes=100000)
        c = Client(self.ext, key=mint("conf-s", "sam"))
        self.assertEqual(c.line(), "PSOM-EDGE/1 200 admitted\r\n")
        data = c.read_exact(100000)
        self.assertEqual(len(data), 100000)
        self.assertTrue(c.closed_within(2.0), "close_notify after the server's SHUT")

    def test_bulk_echo_arrives_whole_and_in_order_both_ways(self):
        """32 MiB up through the edge and echoed back down: 64 KiB reads and writes sealed in
        batches of full records on both sides, with the mux windows and the edge's read stops
        in play (the mock, in Python, is the slow end). Every byte arrives once, in order."""
        self.start_edge()
        m = self.mock(mode="echo")
        c = Client(self.ext, key=mint("conf-bulk", "bea"))
        self.assertEqual(c.line(), "PSOM-EDGE/1 200 admitted\r\n")
        total = 32 << 20
        block = bytes(range(251))  # a prime period: a chunk moved or repeated shows
        data = (block * (total // len(block) + 1))[:total]
        sock = c.sock
        sock.setblocking(False)
        sent, got = 0, bytearray(c.buf)
        deadline = time.time() + 90
        while len(got) < total and time.time() < deadline:
            r, w, _ = select.select([sock], [sock] if sent < total else [], [], 1.0)
            if w:
                try:
                    sent += sock.send(data[sent:sent + 65536])
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    pass
            if r or sock.pending():
                try:
                    while True:
                        d = sock.recv(262144)
                        self.assertTrue(d, f"the edge closed after {len(got)} bytes")
                        got += d
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
        c.close()
        self.assertEqual(sent, total)
        self.assertEqual(len(got), total)
        self.assertTrue(got == data, "the echo came back altered or out of order")
        self.assertTrue(m.received_by_user("bea") == data, "the server got altered bytes")

    def test_per_address_cap_closes_at_accept(self):
        self.start_edge(extra="limits: {per_address: 2}\n")
        self.mock(mode="echo")
        a = Client(self.ext, key=mint("cap", "a"))
        b = Client(self.ext, key=mint("cap", "b"))
        self.assertEqual(a.line(), "PSOM-EDGE/1 200 admitted\r\n")
        self.assertEqual(b.line(), "PSOM-EDGE/1 200 admitted\r\n")
        with self.assertRaises((ssl.SSLError, ConnectionResetError, OSError)):
            Client(self.ext, key=mint("cap", "c"))
        wait_for(lambda: self.edge.metrics().get('conf_edge_clients_dropped_total{reason="cap"}') == 1,
                 what="cap counted")
        a.close()
        wait_for(lambda: self.edge.metrics().get("conf_edge_clients") == 1, what="a gone")
        d = Client(self.ext, key=mint("cap", "d"))
        self.assertEqual(d.line(), "PSOM-EDGE/1 200 admitted\r\n")

    def test_quick_refusals_free_the_address_slot_when_the_client_closes(self):
        # Issue 13.7: a refused session held its per-address slot for the 2 s linger even
        # after the client had closed, so an address that retried quickly was locked out.
        self.start_edge(extra="limits: {per_address: 3}\n")
        self.mock(mode="echo")
        bad = mint("conf-q", "quinn", secret="guessed-secret")
        t0 = time.time()
        for i in range(30):
            try:
                c = Client(self.ext, key=bad)
                line = c.line()
            except (ssl.SSLError, ConnectionResetError, OSError) as e:
                self.fail(f"attempt {i + 1} closed at accept ({e!r}) after "
                          f"{time.time() - t0:.2f} s: the slot of a closed client was still held")
            self.assertEqual(line, "PSOM-EDGE/1 403 invalid-key\r\n", f"attempt {i + 1}")
            c.close()  # a client that has read its answer closes at once
        mt = self.edge.metrics()
        self.assertEqual(mt.get('conf_edge_clients_dropped_total{reason="cap"}', 0), 0)
        self.assertEqual(mt['conf_edge_clients_refused_total{reason="invalid-key"}'], 30)
        ok = Client(self.ext, key=mint("conf-q", "quinn"))
        self.assertEqual(ok.line(), "PSOM-EDGE/1 200 admitted\r\n")

    def test_refused_client_that_keeps_sending_still_reads_its_answer(self):
        # What the linger protects: a refused client whose bytes the edge has not read must
        # still get its answer line (a close with unread input would reset the connection).
        self.start_edge(extra="limits: {per_address: 2}\n")
        c = Client(self.ext, preamble=b"PSOM-EDGE/1 " + mint("conf-q", "x", secret="nope").encode()
                   + b"\r\n" + b"x" * 300000)
        self.assertEqual(c.line(), "PSOM-EDGE/1 403 invalid-key\r\n")
        self.assertTrue(c.closed_within(4.0), "closed after the linger at the latest")
        c.close()
        # and its slot is back once it is gone
        wait_for(lambda: self.edge.metrics().get("conf_edge_clients") == 0, what="slot freed")

    def test_one_session_per_key_and_a_rejoin_replaces_a_half_dead_one(self):
        # Issue 13.8: one key admitted any number of concurrent connections. By default a
        # key has one session; a rejoin with it wins over the old connection, which may be
        # half-dead (here: open, silent, never read again, as after a network drop).
        self.start_edge()
        m = self.mock(mode="echo")
        key = mint("conf-k", "kai", jti="kai-key-1")
        old = Client(self.ext, key=key)
        self.assertEqual(old.line(), "PSOM-EDGE/1 200 admitted\r\n")
        old.send(b"before the drop\n")
        self.assertEqual(old.read_exact(16), b"before the drop\n")
        new = Client(self.ext, key=key)
        self.assertEqual(new.line(), "PSOM-EDGE/1 200 admitted\r\n", "the rejoin is admitted")
        new.send(b"after the rejoin\n")
        self.assertEqual(new.read_exact(17), b"after the rejoin\n")
        self.assertTrue(old.closed_within(3.0), "the replaced connection is closed")
        m.wait(lambda: any(r == "replaced" for _, r in m.closes), what="CLOSE replaced at the server")
        # However many connections present the key, one is relayed at a time.
        more = [Client(self.ext, key=key) for _ in range(4)]
        for c in more:
            self.assertEqual(c.line(), "PSOM-EDGE/1 200 admitted\r\n")
        wait_for(lambda: self.edge.metrics().get("conf_edge_clients_relaying") == 1,
                 what="one relayed session for the key")
        more[-1].send(b"last one\n")
        self.assertEqual(more[-1].read_exact(9), b"last one\n")
        mt = self.edge.metrics()
        self.assertEqual(mt['conf_edge_sessions_closed_total{reason="replaced"}'], 5)
        self.assertIn("replaced", self.edge.log())
        other = Client(self.ext, key=mint("conf-k", "kai"))  # another key of the same user
        self.assertEqual(other.line(), "PSOM-EDGE/1 200 admitted\r\n")
        wait_for(lambda: self.edge.metrics().get("conf_edge_clients_relaying") == 2,
                 what="other keys are not affected")

    def test_per_key_cap_with_refuse_policy_answers_key_in_use(self):
        self.start_edge(extra="limits: {per_key: 2, per_key_policy: refuse}\n")
        self.mock(mode="echo")
        key = mint("conf-r2", "rae")
        a = Client(self.ext, key=key)
        b = Client(self.ext, key=key)
        self.assertEqual(a.line(), "PSOM-EDGE/1 200 admitted\r\n")
        self.assertEqual(b.line(), "PSOM-EDGE/1 200 admitted\r\n")
        c = Client(self.ext, key=key)
        self.assertEqual(c.line(), "PSOM-EDGE/1 429 key-in-use\r\n")
        self.assertTrue(c.closed_within(3.0))
        b.send(b"b still relayed\n")
        self.assertEqual(b.read_exact(16), b"b still relayed\n")
        mt = self.edge.metrics()
        self.assertEqual(mt['conf_edge_clients_refused_total{reason="key-in-use"}'], 1)
        self.assertIn("key-in-use", self.edge.log())
        a.close()
        wait_for(lambda: self.edge.metrics().get("conf_edge_clients_relaying") == 1, what="a gone")
        d = Client(self.ext, key=key)
        self.assertEqual(d.line(), "PSOM-EDGE/1 200 admitted\r\n", "a slot freed by a close is reusable")

    def test_idle_session_closed_and_server_told(self):
        self.start_edge(extra="idle_timeout: 1s\n")
        m = self.mock(mode="echo")
        c = Client(self.ext, key=mint("idle", "ida"))
        self.assertEqual(c.line(), "PSOM-EDGE/1 200 admitted\r\n")
        self.assertTrue(c.closed_within(3.0), "idle session closed")
        m.wait(lambda: m.closes, what="CLOSE at the server")
        self.assertIn("idle", m.closes[0][1])

    def test_sigterm_drains_waiting_clients_with_503(self):
        self.start_edge()
        c = Client(self.ext, key=mint("drain", "dan"))
        time.sleep(0.3)  # admitted, waiting: no server connected
        self.edge.signal(__import__("signal").SIGTERM)
        self.assertEqual(c.line(), "PSOM-EDGE/1 503 draining\r\n")
        self.edge.proc.wait(5)
        self.assertEqual(self.edge.proc.returncode, 0)

    def test_reload_changing_a_listener_is_refused(self):
        self.start_edge()
        self.mock(mode="echo")
        edit_config(self.edge, f"listen: {self.int}", f"listen: 127.0.0.1:{free_port()}")
        assert_restart_refused(self.edge, "internal.listen")
        c = Client(self.ext, key=mint("stay", "a"))
        self.assertEqual(c.line(), "PSOM-EDGE/1 200 admitted\r\n")

    def test_certificate_rotation_under_load_by_sighup_and_by_file_change(self):
        """Participants keep joining while the external certificate is renewed by SIGHUP,
        then by new files renamed into place: new handshakes show the new serial, a
        participant joined before keeps relaying, and no join fails."""
        import rotation as R
        host, port = self.ext.rsplit(":", 1)
        crt, key = R.make_cert(self.tmp, "conf-edge", 0x2001, CERTS)
        cfg = edge_config(self.ext, self.int, self.admin).replace(
            f"tls: {{cert: {CERTS}/conf-edge.crt, key: {CERTS}/conf-edge.key}}",
            f"tls: {{cert: {crt}, key: {key}}}", 1)
        self.edge = self.daemon("conf-edge", cfg, admin=self.admin)
        self.mock(mode="echo")
        self.assertEqual(R.peer_serial(host, int(port)), 0x2001)
        held = Client(self.ext, key=mint("rot", "held"))
        self.assertEqual(held.line(), "PSOM-EDGE/1 200 admitted\r\n")
        n = [0]

        def one():
            n[0] += 1
            c = Client(self.ext, key=mint("rot", f"u{n[0]}-{time.time_ns()}"))
            try:
                line = c.line(timeout=10)
                if line != "PSOM-EDGE/1 200 admitted\r\n":
                    raise AssertionError(line)
            finally:
                c.close()

        load = R.Load(one, threads=2, max_s=90)
        try:
            time.sleep(0.5)
            R.make_cert(self.tmp, "conf-edge", 0x2002, CERTS)
            self.edge.signal(__import__("signal").SIGHUP)
            wait_for(lambda: R.peer_serial(host, int(port)) == 0x2002, timeout=10,
                     what="serial 0x2002 after SIGHUP")
            R.make_cert(self.tmp, "conf-edge", 0x2003, CERTS, key_first_delay=0.3)
            wait_for(lambda: R.peer_serial(host, int(port)) == 0x2003, timeout=15,
                     what="serial 0x2003 after the files changed")
            time.sleep(0.5)
        finally:
            ok, failed = load.stop()
        self.assertEqual(failed, 0, load.errors)
        self.assertGreater(ok, 5)
        held.send(b"still here\n")
        self.assertEqual(held.read_exact(11), b"still here\n")
        self.assertRegex(self.edge.log(), r"certificate .*conf-edge.crt changed: subject CN=conf-edge, serial 20:03")

    def test_sighup_applies_new_limits_to_new_clients(self):
        self.start_edge(extra="limits: {per_conference: 1}\n")
        self.mock(mode="echo")
        a = Client(self.ext, key=mint("grow", "a"))
        self.assertEqual(a.line(), "PSOM-EDGE/1 200 admitted\r\n")
        b = Client(self.ext, key=mint("grow", "b"))
        self.assertEqual(b.line(), "PSOM-EDGE/1 429 too-many-connections\r\n")
        with open(self.edge.config, "w") as f:
            f.write(edge_config(self.ext, self.int, self.admin, "limits: {per_conference: 2}\n"))
        self.edge.signal(__import__("signal").SIGHUP)
        self.edge.wait_log("reloaded")
        c = Client(self.ext, key=mint("grow", "c"))
        self.assertEqual(c.line(), "PSOM-EDGE/1 200 admitted\r\n")
        a.send(b"a still relayed\n")
        self.assertEqual(a.read_exact(16), b"a still relayed\n")
