"""access-edge gives memory back after a burst of TLS connections (issue: 10,000 TLS
connections that open and close left 103 MB of RSS with 2 MB in use). A round of TLS
connections is opened, held, and closed; once they are gone the edge's RSS must come back to
within 2x of what it was before the round, round after round."""
import os
import socket
import ssl
import threading
import time

from harness import BUILD, SuiteTest, rss_kib, wait_for
from siplab import CERTS, EXT_IP, Lab

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
