"""conf-edge memory under a slow reader: 1 GiB from a conferencing server to a participant
that first does not read at all, then reads slowly, then at full speed. The edge's RSS must
stay flat (a few MiB) because reading from the server stops while the client's queue is
full (per-stream windows), whatever the transfer size. CE_BIG_BYTES overrides the size."""
import os
import threading
import time

from confmock import ConfMock
from harness import SuiteTest, free_port, rss_kib, wait_for
from test_ce_edge import CERTS, Client, distinct_ports, edge_config, mint

BIG = int(os.environ.get("CE_BIG_BYTES", str(1 << 30)))


class ConfEdgeMemory(SuiteTest):
    def test_1gib_to_slow_reader_keeps_edge_rss_flat(self):
        from harness import BUILD
        if os.path.basename(BUILD.rstrip("/")).endswith("-san"):
            self.skipTest("AddressSanitizer's quarantine holds freed memory: RSS says nothing")
        import subprocess
        from harness import ROOT
        subprocess.run(["deploy/certs.sh", "build/certs"], cwd=ROOT, check=True, capture_output=True)
        ext, internal, admin = (f"127.0.0.1:{p}" for p in distinct_ports(3))
        edge = self.daemon("conf-edge", edge_config(ext, internal, admin).replace(
            "log: {level: debug}", "log: {level: info}"), admin=admin)
        m = ConfMock(internal, CERTS, mode="source", source_bytes=BIG)
        m.start()
        try:
            wait_for(lambda: edge.metrics().get("conf_edge_servers") == 1, what="server")
            idle = rss_kib(edge.proc.pid)
            c = Client(ext, key=mint("big", "reader"))
            self.assertEqual(c.line(), "PSOM-EDGE/1 200 admitted\r\n")
            pid = edge.proc.pid
            samples = []
            done = threading.Event()

            def sampler():
                while not done.is_set():
                    samples.append(rss_kib(pid))
                    time.sleep(0.2)

            th = threading.Thread(target=sampler, daemon=True)
            time.sleep(1.0)  # not reading at all: the edge's queues fill to their caps
            base = rss_kib(pid)
            th.start()
            time.sleep(1.0)
            got = len(c.buf)
            c.sock.settimeout(30)
            t0 = time.time()
            # Slow: 16 KiB every 10 ms for 2 s.
            while time.time() - t0 < 2.0:
                got += len(c.sock.recv(16384))
                time.sleep(0.01)
            # Then as fast as it can, without keeping the bytes.
            deadline = time.time() + 240
            while got < BIG and time.time() < deadline:
                d = c.sock.recv(262144)
                if not d:
                    break
                got += len(d)
            elapsed = time.time() - t0
            done.set()
            th.join(2)
            c.close()
            self.assertEqual(got, BIG, "every byte arrived")
            peak = max(samples)
            print(f"\n  1 GiB slow reader: {BIG / elapsed / 1e6:.0f} MB/s; edge RSS base {base} KiB, "
                  f"peak {peak} KiB, growth {peak - base} KiB over {len(samples)} samples; idle before {idle} KiB")
            self.assertLess(peak - base, 4096, f"edge RSS grew {peak - base} KiB during the transfer")
            self.assertLess(peak - idle, 6144, f"edge RSS {peak - idle} KiB above idle")
        finally:
            m.stop()
