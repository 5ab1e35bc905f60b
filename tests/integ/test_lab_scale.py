"""A/V scale-out in the network-namespace lab (deploy/lab/, EDGELAB_AV=3): three av-edges, each
in its own namespace with its own two interfaces. The external user, behind the NAT, allocates on
the first edge of the Director's credential answer (ordered by reported load), so the sessions
spread over the three; an edge killed outright (SIGKILL) leaves the answer within one heartbeat
timeout and new sessions go to the others; an edge told to stop (SIGTERM) while a call's SRTP
runs through it finishes that stream without loss, redirects new allocations (300) to a healthy
edge, leaves the answer, and exits once the call's allocations are released. The loopback version of the same
checks is tests/integ/test_av_scale.py. Root only."""
import os
import re
import signal
import subprocess
import sys
import time

import test_lab_topology as lab
from test_lab_topology import PLAN

EDGES = ("av-edge-1", "av-edge-2", "av-edge-3")
EXT = {f"av-edge-{i}": PLAN[f"AV{i}_EXT"] for i in (1, 2, 3)}
INT = {f"av-edge-{i}": PLAN[f"AV{i}_INT"] for i in (1, 2, 3)}

# TURN allocations held by the external user, run in its namespace behind the NAT. One command a
# line on stdin: "alloc HOST PORT USER PASSWORD" answers "ALLOC <code>" (0: allocated, held);
# "release" refreshes every held allocation to lifetime 0 and answers "RELEASED".
HOLDER = r"""
import sys
sys.path.insert(0, sys.argv[1])
import avturn as T
held = []
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "alloc":
        c = T.Client((cmd[1], int(cmd[2])), cmd[3], cmd[4], bind_host="0.0.0.0", timeout=2.0)
        try:
            code = c.allocate().code
        except OSError as e:
            code = f"error {e}"
        print("ALLOC", code, flush=True)
        if code == 0:
            held.append(c)
        else:
            c.close()
    elif cmd[0] == "release":
        for c in held:
            try:
                c.refresh(0)
            except OSError:
                pass
            c.close()
        held = []
        print("RELEASED", flush=True)
"""


