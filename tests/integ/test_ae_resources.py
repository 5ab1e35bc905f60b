"""access-edge under resource exhaustion.

Memory: a burst of TLS connections that open and close must not leave the heap it grew
(10,000 of them left 103 MB of RSS with 2 MB in use). A round of TLS connections is opened,
held, and closed; once they are gone the edge's RSS must come back to within 2x of what it was
before the round, round after round.

Descriptors: at the open-file limit the edge used to reset new connections without a word.
It warns at start when ulimit -n is below what limits.max_connections needs, refuses
connections past the reserve with a log line and refused count (reason fd_limit), and keeps
answering on the connections and sockets it already has."""
import os
import resource
import socket
import ssl
import threading
import time

from harness import BUILD, SuiteTest, rss_kib, wait_for
from siplab import CERTS, EXT_IP, Lab, StreamUA, UdpUA, parse_status

ROUND = int(os.environ.get("AE_CHURN_CONNS", "1500"))
THREADS = 6


def open_many(host, port, n, first_ip):
    """n TLS connections from 127.0.(first_ip..).x sources, returned open."""
    ctx = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.crt"))
    ctx.check_hostname = False
    out, lock = [], threading.Lock()

    def worker(k):
        for i in range(k, n, THREADS):
            src = f"127.{first_ip}.{i // 50}.{i % 50 + 1}"
            raw = socket.create_connection((host, port), timeout=10, source_address=(src, 0))
            s = ctx.wrap_socket(raw)
            with lock:
                out.append(s)

    ths = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return out


class AccessEdgeMemory(SuiteTest):
    def test_rss_returns_after_tls_churn(self):
        if os.path.basename(BUILD.rstrip("/")).endswith("-san"):
            self.skipTest("AddressSanitizer's quarantine holds freed memory: RSS says nothing")
        lab = Lab(self)
        pid = lab.edge.proc.pid
        before = rss_kib(pid)
        peaks, afters = [], []
        for r in range(2):
            conns = open_many(EXT_IP, lab.ext_tls, ROUND, 60 + r)
            self.assertEqual(len(conns), ROUND)
            wait_for(lambda: lab.edge_metric("access_edge_sip_connections") >= ROUND, timeout=20,
                     what="all connections counted")
            peaks.append(rss_kib(pid))
            for s in conns:
                s.close()
            wait_for(lambda: lab.edge_metric("access_edge_sip_connections") == 0, timeout=20,
                     what="all connections gone")
            time.sleep(2.5)  # the edge trims when it has been quiet
            afters.append(rss_kib(pid))
        print(f"\naccess-edge RSS: before {before} KiB, peaks {peaks}, after {afters}")
        for a in afters:
            self.assertLessEqual(a, 2 * before, f"RSS {a} KiB after churn, {before} KiB before")


class AccessEdgeFdLimit(SuiteTest):
    def test_at_the_fd_limit_new_connections_are_refused_and_counted_the_rest_served(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # the daemons inherit it
        try:
            lab = Lab(self)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        lab.edge.wait_log("open-file limit (ulimit -n) is 256")
        old = StreamUA(EXT_IP, lab.ext_port)
        self.addCleanup(old.close)
        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        for i in range(300):  # 10 addresses, under the per-address cap of 64
            socks.append(socket.create_connection((EXT_IP, lab.ext_port), timeout=5,
                                                  source_address=(f"127.0.71.{i % 10 + 1}", 0)))
        key = 'access_edge_sip_rejected_total{reason="fd_limit"}'
        wait_for(lambda: lab.edge.metrics().get(key, 0) >= 1, timeout=10, what="fd_limit count")
        refused = lab.edge.metrics()[key]
        self.assertGreaterEqual(refused, 300 - 256 + 32 - 10)
        lab.edge.wait_log("connection refused: open-file limit 256 reached")
        lines = [l for l in lab.edge.log().splitlines() if "open-file limit 256 reached" in l]
        self.assertLessEqual(len(lines), 2, "one line per 10 s, not one per connection")
        # The connection accepted before, and UDP, are still answered.
        old.request("OPTIONS", "sip:example.com")
        self.assertIsNotNone(parse_status(old.recv(timeout=5)))
        u = UdpUA()
        self.addCleanup(u.close)
        u.request("OPTIONS", "sip:example.com", (EXT_IP, lab.ext_port))
        self.assertIsNotNone(parse_status(u.recv(timeout=5)))
        # Once the flood is gone, new connections are served again.
        for s in socks:
            s.close()
        socks.clear()
        wait_for(lambda: lab.edge_metric("access_edge_sip_connections") <= 2, timeout=10,
                 what="the flood's connections closed")
        again = StreamUA(EXT_IP, lab.ext_port, ip="127.0.0.8")
        self.addCleanup(again.close)
        again.request("OPTIONS", "sip:example.com")
        self.assertIsNotNone(parse_status(again.recv(timeout=5)))
