"""SIP phones for whole-call tests: a user agent on one transport (UDP, TCP, TLS, WSS, or mutual
TLS as a federated partner) that registers, calls, answers, re-INVITEs, CANCELs and hangs up,
keeping a dialog's route set and remote target as RFC 3261 §12 says, and every message it
received. It answers a 401/407 challenge with the user's password when one comes."""
import re
import socket
import time
import uuid

from siplab import (DIR_IP, EXT_IP, USERS, StreamUA, UdpUA, WsUA, digest, header,
                    parse_status)


def values(msg, name):
    """All comma-separated values of a header (Record-Route, Route)."""
    out = []
    for h in header(msg, name):
        out += [v.strip() for v in re.split(r",(?![^<]*>)", h) if v.strip()]
    return out


def uri_of(value):
    m = re.search(r"<([^>]*)>", value)
    return m.group(1) if m else value.split(";")[0]


def tag_of(value):
    m = re.search(r"tag=([^;>\s]+)", value)
    return m.group(1) if m else None


class Phone:
    """tp: udp, tcp, tls, wss (through the edge's external side), mtls (a partner's server,
    client certificate `partner`), or inside (UDP straight to the Director)."""

    def __init__(self, lab, tp, user, ip, domain="example.com", password=None):
        self.lab, self.tp, self.user, self.domain = lab, tp, user, domain
        self.password = password or USERS.get(user, "")
        if tp in ("udp", "inside"):
            self.ua = UdpUA(ip, domain=domain)
            self.to = (DIR_IP, lab.dir_sip) if tp == "inside" else (EXT_IP, lab.ext_port)
        elif tp == "tcp":
            self.ua = StreamUA(EXT_IP, lab.ext_port, ip=ip)
        elif tp == "tls":
            self.ua = StreamUA(EXT_IP, lab.ext_tls, tls=True, ip=ip)
        elif tp == "mtls":
            self.ua = StreamUA(EXT_IP, lab.ext_mtls, tls=True, cert="partner", ip=ip)
        else:
            self.ua = WsUA(EXT_IP, lab.ext_wss, tls=True, ip=ip)
        self.ua.auto_auth = False  # a Phone answers challenges itself, keeping its dialog
        self.ip, self.port = self.ua.ip, self.ua.port
        self.vtp = {"udp": "UDP", "inside": "UDP", "tcp": "TCP", "tls": "TLS", "mtls": "TLS",
                    "wss": "WSS"}[tp]
        self.seen = []     # every message received
        self.pending = []  # received but not yet asked for
        self.dlg = None

    @property
    def external(self):
        return self.tp != "inside"

    def close(self):
        self.ua.close()

    # ---- transport ----

    def send(self, text):
        if self.tp in ("udp", "inside"):
            self.ua.send(text, self.to)
        else:
            self.ua.send(text)

    def recv(self, want=None, timeout=8.0):
        """The next message matching want(msg) (any if None), keeping others for later."""
        for i, msg in enumerate(self.pending):
            if want is None or want(msg):
                return self.pending.pop(i)
        end = time.time() + timeout
        while time.time() < end:
            msg = self.ua.recv(timeout=max(0.05, end - time.time()), skip_provisional=False)
            if msg is None:
                return None
            self.seen.append(msg)
            if want is None or want(msg):
                return msg
            self.pending.append(msg)
        return None

    def recv_request(self, method, timeout=8.0):
        return self.recv(lambda m: m.startswith(method + " "), timeout)

    def recv_response(self, method, final=True, timeout=8.0):
        def ok(m):
            st = parse_status(m)
            return st is not None and (st >= 200 or not final) and \
                header(m, "CSeq") and header(m, "CSeq")[0].split()[-1] == method
        return self.recv(ok, timeout)

    # ---- building ----

    def contact(self):
        tpp = {"udp": "", "inside": "", "tcp": ";transport=tcp", "tls": ";transport=tls",
               "mtls": ";transport=tls", "wss": ";transport=ws"}[self.tp]
        if self.tp == "wss":  # as browsers (JsSIP) do: a made-up host; only the flow reaches it
            return f"<sip:{self.user}@df7jal23ls0d.invalid{tpp}>"
        return f"<sip:{self.user}@{self.ip}:{self.port}{tpp}>"

    def via(self, branch=None):
        return (f"Via: SIP/2.0/{self.vtp} {self.ip}:{self.port};"
                f"branch={branch or 'z9hG4bK' + uuid.uuid4().hex[:16]};rport")

    def build(self, method, ruri, from_, to, call_id, cseq, routes=(), extra="", branch=None,
              body=""):
        lines = [f"{method} {ruri} SIP/2.0", self.via(branch), f"From: {from_}", f"To: {to}",
                 f"Call-ID: {call_id}", f"CSeq: {cseq} {method}", "Max-Forwards: 70"]
        if method not in ("CANCEL", "BYE"):
            lines.append(f"Contact: {self.contact()}")
        if routes:
            lines.append("Route: " + ", ".join(routes))
        if body:
            lines.append("Content-Type: application/sdp")
        text = "\r\n".join(lines) + "\r\n" + extra + f"Content-Length: {len(body)}\r\n\r\n" + body
        return text

    def auth_header(self, chal_msg, method, uri):
        st = parse_status(chal_msg)
        name = "WWW-Authenticate" if st == 401 else "Proxy-Authenticate"
        chals = header(chal_msg, name)
        chal = next((c for c in chals if "MD5" in c), chals[0])
        alg = re.search(r"algorithm=([\w-]+)", chal)
        alg = alg.group(1) if alg else "MD5"
        realm = re.search(r'realm="([^"]+)"', chal).group(1)
        nonce = re.search(r'nonce="([^"]+)"', chal).group(1)
        cn = uuid.uuid4().hex[:8]
        resp = digest(alg, self.user, realm, self.password, method, uri, nonce, "00000001", cn,
                      "auth")
        hname = "Authorization" if st == 401 else "Proxy-Authorization"
        return (f'{hname}: Digest username="{self.user}", realm="{realm}", nonce="{nonce}", '
                f'uri="{uri}", response="{resp}", algorithm={alg}, cnonce="{cn}", qop=auth, '
                f'nc=00000001\r\n')

    # ---- registration ----

    def register(self):
        cid, uri = uuid.uuid4().hex, f"sip:{self.domain}"
        me = f"<sip:{self.user}@{self.domain}>"
        self.send(self.build("REGISTER", uri, me + ";tag=r1", me, cid, 1, extra="Expires: 300\r\n"))
        r = self.recv_response("REGISTER")
        if parse_status(r) in (401, 407):
            self.send(self.build("REGISTER", uri, me + ";tag=r1", me, cid, 2,
                                 extra=self.auth_header(r, "REGISTER", uri) + "Expires: 300\r\n"))
            r = self.recv_response("REGISTER")
        return r

    # ---- calls ----

    def invite(self, callee, domain="example.com"):
        """Sends an INVITE (answering a challenge); returns once it is sent."""
        ruri = f"sip:{callee}@{domain}"
        self.dlg = {"call_id": uuid.uuid4().hex, "tag": uuid.uuid4().hex[:8], "cseq": 1,
                    "local": f"<sip:{self.user}@{self.domain}>",
                    "remote": f"<{ruri}>", "ruri": ruri, "routes": [], "uac": True}
        self.send_invite()

    def send_invite(self, extra=""):
        d = self.dlg
        d["branch"] = "z9hG4bK" + uuid.uuid4().hex[:16]
        d["invite_extra"] = extra
        self.send(self.build("INVITE", d["ruri"], d["local"] + f";tag={d['tag']}", d["remote"],
                             d["call_id"], d["cseq"], extra=extra, branch=d["branch"],
                             body="v=0\r\n"))

    def ack_non2xx(self, resp):
        d = self.dlg
        self.send(self.build("ACK", d["ruri"], d["local"] + f";tag={d['tag']}",
                             header(resp, "To")[0], d["call_id"], d["cseq"], branch=d["branch"]))

    def final_to_invite(self, timeout=8.0):
        """The INVITE's final response, answering a 401/407 once (the ACK and a new INVITE)."""
        r = self.recv_response("INVITE", timeout=timeout)
        if parse_status(r) in (401, 407):
            self.ack_non2xx(r)
            self.dlg["cseq"] += 1
            self.send_invite(self.auth_header(r, "INVITE", self.dlg["ruri"]))
            r = self.recv_response("INVITE", timeout=timeout)
        return r

    def provisional_to_invite(self, timeout=8.0):
        """Waits for a 18x (answering a challenge on the way)."""
        while True:
            r = self.recv(lambda m: parse_status(m) is not None and parse_status(m) != 100 and
                          header(m, "CSeq")[0].endswith("INVITE"), timeout)
            if r is None or parse_status(r) < 200:
                return r
            if parse_status(r) in (401, 407):
                self.ack_non2xx(r)
                self.dlg["cseq"] += 1
                self.send_invite(self.auth_header(r, "INVITE", self.dlg["ruri"]))
                continue
            return r

    def established(self, ok):
        """A UAC's dialog from the 2xx (RFC 3261 §12.1.2), then the ACK."""
        d = self.dlg
        d["routes"] = list(reversed(values(ok, "Record-Route")))
        d["target"] = uri_of(header(ok, "Contact")[0])
        d["remote"] = header(ok, "To")[0]
        self.ack()

    def ack(self):
        d = self.dlg
        self.send(self.build("ACK", d["target"], d["local"] + f";tag={d['tag']}", d["remote"],
                             d["call_id"], d["cseq"], d["routes"]))

    def cancel(self):
        d = self.dlg
        self.send(self.build("CANCEL", d["ruri"], d["local"] + f";tag={d['tag']}", d["remote"],
                             d["call_id"], d["cseq"], branch=d["branch"]))

    def answer(self, req, status, phrase, dialog=True):
        """Responds to req; a 2xx/1xx to an INVITE from outside the dialog sets it up as UAS."""
        if dialog and self.dlg is None and req.startswith("INVITE "):
            self.dlg = {"call_id": header(req, "Call-ID")[0], "tag": uuid.uuid4().hex[:8],
                        "cseq": 100, "local": header(req, "To")[0],
                        "remote": header(req, "From")[0],
                        "routes": values(req, "Record-Route"),
                        "target": uri_of(header(req, "Contact")[0]), "uac": False}
        out = [f"SIP/2.0 {status} {phrase}"]
        for name in ("Via", "Record-Route", "From", "To", "Call-ID", "CSeq"):
            for v in header(req, name):
                if name == "To" and "tag=" not in v and self.dlg:
                    v += f";tag={self.dlg['tag']}"
                out.append(f"{name}: {v}")
        if req.startswith("INVITE ") and status < 300:
            out.append(f"Contact: {self.contact()}")
        self.send("\r\n".join(out) + "\r\nContent-Length: 0\r\n\r\n")

    def in_dialog(self, method):
        """Sends a request inside the dialog (re-INVITE, BYE); returns its CSeq."""
        d = self.dlg
        d["cseq"] += 1
        local = d["local"] if "tag=" in d["local"] else d["local"] + f";tag={d['tag']}"
        self.send(self.build(method, d["target"], local, d["remote"], d["call_id"], d["cseq"],
                             d["routes"], body="v=0\r\n" if method == "INVITE" else ""))
        return d["cseq"]