class LabScale(lab.LabWithDaemons):
    LAB_AV = 3

    # ---- helpers ----

    def setUp(self):
        super().setUp()
        self.need("director", *EDGES)

    def heartbeat_s(self):
        from deployutil import load_yaml
        hb = str((load_yaml(os.path.join(self.tmp, "director.yaml")).get("ctl") or {}).get("heartbeat", "1s"))
        m = re.fullmatch(r"(\d+)(ms|s)", hb)
        self.assertIsNotNone(m, f"unexpected ctl.heartbeat {hb}")
        return int(m[1]) / (1000 if m[2] == "ms" else 1)

    def credentials(self, user):
        code, c = self.director_api("GET", f"/credentials?user={user}&location=internet")
        self.assertEqual(code, 200, c)
        return c

    def offered(self, cred):
        """The av-edges of a credential answer for an internet user, in the answer's order."""
        by_uri = {f"turn:{EXT[e]}:3478?transport=udp": e for e in EDGES}
        return [by_uri[u] for u in cred["uris"] if u in by_uri]

    def wait_for(self, what, cond, timeout):
        end = time.monotonic() + timeout
        while True:
            v = cond()
            if v or time.monotonic() > end:
                self.assertTrue(v, f"timed out after {timeout}s waiting for {what}")
                return v
            time.sleep(0.1)

    def allocations(self):
        """{instance: allocations in its last load report} from the Director's GET /edges."""
        code, body = self.director_api("GET", "/edges")
        self.assertEqual(code, 200, body)
        edges = body.get("edges", body) if isinstance(body, dict) else body
        return {e["instance"]: (e.get("report") or {}).get("allocations", 0)
                for e in edges if e.get("connected")}

    def holder(self):
        p = subprocess.Popen(["ip", "netns", "exec", self.ns("user"), sys.executable, "-c", HOLDER,
                              os.path.dirname(os.path.abspath(__file__))],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.mine.append(p)
        p.seen = ""
        return p

    def command(self, holder, line, answer):
        holder.stdin.write(line + "\n")
        holder.stdin.flush()
        got = self.read_until(holder, answer, timeout=8)
        self.assertTrue(got, f"{line.split()[0]}: no answer:\n{holder.seen}")
        return got

    def allocate(self, holder, edge, cred):
        got = self.command(holder, f"alloc {EXT[edge]} 3478 {cred['username']} {cred['password']}", "ALLOC")
        return got.split(" ", 1)[1]

    def pid(self, edge):
        return self.started[edge][0]

    def exited(self, pid):
        """True once pid is gone (or a zombie: its parent, up.sh's shell, is long gone)."""
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    # ---- tests (in this order: a kills av-edge-3 for b and c) ----

    def test_a_sessions_spread_over_the_three_edges_by_load(self):
        self.wait_for("all three av-edges in the credential answer",
                      lambda: sorted(self.offered(self.credentials("probe"))) == list(EDGES), 10)
        holder = self.holder()
        used = []
        for i in range(6):
            first = self.offered(self.credentials(f"ext{i}"))[0]
            self.assertEqual(self.allocate(holder, first, self.credentials(f"ext{i}")), "0",
                             f"allocation on {first}:\n{self.log_tail(first)}")
            used.append(first)
            # The next session is placed on the edges' next load reports.
            self.wait_for(f"{first}'s report of {used.count(first)} allocation(s)",
                          lambda: self.allocations().get(first) == used.count(first), 5)
        self.assertEqual(sorted(used), sorted(EDGES * 2), f"sessions per edge: {used}")
        self.command(holder, "release", "RELEASED")
        self.wait_for("every allocation released and reported",
                      lambda: not any(self.allocations().get(e) for e in EDGES), 5)
        # av-edge saw the external user as the home NAT's public address, on its external side.
        for e in EDGES:
            self.assertRegex(self.log_tail(e), re.escape(f"[{PLAN['HOMERTR_WAN']}:") +
                             r"\d+\] allocation for .* on the external side")

    def test_b_killed_edge_leaves_the_answer_within_a_heartbeat_timeout(self):
        gone = "av-edge-3"
        self.wait_for("all three av-edges in the credential answer",
                      lambda: sorted(self.offered(self.credentials("probe"))) == list(EDGES), 10)
        timeout = 3 * self.heartbeat_s()  # the Director drops an edge silent for 3 heartbeats
        os.kill(self.pid(gone), signal.SIGKILL)
        t0 = time.monotonic()
        self.wait_for(f"{gone} to leave the credential answer",
                      lambda: gone not in self.offered(self.credentials("probe")), timeout + 1.0)
        self.assertLess(time.monotonic() - t0, timeout + 1.0)
        # New sessions go to the two that are left, and only to them.
        holder = self.holder()
        used = []
        for i in range(4):
            cred = self.credentials(f"after-kill{i}")
            first = self.offered(cred)[0]
            self.assertEqual(self.allocate(holder, first, cred), "0", self.log_tail(first))
            used.append(first)
            self.wait_for(f"{first}'s load report", lambda: self.allocations().get(first) == used.count(first), 5)
        self.assertEqual(sorted(used), ["av-edge-1", "av-edge-1", "av-edge-2", "av-edge-2"])
        self.command(holder, "release", "RELEASED")
        self.wait_for("the allocations released and reported",
                      lambda: not any(self.allocations().get(e) for e in EDGES), 5)

    def test_c_sigterm_drains_a_live_call_without_loss_and_exits_when_released(self):
        edge = "av-edge-2"
        self.wait_for(f"{edge} in the credential answer",
                      lambda: edge in self.offered(self.credentials("probe")), 10)
        creds = self.call_credentials()
        probe = self.start_probe(f"{EXT[edge]}:3478", f"{INT[edge]}:3478", creds, seconds=3)
        # Both of the call's allocations are in place before the edge is told to stop.
        self.wait_for(f"{edge} to report the call's two allocations",
                      lambda: self.allocations().get(edge) == 2, 5)
        os.kill(self.pid(edge), signal.SIGTERM)
        t0 = time.monotonic()
        self.wait_for(f"{edge} to start draining", lambda: "draining" in self.log_tail(edge), 3)
        # A new allocation on it is sent to a healthy peer (300 Try Alternate) ...
        holder = self.holder()
        self.assertEqual(self.allocate(holder, edge, self.credentials("late")), "300", self.log_tail(edge))
        # ... and the Director no longer offers it.
        self.wait_for(f"{edge} to leave the credential answer",
                      lambda: edge not in self.offered(self.credentials("probe")), 3)
        self.assertTrue(probe.poll() is None and not self.exited(self.pid(edge)),
                        "the call should still be running through the draining edge")
        # The live call's stream finishes through it with zero loss; av-probe then releases its
        # allocations, and the edge exits at once, well before its drain deadline.
        self.probe_result(probe, edge)
        self.wait_for(f"{edge} to exit", lambda: self.exited(self.pid(edge)), 3)
        self.assertIn("drained: nothing left in flight", self.log_tail(edge))
        self.assertLess(time.monotonic() - t0, 5.0)
        # Fresh sessions still work on what is left.
        cred = self.credentials("after-drain")
        first = self.offered(cred)[0]
        self.assertNotEqual(first, edge)
        self.assertEqual(self.allocate(holder, first, cred), "0", self.log_tail(first))


if __name__ == "__main__":
    import unittest
    unittest.main()
