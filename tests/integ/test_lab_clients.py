"""Real clients nobody here wrote, end to end through the edges in the network-namespace lab
(deploy/lab/; the example scripts they run are in deploy/lab/clients/). Each client asserts
from its own counters, and each test skips with the reason printed when its package is missing.
Root only, like every lab test.

- aiortc (Debian python3-aiortc, a third TURN client besides coturn's and ours): two WebRTC
  peers, the external user behind the NAT and the internal user, may use only relayed
  candidates from the Director's credentials; the audio track (Opus over DTLS-SRTP) and the
  data channel flow through av-edge over UDP, and again with the external peer on TURN over
  TLS and the internal one on TURN over TCP.
- Kamailio 5.6 as partner.example's edge on the internet host, over mutual TLS, each side
  finding the other by DNS SRV (_sipfederationtls._tcp, dnsmasq as the internet's DNS): sipp
  users behind Kamailio and the Director's users exchange MESSAGEs and calls both ways; a
  partner not on access-edge's allow list (rogue.example, another Kamailio) is refused, as its
  Kamailio sees it.
- baresip (Debian baresip-core): the external user behind the NAT registers over TLS through
  access-edge, sends the internal user (another baresip, registered at the Director) a MESSAGE
  and calls it; SRTP (SDES) relayed by the av-edges (baresip's TURN media mode: its ICE, libre
  1.x, lost the call's audio one way in one run of three); both ends count the RTP both ways.
- Headless Chromium (Debian chromium, driven by playwright-core from npm) with a page of ours
  using JsSIP: two browsers, one behind the NAT and one on the internet host, register over WSS
  through access-edge and call with fake camera and microphone and relay-only ICE, with the
  Director's TURN credentials; getStats() shows RTP both ways, rising, loss under 1%, and the
  av-edges' relayed bytes rise by about what the browsers counted. Then again with UDP blocked,
  over TURN over TLS on 443."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest

import test_lab_topology as lab
from test_lab_topology import PLAN

CLIENTS = os.path.join(lab.LAB, "clients")
# Debian's interpreter: python3-aiortc is installed for it, not for a python3 earlier on PATH.
DEBIAN_PY = "/usr/bin/python3"


# npm packages of the browser test, installed by `make lab-clients` (deploy/build.mk).
NODE_DIR = os.path.join(os.environ.get("SUITE_BUILD", os.path.join(lab.ROOT, "build")), "lab-clients")


def skip(case, reason):
    print(f"\nskip: {reason}", flush=True)
    case.skipTest(reason)


class LabClients(lab.LabWithDaemons):
    # Two av-edges: relay-only peers on both ends need a relay each, and av-edge does not let an
    # external allocation reach its own relay addresses (the enterprise rule), so the external
    # user relays on av-edge-1 and the internal user on av-edge-2.
    LAB_AV = 2

    @classmethod
    def down(cls):
        r = super().down()
        for p in cls.procs:  # down.sh ended them; reap them (a zombie still has its /proc entry)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return r

    def relayed_bytes(self, insts=("av-edge-1", "av-edge-2")):
        """The av-edges' relayed_bytes_total (both directions) from /metrics, asked from inside."""
        total = 0.0
        for inst in insts:
            addr, port = self.admin_of(inst)
            rc, out, err = self.curl("iuser", f"http://{addr}:{port}/metrics")
            self.assertEqual(rc, 0, err)
            total += sum(float(v) for v in re.findall(r"^av_edge_relayed_bytes_total\{[^}]*\} (\S+)$", out, re.M))
        return total

    # ---- aiortc ----

    def aiortc_ready(self):
        if not os.path.exists(DEBIAN_PY) or subprocess.run(
                [DEBIAN_PY, "-c", "import aiortc"], capture_output=True).returncode != 0:
            skip(self, "python3-aiortc is missing (deploy/install-deps.sh, lab group)")
        self.need("director", "av-edge-1", "av-edge-2")

    def aiortc_call(self, ext_uri, int_uri, seconds=3):
        """The external user (offerer, behind the NAT) and the internal user (answerer) as aiortc
        peers through av-edge; the test carries their one line of signalling each. Returns
        (external RESULT fields, internal RESULT fields, the relayed bytes av-edge counted)."""
        creds = self.call_credentials()
        for uri, loc in ((ext_uri, "internet"), (int_uri, "intranet")):
            self.assertIn(uri, creds[loc]["uris"], f"the Director does not offer {uri} to the {loc} user")
        before = self.relayed_bytes()

        def peer(host, uri, c, *extra):
            p = subprocess.Popen(["ip", "netns", "exec", self.ns(host), DEBIAN_PY,
                                  os.path.join(CLIENTS, "aiortc_peer.py"), "--turn", uri,
                                  "--username", c["username"], "--password", c["password"],
                                  "--ca", os.path.join(self.tmp, "certs", "ca.crt"),
                                  "--seconds", str(seconds)] + list(extra),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
            self.mine.append(p)
            p.seen = ""
            return p

        offerer = peer("user", ext_uri, creds["internet"], "--offer")
        answerer = peer("iuser", int_uri, creds["intranet"])
        offer = self.read_until(offerer, "OFFER ", timeout=20)
        self.assertTrue(offer, f"no offer from the external peer:\n{offerer.seen}")
        answerer.stdin.write(offer + "\n")
        answerer.stdin.close()
        answer = self.read_until(answerer, "ANSWER ", timeout=20)
        self.assertTrue(answer, f"no answer from the internal peer:\n{answerer.seen}")
        offerer.stdin.write(answer + "\n")
        offerer.stdin.close()
        results = []
        for p in (offerer, answerer):
            line = self.read_until(p, "RESULT ", timeout=seconds + 40)
            self.assertTrue(line, "the peer did not finish:\n" + re.sub(r"^(OFFER|ANSWER) .*$", r"\1 ...", p.seen, flags=re.M)
                            + self.log_tail("av-edge-1") + self.log_tail("av-edge-2"))
            r = dict(kv.split("=", 1) for kv in line.split()[1:])
            r["output"] = re.sub(r"^(OFFER|ANSWER) .*$", r"\1 ...", p.seen, flags=re.M)
            results.append(r)
        for p in (offerer, answerer):
            p.wait(timeout=10)
        relayed = self.relayed_bytes() - before
        print(f"\naiortc {ext_uri} / {int_uri}: relayed {relayed:.0f} bytes; " + "; ".join(
            " ".join(f"{k}={v}" for k, v in r.items() if k != "output") for r in results), flush=True)
        return results[0], results[1], relayed

    def assert_aiortc_media(self, ext, inside, relayed):
        for who, r in (("external", ext), ("internal", inside)):
            with self.subTest(peer=who):
                self.assertEqual(r["pair"], "relay/relay", f"{who} peer's ICE pair: {r}")
                sent, got = int(r["rtp_sent"]), int(r["rtp_received"])
                self.assertGreater(sent, 50, f"{who} peer sent too little audio: {r}")
                self.assertGreater(got, 50, f"{who} peer received too little audio: {r}")
        # Each side received about what the other sent (what was in flight at the end aside).
        self.assertGreaterEqual(int(inside["rtp_received"]), int(ext["rtp_sent"]) * 0.9, (ext, inside))
        self.assertGreaterEqual(int(ext["rtp_received"]), int(inside["rtp_sent"]) * 0.9, (ext, inside))
        sent = int(ext["dc_sent"])
        self.assertGreater(sent, 50, ext)
        self.assertGreaterEqual(int(inside["dc_received"]), sent * 0.95, (ext, inside))
        self.assertGreaterEqual(int(ext["dc_received"]), sent * 0.9, "echoes back through the relay")
        # Everything went through the relays: each byte the peers received was counted there twice
        # (to the peer by one edge, to the client by the other), and little else was.
        got = int(ext["bytes_received"]) + int(inside["bytes_received"])
        self.assertGreaterEqual(relayed, got, f"the av-edges relayed {relayed} bytes, the peers received {got}")
        self.assertLess(relayed, 3 * got, f"the av-edges relayed {relayed} bytes, the peers received {got}")

    def test_aiortc_peers_relay_only_through_av_edge_over_udp(self):
        self.aiortc_ready()
        ext, inside, relayed = self.aiortc_call(f"turn:{PLAN['AV1_EXT']}:3478?transport=udp",
                                                f"turn:{PLAN['AV2_INT']}:3478?transport=udp")
        self.assert_aiortc_media(ext, inside, relayed)

    def test_aiortc_peers_relay_only_through_av_edge_over_tls_and_tcp(self):
        self.aiortc_ready()
        ext, inside, relayed = self.aiortc_call(f"turns:{PLAN['AV1_EXT']}:5349?transport=tcp",
                                                f"turn:{PLAN['AV2_INT']}:3478?transport=tcp")
        self.assert_aiortc_media(ext, inside, relayed)

    # ---- Kamailio as a federated partner ----

    def federation(self):
        """Once per class: the partner certificates, dnsmasq on the internet host serving both
        domains' _sipfederationtls._tcp records, access-edge restarted with partner.example on
        its allow list and that DNS server, and two Kamailio edges on the internet host:
        partner.example (allowed) and rogue.example (not). Returns {domain: (ip, udp port)}."""
        for tool, pkg in (("kamailio", "kamailio and kamailio-tls-modules"), ("sipp", "sip-tester"),
                          ("dnsmasq", "dnsmasq-base")):
            if not shutil.which(tool):
                skip(self, f"{tool} is missing ({pkg}: deploy/install-deps.sh)")
        if not os.path.exists("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so"):
            skip(self, "Kamailio's TLS module is missing (kamailio-tls-modules: deploy/install-deps.sh)")
        self.need("director", "access-edge")
        cls = type(self)
        inet = PLAN["INET"]
        if getattr(cls, "edge_for", None) != "partners":
            # access-edge again, federating with partner.example, finding partners in the DNS below.
            self.restart("access-edge", lambda text: re.subn(
                r"(?m)^federation:.*$", "federation: {allow: [partner.example], block: [], "
                f"discovery: false, dns_servers: \"{inet}:53\"}}", text))
            cls.edge_for = "partners"
        if getattr(cls, "partners", None):
            return cls.partners
        certs = os.path.join(self.tmp, "certs")
        r = lab.sh(os.path.join(lab.ROOT, "deploy", "certs.sh"), certs, "partner.example", "rogue.example")
        self.assertEqual(r.returncode, 0, r.stderr)

        def bg(host, argv, log):
            with open(os.path.join(self.tmp, log), "a") as out:
                p = subprocess.Popen(["ip", "netns", "exec", self.ns(host)] + argv, stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT)
            cls.procs.append(p)
            return p

        # The internet's DNS: where each domain's federation edge is.
        bg("inet", ["dnsmasq", "--keep-in-foreground", "--no-daemon", f"--listen-address={inet}",
                    "--bind-interfaces", "--port=53", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                    "--pid-file=", "--user=root", "--log-queries", "--log-facility=-",
                    "--srv-host=_sipfederationtls._tcp.example.com,access-edge.example.com,5061,0",
                    f"--host-record=access-edge.example.com,{PLAN['ACCESS_EXT']}",
                    "--srv-host=_sipfederationtls._tcp.partner.example,sip.partner.example,5061,0",
                    f"--host-record=sip.partner.example,{inet}"], "dnsmasq.log")
        # The partners' edges. Kamailio reads /etc/resolv.conf: give it the lab's DNS in a mount
        # namespace of its own, so nothing on the host changes.
        resolv = os.path.join(self.tmp, "resolv.conf")
        with open(resolv, "w") as f:
            f.write(f"nameserver {inet}\n")
        cls.partners = {}
        for domain, udp, tls, ua in (("partner.example", 5060, 5061, 5070), ("rogue.example", 5062, 5063, 5072)):
            bg("inet", ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolv,
                        "kamailio", "-f", os.path.join(CLIENTS, "kamailio-partner.cfg"), "-DD", "-E",
                        "-w", self.tmp, "-Y", self.tmp,
                        "-A", f"IP={inet}", "-A", f"UDP_PORT={udp}", "-A", f"TLS_PORT={tls}", "-A", f"DOMAIN={domain}",
                        "-A", f'USERS_AT="sip:{inet}:{ua}"', "-A", f'CERT="{certs}/{domain}.crt"',
                        "-A", f'KEY="{certs}/{domain}.key"', "-A", f'CA="{certs}/ca.crt"'], f"kamailio-{domain}.log")
            cls.partners[domain] = (inet, udp, ua)
        for domain, (ip, udp, _) in cls.partners.items():
            for _ in range(50):
                if lab.sh("ip", "netns", "exec", self.ns("inet"), "ss", "-Hlun", f"src {ip}:{udp}").stdout.strip():
                    break
                time.sleep(0.2)
            else:
                self.fail(f"Kamailio for {domain} did not start:\n{self.file_tail(f'kamailio-{domain}.log')}")
        return cls.partners

    def restart(self, inst, edit):
        """Restarts a daemon of the lab with the config up.sh made for it changed by edit(text) ->
        (text, number of changes), and waits for its /healthz. Its log goes on in the same file.
        Each restart starts from up.sh's config, so one test's change does not stay for the next."""
        path = os.path.join(self.tmp, inst + ".yaml")
        if not os.path.exists(path + ".lab"):
            shutil.copy(path, path + ".lab")
        with open(path + ".lab") as f:
            text, n = edit(f.read())
        self.assertGreater(n, 0, f"nothing to change in the lab config of {inst}")
        with open(path, "w") as f:
            f.write(text)
        pid, host = self.started[inst]
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.1)
        with open(os.path.join(self.tmp, inst + ".log"), "a") as log:
            p = subprocess.Popen(["ip", "netns", "exec", self.ns(host), os.path.join(self.build, "bin", re.sub(r"-\d+$", "", inst)),
                                  "-c", path], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        type(self).procs.append(p)
        self.started[inst] = (p.pid, host)
        addr, port = self.admin_of(inst)
        for _ in range(50):
            if self.healthz("iuser", addr, port) == "200":
                return
            time.sleep(0.2)
        self.fail(f"{inst} did not come back:\n{self.log_tail(inst)}")

    def file_tail(self, name, lines=30):
        try:
            with open(os.path.join(self.tmp, name)) as f:
                return "".join(f.readlines()[-lines:])
        except OSError as e:
            return str(e)

    def sipp(self, scenario, *args, remote=None, port=5090, timeout=20):
        """sipp on the internet host (a partner's user agent) with a scenario of deploy/lab/clients/sipp/,
        started now; returns the Popen (its output in p.seen after finish())."""
        argv = ["ip", "netns", "exec", self.ns("inet"), "sipp"] + ([remote] if remote else []) + [
            "-sf", os.path.join(CLIENTS, "sipp", scenario), "-i", PLAN["INET"], "-p", str(port), "-m", "1",
            "-nostdin", "-timeout", f"{timeout}s", "-recv_timeout", "10000", "-trace_err",
            "-error_file", os.path.join(self.tmp, f"sipp-{scenario}-{port}.err")] + list(args)
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.tmp)
        self.mine.append(p)
        if not remote:  # a UAS must listen before anyone sends to it
            for _ in range(50):
                if lab.sh("ip", "netns", "exec", self.ns("inet"), "ss", "-Hlun",
                          f"src {PLAN['INET']}:{port}").stdout.strip():
                    break
                time.sleep(0.1)
        return p

    def finish(self, p, what, timeout=40):
        out, _ = p.communicate(timeout=timeout)
        try:
            with open(os.path.join(self.tmp, [a for a in p.args if a.endswith(".err")][0])) as f:
                out += f.read()
        except (OSError, IndexError):
            pass
        self.assertEqual(p.returncode, 0, f"{what}: sipp failed:\n{out[-3000:]}\n"
                         f"{self.file_tail('kamailio-partner.example.log')}\n{self.log_tail('access-edge')}")
        return out

    def test_kamailio_partner_and_inside_users_exchange_messages_both_ways(self):
        partners = self.federation()
        ip, udp, ua = partners["partner.example"]
        ext, inside, _, inside_args = self.sip_parties()
        # Partner -> inside: carol@partner.example (sipp, through Kamailio) to the internal user.
        waiter = self.sipua("iuser", *inside_args, "--wait-message", timeout=20)
        self.assertTrue(self.read_until(waiter, "REGISTER"), waiter.seen)
        sender = self.sipp("message_uac.xml", "-key", "from", "carol@partner.example", "-key", "to",
                           f"{inside}@example.com", remote=f"{ip}:{udp}")
        self.finish(sender, "partner to inside MESSAGE")
        got = self.read_until(waiter, "GOT", timeout=10)
        self.assertEqual(got, "GOT hello from carol@partner.example", waiter.seen)
        # Kamailio found access-edge by the SRV record, and access-edge saw a partner.
        klog = self.file_tail("kamailio-partner.example.log", 200)
        self.assertIn(f"example.com's edge is sip:access-edge.example.com:5061;transport=tls", klog)
        self.assertIn("partner: answer 200 OK to MESSAGE", klog)
        # Inside -> partner: the Director hands it to access-edge, which finds partner.example's
        # edge by SRV (through the lab's DNS) and opens mutual TLS to Kamailio.
        uas = self.sipp("message_uas.xml", port=ua)
        sender = self.sipua("iuser", *inside_args, "--send-to", "carol@partner.example", "--text", "hi carol",
                            timeout=20)
        out, _ = sender.communicate(timeout=30)
        self.assertIn("MESSAGE 200", out, f"{out}\n{self.log_tail('access-edge')}\n"
                      f"{self.file_tail('kamailio-partner.example.log')}")
        self.finish(uas, "inside to partner MESSAGE")
        self.assertIn("_sipfederationtls._tcp.partner.example", self.file_tail("dnsmasq.log", 200))

    def test_kamailio_partner_user_calls_inside_user(self):
        partners = self.federation()
        ip, udp, _ = partners["partner.example"]
        _, inside, _, inside_args = self.sip_parties()
        # sipp (carol@partner.example, through Kamailio) calls the internal user, who answers;
        # the ACK and the BYE come along the route set, from the partner.
        callee = self.sipua("iuser", *inside_args, "--answer", timeout=30)
        self.assertTrue(self.read_until(callee, "REGISTER"), callee.seen)
        caller = self.sipp("call_uac.xml", "-key", "from", "carol@partner.example", "-key", "to",
                           f"{inside}@example.com", remote=f"{ip}:{udp}")
        self.finish(caller, "partner to inside call")
        bye = self.read_until(callee, "BYE via", timeout=10)
        self.assertTrue(bye, callee.seen)
        self.assertIn("INVITE from <sip:carol@partner.example>", callee.seen)
        self.assertIn(PLAN["ACCESS_INT"], bye.split(), f"the BYE did not cross access-edge: {callee.seen}")

    def test_inside_user_calls_kamailio_partner_user(self):
        partners = self.federation()
        _, _, ua = partners["partner.example"]
        _, _, _, inside_args = self.sip_parties()
        # The internal user calls carol@partner.example; sipp answers behind Kamailio; BYE from
        # inside (its answer is checked by the next test).
        uas = self.sipp("call_uas.xml", port=ua)
        caller = self.sipua("iuser", *inside_args, "--call", "carol@partner.example", timeout=30)
        self.assertTrue(self.read_until(caller, "IN CALL", timeout=20),
                        f"{caller.seen}\n{self.log_tail('access-edge')}\n{self.file_tail('kamailio-partner.example.log')}")
        for want in ("INVITE 180", "INVITE 200", "ACK sent"):
            self.assertIn(want, caller.seen)
        caller.stdin.write("bye\n")
        caller.stdin.flush()
        bye = self.read_until(caller, "BYE")
        type(self).inside_bye = (bye, caller.seen + "\n" + self.log_tail("access-edge"))
        uas.kill()

    # An INVITE from inside to a partner the edge had no connection to yet got an external
    # Record-Route whose flow token named connection 0 (the token was made before the edge
    # dialed the partner), so the BYE from inside along that route set got 430 Flow Failed.
    def test_inside_user_hangs_up_on_kamailio_partner_user(self):
        bye = getattr(type(self), "inside_bye", None)
        if bye is None:
            skip(self, "the inside user's call to the partner did not run (see the test above)")
        self.assertEqual(bye[0], "BYE 200", bye[1])

    def test_partner_not_on_the_allow_list_is_refused_as_kamailio_sees_it(self):
        partners = self.federation()
        ip, udp, _ = partners["rogue.example"]
        _, inside, _, _ = self.sip_parties()
        sender = self.sipp("message_uac.xml", "-key", "from", "dave@rogue.example", "-key", "to",
                           f"{inside}@example.com", remote=f"{ip}:{udp}", port=5092)
        out, _ = sender.communicate(timeout=40)
        klog = self.file_tail("kamailio-rogue.example.log", 200)
        # access-edge ends the connection right after the TLS handshake, answering nothing: the
        # partner's request times out (Kamailio's fr_timer, 5 s here: 408) and goes nowhere.
        self.assertIn("partner: MESSAGE failed: 408", klog)
        self.assertIn("received 'SIP/2.0 408", out, out[-2000:])
        self.assertNotEqual(sender.returncode, 0, out[-2000:])
        self.assertIn("partner rogue.example not on the allow list", self.log_tail("access-edge"))

    # ---- baresip ----

    def baresip(self, host, name, args, commands=(), seconds=30):
        """baresip in host's namespace with a configuration from deploy/lab/clients/baresip_config.py
        (args), SIP trace on, quitting after seconds; returns the Popen (output read with read_until)."""
        d = os.path.join(self.tmp, f"baresip-{name}")
        r = subprocess.run([sys.executable, os.path.join(CLIENTS, "baresip_config.py"), "--dir", d] + args,
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        argv = ["ip", "netns", "exec", self.ns(host), "baresip", "-f", d, "-s", "-t", str(seconds)]
        for c in commands:
            argv += ["-e", c]
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        self.mine.append(p)
        p.seen = ""
        return p

    def summary(self, p, who):
        """(sent, received, lost) RTP packets from baresip's call summary at hang-up."""
        text = p.seen.replace("\r", "\n")
        m = re.search(r"^packets:\s+(\d+)\s+(\d+)\s*$", text, re.M)
        lost = re.search(r"^lost:\s+(\d+)\s+(\d+)\s*$", text, re.M)
        self.assertTrue(m and lost, f"no call summary from {who}'s baresip:\n{text[-4000:]}")
        return int(m[1]), int(m[2]), int(lost[2])

    def test_baresip_registers_over_tls_messages_and_calls_with_srtp_through_av_edge(self):
        if not shutil.which("baresip"):
            skip(self, "baresip is missing (Debian baresip-core: deploy/install-deps.sh, lab group)")
        self.need("director", "access-edge", "av-edge-1", "av-edge-2")
        from deployutil import load_yaml
        users = {u["name"]: u["password"] for u in
                 load_yaml(os.path.join(self.tmp, "director.yaml"))["sip"]["users"]}
        # baresip 1.0 (libre 1.x) digests only MD5 and gives up on a challenge list that offers
        # SHA-256 at all ("Function not implemented"): a site with such phones offers MD5 only.
        self.director_md5_only()
        creds = self.call_credentials()
        ca = os.path.join(self.tmp, "certs", "ca.crt")
        before = self.relayed_bytes()
        # The internal user: registered at the Director over UDP, relays on av-edge-2's inside.
        # Its address of record names the Director's address and it has no outbound proxy: the
        # Director answers 404 to a REGISTER whose Route names the Director itself (what baresip
        # sends with an outbound proxy), a Director bug reported to the lead. Calls to
        # bob@example.com still find it.
        bob = self.baresip("iuser", "bob", [
            "--aor", f"sip:bob@{PLAN['DIRECTOR']}", "--password", users["bob"], "--listen", f"{PLAN['IUSER']}:5060",
            "--turn", f"turn:{PLAN['AV2_INT']}:3478", "--turn-user", creds["intranet"]["username"],
            "--turn-password", creds["intranet"]["password"], "--medianat", "turn"], seconds=40)
        self.assertRegex(self.read_until(bob, f"bob@{PLAN['DIRECTOR']}: {{0/UDP", timeout=15), r"200 OK",
                         f"the internal baresip did not register:\n{bob.seen[-3000:]}")
        # The external user behind the NAT: TLS to access-edge's 443, relays on av-edge-1's
        # outside; sends a MESSAGE, then calls; -t ends the call after about 14 s of it. Media in
        # baresip's TURN mode (each side's relayed address in its SDP): with medianat=ice, libre
        # 1.x's controlled agent fails its checks now and then and alice gets no audio.
        alice = self.baresip("user", "alice", [
            "--aor", "sip:alice@example.com", "--password", users["alice"], "--ca", ca,
            "--outbound", f"sip:{PLAN['ACCESS_EXT']}:443;transport=tls",
            "--turn", f"turn:{PLAN['AV1_EXT']}:3478", "--turn-user", creds["internet"]["username"],
            "--turn-password", creds["internet"]["password"], "--medianat", "turn",
            "--contact", "sip:bob@example.com"],
            commands=(">", "/message hello from baresip", "/dialcontact"), seconds=16)
        out, _ = alice.communicate(timeout=40)
        alice.seen += out
        reg = re.search(r"alice@example.com: \{0/TLS/v4\} (\d{3})", alice.seen)
        self.assertTrue(reg and reg[1] == "200", f"alice's REGISTER over TLS:\n{alice.seen[-4000:]}\n"
                                                  f"{self.log_tail('access-edge')}")
        self.assertTrue(self.read_until(bob, "terminated", timeout=15) or "terminated" in bob.seen,
                        bob.seen[-3000:])
        bob.send_signal(signal.SIGTERM)
        out, _ = bob.communicate(timeout=15)
        bob.seen += out
        self.assertRegex(bob.seen, r"(?s)MESSAGE sip:bob.*hello from baresip", "bob got no MESSAGE")
        self.assertRegex(alice.seen, r"(?s)SIP/2.0 200 OK\r?\n.*CSeq: \d+ MESSAGE", "alice's MESSAGE got no 200")
        self.assertIn("Call established", alice.seen, alice.seen[-4000:])
        relayed = self.relayed_bytes() - before
        a_sent, a_got, a_lost = self.summary(alice, "alice")
        b_sent, b_got, b_lost = self.summary(bob, "bob")
        print(f"\nbaresip: alice sent {a_sent} got {a_got} lost {a_lost}; bob sent {b_sent} got {b_got} "
              f"lost {b_lost}; the av-edges relayed {relayed:.0f} bytes", flush=True)
        for who, sent, got in (("alice", a_sent, a_got), ("bob", b_sent, b_got)):
            self.assertGreater(sent, 200, f"{who} sent too little audio")
            self.assertGreater(got, 200, f"{who} received too little audio")
        self.assertLessEqual(a_lost + b_lost, (a_got + b_got) // 100, "more than 1% lost")
        # The media went through the relays: PCMU at 50 packets/s is 172 bytes a packet.
        self.assertGreater(relayed, 0.8 * 172 * min(a_got, b_got), "the audio did not cross the av-edges")

    # ---- Chromium with JsSIP ----

    def director_md5_only(self):
        """JsSIP and baresip 1.0 digest MD5 only, and give up when the Director's first (JsSIP) or
        any (baresip) challenge is SHA-256: restart the Director offering MD5 alone, once."""
        if getattr(type(self), "md5_only", False):
            return
        edge_log = os.path.join(self.tmp, "access-edge.log")
        pos = os.path.getsize(edge_log) if os.path.exists(edge_log) else 0
        self.restart("director", lambda text: re.subn(r"(?m)^(\s*algorithms:\s*)\[[^]]*\]", r"\1[MD5]", text))
        type(self).md5_only = True
        # access-edge answers 503 while it takes the Director for down: wait until it sees it
        # answer again (or, after two health intervals, never took it for down).
        t0 = time.time()
        while time.time() - t0 < 15:
            with open(edge_log, errors="replace") as f:
                f.seek(pos)
                tail = f.read()
            down = tail.rfind("Director not answering: down")
            if (down < 0 and time.time() - t0 > 2.5) or tail.rfind("Director answering: up") > down >= 0:
                break
            time.sleep(0.2)
        uris = []
        for _ in range(100):  # the av-edges come back to the new Director (ctl backoff)
            code, c = self.director_api("GET", "/credentials?user=probe&location=internet")
            uris = c.get("uris", []) if code == 200 else []
            if all(any(PLAN[k] in u for u in uris) for k in ("AV1_EXT", "AV2_EXT")):
                return
            time.sleep(0.2)
        self.fail(f"the av-edges did not come back to the restarted Director: {uris}")

    def browser_ready(self):
        chromium = shutil.which("chromium")
        if not chromium:
            skip(self, "chromium is missing (Debian chromium: deploy/install-deps.sh, lab group)")
        if not (shutil.which("node") and os.path.exists(os.path.join(NODE_DIR, "node_modules", "playwright-core"))
                and os.path.exists(os.path.join(NODE_DIR, "jssip.js"))):
            skip(self, f"playwright-core and JsSIP are not installed in {NODE_DIR} (make lab-clients: npm ci)")
        self.need("director", "access-edge", "av-edge-1", "av-edge-2")
        self.director_md5_only()
        # access-edge bug, reported: its user-facing TLS listeners (tls, wss) ask for a client
        # certificate whenever external.certs has a CA (the one that verifies partners), and
        # headless Chromium cancels the WebSocket opening handshake on that request ("WebSocket
        # opening handshake was canceled"). Until that is fixed, the browser tests run an
        # access-edge without the partners' listener and CA. Partners are not needed here.
        if getattr(type(self), "edge_for", None) != "browsers":
            self.restart("access-edge", lambda text: (
                re.sub(r"(?m)^\s*mtls: \[" + re.escape(PLAN["ACCESS_EXT"]) + r".*\n", "", re.sub(
                    r"(external:(?:.|\n)*?certs: \{cert: [^,]*, key: [^,}]*), ca: [^}]*\}", r"\1}", text, count=1)),
                1))
            type(self).edge_for = "browsers"

    def browser(self, host, opts):
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(host), "node",
                              os.path.join(CLIENTS, "web", "browser_call.js"), json.dumps(opts)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=NODE_DIR, env=dict(os.environ, NODE_PATH=os.path.join(NODE_DIR, "node_modules")))
        self.mine.append(p)
        p.seen = ""
        return p

    def browser_call(self, want_uri, seconds=8):
        """alice's browser behind the NAT calls bob's browser on the internet host; both use only
        the Director's TURN URIs for which want_uri(uri) holds. Returns (alice's STATS list, bob's
        STATS list, the bytes the av-edges relayed meanwhile)."""
        from deployutil import load_yaml
        users = {u["name"]: u["password"] for u in
                 load_yaml(os.path.join(self.tmp, "director.yaml"))["sip"]["users"]}
        opts = {}
        for user in ("alice", "bob"):
            code, c = self.director_api("GET", f"/credentials?user={user}&location=internet")
            self.assertEqual(code, 200, c)
            uris = [u for u in c["uris"] if want_uri(u)]
            self.assertTrue(uris, f"the Director offers no TURN URI the test wants: {c['uris']}")
            opts[user] = {"wss": f"wss://{PLAN['ACCESS_EXT']}:8443", "user": user, "password": users[user],
                          "domain": "example.com", "policy": "relay", "seconds": seconds,
                          "iceServers": [{"urls": uris, "username": c["username"], "credential": c["password"]}],
                          "jssip": os.path.join(NODE_DIR, "jssip.js")}
        opts["alice"]["call"] = "bob"
        before = self.relayed_bytes()
        bob = self.browser("inet", opts["bob"])
        self.assertTrue(self.read_until(bob, "REGISTERED", timeout=40),
                        f"bob's browser did not register:\n{bob.seen}\n{self.log_tail('access-edge')}")
        alice = self.browser("user", opts["alice"])
        results = []
        for who, p in (("alice", alice), ("bob", bob)):
            self.assertTrue(self.read_until(p, "END", timeout=90),
                            f"{who}'s browser did not finish:\n{p.seen[-3000:]}\n{self.log_tail('access-edge')}")
            p.wait(timeout=20)
            # Samples of the call while it was up (one taken as it ended has no ICE pair left).
            results.append([st for st in (json.loads(l.split(" ", 1)[1]) for l in p.seen.splitlines()
                                          if l.startswith("STATS ")) if st["pair"] and st["pair"]["bytesSent"]])
        relayed = self.relayed_bytes() - before
        ended = re.search(r"call ended: (.*)", bob.seen)
        type(self).callee_end = ended[1] if ended else f"not ended:\n{self.log_tail('access-edge')}"
        for who, st in zip(("alice", "bob"), results):
            print(f"\n{who}'s browser, last getStats(): {json.dumps(st[-1])}", flush=True)
        print(f"the av-edges relayed {relayed:.0f} bytes", flush=True)
        return results[0], results[1], relayed

    def assert_browser_media(self, a, b, relayed):
        for who, st in (("alice", a), ("bob", b)):
            self.assertGreaterEqual(len(st), 3, f"{who}: too few samples")
            last, earlier = st[-1], st[-3]
            with self.subTest(browser=who):
                self.assertEqual((last["pair"]["local"], last["pair"]["remote"]), ("relay", "relay"), last["pair"])
                for kind in ("audio", "video"):
                    got, sent = last[kind]["in"], last[kind]["out"]
                    self.assertGreater(got["packets"], 50, f"{who} {kind} received: {last}")
                    self.assertGreater(sent["packets"], 50, f"{who} {kind} sent: {last}")
                    self.assertGreater(got["bytes"], earlier[kind]["in"]["bytes"], f"{who} {kind} bytes not rising")
                    self.assertLess(max(got["lost"], 0), 0.01 * (got["packets"] + max(got["lost"], 0)),
                                    f"{who} {kind} lost 1% or more: {got}")
        # Everything the browsers sent went through the relays: each byte is counted twice there
        # (to the peer by the sender's edge, to the client by the receiver's). Counted at the
        # selected pair, so DTLS, SRTP, RTCP and ICE checks all count.
        pair = a[-1]["pair"]["bytesSent"] + b[-1]["pair"]["bytesSent"]
        self.assertGreater(relayed, 1.6 * pair, f"relayed {relayed}, the browsers sent {pair}")
        self.assertLess(relayed, 2.8 * pair, f"relayed {relayed}, the browsers sent {pair}")

    def test_browsers_call_over_wss_with_relay_only_ice_over_udp(self):
        self.browser_ready()
        a, b, relayed = self.browser_call(lambda u: u.startswith("turn:") and u.endswith("transport=udp"))
        self.assert_browser_media(a, b, relayed)
        self.assertEqual(a[-1]["pair"]["relayProtocol"], "udp")

    # access-edge bug, reported: when both parties are remote users (the INVITE crosses the edge
    # out, through the Director, and out again), the caller's ACK and BYE along the route set get
    # The caller's ACK and BYE once got "403 Federation not allowed with <callee's .invalid
    # Contact host>" (the edge routed on the Request-URI), and the callee's JsSIP ended the call
    # with "No ACK" 32 s later instead.
    def test_browsers_hang_up_reaches_the_callee(self):
        end = getattr(type(self), "callee_end", None)
        if end is None:
            skip(self, "no browser call ran in this lab (see the tests above)")
        self.assertEqual(end, "remote Terminated", "the callee's call did not end with the caller's BYE")

    def test_browsers_call_over_turns_on_443_with_udp_blocked(self):
        self.browser_ready()
        # The av-edges serve TURN over TLS on 443 (turns:, what a firewall that lets only web
        # traffic out passes) instead of TURN over TCP there.
        for inst, ext in (("av-edge-1", "AV1_EXT"), ("av-edge-2", "AV2_EXT")):
            if getattr(type(self), f"tls443_{inst}", False):
                continue
            addr = re.escape(PLAN[ext])
            self.restart(inst, lambda text: (re.sub(r"(?m)^(\s*tls_listen:\s*\[)", r"\g<1>" + PLAN[ext] + ":443, ",
                                                    re.sub(r"(?m)^\s*tcp_listen:\s*\[" + addr + r":443\].*\n", "", text)), 1))
            setattr(type(self), f"tls443_{inst}", True)
        # A firewall that lets only web traffic out: no UDP, TCP to 443 and 8443 (WSS) only. The
        # home router applies it to the user behind the NAT, the internet host to its own traffic
        # (bob's browser runs there).
        block = ("table inet udpblock { chain %s { type filter hook %s priority -10; policy accept; "
                 "meta l4proto udp drop; ct state new tcp dport != { 443, 8443 } drop; }; }")
        for host, hook in (("homertr", "forward"), ("inet", "output")):
            r = lab.sh("ip", "netns", "exec", self.ns(host), "nft", block % (hook, hook))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.addCleanup(lab.sh, "ip", "netns", "exec", self.ns(host), "nft", "delete", "table", "inet", "udpblock")
        want = lambda u: u.startswith("turns:") and ":443?" in u
        for _ in range(100):  # the restarted av-edges are back with the Director, listing turns: on 443
            code, c = self.director_api("GET", "/credentials?user=probe&location=internet")
            if code == 200 and sum(1 for u in c["uris"] if want(u)) == 2:
                break
            time.sleep(0.2)
        # The browsers get every URI the Director lists; only turns: on 443 gets through.
        a, b, relayed = self.browser_call(lambda u: True)
        self.assert_browser_media(a, b, relayed)
        for st in (a, b):
            self.assertEqual(st[-1]["pair"]["relayProtocol"], "tls", st[-1]["pair"])
            self.assertRegex(st[-1]["pair"]["url"], r"^turns:.*:443\b", st[-1]["pair"])
