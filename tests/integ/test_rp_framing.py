"""revproxy against request smuggling and bad framing, from RFC 9112 (sections 2.2, 3.2, 5.2,
6.1, 6.3, 7.1) and RFC 9110: raw requests on the plain listener, and for each the status the
client gets and the exact bytes the upstream received (a recording upstream that frames
strictly, so a second request hidden in a body would show up as a request of its own).
Also the header rules of issue 13: obs-fold, duplicate Host, Host on HTTP/1.0, trailers,
client-address headers, and the port-80 redirect's Location."""
import re
import socket
import time
import unittest

import test_rp_proxy as rp
from harness import http_request
from rp_upstream import RecordingUpstream

PATH = "/etc/place/null/s"


def setUpModule():
    rp.setUpModule()


def tearDownModule():
    rp.tearDownModule()


def fwd(method="POST", path=PATH, host="h", headers=(), body=b"", version="1.1",
        fwd_host=None):
    """The request the proxy should send upstream for a client request from 127.0.0.1 on
    the plain listener: Host first, the client's end-to-end headers in order, then the
    proxy's own forwarding headers."""
    fh = host if fwd_host is None else fwd_host
    out = f"{method} {path} HTTP/{version}\r\nHost: {host}\r\n"
    for k, v in headers:
        out += f"{k}: {v}\r\n"
    out += "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
    if fh:
        out += f"X-Forwarded-Host: {fh}\r\n"
    out += "Forwarded: for=127.0.0.1;proto=http" + (f';host="{fh}"' if fh else "") + "\r\n"
    out += "Connection: close\r\n\r\n" if version == "1.0" else "Connection: keep-alive\r\n\r\n"
    return out.encode() + body


CHUNKED = [("Transfer-Encoding", "chunked")]


