#!/usr/bin/env python3
"""A minimal SIP user agent over UDP for the lab tests (not a general client): REGISTER with
Digest authentication (RFC 8760 SHA-256 or MD5, qop=auth), then optionally one of:

- send one MESSAGE (--send-to USER, or USER@DOMAIN for another domain's user), or wait for one and answer 200 (--wait-message);
- call (--call USER or USER@DOMAIN): INVITE through the proxy, ACK the 200 along the route set the proxies
  recorded (loose routing, RFC 3261 §12.1.2, §16.12), wait for a line on stdin (the test runs
  the call's media meanwhile; EOF does too), then BYE along the same route set;
- answer (--answer): wait for an INVITE, answer 180 then 200 (the Record-Route copied), then
  wait for the ACK and the BYE and answer the BYE 200.

Prints one line per step: "REGISTER 200", "MESSAGE 200", "GOT <body>"; for a call
"INVITE 180", "INVITE 200", "ROUTE <route set>", "ACK sent", "IN CALL", "BYE 200"; when
answering "INVITE from <From>", "ACK via <Via hosts>", "BYE via <Via hosts>" (the hops the
in-dialog request took, nearest last). Every wait is bounded by --timeout.

Usage: sipua.py --proxy HOST[:PORT] --user NAME --password PW --domain D --local ADDR
                [--send-to USER --text TEXT | --wait-message | --call USER | --answer]
                [--timeout S]"""
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
        self.last = ""  # the last final response transact() got

    def request(self, method, uri, to, extra="", body="", cseq=None):
        if cseq is None:
            self.cseq += 1
        branch = "z9hG4bK" + str(random.randint(1, 1 << 40))
        self.via = f"Via: SIP/2.0/UDP {self.a.local}:{self.port};branch={branch};rport\r\n"
        return (f"{method} {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.a.local}:{self.port};branch={branch};rport\r\n"
                f"Max-Forwards: 70\r\n"
                f"From: <sip:{self.a.user}@{self.a.domain}>;tag={self.tag}\r\n"
                f"To: {to if to.startswith('<') else '<' + to + '>'}\r\n"
                f"Call-ID: {self.callid}\r\n"
                f"CSeq: {cseq or self.cseq} {method}\r\n"
                f"Contact: <sip:{self.a.user}@{self.a.local}:{self.port}>\r\n"
                f"{extra}Content-Length: {len(body.encode())}\r\n\r\n{body}")

    def recv(self):
        self.sock.settimeout(max(0.05, self.deadline - time.time()))
        data, peer = self.sock.recvfrom(65535)
        return data.decode(errors="replace"), peer

    def transact(self, method, uri, to, extra="", body="", dest=None, new_call=True):
        """Sends a request (to dest, default the proxy), answers a Digest challenge once; returns
        the final status, keeps that response in self.last and prints each provisional status
        above 100 as "METHOD CODE"."""
        if new_call:
            self.callid = f"{self.tag}-{method}@lab"
        dest = dest or self.proxy
        self.sock.sendto(self.request(method, uri, to, extra, body).encode(), dest)
        challenged = False
        for _ in range(20):
            msg, _ = self.recv()
            m = re.match(r"SIP/2.0 (\d{3})", msg)
            if not m or not re.search(r"(?im)^CSeq:\s*" + str(self.cseq) + r"\s+" + method + r"\s*$",
                                      msg):
                continue  # not an answer to this request (a retransmitted 200 of the INVITE)
            code = int(m.group(1))
            if code < 200:
                if code > 100:
                    print(method, code, flush=True)
                continue
            self.last = msg
            if method == "INVITE":
                # The ACK of a non-2xx final answer: the INVITE's branch and CSeq number, the
                # answer's To (RFC 3261 §17.1.1.3), so nobody retransmits it.
                if code >= 300:
                    self.sock.sendto((f"ACK {uri} SIP/2.0\r\n{self.via}Max-Forwards: 70\r\n"
                                      f"From: <sip:{self.a.user}@{self.a.domain}>;tag={self.tag}\r\n"
                                      f"To: {header(msg, 'To')[0]}\r\nCall-ID: {self.callid}\r\n"
                                      f"CSeq: {self.cseq} ACK\r\nContent-Length: 0\r\n\r\n").encode(),
                                     dest)
            if code not in (401, 407) or challenged:
                return code
            challenged = True
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
            self.sock.sendto(self.request(method, uri, to, extra + auth, body).encode(), dest)
        raise TimeoutError(f"{method}: no final answer")

    def aor(self, user):
        """sip:USER@our domain, or sip:USER as given when it names a domain (a partner's user)."""
        return f"sip:{user}" if "@" in user else f"sip:{user}@{self.a.domain}"

    def call(self, callee):
        """INVITE, ACK along the recorded route set, wait for stdin, BYE."""
        to = self.aor(callee)
        code = self.transact("INVITE", to, to, "Content-Type: application/sdp\r\n", self.sdp(1))
        print("INVITE", code, flush=True)
        if code != 200:
            return
        ok = self.last
        # The dialog: the callee's tag and Contact (the remote target), and the route set, the
        # Record-Route of the 200 in reverse (RFC 3261 §12.1.2).
        to_hdr = header(ok, "To")[0]
        target = re.search(r"<([^>]+)>", header(ok, "Contact")[0]).group(1)
        rr = [r.strip() for h in header(ok, "Record-Route") for r in h.split(",")][::-1]
        print("ROUTE", " ".join(rr), flush=True)
        routes = "".join(f"Route: {r}\r\n" for r in rr)
        # Loose routing: the request goes to the first Route entry's host and port.
        first = re.match(r"<sip:(?:[^@>]*@)?([^;:>]+)(?::(\d+))?", rr[0]) if rr else None
        dest = (first.group(1), int(first.group(2) or 5060)) if first else self.proxy
        # The ACK of a 2xx is a request of its own, with the INVITE's CSeq number.
        ack = self.request("ACK", target, to_hdr, routes, cseq=self.cseq)
        self.sock.sendto(ack.encode(), dest)
        print("ACK sent", flush=True)
        print("IN CALL", flush=True)
        sys.stdin.readline()  # the test's media runs now; a line or EOF ends the call
        code = self.transact("BYE", target, to_hdr, routes, dest=dest, new_call=False)
        print("BYE", code, flush=True)

    def sdp(self, session):
        """A placeholder offer/answer: the call's media goes through the relay (av-probe)."""
        return (f"v=0\r\no=- {session} {session} IN IP4 {self.a.local}\r\ns=call\r\n"
                f"c=IN IP4 {self.a.local}\r\nt=0 0\r\nm=audio 9 RTP/SAVP 0\r\n")

    def reply(self, req, peer, code, phrase, extra="", body=""):
        """Answers req with its Via, From, Call-ID, CSeq and Record-Route, our tag on the To."""
        head = req.partition("\r\n\r\n")[0].split("\r\n")[1:]
        keep = [l for l in head if re.match(r"(?i)(via|from|call-id|cseq|record-route):", l)]
        to = [l for l in head if re.match(r"(?i)to:", l)][0]
        if ";tag=" not in to:
            to += f";tag={self.tag}"
        msg = (f"SIP/2.0 {code} {phrase}\r\n" + "\r\n".join(keep) + f"\r\n{to}\r\n{extra}"
               f"Content-Length: {len(body.encode())}\r\n\r\n{body}")
        self.sock.sendto(msg.encode(), peer)

    def wait_request(self, method):
        while True:
            msg, peer = self.recv()
            if msg.startswith(method + " "):
                return msg, peer

    def answer(self):
        """Waits for an INVITE, answers 180 and 200, waits for the ACK and the BYE."""
        inv, peer = self.wait_request("INVITE")
        print("INVITE from", header(inv, "From")[0], flush=True)
        self.reply(inv, peer, 180, "Ringing")
        contact = f"Contact: <sip:{self.a.user}@{self.a.local}:{self.port}>\r\n"
        ok = (contact + "Content-Type: application/sdp\r\n", self.sdp(2))
        self.reply(inv, peer, 200, "OK", *ok)
        while True:
            # The 200 is retransmitted until the ACK comes (RFC 3261 §13.3.1.4).
            self.sock.settimeout(0.5)
            try:
                msg, p = self.sock.recvfrom(65535)
                msg = msg.decode(errors="replace")
            except socket.timeout:
                if time.time() > self.deadline:
                    raise TimeoutError("no ACK")
                self.reply(inv, peer, 200, "OK", *ok)
                continue
            if msg.startswith("ACK "):
                print("ACK via", " ".join(via_hosts(msg)), flush=True)
                break
        bye, peer = self.wait_request("BYE")
        self.reply(bye, peer, 200, "OK")
        print("BYE via", " ".join(via_hosts(bye)), flush=True)

    def wait_message(self):
        msg, peer = self.wait_request("MESSAGE")
        self.reply(msg, peer, 200, "OK")
        return msg.partition("\r\n\r\n")[2]


