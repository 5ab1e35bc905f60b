#!/usr/bin/env python3
"""A minimal SIP user agent over UDP for the lab tests (not a general client): REGISTER with
Digest authentication (RFC 8760 SHA-256 or MD5, qop=auth), then optionally send one MESSAGE
or wait for one and answer 200. Prints one line per step: "REGISTER 200", "MESSAGE 200",
"GOT <body>". Every wait is bounded by --timeout.

Usage: sipua.py --proxy HOST[:PORT] --user NAME --password PW --domain D --local ADDR
                [--send-to USER --text TEXT | --wait-message] [--timeout S]"""
import argparse
import hashlib
import random
import re
import socket
import sys
import time


def digest(algorithm, user, realm, password, method, uri, nonce, cnonce, nc="00000001"):
    h = (lambda s: hashlib.sha256(s.encode()).hexdigest()) if algorithm.upper() == "SHA-256" \
        else (lambda s: hashlib.md5(s.encode()).hexdigest())
    ha1 = h(f"{user}:{realm}:{password}")
    ha2 = h(f"{method}:{uri}")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")


class UA:
    def __init__(self, a):
        self.a = a
        host, _, port = a.proxy.partition(":")
        self.proxy = (host, int(port or 5060))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((a.local, 0))
        self.port = self.sock.getsockname()[1]
        self.deadline = time.time() + a.timeout
        self.tag = str(random.randint(1, 1 << 30))
        self.cseq = 0

    def request(self, method, uri, to, extra="", body=""):
        self.cseq += 1
        branch = "z9hG4bK" + str(random.randint(1, 1 << 40))
        return (f"{method} {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.a.local}:{self.port};branch={branch};rport\r\n"
                f"Max-Forwards: 70\r\n"
                f"From: <sip:{self.a.user}@{self.a.domain}>;tag={self.tag}\r\n"
                f"To: <{to}>\r\n"
                f"Call-ID: {self.callid}\r\n"
                f"CSeq: {self.cseq} {method}\r\n"
                f"Contact: <sip:{self.a.user}@{self.a.local}:{self.port}>\r\n"
                f"{extra}Content-Length: {len(body.encode())}\r\n\r\n{body}")

    def recv(self):
        self.sock.settimeout(max(0.05, self.deadline - time.time()))
        data, peer = self.sock.recvfrom(65535)
        return data.decode(errors="replace"), peer

    def transact(self, method, uri, to, extra="", body=""):
        """Sends a request, answers a Digest challenge once; returns the final status."""
        self.callid = f"{self.tag}-{method}@lab"
        self.sock.sendto(self.request(method, uri, to, extra, body).encode(), self.proxy)
        for _ in range(20):
            msg, _ = self.recv()
            m = re.match(r"SIP/2.0 (\d{3})", msg)
            if not m or int(m.group(1)) < 200:
                continue
            code = int(m.group(1))
            if code not in (401, 407):
                return code
            hdr = "WWW-Authenticate" if code == 401 else "Proxy-Authenticate"
            ch = re.search(hdr + r": Digest (.*)", msg).group(1)
            f = dict(re.findall(r'(\w+)="?([^",]+)"?', ch))
            cnonce = "%016x" % random.getrandbits(64)
            resp = digest(f.get("algorithm", "MD5"), self.a.user, f["realm"], self.a.password,
                          method, uri, f["nonce"], cnonce)
            auth = (f'{"Authorization" if code == 401 else "Proxy-Authorization"}: Digest '
                    f'username="{self.a.user}", realm="{f["realm"]}", nonce="{f["nonce"]}", uri="{uri}", '
                    f'response="{resp}", algorithm={f.get("algorithm", "MD5")}, qop=auth, nc=00000001, '
                    f'cnonce="{cnonce}"\r\n')
            self.sock.sendto(self.request(method, uri, to, extra + auth, body).encode(), self.proxy)
        raise TimeoutError(f"{method}: no final answer")

    def wait_message(self):
        while True:
            msg, peer = self.recv()
            if not msg.startswith("MESSAGE "):
                continue
            head, _, body = msg.partition("\r\n\r\n")
            # Answer 200 with the request's Via, From, To (tagged), Call-ID and CSeq.
            keep = [l for l in head.split("\r\n")[1:]
                    if re.match(r"(?i)(via|from|call-id|cseq):", l)]
            to = [l for l in head.split("\r\n") if re.match(r"(?i)to:", l)][0]
            ok = ("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + f"\r\n{to};tag={self.tag}\r\n"
                  "Content-Length: 0\r\n\r\n")
            self.sock.sendto(ok.encode(), peer)
            return body


def main():
    ap = argparse.ArgumentParser()
    for k in ("proxy", "user", "password", "domain", "local"):
        ap.add_argument("--" + k, required=True)
    ap.add_argument("--send-to")
    ap.add_argument("--text", default="hello")
    ap.add_argument("--wait-message", action="store_true")
    ap.add_argument("--timeout", type=float, default=10)
    a = ap.parse_args()
    ua = UA(a)
    aor = f"sip:{a.user}@{a.domain}"
    print("REGISTER", ua.transact("REGISTER", f"sip:{a.domain}", aor, "Expires: 300\r\n"), flush=True)
    if a.send_to:
        to = f"sip:{a.send_to}@{a.domain}"
        print("MESSAGE", ua.transact("MESSAGE", to, to, "Content-Type: text/plain\r\n", a.text), flush=True)
    if a.wait_message:
        print("GOT", ua.wait_message(), flush=True)


if __name__ == "__main__":
    try:
        main()
    except (TimeoutError, socket.timeout) as e:
        print("TIMEOUT", e, flush=True)
        sys.exit(1)
