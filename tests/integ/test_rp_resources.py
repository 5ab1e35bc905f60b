"""revproxy at the open-file limit, and at a drain.

At the open-file limit: it used to reset new connections without a word. It
warns at start when ulimit -n is below what client.max_connections needs, refuses connections
past the reserve with a log line and refused_total{reason="fd_limit"}, and keeps serving the
keep-alive connections it already has.

At a drain (SIGTERM): idle keep-alive clients get a clean close (TLS close_notify) at once, and
a request in flight is answered with Connection: close."""
import http.client
import re
import resource
import signal
import socket
import time

import test_rp_proxy as rp
from harness import SuiteTest, wait_for


def setUpModule():
    rp.setUpModule()


def tearDownModule():
    rp.tearDownModule()


class RevproxyFdLimit(SuiteTest):
    start = rp.RevproxyTest.start

    def test_at_the_fd_limit_new_connections_are_refused_and_counted_the_rest_served(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # the daemon inherits it
        try:
            d = self.start(upstream_tls=False)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        d.wait_log("open-file limit (ulimit -n) is 256")
        old = http.client.HTTPConnection("127.0.0.1", self.http, timeout=5)
        self.addCleanup(old.close)
        old.request("GET", "/ABS/ext/a")
        r = old.getresponse()
        r.read()
        self.assertEqual(r.status, 200)
        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        for _ in range(300):
            socks.append(socket.create_connection(("127.0.0.1", self.http), timeout=5))
        key = 'revproxy_refused_total{reason="fd_limit"}'
        wait_for(lambda: d.metrics().get(key, 0) >= 1, timeout=10, what="fd_limit count")
        self.assertGreaterEqual(d.metrics()[key], 300 - 256 + 32 - 10)
        d.wait_log("connection refused: open-file limit 256 reached")
        lines = [l for l in d.log().splitlines() if "open-file limit 256 reached" in l]
        self.assertLessEqual(len(lines), 2, "one line per 10 s, not one per connection")
        old.request("GET", "/ABS/ext/b")  # the keep-alive connection from before still works
        r = old.getresponse()
        self.assertEqual((r.status, b"path=/ABS/int/b" in r.read()), (200, True))
        for s in socks:
            s.close()
        socks.clear()
        wait_for(lambda: d.metrics()["revproxy_client_connections"] <= 1, timeout=10,
                 what="the flood's connections closed")
        new = http.client.HTTPConnection("127.0.0.1", self.http, timeout=5)
        self.addCleanup(new.close)
        new.request("GET", "/ABS/ext/c")
        self.assertEqual(new.getresponse().status, 200)


class RevproxyDrain(SuiteTest):
    start = rp.RevproxyTest.start
    tls_sock = rp.RevproxyTest.tls_sock

    def get(self, s, path):
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: revproxy\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        n = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
        while len(body) < n:
            body += s.recv(65536)
        return head.decode()

    def test_sigterm_closes_idle_keepalive_cleanly_and_busy_ones_after_connection_close(self):
        # A drain (issue: keep-alive connections were cut) closes an idle keep-alive client
        # with close_notify, and answers a request in flight with Connection: close.
        self.start(rt="10s")
        idle = self.tls_sock()
        self.addCleanup(idle.close)
        self.assertIn("200", self.get(idle, "/ABS/ext/a").split("\r\n")[0])
        busy = self.tls_sock()
        self.addCleanup(busy.close)
        busy.settimeout(10)
        busy.sendall(b"GET /etc/place/null/slow?s=2 HTTP/1.1\r\nHost: revproxy\r\n\r\n")
        time.sleep(0.5)
        self.d.signal(signal.SIGTERM)
        idle.settimeout(5)
        self.assertEqual(idle.recv(100), b"", "a clean close (close_notify), not a reset")
        data = b""
        while b"\r\n\r\n" not in data:
            data += busy.recv(65536)
        head = data.split(b"\r\n\r\n")[0].decode().lower()
        self.assertIn(" 200 ", head.split("\r\n")[0] + " ")
        self.assertIn("connection: close", head)
        self.assertEqual(self.d.proc.wait(10), 0)