def header(msg, name):
    """The values of every header line called name (no compact forms, no folding)."""
    head = msg.partition("\r\n\r\n")[0]
    return [v.strip() for v in re.findall(r"(?im)^" + name + r":(.*)$", head)]


def via_hosts(msg):
    """The sent-by hosts of the Via lines, topmost (the last hop) first."""
    return [re.match(r"SIP/2.0/\w+\s+([^;:\s]+)", v).group(1)
            for h in header(msg, "Via") for v in h.split(",")]


def main():
    ap = argparse.ArgumentParser()
    for k in ("proxy", "user", "password", "domain", "local"):
        ap.add_argument("--" + k, required=True)
    ap.add_argument("--send-to")
    ap.add_argument("--text", default="hello")
    ap.add_argument("--wait-message", action="store_true")
    ap.add_argument("--call")
    ap.add_argument("--answer", action="store_true")
    ap.add_argument("--timeout", type=float, default=10)
    a = ap.parse_args()
    ua = UA(a)
    aor = f"sip:{a.user}@{a.domain}"
    print("REGISTER", ua.transact("REGISTER", f"sip:{a.domain}", aor, "Expires: 300\r\n"), flush=True)
    if a.send_to:
        to = ua.aor(a.send_to)
        print("MESSAGE", ua.transact("MESSAGE", to, to, "Content-Type: text/plain\r\n", a.text), flush=True)
    if a.wait_message:
        print("GOT", ua.wait_message(), flush=True)
    if a.call:
        ua.call(a.call)
    if a.answer:
        ua.answer()


if __name__ == "__main__":
    try:
        main()
    except (TimeoutError, socket.timeout) as e:
        print("TIMEOUT", e, flush=True)
        sys.exit(1)
