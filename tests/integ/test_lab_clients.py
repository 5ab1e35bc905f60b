"""Real clients nobody here wrote, end to end through the edges in the network-namespace lab
(deploy/lab/; the example scripts they run are in deploy/lab/clients/). Each client asserts
from its own counters, and each test skips with the reason printed when its package is missing.
Root only, like every lab test.

- aiortc (Debian python3-aiortc, a third TURN client besides coturn's and ours): two WebRTC
  peers, the external user behind the NAT and the internal user, may use only relayed
  candidates from the Director's credentials; the audio track (Opus over DTLS-SRTP) and the
  data channel flow through av-edge over UDP, and again with the external peer on TURN over
  TLS and the internal one on TURN over TCP."""
import os
import re
import shutil
import subprocess
import time

import test_lab_topology as lab
from test_lab_topology import PLAN

CLIENTS = os.path.join(lab.LAB, "clients")
# Debian's interpreter: python3-aiortc is installed for it, not for a python3 earlier on PATH.
DEBIAN_PY = "/usr/bin/python3"


def skip(case, reason):
    print(f"\nskip: {reason}", flush=True)
    case.skipTest(reason)


class LabClients(lab.LabWithDaemons):
    # Two av-edges: relay-only peers on both ends need a relay each, and av-edge does not let an
    # external allocation reach its own relay addresses (the enterprise rule), so the external
    # user relays on av-edge-1 and the internal user on av-edge-2.
    LAB_AV = 2

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
