"""revproxy end to end: curl over HTTPS through the published routes to a mock internal web
server (HTTPS, verified against the lab CA), and every refusal with the exact status."""
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

from harness import ROOT, SuiteTest, assert_restart_refused, edit_config, free_port, http_request, rss_kib, wait_for
from rp_upstream import Upstream

CERTS = None


def setUpModule():
    global CERTS
    CERTS = tempfile.mkdtemp(prefix="rpcerts-")
    subprocess.run([os.path.join(ROOT, "deploy", "certs.sh"), CERTS], check=True,
                   capture_output=True)


def tearDownModule():
    shutil.rmtree(CERTS, ignore_errors=True)


CONFIG = """
admin: {{listen: 127.0.0.1:{admin}}}
log: {{level: info}}
drain_timeout: 10s
director: {{enabled: false}}
listeners:
  - {{address: 127.0.0.1:{https}, tls: true}}
  - {{address: 127.0.0.1:{http}}}
  - {{address: 127.0.0.1:{redir}, redirect: true}}
server_names: [revproxy, 127.0.0.1, "*.lab.example"]
tls:
  certs:
    - {{cert: {cd}/revproxy.crt, key: {cd}/revproxy.key}}
upstreams:
  - {{name: web, servers: [{up}], tls: {tls}, ca: {cd}/ca.crt, server_name: web,
     connect_timeout: 2s, read_timeout: {rt}{uextra}}}
routes:
  - {{prefix: /ABS/ext, rewrite: /ABS/int, upstream: web, affinity: true}}
  - {{prefix: /etc/place/null, upstream: web, max_body: 2G}}
  - {{prefix: /GroupExpansion/ext/service.asmx, rewrite: /GroupExpansion/int/service.asmx,
     upstream: web}}
  - {{prefix: /small, upstream: web, max_body: 1k}}
  - {{prefix: /ws, upstream: web, websocket: true}}
{extra}
header_timeout: 1s
body_timeout: 1s
access_log: {alog}
access_log_format: json
"""


