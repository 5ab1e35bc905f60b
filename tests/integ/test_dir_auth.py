"""Authentication at the Director, attacked from outside through the access edge (issue 12,
items 3-6): a captured Digest answer cannot be replayed (nonce-count, stale=true); password
guessing is throttled per user however many addresses it comes from, without locking the real
user out; existing and non-existent users answer alike (svwar finds nobody); and remote users'
out-of-dialog requests are challenged with 407 (federated partners are not)."""
import os
import re
import socket
import subprocess
import time
import uuid

from harness import SuiteTest, free_port, wait_for
from siplab import (DIR_IP, EXT_IP, USERS, Lab, StreamUA, UdpUA, digest, header,
                    parse_status)

MD5 = ("MD5",)  # sipvicious answers MD5 challenges only


def challenge_of(resp, name="WWW-Authenticate"):
    chal = header(resp, name)[0]
    return (re.search(r'realm="([^"]+)"', chal).group(1),
            re.search(r'nonce="([^"]+)"', chal).group(1),
            re.search(r"algorithm=([\w-]+)", chal).group(1))


def authorization(user, pw, method, uri, resp, name="Authorization", nc="00000001",
                  cnonce="c0ffee"):
    realm, nonce, alg = challenge_of(resp, "Proxy-Authenticate" if name.startswith("Proxy")
                                     else "WWW-Authenticate")
    r = digest(alg, user, realm, pw, method, uri, nonce, nc, cnonce, "auth")
    return (f'{name}: Digest username="{user}", realm="{realm}", nonce="{nonce}", '
            f'uri="{uri}", response="{r}", algorithm={alg}, cnonce="{cnonce}", qop=auth, '
            f'nc={nc}\r\n')