class FramingTest(rp.SuiteTest):
    start = rp.RevproxyTest.start  # (not a subclass: its tests would run here again)

    def setUp(self):
        super().setUp()
        self.rec = RecordingUpstream()
        self.addCleanup(self.rec.stop)
        # keepalive 0: every upstream connection closes after its response, so each case
        # ends with the upstream having seen all it will ever see
        self.start(upstream_tls=False, up=self.rec.addr, uextra=", keepalive: 0")

    def exchange(self, raw, port=None):
        """Sends raw on a new connection; returns the statuses the client got, once the
        proxy has closed the connection and the upstream has seen everything."""
        with self.rec.lock:
            self.rec.requests.clear()
            self.rec.junk.clear()
            self.rec.conns = 0
        s = socket.create_connection(("127.0.0.1", port or self.http), timeout=10)
        s.sendall(raw)
        out = b""
        deadline = time.time() + 20
        try:
            while time.time() < deadline:
                d = s.recv(65536)
                if not d:
                    break
                out += d
        except (socket.timeout, ConnectionResetError):
            pass
        s.close()
        # the upstream's connections (if any) close after their response or abort: wait
        # until its threads have framed what they got
        deadline = time.time() + 10
        while time.time() < deadline:
            with self.rec.lock:
                done = self.rec.open == 0
            if done:
                break
            time.sleep(0.02)
        self.last = out
        return [int(c) for c in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)]

    def req(self, headers, body=b"", method="POST", version="1.1", host="h"):
        head = f"{method} {PATH} HTTP/{version}\r\n"
        if host is not None:
            head += f"Host: {host}\r\n"
        return head.encode() + headers + b"Connection: close\r\n\r\n" + body

    def assert_accepted(self, raw, upstream):
        codes = self.exchange(raw)
        self.assertEqual(codes, [200] * len(upstream), self.last[:200])
        self.assertEqual(self.rec.requests, upstream)
        self.assertEqual(self.rec.junk, [])

    def assert_refused(self, raw, status):
        codes = self.exchange(raw)
        self.assertEqual(codes, [status], self.last[:200])
        self.assertEqual(self.rec.requests, [], "a request reached the upstream")
        self.assertEqual(self.rec.junk, [], "bytes reached the upstream")

    # ---- accepted, forwarded byte-exact ----

    def test_valid_framing_forwarded_exactly(self):
        body = b"5\r\nhello\r\n0\r\n\r\n"
        cases = {
            "content-length": (b"Content-Length: 5\r\n", b"hello",
                               fwd(headers=[("Content-Length", "5")], body=b"hello")),
            "chunked": (b"Transfer-Encoding: chunked\r\n", body, fwd(headers=CHUNKED, body=body)),
            "TE with tab OWS": (b"Transfer-Encoding:\tchunked \r\n", body,
                                fwd(headers=CHUNKED, body=body)),
            "TE with spaces, upper case": (b"Transfer-Encoding:   CHUNKED\r\n", body,
                                           fwd(headers=CHUNKED, body=body)),
            "CL with leading zeros": (b"Content-Length: 005\r\n", b"hello",
                                      fwd(headers=[("Content-Length", "5")], body=b"hello")),
            "chunk extensions": (b"Transfer-Encoding: chunked\r\n",
                                 b'5;a=b ; q="x y"\r\nhello\r\n0;end\r\n\r\n',
                                 fwd(headers=CHUNKED,
                                     body=b'5;a=b ; q="x y"\r\nhello\r\n0;end\r\n\r\n')),
            "chunk-size leading zeros, upper-case hex": (
                b"Transfer-Encoding: chunked\r\n", b"000A\r\n0123456789\r\n000\r\n\r\n",
                fwd(headers=CHUNKED, body=b"000A\r\n0123456789\r\n000\r\n\r\n")),
        }
        for name, (hdr, b, up) in cases.items():
            with self.subTest(name):
                self.assert_accepted(self.req(hdr, b), [up])

    def test_bare_lf_head_forwarded_with_crlf(self):
        # RFC 9112 2.2: a recipient MAY take a bare LF as a line end; the upstream gets CRLF
        raw = f"GET {PATH} HTTP/1.1\nHost: h\nX-A: 1\nConnection: close\n\n".encode()
        self.assert_accepted(raw, [fwd("GET", headers=[("X-A", "1")])])

    def test_request_after_last_chunk_is_a_request_of_its_own(self):
        first = (f"POST {PATH} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "3\r\nabc\r\n0\r\n\r\n").encode()
        second = f"GET {PATH}2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode()
        self.assert_accepted(first + second,
                             [fwd(headers=CHUNKED, body=b"3\r\nabc\r\n0\r\n\r\n"),
                              fwd("GET", path=PATH + "2")])

    # ---- item 9: obs-fold becomes one space (RFC 9112 5.2) ----

    def test_obs_fold_replaced_by_one_space(self):
        cases = {
            "simple": (b"X-Foo: a\r\n b\r\n", "a b"),
            "tabs and several lines": (b"X-Foo: a \r\n\t b\r\n  c\r\n", "a b c"),
            "value starts on the fold": (b"X-Foo:\r\n b\r\n", "b"),
        }
        for name, (hdr, value) in cases.items():
            with self.subTest(name):
                self.assert_accepted(self.req(hdr, method="GET"),
                                     [fwd("GET", headers=[("X-Foo", value)])])
        with self.subTest("split across reads"):
            # the value's pieces arrive in separate reads: still one value
            raw = self.req(b"X-Foo: abc\r\n def\r\n", method="GET")
            cut = raw.index(b"def") + 1
            with self.rec.lock:
                self.rec.requests.clear()
            s = socket.create_connection(("127.0.0.1", self.http), timeout=10)
            s.sendall(raw[:cut])
            time.sleep(0.2)
            s.sendall(raw[cut:])
            out = s.recv(4096)
            s.close()
            self.assertTrue(out.startswith(b"HTTP/1.1 200"), out)
            deadline = time.time() + 5
            while not self.rec.requests and time.time() < deadline:
                time.sleep(0.02)
            self.assertEqual(self.rec.requests, [fwd("GET", headers=[("X-Foo", "abc def")])])

    def test_folded_host_refused(self):
        # "Host: x\r\n evil.example" is one value "x evil.example": not a host name
        self.assert_refused(f"GET {PATH} HTTP/1.1\r\nHost: x\r\n evil.example\r\n\r\n".encode(),
                            400)
        # a header line starting with a space folds into the one before it (here Host)
        self.assert_refused(self.req(b" Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                                     b"hello"), 400)

    # ---- item 10: Host ----

    def test_two_host_headers_400(self):
        for hdrs in (b"Host: h\r\nHost: evil.example\r\n", b"Host: h\r\nhost: h\r\n"):
            with self.subTest(hdrs):
                self.assert_refused(f"GET {PATH} HTTP/1.1\r\n".encode() + hdrs + b"\r\n", 400)

    def test_http10_without_host_gets_the_upstream_name(self):
        # the upstream's server_name (test_rp_proxy's CONFIG: web), never "Host: "
        self.assert_accepted(f"GET {PATH} HTTP/1.0\r\n\r\n".encode(),
                             [fwd("GET", host="web", version="1.0", fwd_host="")])

    # ---- item 11: trailers ----

    def test_trailers_dropped(self):
        raw = self.req(b"Transfer-Encoding: chunked\r\n",
                       b"5\r\nhello\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nHost: evil.example\r\n"
                       b"Content-Length: 40\r\n\r\n")
        self.assert_accepted(raw, [fwd(headers=CHUNKED, body=b"5\r\nhello\r\n0\r\n\r\n")])
        # split at every point of interest: the last chunk, inside a trailer, before the end
        for cut in (b"0\r\n", b"X-For", b"40\r\n"):
            with self.subTest(cut=cut):
                i = raw.index(cut) + len(cut)
                s = socket.create_connection(("127.0.0.1", self.http), timeout=10)
                with self.rec.lock:
                    self.rec.requests.clear()
                s.sendall(raw[:i])
                time.sleep(0.1)
                s.sendall(raw[i:])
                out = s.recv(4096)
                s.close()
                self.assertTrue(out.startswith(b"HTTP/1.1 200"), out)
                self.assertEqual(self.rec.requests,
                                 [fwd(headers=CHUNKED, body=b"5\r\nhello\r\n0\r\n\r\n")])

    def test_bad_trailers_400(self):
        for body in (b"0\r\nX-A: a\r\n b\r\n\r\n", b"0\r\nno colon\r\n\r\n",
                     b"0\r\nX-A: a\nX-B: b\r\n\r\n", b"0\r\nX-A: a\r\n\n"):
            with self.subTest(body):
                codes = self.exchange(self.req(b"Transfer-Encoding: chunked\r\n", body))
                self.assertEqual(codes, [400], self.last[:200])
                self.assertEqual(self.rec.requests, [])

    # ---- item 12: client-address headers ----

    def test_client_address_headers_removed(self):
        hdrs = (b"X-Real-IP: 6.6.6.6\r\nClient-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\n"
                b"X-Client-IP: 6.6.6.6\r\nX-Cluster-Client-IP: 6.6.6.6\r\n"
                b"CF-Connecting-IP: 6.6.6.6\r\nFastly-Client-IP: 6.6.6.6\r\n"
                b"X-Originating-IP: 6.6.6.6\r\nX-Remote-IP: 6.6.6.6\r\nX-Remote-Addr: 6.6.6.6\r\n"
                b"X-Forwarded-Port: 1\r\nX-Forwarded-Server: evil\r\nX-Forwarded-Prefix: /x\r\n"
                b"X-Real_IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded: for=6.6.6.6\r\n"
                b"Forwarded-For: 6.6.6.6\r\nX-Keep: 1\r\n")
        self.assert_accepted(self.req(hdrs, method="GET"), [fwd("GET", headers=[("X-Keep", "1")])])

    # ---- item 13: the port-80 redirect ----

    def redirect(self, host):
        raw = f"GET /ABS/ext/x?y=1 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        codes = self.exchange(raw, port=self.redir)
        return codes, self.last

    def test_redirect_uses_configured_names_only(self):
        # test_rp_proxy's CONFIG: server_names: [revproxy, 127.0.0.1, "*.lab.example"]
        for host, loc in (("revproxy", "revproxy"), ("REVPROXY:80", "revproxy"),
                          ("www.Lab.example", "www.lab.example")):
            with self.subTest(host):
                codes, out = self.redirect(host)
                self.assertEqual(codes, [301])
                self.assertIn(f"\r\nLocation: https://{loc}/ABS/ext/x?y=1\r\n".encode(), out)
        for host in ("evil.example", "revproxy.evil.example", "evil.example/revproxy",
                     "revproxy@evil.example", "lab.example", "a.lab.example/x", ""):
            with self.subTest(host):
                codes, out = self.redirect(host)
                self.assertEqual(codes, [400], out[:200])
                self.assertNotIn(b"Location", out)
        # absolute-form: its authority is the host that counts
        for target, host, want in (("http://evil.example.com/x", "revproxy", None),
                                   ("http://revproxy/x", "evil.example", b"https://revproxy/x")):
            with self.subTest(target):
                raw = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
                codes = self.exchange(raw, port=self.redir)
                self.assertEqual(codes, [301] if want else [400], self.last[:200])
                if want:
                    self.assertIn(b"\r\nLocation: " + want + b"\r\n", self.last)
        _, metrics = http_request(self.admin, "/metrics")
        m = re.search(r'revproxy_refused_total\{reason="unknown_host"\} (\d+)', metrics)
        # evil.example twice, revproxy.evil.example, lab.example; the rest are not host names
        self.assertTrue(m and int(m.group(1)) == 4, re.findall(r".*refused.*", metrics))

    # ---- item 14: smuggling and framing refusals ----

    def test_smuggling_and_bad_framing_refused(self):
        te = b"Transfer-Encoding: chunked\r\n"
        cases = {
            # CL.TE and TE.CL (RFC 9112 6.3: both present is faulty framing)
            "CL.TE": (b"Content-Length: 6\r\n" + te, b"0\r\n\r\nG", 400),
            "TE.CL": (te + b"Content-Length: 3\r\n",
                      b"8\r\nSMUGGLED\r\n0\r\n\r\n", 400),
            # TE.TE: codings other than one final chunked
            "xchunked + CL": (b"Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n",
                              b"hello", 400),
            "xchunked": (b"Transfer-Encoding: xchunked\r\n", b"5\r\nhello\r\n0\r\n\r\n", 501),
            "chunked, identity": (b"Transfer-Encoding: chunked, identity\r\n",
                                  b"5\r\nhello\r\n0\r\n\r\n", 400),
            "identity, chunked": (b"Transfer-Encoding: identity, chunked\r\n",
                                  b"5\r\nhello\r\n0\r\n\r\n", 501),
            "chunked twice": (te + te, b"5\r\nhello\r\n0\r\n\r\n", 400),
            "chunked then identity": (te + b"Transfer-Encoding: identity\r\n",
                                      b"5\r\nhello\r\n0\r\n\r\n", 400),
            "chunked, chunked": (b"Transfer-Encoding: chunked, chunked\r\n",
                                 b"5\r\nhello\r\n0\r\n\r\n", 400),
            "space before colon": (b"Transfer-Encoding : chunked\r\n",
                                   b"5\r\nhello\r\n0\r\n\r\n", 400),
            "quoted": (b'Transfer-Encoding: "chunked"\r\n', b"5\r\nhello\r\n0\r\n\r\n", 400),
            "empty TE": (b"Transfer-Encoding: \r\n", b"", 400),
            # Content-Length: one, digits only
            "CL twice, same": (b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello", 400),
            "CL +5": (b"Content-Length: +5\r\n", b"hello", 400),
            "CL -1": (b"Content-Length: -1\r\n", b"hello", 400),
            "CL 5, 5": (b"Content-Length: 5, 5\r\n", b"hello", 400),
            "CL 5,6": (b"Content-Length: 5,6\r\n", b"hello", 400),
            "CL 0x5": (b"Content-Length: 0x5\r\n", b"hello", 400),
            "CL empty": (b"Content-Length: \r\n", b"hello", 400),
            "CL folded": (b"Content-Length: 5\r\n 5\r\n", b"hello", 400),
            # bare CR anywhere in the head
            "bare CR in value": (b"X-A: a\rb\r\n", b"", 400),
            "bare CR as line end": (b"X-A: a\rX-B: b\r\n", b"", 400),
            # chunk sizes and chunk lines (RFC 9112 7.1)
            "chunk size 0x": (te, b"0x5\r\nhello\r\n0\r\n\r\n", 400),
            "chunk size huge hex": (te, b"FFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n", 400),
            "chunk size negative": (te, b"-5\r\nhello\r\n0\r\n\r\n", 400),
            "chunk size empty": (te, b"\r\nhello\r\n0\r\n\r\n", 400),
            "chunk size junk after BWS": (te, b"5 junk\r\nhello\r\n0\r\n\r\n", 400),
            "chunk size bare LF": (te, b"5\nhello\r\n0\r\n\r\n", 400),
            "chunk data bare LF": (te, b"5\r\nhello\n0\r\n\r\n", 400),
            "chunk data no CRLF": (te, b"5\r\nhelloXX0\r\n\r\n", 400),
            "chunk data too long": (te, b"3\r\nhello\r\n0\r\n\r\n", 400),
            "chunk ext bare LF": (te, b"5;a\nb\r\nhello\r\n0\r\n\r\n", 400),
            "chunk ext bare CR": (te, b"5;a\rb\r\nhello\r\n0\r\n\r\n", 400),
            "chunk ext control byte": (te, b"5;a\x01\r\nhello\r\n0\r\n\r\n", 400),
            "last chunk bare LF": (te, b"5\r\nhello\r\n0\n\r\n", 400),
            "end bare LF": (te, b"5\r\nhello\r\n0\r\n\n", 400),
        }
        for name, (hdr, body, status) in cases.items():
            with self.subTest(name):
                codes = self.exchange(self.req(hdr, body))
                self.assertEqual(codes, [status], self.last[:200])
                # the head may have gone upstream before the body turned out bad; nothing
                # may ever frame as a complete request there
                self.assertEqual(self.rec.requests, [], "a request reached the upstream")

    def test_bad_heads_never_reach_the_upstream(self):
        cases = {
            "bare CR after request line": f"GET {PATH} HTTP/1.1\rHost: h\r\n\r\n",
            "bare CR ends the head": f"GET {PATH} HTTP/1.1\r\nHost: h\r\n\rX",
            "TE on HTTP/1.0": f"POST {PATH} HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked"
                              "\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "chunk size over max_body": f"POST /small/x HTTP/1.1\r\nHost: h\r\n"
                                        "Transfer-Encoding: chunked\r\n\r\n10000\r\n",
        }
        for name, raw in cases.items():
            with self.subTest(name):
                codes = self.exchange(raw.encode())
                self.assertIn(codes, ([400], [413]), self.last[:200])
                self.assertEqual(self.rec.requests, [])
                if "max_body" not in name:
                    self.assertEqual(self.rec.conns, 0)


if __name__ == "__main__":
    unittest.main()