class RevproxyTest(SuiteTest):
    def start(self, upstream_tls=True, up=None, rt="5s", uextra="", extra="", start=True):
        if up is None:
            self.up = Upstream(tls=upstream_tls, certdir=CERTS)
            self.addCleanup(self.up.stop)
            up = self.up.addr
        self.admin = f"127.0.0.1:{free_port()}"
        self.https, self.http, self.redir = free_port(), free_port(), free_port()
        self.alog = os.path.join(self.tmp, "access.log")
        self.config = CONFIG.format(admin=self.admin.split(":")[1], https=self.https,
                                    http=self.http, redir=self.redir, cd=CERTS, up=up,
                                    tls="true" if upstream_tls else "false", rt=rt,
                                    uextra=uextra, extra=extra, alog=self.alog)
        self.d = self.daemon("revproxy", self.config, admin=self.admin, start=start)
        return self.d

    def curl(self, path, *args, tls=True, timeout=60, input=None):
        url = (f"https://127.0.0.1:{self.https}" if tls else f"http://127.0.0.1:{self.http}") + path
        argv = ["curl", "-sS", "--cacert", os.path.join(CERTS, "ca.crt"), "-o", "-", "-w",
                "\n%{http_code}", "--max-time", str(timeout - 5)] + list(args) + [url]
        p = self.run_tool(argv, timeout=timeout, input=input)
        out = p.stdout.decode(errors="replace")
        body, _, code = out.rpartition("\n")
        return p.returncode, int(code or 0), body

    def tls_sock(self):
        ctx = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.crt"))
        s = socket.create_connection(("127.0.0.1", self.https), timeout=5)
        return ctx.wrap_socket(s, server_hostname="revproxy")

    def read_all(self, s, limit=1 << 20):
        out = b""
        try:
            while len(out) < limit:
                d = s.recv(65536)
                if not d:
                    break
                out += d
        except (socket.timeout, ssl.SSLError, ConnectionResetError):
            pass
        return out

    # ---- routes ----

    def test_https_downloads_through_every_default_route(self):
        self.start()
        for path, upath in (("/ABS/ext/Handler/F-0a1b.lsabs", "/ABS/int/Handler/F-0a1b.lsabs"),
                            ("/etc/place/null/meeting/abc.dat", "/etc/place/null/meeting/abc.dat"),
                            ("/GroupExpansion/ext/service.asmx?dl=1",
                             "/GroupExpansion/int/service.asmx?dl=1")):
            rc, code, body = self.curl(path)
            self.assertEqual((rc, code), (0, 200), body)
            self.assertIn(f"path={upath}\n", body)
            self.assertIn("proto=https\n", body)
            self.assertIn("xff=127.0.0.1\n", body)

    def test_bytes_to_clients_are_counted(self):
        """client_bytes_sent_total counts what went to clients: a relayed response (head and
        body) and the proxy's own answers (it was declared and never counted)."""
        self.start()
        before = self.d.metrics().get("revproxy_client_bytes_sent_total", 0)
        rc, code, body = self.curl("/etc/place/null/meeting/abc.dat")
        self.assertEqual((rc, code), (0, 200), body)
        relayed = self.d.metrics().get("revproxy_client_bytes_sent_total", 0) - before
        self.assertGreater(relayed, len(body.encode()), "head and body of the relayed answer")
        rc, code, body404 = self.curl("/etc/passwd")
        self.assertEqual(code, 404)
        own = self.d.metrics().get("revproxy_client_bytes_sent_total", 0) - before - relayed
        self.assertGreater(own, len(body404.encode()), "the proxy's own 404")

    def test_unknown_path_is_404(self):
        self.start()
        for path in ("/", "/etc/passwd", "/ABS/extra", "/owa/"):
            rc, code, body = self.curl(path)
            self.assertEqual(code, 404, path)
        self.assertEqual(self.up.requests, [])

    def test_route_rate_limit_per_client_429_retry_after(self):
        # A sign-in path limited to a burst of 3, then 1 a second, per client address: the
        # fourth and fifth quick requests get 429 with Retry-After and never reach the
        # upstream; another client address and other routes are not affected.
        self.start(extra="  - {prefix: /login, upstream: web, rate: 1, burst: 3}")
        url = f"https://127.0.0.1:{self.https}/login/x"
        t0 = time.time()
        p = self.run_tool(["curl", "-sS", "--cacert", os.path.join(CERTS, "ca.crt"), "-D", "-",
                           "-o", "/dev/null", "-w", "code=%{http_code}\n"] + [url] * 5, timeout=30)
        elapsed = time.time() - t0
        out = p.stdout.decode(errors="replace")
        codes = [int(c) for c in re.findall(r"code=(\d+)", out)]
        # (one keep-alive connection; on a slow build a second may pass and refill one)
        passed = 3 + int(elapsed)
        self.assertEqual(codes, [200] * passed + [429] * (5 - passed), f"{elapsed:.2f} s")
        self.assertRegex(out, r"(?i)HTTP/1.1 429 Too Many Requests\r\n(.*\r\n)*retry-after: [1-9]")
        self.assertEqual(len([r for r in self.up.requests if r[1].startswith("/login")]), passed)
        self.assertEqual(self.curl("/login/x", "--interface", "127.0.0.9")[1], 200)
        self.assertEqual(self.curl("/ABS/ext/x")[1], 200)
        self.assertGreaterEqual(self.d.metrics()['revproxy_refused_total{reason="rate_limited"}'], 1)
        time.sleep(1.1)
        self.assertEqual(self.curl("/login/x")[1], 200)

    def test_dot_segments_refused_400(self):
        self.start()
        rc, code, _ = self.curl("/ABS/ext/%2e%2e/%2e%2e/secret", "--path-as-is")
        self.assertEqual(code, 400)

    def test_port_80_redirects_to_https(self):
        self.start()
        p = self.run_tool(["curl", "-sS", "-D", "-", "-o", "/dev/null",
                           f"http://127.0.0.1:{self.redir}/ABS/ext/x?y=1"])
        head = p.stdout.decode()
        self.assertIn("301", head.splitlines()[0])
        self.assertIn("Location: https://127.0.0.1/ABS/ext/x?y=1", head)

    def test_plain_http_listener_and_plain_upstream(self):
        self.start(upstream_tls=False)
        rc, code, body = self.curl("/etc/place/null/x", tls=False)
        self.assertEqual(code, 200)
        self.assertIn("proto=http\n", body)

    # ---- headers ----

    def test_client_x_forwarded_for_not_trusted_and_forwarded_added(self):
        self.start()
        rc, code, body = self.curl("/ABS/ext/h", "-H", "X-Forwarded-For: 6.6.6.6",
                                   "-H", "Forwarded: for=6.6.6.6")
        self.assertEqual(code, 200)
        self.assertNotIn("6.6.6.6", body)
        self.assertIn("xff=127.0.0.1\n", body)
        self.assertIn(f'forwarded=for=127.0.0.1;proto=https;host="127.0.0.1:{self.https}"', body)

    def test_location_and_content_location_rewritten(self):
        self.start()
        p = self.run_tool(["curl", "-sS", "-D", "-", "-o", "/dev/null", "--cacert",
                           os.path.join(CERTS, "ca.crt"),
                           f"https://127.0.0.1:{self.https}/ABS/ext/redir"])
        head = p.stdout.decode()
        self.assertIn("302", head.splitlines()[0])
        self.assertIn(f"Location: https://127.0.0.1:{self.https}/ABS/ext/next?x=1\r\n", head)
        self.assertIn("Content-Location: /ABS/ext/here\r\n", head)
        self.assertNotIn("web:", head)

    def test_hop_by_hop_stripped(self):
        self.start()
        s = self.tls_sock()
        s.sendall(b"GET /ABS/ext/h HTTP/1.1\r\nHost: x\r\nConnection: close, X-Drop\r\n"
                  b"X-Drop: 1\r\nKeep-Alive: 300\r\nTE: trailers\r\n\r\n")
        out = self.read_all(s)
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:100])
        self.assertIn(b"Connection: close", out)
        _, _, hdrs, _ = self.up.requests[-1]
        low = {k.lower() for k in hdrs}
        self.assertNotIn("x-drop", low)
        self.assertNotIn("keep-alive", low)
        self.assertNotIn("te", low)

    # ---- HTTP/1.1 features ----

    def test_chunked_response_and_head(self):
        self.start()
        rc, code, body = self.curl("/etc/place/null/chunked")
        self.assertEqual((code, body), (200, "hello chunked world\n"))
        rc, code, body = self.curl("/etc/place/null/h", "-I")
        self.assertEqual(code, 200)
        self.assertIn("Content-Length:", body)

    def test_pipelined_requests_answered_in_order(self):
        self.start()
        s = self.tls_sock()
        s.sendall(b"".join(b"GET /etc/place/null/p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i
                           for i in range(5)) +
                  b"GET /etc/place/null/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = self.read_all(s).decode(errors="replace")
        paths = re.findall(r"path=(\S+)", out)
        self.assertEqual(paths, [f"/etc/place/null/p{i}" for i in range(5)] + ["/etc/place/null/last"])

    def test_keepalive_reuses_upstream_connections(self):
        self.start()
        urls = [f"https://127.0.0.1:{self.https}/etc/place/null/k{i}" for i in range(5)]
        p = self.run_tool(["curl", "-sS", "--cacert", os.path.join(CERTS, "ca.crt")] + urls)
        self.assertEqual(p.stdout.decode().count("path=/etc/place/null/k"), 5)
        ports = {r[3] for r in self.up.requests}
        self.assertEqual(len(ports), 1, "one upstream connection for five requests")
        m = self.d.metrics()
        self.assertGreaterEqual(m.get('revproxy_upstream_connections_total{kind="reused"}', 0), 4)

    def test_expect_100_continue_upload(self):
        self.start()
        data = b"a" * 200000
        rc, code, body = self.curl("/etc/place/null/up", "-H", "Expect: 100-continue",
                                   "--data-binary", "@-", input=data)
        self.assertEqual((code, body), (200, "got 200000\n"))

    def test_affinity_one_upstream_connection_per_client_connection(self):
        self.start()
        base = f"https://127.0.0.1:{self.https}"
        ca = os.path.join(CERTS, "ca.crt")
        for _ in range(2):
            self.run_tool(["curl", "-sS", "--cacert", ca, base + "/ABS/ext/a1", base + "/ABS/ext/a2",
                           "-H", "Authorization: NTLM TlRMTVNTUAAB"], check=True)
        reqs = [r for r in self.up.requests if r[1].startswith("/ABS/int/a")]
        self.assertEqual(len(reqs), 4)
        self.assertEqual(reqs[0][3], reqs[1][3], "same client connection, same upstream connection")
        self.assertEqual(reqs[2][3], reqs[3][3])
        self.assertNotEqual(reqs[0][3], reqs[2][3], "another client, another upstream connection")
        self.assertEqual(reqs[0][2].get("Authorization"), "NTLM TlRMTVNTUAAB")

    def test_websocket_upgrade_passed_through(self):
        self.start()
        s = self.tls_sock()
        s.sendall(b"GET /ws/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            d = s.recv(4096)
            self.assertTrue(d)
            head += d
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        self.assertIn(b"Upgrade: websocket", head)
        s.sendall(b"ping through the tunnel")
        got = head.split(b"\r\n\r\n", 1)[1]
        while len(got) < 23:
            got += s.recv(4096)
        self.assertEqual(got, b"PING THROUGH THE TUNNEL")

    # ---- refusals ----

    def test_oversized_header_is_431(self):
        self.start()
        rc, code, _ = self.curl("/ABS/ext/x", "-H", "X-Big: " + "a" * 20000)
        self.assertEqual(code, 431)
        self.assertEqual(self.up.requests, [])

    def test_oversized_body_is_413(self):
        self.start()
        rc, code, _ = self.curl("/small/x", "--data-binary", "@-", input=b"b" * 5000)
        self.assertEqual(code, 413)
        # Chunked: refused once the decoded size passes the limit.
        rc, code, _ = self.curl("/small/x", "-H", "Transfer-Encoding: chunked", "--data-binary",
                                "@-", input=b"b" * 5000)
        self.assertEqual(code, 413)

    def test_slowloris_gets_408_and_close(self):
        self.start()
        s = self.tls_sock()
        t0 = time.time()
        s.sendall(b"GET /ABS/ext/x HTTP/1.1\r\nHost: x\r\n")
        out = b""
        for _ in range(8):  # a header line every 0.3 s, never the blank line
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            s.settimeout(0.3)
            try:
                d = s.recv(4096)
                if not d:
                    break
                out += d
            except socket.timeout:
                pass
        s.settimeout(3)
        out += self.read_all(s)
        self.assertTrue(out.startswith(b"HTTP/1.1 408"), out[:80])
        self.assertLess(time.time() - t0, 4)
        self.assertGreaterEqual(self.d.metrics()['revproxy_refused_total{reason="client_timeout"}'], 1)

    def test_stalled_request_body_gets_408(self):
        self.start()
        s = self.tls_sock()
        s.sendall(b"POST /etc/place/null/u HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        s.settimeout(4)
        out = self.read_all(s)
        self.assertTrue(out.startswith(b"HTTP/1.1 408"), out[:80])

    def test_sip_request_on_https_port_is_400_and_closed(self):
        self.start()
        s = self.tls_sock()
        s.sendall(b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.1:5061\r\n"
                  b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        out = self.read_all(s)
        self.assertTrue(out.startswith(b"HTTP/1.1 400 Bad Request"), out[:80])
        self.assertIn(b"Connection: close", out)
        self.assertEqual(self.up.requests, [])
        self.assertGreaterEqual(self.d.metrics()['revproxy_refused_total{reason="bad_request"}'], 1)

    def test_tls_garbage_on_plain_port_is_400(self):
        self.start()
        s = socket.create_connection(("127.0.0.1", self.http), timeout=5)
        s.sendall(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(64))
        out = self.read_all(s)
        self.assertTrue(out.startswith(b"HTTP/1.1 400"), out[:80])

    def test_bad_chunk_encoding_is_400(self):
        self.start()
        s = self.tls_sock()
        s.sendall(b"POST /etc/place/null/u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"zz\r\nhello\r\n0\r\n\r\n")
        out = self.read_all(s)
        self.assertTrue(out.startswith(b"HTTP/1.1 400"), out[:80])

    def test_sni_picks_certificate(self):
        self.start()
        # A second certificate (the lab's "web" one) is served to clients asking for "web";
        # it arrives by reload, as a renewed certificate would.
        cfg = self.config.replace("tls:\n  certs:\n", "tls:\n  certs:\n    - {cert: %s/revproxy.crt, key: %s/revproxy.key}\n"
                          "    - {cert: %s/web.crt, key: %s/web.key}\n" % (CERTS, CERTS, CERTS, CERTS), 1)
        with open(self.d.config, "w") as f:
            f.write(cfg)
        self.d.signal(signal.SIGHUP)
        self.d.wait_log("reloaded")
        for name, cn in (("web", "CN = web"), ("revproxy", "CN = revproxy"), ("other", "CN = revproxy")):
            p = self.run_tool(["openssl", "s_client", "-connect", f"127.0.0.1:{self.https}",
                               "-servername", name], input=b"", timeout=10)
            self.assertIn(f"subject={cn}".replace(" = ", "="), p.stdout.decode().replace(" = ", "="),
                          name)

    def test_max_connections_cap(self):
        self.start(extra="max_connections: 2")
        socks = [socket.create_connection(("127.0.0.1", self.http), timeout=3) for _ in range(2)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", self.http), timeout=3)
        self.assertEqual(self.read_all(extra), b"", "over the cap: closed at once")
        for s in socks:
            s.close()
        m = self.d.metrics()
        self.assertGreaterEqual(m['revproxy_refused_total{reason="connection_cap"}'], 1)

    # ---- upstream failures ----

    def test_upstream_with_untrusted_certificate_is_502(self):
        self.up = Upstream(tls=True, certdir=CERTS, name="rogue")
        self.addCleanup(self.up.stop)
        self.start(up=self.up.addr)
        rc, code, body = self.curl("/ABS/ext/x")
        self.assertEqual(code, 502)
        self.assertEqual(self.up.requests, [])

    def test_upstream_down_is_502(self):
        dead = free_port()
        self.start(up=f"127.0.0.1:{dead}")
        rc, code, body = self.curl("/ABS/ext/x")
        self.assertEqual(code, 502)
        self.assertIn("Bad Gateway", body)

    def test_only_server_back_is_used_at_once(self):
        # A pool's only server is never skipped for fail_timeout after a failed connect
        # (nginx ignores max_fails for a lone server): the request after it comes back is
        # served, not answered 502 for the next 10 s.
        port = free_port()
        self.start(up=f"127.0.0.1:{port}")
        rc, code, body = self.curl("/ABS/ext/x")
        self.assertEqual(code, 502)
        self.up = Upstream(tls=True, certdir=CERTS, port=port)
        self.addCleanup(self.up.stop)
        rc, code, body = self.curl("/ABS/ext/x")
        self.assertEqual(code, 200, body)

    def test_upstream_slow_is_504(self):
        self.start(rt="1s")
        t0 = time.time()
        rc, code, body = self.curl("/ABS/ext/slow?s=3")
        self.assertEqual(code, 504)
        self.assertIn("Gateway Timeout", body)
        self.assertLess(time.time() - t0, 2.8)

    def test_upstream_dies_mid_body_gives_truncated_transfer(self):
        self.start()
        t0 = time.time()
        rc, code, body = self.curl("/etc/place/null/die", timeout=20)
        self.assertEqual(rc, 18, "curl: transfer closed with outstanding read data remaining")
        self.assertEqual(code, 200)
        self.assertLess(time.time() - t0, 8)

    # ---- streaming with flat memory ----

    def _streams_flat(self, size):
        self.start()
        pid = self.d.proc.pid
        base = rss_kib(pid)
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(pid))
                time.sleep(0.05)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            url = f"https://127.0.0.1:{self.https}/etc/place/null/big?n={size}"
            p = self.run_tool(["curl", "-sS", "--cacert", os.path.join(CERTS, "ca.crt"), "-o",
                               "/dev/null", "-w", "%{http_code} %{size_download}", url], timeout=600)
            self.assertEqual(p.stdout.decode(), f"200 {size}")
            gen = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
            p = subprocess.run(["curl", "-sS", "--cacert", os.path.join(CERTS, "ca.crt"), "-T", "-",
                                "-H", "Transfer-Encoding: chunked",
                                f"https://127.0.0.1:{self.https}/etc/place/null/upload"],
                               stdin=gen.stdout, capture_output=True, timeout=600)
            gen.wait()
            self.assertEqual(p.stdout.decode(), f"got {size}\n", p.stderr)
        finally:
            stop.set()
            t.join()
        grown = (peak[0] - base) / 1024
        print(f"[proxy RSS {base >> 10} MiB at start, +{grown:.1f} MiB at peak] ", end="", flush=True)
        if "san" not in os.path.basename(os.environ.get("SUITE_BUILD", "")):
            # (ASan's quarantine keeps freed blocks, so only the plain build is measured.)
            self.assertLess(grown, 8, f"proxy RSS grew {grown:.1f} MiB for {size >> 20} MiB each way")

    def test_1gib_download_and_chunked_upload_stream_with_flat_memory(self):
        # 1 GiB each way as the issue asks (about 20 s here); the sanitizer build, several
        # times slower and with no RSS figure to check, streams 256 MiB each way.
        san = "san" in os.path.basename(os.environ.get("SUITE_BUILD", ""))
        self._streams_flat((256 << 20) if san else (1 << 30))

    # ---- operations ----

    def test_check_reports_bad_route_with_position(self):
        bad = os.path.join(self.tmp, "bad.yaml")
        with open(bad, "w") as f:
            f.write("admin: {listen: 127.0.0.1:1}\ndirector: {enabled: false}\nlisteners:\n  - {address: 127.0.0.1:2}\n"
                    "upstreams:\n  - {name: web, servers: [127.0.0.1:3], tls: false}\n"
                    "routes:\n  - {prefix: /ABS/ext, upstream: nosuch}\n")
        p = self.run_tool([os.path.join(os.environ.get("SUITE_BUILD", os.path.join(ROOT, "build")),
                                        "bin", "revproxy"), "--check", "-c", bad])
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stderr.decode(), r"bad.yaml:8:\d+: routes\[0\].upstream: no upstream named 'nosuch'")

    def test_access_log_json_and_metrics(self):
        self.start()
        self.curl("/ABS/ext/logged")
        self.curl("/nope")
        lines = wait_for(lambda: open(self.alog).read().splitlines() if os.path.exists(self.alog)
                         and open(self.alog).read().count("\n") >= 2 else None, what="2 log lines")
        recs = [json.loads(l) for l in lines]
        self.assertEqual((recs[0]["method"], recs[0]["path"], recs[0]["status"], recs[0]["tls"]),
                         ("GET", "/ABS/ext/logged", 200, True))
        self.assertEqual(recs[1]["status"], 404)
        m = self.d.metrics()
        self.assertGreaterEqual(m['revproxy_responses_total{class="2xx"}'], 1)
        self.assertGreaterEqual(m['revproxy_refused_total{reason="not_routed"}'], 1)

    def test_reload_adds_route_without_dropping_in_flight(self):
        self.start(rt="10s")
        res = {}

        def slow():
            res["slow"] = self.curl("/etc/place/null/slow?s=2")

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)
        self.assertEqual(self.curl("/Autoupdate/Ext/x")[1], 404)
        with open(self.d.config, "a") as f:
            f.write("")
        cfg = self.config.replace("routes:\n", "routes:\n  - {prefix: /AutoUpdate/Ext, upstream: web}\n")
        with open(self.d.config, "w") as f:
            f.write(cfg)
        self.d.signal(signal.SIGHUP)
        self.d.wait_log("reloaded")
        self.assertEqual(self.curl("/AutoUpdate/Ext/x")[1], 200)
        t.join()
        self.assertEqual(res["slow"][1], 200)

    def test_certificate_rotation_under_load_by_sighup_and_by_file_change(self):
        """HTTPS requests on new connections keep flowing while the certificate is renewed by
        SIGHUP, then by new files renamed into place: new handshakes show the new serial, a
        keep-alive connection opened before keeps working, and no request fails."""
        import rotation as R
        crt, key = R.make_cert(self.tmp, "revproxy", 0x3001, CERTS)
        self.start(start=False)
        edit_config(self.d, f"{CERTS}/revproxy.crt, key: {CERTS}/revproxy.key",
                    f"{crt}, key: {key}")
        self.d.start()
        self.assertEqual(R.peer_serial("127.0.0.1", self.https, "revproxy"), 0x3001)
        held = self.tls_sock()
        self.addCleanup(held.close)
        req = b"GET /ABS/ext/x HTTP/1.1\r\nHost: revproxy\r\n\r\n"

        def ask(s):
            s.sendall(req)
            head = b""
            while b"\r\n\r\n" not in head:
                d = s.recv(65536)
                if not d:
                    raise ConnectionError("closed")
                head += d
            if not head.startswith(b"HTTP/1.1 200"):
                raise AssertionError(head[:80])
            n = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < n:
                body += s.recv(65536)

        ask(held)

        def one():
            s = self.tls_sock()
            try:
                s.settimeout(10)
                ask(s)
            finally:
                s.close()

        load = R.Load(one, threads=2, max_s=90)
        try:
            time.sleep(0.5)
            R.make_cert(self.tmp, "revproxy", 0x3002, CERTS)
            self.d.signal(signal.SIGHUP)
            wait_for(lambda: R.peer_serial("127.0.0.1", self.https, "revproxy") == 0x3002,
                     timeout=10, what="serial 0x3002 after SIGHUP")
            ask(held)
            R.make_cert(self.tmp, "revproxy", 0x3003, CERTS, key_first_delay=0.3)
            wait_for(lambda: R.peer_serial("127.0.0.1", self.https, "revproxy") == 0x3003,
                     timeout=15, what="serial 0x3003 after the files changed")
            ask(held)
            time.sleep(0.5)
        finally:
            ok, failed = load.stop()
        self.assertEqual(failed, 0, load.errors)
        self.assertGreater(ok, 5)
        self.assertRegex(self.d.log(), r"certificate .*revproxy.crt changed: subject CN=revproxy, serial 30:03")
        self.assertIn(f'revproxy_tls_certificate_not_after_seconds{{file="{crt}"}}', self.d.metrics())

    def test_reload_changing_a_listener_is_refused(self):
        self.start()
        edit_config(self.d, f"127.0.0.1:{self.https}, tls: true", f"127.0.0.1:{free_port()}, tls: true")
        assert_restart_refused(self.d, "listeners")
        self.assertEqual(self.curl("/ABS/ext/x")[1], 200)

    def test_reload_with_unusable_certificate_is_refused_and_old_config_serves(self):
        # The new config parses, but its certificate cannot be loaded: the reload is refused
        # with the reason, and the running generation (its routes and its rate limit) serves on.
        self.start(extra="  - {prefix: /login, upstream: web, rate: 1, burst: 1}")
        bad = os.path.join(self.tmp, "garbage.crt")
        with open(bad, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        with open(self.d.config, "w") as f:
            f.write(self.config.replace(f"{CERTS}/revproxy.crt", bad))
        self.d.signal(signal.SIGHUP)
        self.d.wait_log("reload refused by revproxy")  # the config parsed; its TLS did not load
        self.assertIsNone(self.d.proc.poll(), "revproxy exited")
        self.assertEqual(self.curl("/ABS/ext/x")[1], 200)
        self.assertEqual([self.curl("/login/x")[1] for _ in range(2)], [200, 429])

    def test_sigterm_drains_in_flight_request(self):
        self.start(rt="10s")
        res = {}

        def slow():
            res["slow"] = self.curl("/etc/place/null/slow?s=2")

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)
        self.d.signal(signal.SIGTERM)
        t.join()
        self.assertEqual(res["slow"][1], 200)
        self.assertEqual(self.d.proc.wait(10), 0)

    def test_dead_server_in_pool_passive_failover(self):
        dead = free_port()
        self.up = Upstream(tls=True, certdir=CERTS)
        self.addCleanup(self.up.stop)
        self.start(up=f"127.0.0.1:{dead}, {self.up.addr}")
        codes = [self.curl(f"/etc/place/null/p{i}")[1] for i in range(4)]
        self.assertEqual(codes, [200] * 4, "a failed connect is retried on the next server")
        self.assertGreaterEqual(self.d.metrics()['revproxy_upstream_errors_total{kind="connect"}'], 1)

    def test_active_health_check_skips_dead_server(self):
        dead = free_port()
        self.up = Upstream(tls=True, certdir=CERTS)
        self.addCleanup(self.up.stop)
        self.start(up=f"{self.up.addr}, 127.0.0.1:{dead}",
                   uextra=", health_path: /etc/place/null/health, health_interval: 200ms")
        time.sleep(0.6)
        codes = [self.curl(f"/etc/place/null/h{i}")[1] for i in range(4)]
        self.assertEqual(codes, [200] * 4)


if __name__ == "__main__":
    unittest.main()