class DirectorAuth(SuiteTest):
    def edge(self, lab):
        return (EXT_IP, lab.ext_port)

    def ua(self, ip, **kw):
        ua = UdpUA(ip, **kw)
        ua.auto_auth = False
        self.addCleanup(ua.close)
        return ua

    def register_once(self, lab, ua, user, pw, expires=300):
        """REGISTER, answer the challenge; returns (final response, Authorization line sent)."""
        cid = uuid.uuid4().hex
        ua.request("REGISTER", "sip:example.com", self.edge(lab), user=user, call_id=cid,
                   headers=f"Expires: {expires}\r\n")
        ch = ua.recv()
        self.assertEqual(parse_status(ch), 401, ch)
        auth = authorization(user, pw, "REGISTER", "sip:example.com", ch)
        ua.request("REGISTER", "sip:example.com", self.edge(lab), user=user, call_id=cid, cseq=2,
                   headers=auth + f"Expires: {expires}\r\n")
        return ua.recv(), auth

    # ---- item 3: replay ----

    def test_replayed_register_authorization_gets_401_stale_and_keeps_binding(self):
        lab = Lab(self)
        victim = self.ua("127.0.0.4")
        r, auth = self.register_once(lab, victim, "alice", USERS["alice"])
        self.assertEqual(parse_status(r), 200, r)
        # The attacker re-sends the captured Authorization from elsewhere, new Call-ID and Contact.
        thief = self.ua("127.0.0.9")
        thief.request("REGISTER", "sip:example.com", self.edge(lab), user="alice",
                      headers=auth + "Expires: 300\r\n")
        r = thief.recv()
        self.assertEqual(parse_status(r), 401, r)
        self.assertIn("stale=true", " ".join(header(r, "WWW-Authenticate")), r)
        self.assertEqual(lab.dir_metric("director_sip_registrations_total"), 1)
        self.assertEqual(lab.dir_metric("director_sip_auth_stale_total"), 1)
        # Requests for alice still reach the victim's binding, not the thief.
        sender = self.ua("127.0.0.5")
        sender.request("MESSAGE", "sip:alice@example.com", (DIR_IP, lab.dir_sip), user="bob",
                       to_uri="sip:alice@example.com", body="hi")
        got = victim.recv(timeout=3, skip_provisional=False)
        self.assertIsNotNone(got, "the MESSAGE did not reach the registered victim")
        self.assertTrue(got.startswith("MESSAGE "), got)
        self.assertIsNone(thief.recv(timeout=0.5))
        # The owner may go on with the same nonce and the next nc (RFC 7616 §3.4).
        auth2 = auth.replace("nc=00000001", "nc=00000002")
        realm, nonce, alg = re.search(r'realm="([^"]+)"', auth).group(1), \
            re.search(r'nonce="([^"]+)"', auth).group(1), re.search(r"algorithm=([\w-]+)", auth).group(1)
        good = digest(alg, "alice", realm, USERS["alice"], "REGISTER", "sip:example.com", nonce,
                      "00000002", "c0ffee", "auth")
        auth2 = re.sub(r'response="[0-9a-f]+"', f'response="{good}"', auth2)
        victim.request("REGISTER", "sip:example.com", self.edge(lab), user="alice",
                       headers=auth2 + "Expires: 300\r\n")
        self.assertEqual(parse_status(victim.recv()), 200)

    def test_replayed_proxy_authorization_gets_407_stale(self):
        lab = Lab(self)
        ua = StreamUA(EXT_IP, lab.ext_port, ip="127.0.0.4")
        ua.auto_auth = False
        self.addCleanup(ua.close)
        ua.request("MESSAGE", "sip:bob@example.com", to_uri="sip:bob@example.com", body="x")
        ch = ua.recv()
        self.assertEqual(parse_status(ch), 407, ch)
        pa = authorization("alice", USERS["alice"], "MESSAGE", "sip:bob@example.com", ch,
                           name="Proxy-Authorization")
        ua.request("MESSAGE", "sip:bob@example.com", to_uri="sip:bob@example.com", body="x",
                   headers=pa)
        self.assertEqual(parse_status(ua.recv()), 480)  # authenticated; bob not registered
        ua.request("MESSAGE", "sip:bob@example.com", to_uri="sip:bob@example.com", body="x",
                   headers=pa)
        r = ua.recv()
        self.assertEqual(parse_status(r), 407, r)
        self.assertIn("stale=true", header(r, "Proxy-Authenticate")[0])

    # ---- item 4: guessing ----

    def guess(self, lab, ua, user, pw):
        r, _ = self.register_once(lab, ua, user, pw)
        return r

    def test_guessing_from_many_addresses_is_throttled_and_real_user_keeps_access(self):
        lab = Lab(self)
        home = self.ua("127.0.0.4")
        self.assertEqual(parse_status(self.guess(lab, home, "alice", USERS["alice"])), 200)
        # 30 wrong passwords spread over 15 addresses, then the right one from a 16th.
        statuses = []
        for i in range(30):
            ua = self.ua(f"127.0.1.{10 + i // 2}")
            statuses.append(parse_status(self.guess(lab, ua, "alice", f"guess{i}")))
            ua.close()
        self.assertEqual(statuses[:10], [401] * 10)
        self.assertEqual(statuses[10:], [403] * 20)
        right = self.guess(lab, self.ua("127.0.1.99"), "alice", USERS["alice"])
        self.assertEqual(parse_status(right), 403, right)
        self.assertTrue(header(right, "Retry-After"), right)
        self.assertEqual(lab.dir_metric("director_sip_auth_failures_total"), 10)
        self.assertEqual(lab.dir_metric("director_sip_auth_throttled_total"), 21)
        self.assertEqual(lab.dir_metric("director_sip_auth_throttle_started_total"), 1)
        self.assertIn("authentication for user alice throttled", lab.director.log())
        # Not locked out: from where she registered before, alice still gets in.
        self.assertEqual(parse_status(self.guess(lab, home, "alice", USERS["alice"])), 200)
        # A name that does not exist is throttled the same way (no way to tell them apart).
        for i in range(11):
            last = self.guess(lab, self.ua(f"127.0.2.{10 + i}"), "nosuchuser", f"g{i}")
        self.assertEqual(parse_status(last), 403)

    def test_svcrack_does_not_find_the_password(self):
        lab = Lab(self, algorithms=MD5)
        home = self.ua("127.0.0.4")
        self.assertEqual(parse_status(self.guess(lab, home, "alice", USERS["alice"])), 200)
        words = os.path.join(self.tmp, "words.txt")
        with open(words, "w") as f:  # 20 words, the real password last
            f.write("\n".join([f"password{i}" for i in range(19)] + [USERS["alice"]]) + "\n")
        t0 = time.time()
        p = subprocess.run(["timeout", "60", "svcrack", "-u", "alice", "-d", words,
                            "--domain", "example.com", "-x", "127.0.0.8",  # (-b is ignored by 0.3.3)
                            "-p", str(lab.ext_port), "--maximumtime", "4", EXT_IP],
                           capture_output=True, text=True, timeout=90)
        took = time.time() - t0
        out = p.stdout + p.stderr
        self.assertNotIn(USERS["alice"], out, out[-2000:])
        self.assertNotIn("The password for", out, out[-2000:])
        checked = lab.dir_metric("director_sip_auth_failures_total")
        refused = lab.dir_metric("director_sip_auth_throttled_total")
        self.assertEqual(checked + refused, 20, out[-2000:])  # every word was tried
        self.assertLessEqual(checked, 10)
        print(f"\nsvcrack: 20 words in {took:.1f} s ({20 / took * 3600:.0f}/h offered), "
              f"{checked:.0f} checked, {refused:.0f} refused unchecked", flush=True)
        self.assertEqual(parse_status(self.guess(lab, home, "alice", USERS["alice"])), 200)

    # ---- item 5: enumeration ----

    def answers(self, lab, ua, method, user):
        ua.request(method, f"sip:{user}@example.com", self.edge(lab), user="alice",
                   to_uri=f"sip:{user}@example.com",
                   headers="Event: presence\r\n" if method == "SUBSCRIBE" else "")
        r = ua.recv(timeout=3)
        self.assertIsNotNone(r, f"{method} to {user}: no answer")
        head = r.split("\r\n\r\n")[0].split("\r\n")
        names = sorted({ln.partition(":")[0].lower() for ln in head[1:]})
        return head[0], names

    def test_existing_and_unknown_users_answer_alike(self):
        lab = Lab(self)  # alice and bob exist, neither registered
        for auto in (False, True):  # an outsider, and a remote user who authenticates
            ua = UdpUA("127.0.0.4")
            ua.auto_auth = auto
            self.addCleanup(ua.close)
            for method in ("OPTIONS", "MESSAGE", "SUBSCRIBE", "INVITE"):
                a = self.answers(lab, ua, method, "bob")
                b = self.answers(lab, ua, method, "nosuchuser")
                self.assertEqual(a, b, f"{method}: bob and nosuchuser answered differently")
            ua.close()

    def test_svwar_finds_no_user(self):
        lab = Lab(self, algorithms=MD5)
        home = self.ua("127.0.0.4")  # alice registered, bob not: both must stay hidden
        self.assertEqual(parse_status(self.guess(lab, home, "alice", USERS["alice"])), 200)
        names = os.path.join(self.tmp, "names.txt")
        with open(names, "w") as f:
            f.write("\n".join(["admin", "alice", "bob", "carol", "100", "1000"]) + "\n")
        for method in ("REGISTER", "OPTIONS", "INVITE"):
            p = subprocess.run(["timeout", "40", "svwar", "-d", names, "-m", method,
                                "--domain", "example.com", "-x", "127.0.0.8",  # (-b is ignored by 0.3.3)
                                "-p", str(lab.ext_port), "--maximumtime", "4", EXT_IP],
                               capture_output=True, text=True, timeout=60)
            out = p.stdout + p.stderr
            for user in ("alice", "bob"):
                self.assertNotRegex(out, rf"\|\s*{user}\s*\|", f"svwar -m {method} found {user}:\n{out[-2000:]}")
                self.assertNotIn(f"extension '{user}' exists", out, out[-2000:])

    # ---- item 6: remote users are challenged ----

    def test_remote_message_is_challenged_and_delivered_only_when_authenticated(self):
        lab = Lab(self)
        bob = UdpUA("127.0.0.5")
        self.addCleanup(bob.close)
        r, _ = bob.register((DIR_IP, lab.dir_sip), "bob", USERS["bob"])
        self.assertEqual(parse_status(r), 200, r)
        out = self.ua("127.0.0.4")
        out.request("MESSAGE", "sip:bob@example.com", self.edge(lab), user="mallory",
                    to_uri="sip:bob@example.com", body="spoofed")
        r = out.recv()
        self.assertEqual(parse_status(r), 407, r)
        chal = header(r, "Proxy-Authenticate")
        self.assertTrue(chal and 'qop="auth"' in chal[0], r)
        self.assertIsNone(bob.recv(timeout=0.5), "an unauthenticated MESSAGE reached bob")
        # A To tag does not make a request for bob's address of record an in-dialog one.
        out.send("\r\n".join([
            "MESSAGE sip:bob@example.com SIP/2.0",
            f"Via: SIP/2.0/UDP {out.ip}:{out.port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
            "From: <sip:mallory@example.com>;tag=m1", "To: <sip:bob@example.com>;tag=forged",
            f"Call-ID: {uuid.uuid4().hex}", "CSeq: 7 MESSAGE", "Max-Forwards: 70",
            "Content-Length: 7", "", "spoofed"]), self.edge(lab))
        r = out.recv()
        self.assertEqual(parse_status(r), 407, r)
        self.assertIsNone(bob.recv(timeout=0.5), "a MESSAGE with a forged To tag reached bob")
        # With alice's credentials it goes through; the credentials do not.
        alice = UdpUA("127.0.0.4", port=0)
        self.addCleanup(alice.close)
        alice.request("MESSAGE", "sip:bob@example.com", self.edge(lab), user="alice",
                      to_uri="sip:bob@example.com", body="hello")
        alice.recv(timeout=1)  # answers the 407 (bob does not answer the MESSAGE)
        got = bob.recv(timeout=3, skip_provisional=False)
        self.assertIsNotNone(got, "authenticated MESSAGE did not arrive")
        self.assertTrue(got.startswith("MESSAGE "), got)
        self.assertEqual(header(got, "Proxy-Authorization"), [], got)
        self.assertIn("<sip:alice@example.com>", header(got, "From")[0])
        # A From outside our domain cannot authenticate at all.
        evil = self.ua("127.0.0.4", domain="evil.example")
        evil.request("MESSAGE", "sip:bob@example.com", self.edge(lab), user="alice",
                     to_uri="sip:bob@example.com", body="x")
        r = evil.recv()
        self.assertEqual(parse_status(r), 403, r)
        self.assertEqual(lab.dir_metric("director_sip_proxy_authenticated_total"), 1)

    def test_remote_invite_challenged_partner_not(self):
        lab = Lab(self, extra_edge="federation: {allow: [partner.lab], discovery: false}")
        out = StreamUA(EXT_IP, lab.ext_port, ip="127.0.0.4", user="mallory")
        out.auto_auth = False
        self.addCleanup(out.close)
        for method in ("INVITE", "SUBSCRIBE", "OPTIONS"):
            out.request(method, "sip:bob@example.com", to_uri="sip:bob@example.com",
                        headers="Event: presence\r\n" if method == "SUBSCRIBE" else "")
            r = out.recv()
            self.assertEqual(parse_status(r), 407, f"{method}: {r}")
        p = StreamUA(EXT_IP, lab.ext_mtls, tls=True, cert="partner", user="carol",
                     domain="partner.lab")
        p.auto_auth = False
        self.addCleanup(p.close)
        p.request("MESSAGE", "sip:bob@example.com", to_uri="sip:bob@example.com", body="x")
        self.assertEqual(parse_status(p.recv()), 480)  # reached the Director's lookup
