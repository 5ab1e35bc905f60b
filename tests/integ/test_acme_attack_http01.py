"""revproxy's port-80 HTTP-01 answer (/.well-known/acme-challenge/<token>) against hostile
requests: encoding and traversal games, case, NUL, UTF-8, overlong tokens, framing
(Transfer-Encoding with Content-Length, a body that hides a second request, folded and bare-LF
heads), pipelining. Nothing but the exact token's key authorization is ever served, each
request gets at most one answer, and nothing sent to port 80 reaches the upstream."""
import unittest

from harness import wait_for
import test_acme_edge as tae

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KA = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
P = "/.well-known/acme-challenge/"


def setUpModule():
    tae.setUpModule()


def tearDownModule():
    tae.tearDownModule()


class Http01Attack(tae.AcmeEdgeTest):
    def status_bodies(self, data):
        """Every answer to data on one connection: [(status, body)]."""
        out = self.raw(self.redir, data, timeout=3)
        res = []
        while out.startswith(b"HTTP/1.1 "):
            head, _, rest = out.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            hd = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
            n = int(hd.get("content-length", "0"))
            res.append((int(lines[0].split()[1]), rest[:n].decode("latin-1")))
            out = rest[n:]
        return res

    def req(self, target, extra="", method="GET", version="HTTP/1.1", host="web.lab.test"):
        h = f"Host: {host}\r\n" if host is not None else ""
        return f"{method} {target} {version}\r\n{h}{extra}Connection: close\r\n\r\n".encode(
            "utf-8", "surrogateescape")

    def test_port_80_serves_only_the_exact_token(self):
        d = self.start_revproxy()
        self.placeholder_status("revproxy")
        m = self.stub.send(f"challenge http-01 web.lab.test {TOKEN} {KA}")
        self.stub.wait(lambda e: e["event"] == "challenge_ready", after=m)
        self.assertEqual(self.status_bodies(self.req(P + TOKEN)), [(200, KA)])
        lookalikes = [
            P + TOKEN.lower(), P + TOKEN.upper(), P + TOKEN + "/", P + TOKEN + ";x=1",
            P + TOKEN + "%00", P + TOKEN + "%20", P + "%2e%2e/acme-challenge/" + TOKEN,
            P + "../acme-challenge/" + TOKEN, "/.well-known/acme-challenge//" + TOKEN,
            "/.well-known//acme-challenge/" + TOKEN, "//.well-known/acme-challenge/" + TOKEN,
            "/%2ewell-known/acme-challenge/" + TOKEN, "/.well-known/acme-challenge%2f" + TOKEN,
            "/.WELL-KNOWN/acme-challenge/" + TOKEN, P + "%" + format(ord(TOKEN[0]), "02X") +
            TOKEN[1:], P + TOKEN[:-1], P + TOKEN + "x", P + TOKEN + "." + TOKEN,
            P + "\u00e9" + TOKEN, P + TOKEN * 60, P + "A" * 9000,
            "*", "http://web.lab.test" + P + TOKEN[:-1],
        ]
        for target in lookalikes:
            with self.subTest(target=target[:80]):
                for st, body in self.status_bodies(self.req(target)):
                    self.assertNotIn(KA, body)
                    self.assertNotEqual(st, 200)
        # Framing games: one answer at most per head, never a second hidden request's.
        inner = self.req(P + TOKEN).decode()
        framing = [
            (f"GET {P}x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
             f"Content-Length: {len(inner)}\r\n\r\n{inner}").encode(),
            (f"GET {P}x HTTP/1.1\r\nHost: a\r\nContent-Length: {len(inner)}\r\n\r\n"
             f"{inner}").encode(),
            (f"GET {P}x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
             f"{len(inner):x}\r\n{inner}\r\n0\r\n\r\n").encode(),
            (f"GET {P}x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: "
             f"{len(inner)}\r\n\r\n{inner}").encode(),
            (f"GET {P}x HTTP/1.1\r\nHost: a\r\nX: y\r\n {inner}\r\n\r\n").encode(),
            (f"GET {P}x HTTP/1.1\rHost: a\r\n\r\n{inner}").encode(),
        ]
        for data in framing:
            with self.subTest(data=data[:60]):
                res = self.status_bodies(data)
                self.assertLessEqual(len(res), 1, res)
                self.assertNotIn((200, KA), res)
        # A bare-LF head is a head (RFC 9112 2.2 allows it, as on the TLS listeners): what
        # follows it is the next request, answered on its own.
        res = self.status_bodies(f"GET {P}x HTTP/1.1\nHost: a\n\n".encode() + self.req(P + "y"))
        self.assertEqual([st for st, _ in res], [404, 404])
        # Pipelined, keep-alive: each head its own answer, in order.
        two = (f"HEAD {P}{TOKEN} HTTP/1.1\r\nHost: a\r\n\r\n").encode() + self.req(P + TOKEN)
        res = self.raw(self.redir, two, timeout=3)
        self.assertEqual(res.count(b"HTTP/1.1 200"), 2)
        self.assertEqual(res.count(KA.encode()), 1)  # HEAD has no body
        self.assertEqual(self.up.requests, [])  # port 80 never proxies
        mx = d.metrics()
        self.assertEqual(mx.get('revproxy_acme_http_requests_total{result="served"}'), 3)


# Run only the test above from this module (the base class's tests live in test_acme_edge).
for _n in [n for n in dir(tae.AcmeEdgeTest) if n.startswith("test_")]:
    setattr(Http01Attack, _n, None)

if __name__ == "__main__":
    unittest.main()
