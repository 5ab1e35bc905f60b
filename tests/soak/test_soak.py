"""make soak: long runs under steady load with the Director killed (kill -9) in the middle.

SIP: sipp calls from outside (100/s) through access-edge and the Director to a sipp UAS
registered through the edge. TURN: av-probe SRTP streams through av-edge, with credentials
the Director minted. Each soak asserts what a user would see:
- 0 failed calls and 0 lost packets outside the Director's outage;
- in the outage every caller gets an answer (503 or 408) within Timer B, never silence, and
  each failure is accounted for by its answer code and the edge's own counters;
- service is back within 5 s of the Director's restart (it keeps registrations: sip.store);
- access-edge's RSS stays within 20% after the first minute.
SOAK_SECS (default 600) sets each soak's length; figures are printed at the end of each.
Run: make soak (or: cd tests/soak && python3 -m unittest test_soak -v)."""
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integ"))
from harness import BUILD, ROOT, SuiteTest, free_port, http_json, rss_kib, wait_for  # noqa: E402
from siplab import EXT_IP, USERS, Lab, UdpUA, parse_status  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SECS = int(os.environ.get("SOAK_SECS", "600"))
RATE = int(os.environ.get("SOAK_RATE", "100"))
OUTAGE = 10.0        # seconds the Director stays dead
RECOVERY = 5.0       # service back within this long after the restart
TIMER_B = 32.0
WARMUP = min(60.0, SECS / 4)  # RSS is compared after this (the first minute)
# Under ASan (make soak SAN=1) its quarantine holds freed memory: RSS is shown, not asserted.
ASAN = os.path.basename(os.path.normpath(BUILD)) == "build-san"
CALLER_IP, CALLEE_IP = "127.0.0.31", "127.0.0.32"
# sipp's socket buffers (bytes; default 64 KiB, as sipp has them): SOAK_SIPP_BUF.
SIPP_BUF = ["-buff_size", os.environ["SOAK_SIPP_BUF"]] if os.environ.get("SOAK_SIPP_BUF") else []


def rss_sampler(pid, samples, stop, every=5.0):
    t0 = time.time()
    while not stop.wait(every):
        try:
            samples.append((time.time() - t0, rss_kib(pid)))
        except OSError:
            return


def flat(samples, warmup, within=0.20):
    """RSS samples after warmup: (min, max, ok) with max no more than within above min."""
    after = [kb for t, kb in samples if t >= warmup] or [kb for _, kb in samples[-1:]]
    lo, hi = min(after), max(after)
    return lo, hi, hi <= lo * (1 + within)


class SoakTest(SuiteTest):
    def tearDown(self):
        # Keep the logs (sipp's per-call lines, the daemons' logs) for a look afterwards.
        out = os.path.join(os.environ.get("SOAK_OUT", "/tmp"), f"soak-{type(self).__name__}")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(self.tmp, out, ignore=shutil.ignore_patterns("*.key", "*.sock"),
                        ignore_dangling_symlinks=True)
        print(f"  logs kept in {out}")
        super().tearDown()


class SipSoak(SoakTest):
    def test_sip_calls_with_director_kill_9(self):
        store = os.path.join(self.tmp, "registrations")
        lab = Lab(self, algorithms=("MD5",), extra_director=f"  store: {store}",
                  extra_edge="limits: {rate: 5000, burst: 10000}\nlog: {level: "
                  + os.environ.get("SOAK_EDGE_LOG", "warn") + "}")
        # bob registers through the edge for longer than the soak; a sipp UAS answers as him.
        bob_port = free_port(CALLEE_IP, socket.SOCK_DGRAM)
        u = UdpUA(CALLEE_IP, bob_port)
        r, _ = u.register((EXT_IP, lab.ext_port), "bob", USERS["bob"], expires=SECS + 3600)
        u.close()
        self.assertEqual(parse_status(r), 200, r)
        calls = RATE * SECS
        common = ["-nostdin", "-t", "u1", "-recv_timeout", "40000", "-max_recv_loops", "100000",
                  "-timeout", f"{SECS + 120}s", "-default_behaviors", "all,-abortunexp"]
        uas = subprocess.Popen(["sipp", "-sf", os.path.join(HERE, "..", "integ", "sip", "call_uas.xml"),
                                "-s", "bob", "-i", CALLEE_IP, "-p", str(bob_port),
                                "-m", str(calls), "-trace_err"] + common,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.tmp)
        self.addCleanup(lambda: uas.poll() is None and (uas.kill(), uas.wait()))
        time.sleep(0.5)
        caller_port = free_port(CALLER_IP, socket.SOCK_DGRAM)
        uac = subprocess.Popen(["sipp", f"{EXT_IP}:{lab.ext_port}", "-sf",
                                os.path.join(HERE, "soak_uac.xml"), "-s", "bob", "-i", CALLER_IP,
                                "-p", str(caller_port), "-r", str(RATE), "-m", str(calls),
                                "-l", str(RATE * 60), "-au", "alice", "-ap", USERS["alice"],
                                "-trace_logs", "-trace_err", "-trace_stat", "-fd", "5"] + common + SIPP_BUF,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.tmp)
        self.addCleanup(lambda: uac.poll() is None and (uac.kill(), uac.wait()))
        t_start = time.time()
        samples, stop = [], threading.Event()
        sampler = threading.Thread(target=rss_sampler, args=(lab.edge.proc.pid, samples, stop))
        sampler.start()
        self.addCleanup(stop.set)
        m0 = lab.edge.metrics()

        time.sleep(max(0.0, t_start + SECS / 2 - time.time()))
        t_kill = time.time()
        lab.director.kill()
        time.sleep(OUTAGE)
        t_restart = time.time()
        lab.director.start()
        restored = "1 registrations restored" in lab.director.log()

        # sipp stops creating calls after calls; the last ones end within Timer B.
        try:
            uac.wait(timeout=max(60, t_start + SECS + 120 - time.time()))
        except subprocess.TimeoutExpired:
            uac.kill()
            uac.wait()
        stop.set()
        sampler.join()
        m1 = lab.edge.metrics()
        lab.edge.alive()

        # Per call: start time and outcome, from the scenario's log lines.
        start, end = {}, {}
        for path in glob.glob(os.path.join(self.tmp, "soak_uac_*_logs.log")):
            with open(path) as f:
                for line in f:
                    w = line.split()
                    if len(w) >= 3 and w[0] == "START":
                        start[int(w[1])] = float(w[-1])
                    elif len(w) >= 4 and w[0] == "END":
                        end[int(w[1])] = (w[2] if w[2] == "ok" else f"{w[2]} {w[3]}",
                                          float(w[-1]))
        by = {}
        for n, (what, _) in end.items():
            by[what] = by.get(what, 0) + 1
        silent = sorted(set(start) - set(end))
        failed = {n: (what, t) for n, (what, t) in end.items() if what != "ok"}
        late = [n for n, (what, t) in failed.items() if t - start[n] > TIMER_B + 2]
        outside = [n for n in failed if not t_kill - 2 <= start[n] <= t_restart + RECOVERY]
        last_failed = max((start[n] for n in failed), default=None)
        first_ok = min((start[n] for n, (w, _) in end.items() if w == "ok" and start[n] >= t_restart),
                       default=None)
        rej = lambda m: m.get('access_edge_sip_rejected_total{reason="next_hop_down"}', 0)
        tmo = lambda m: m.get("access_edge_sip_invite_timeouts_total", 0)
        n503 = sum(v for k, v in by.items() if k.startswith("503"))
        n408 = sum(v for k, v in by.items() if k.startswith("408"))
        lo, hi, rss_ok = flat(samples, WARMUP)
        recovery = None if last_failed is None else max(0.0, last_failed - t_restart)
        print(f"\nSIP soak {SECS} s at {RATE}/s: attempted={len(start)} ok={by.get('ok', 0)} "
              f"failed={len(failed)} by code {dict(sorted((k, v) for k, v in by.items() if k != 'ok'))} "
              f"silent={len(silent)} over_timer_b={len(late)} failed_outside_outage={len(outside)}\n"
              f"  Director killed at {t_kill - t_start:.1f} s, restarted at {t_restart - t_start:.1f} s "
              f"(registration restored: {restored}); last failed call started "
              f"{'-' if recovery is None else f'{last_failed - t_restart:+.2f}'} s from the restart, "
              f"first ok call after it {'-' if first_ok is None else f'{first_ok - t_restart:+.2f}'} s\n"
              f"  edge counters: rejected next_hop_down +{rej(m1) - rej(m0):.0f}, "
              f"INVITE timeouts (Timer B) +{tmo(m1) - tmo(m0):.0f}; callers got 503 x{n503}, 408 x{n408}\n"
              f"  edge RSS (KiB, every 5 s): {[kb for _, kb in samples]}\n"
              f"  RSS after {WARMUP:.0f} s: min {lo} max {hi} (+{100 * (hi - lo) / max(lo, 1):.1f}%)")
        self.assertEqual(len(start), calls, "every call was attempted")
        self.assertEqual(silent, [], "calls that got no answer at all")
        self.assertEqual(late, [], "failures answered later than Timer B")
        self.assertEqual(outside, [], "calls failed outside the outage")
        self.assertTrue(set(by) <= {"ok"} | {f"{c} {s}" for c in (503, 408)
                                              for s in ("inv1", "inv2", "bye")}, by)
        self.assertLessEqual(n503, rej(m1) - rej(m0), "503s the edge did not count")
        self.assertLessEqual(n408, tmo(m1) - tmo(m0), "408s the edge did not count")
        self.assertIsNotNone(first_ok, "no call succeeded after the restart")
        self.assertLessEqual(recovery, RECOVERY)
        self.assertTrue(restored, "the Director did not restore bob's registration")
        if not ASAN:
            self.assertTrue(rss_ok, f"RSS not flat: {lo}..{hi} KiB")


class TurnSoak(SoakTest):
    stop_signal = signal.SIGINT  # SIGTERM would drain the probe's allocations

    def test_turn_streams_with_director_kill_9(self):
        probe = os.path.join(BUILD, "bin", "av-probe")
        if not os.access(probe, os.X_OK):
            self.skipTest("av-probe is not built")
        certs = os.path.join(ROOT, "build", "certs")
        ext, int_ = "127.0.0.113", "127.0.0.123"
        ctl = free_port()
        dir_admin = f"127.0.0.1:{free_port()}"
        director = self.daemon("director", f"""instance_id: director-soak
admin: {{listen: "{dir_admin}"}}
ctl: {{ listen: 127.0.0.1:{ctl}, heartbeat: 300ms }}
tls: {{ cert: {certs}/director.crt, key: {certs}/director.key, ca: {certs}/ca.crt }}
credentials: {{ ttl: 8h, max_ttl: 8h }}
""", admin=dir_admin)
        ext_port, int_port = free_port(ext), free_port(int_)
        av_admin = f"127.0.0.1:{free_port()}"
        base = 29200
        # Short permission and channel lifetimes so the probe refreshes them (and proves its
        # credentials still work) after the Director's restart, whatever SOAK_SECS is.
        life = max(20, min(300, SECS // 4))
        edge = self.daemon("av-edge", f"""instance_id: av-soak
admin: {{ listen: {av_admin} }}
log: {{ level: info }}
external: {{ listen: [{ext}:{ext_port}], tcp_listen: [], tls_listen: [] }}
internal: {{ listen: [{int_}:{int_port}] }}
relay: {{ addresses: [{ext}], port_min: {base}, port_max: {base + 99} }}
auth: {{ realm: edge.lab }}
# av-probe's 20 streams are 40 allocations on one credential (a client has one or two).
limits: {{ permission_lifetime: {life}s, channel_lifetime: {2 * life}s,
          allocations_per_credential: 100 }}
director:
  address: 127.0.0.1:{ctl}
  server_name: director
  report_interval: 1s
  tls: {{ cert: {certs}/av-edge.crt, key: {certs}/av-edge.key, ca: {certs}/ca.crt }}
""", admin=av_admin)
        edge.wait_log("from the Director installed", timeout=10)

        def creds():
            st, body = http_json(dir_admin, "/credentials?user=soak&location=intranet&ttl=28800")
            self.assertEqual(st, 200, body)
            return body["username"], body["password"]

        def run_probe(user, pw, secs, streams, rate=50):
            return subprocess.Popen([probe, "--external", f"{ext}:{ext_port}", "--internal",
                                     f"{int_}:{int_port}", "--user", user, "--password", pw,
                                     "--streams", str(streams), "--rate", str(rate),
                                     "--seconds", str(secs), "--permission-lifetime", str(life),
                                     "--channel-lifetime", str(2 * life)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        user, pw = creds()
        t_start = time.time()
        main = run_probe(user, pw, SECS, 20)
        self.addCleanup(lambda: main.poll() is None and (main.kill(), main.wait()))
        samples, stop = [], threading.Event()
        sampler = threading.Thread(target=rss_sampler, args=(edge.proc.pid, samples, stop))
        sampler.start()
        self.addCleanup(stop.set)

        time.sleep(max(0.0, t_start + SECS / 2 - time.time()))
        t_kill = time.time()
        director.kill()
        time.sleep(OUTAGE / 2)
        # In the outage a new user still gets relayed with credentials minted before it.
        during = run_probe(user, pw, 2, 2)
        during_out = during.communicate(timeout=60)[0].decode(errors="replace")
        time.sleep(max(0.0, t_kill + OUTAGE - time.time()))
        n_installed = edge.log().count("from the Director installed")
        t_restart = time.time()
        director.start()
        # Recovery: the edge holds the restarted Director's secrets and its fresh credentials
        # relay.
        recovered, after_out = None, ""
        while time.time() < t_restart + 30 and recovered is None:
            if edge.log().count("from the Director installed") > n_installed:
                t_try = time.time()
                u2, p2 = creds()
                p = run_probe(u2, p2, 1, 1)
                after_out = p.communicate(timeout=60)[0].decode(errors="replace")
                if p.returncode == 0 and "loss_pct=0.000" in after_out:
                    recovered = t_try - t_restart  # (the 1 s probe that proved it not counted)
                    break
            time.sleep(0.1)
        out = main.communicate(timeout=SECS + 120)[0].decode(errors="replace")
        stop.set()
        sampler.join()
        edge.alive()
        lo, hi, rss_ok = flat(samples, WARMUP)
        print(f"\nTURN soak {SECS} s: av-probe 20 streams x 50 pkt/s each way, permissions {life} s, "
              f"channels {2 * life} s; Director killed at {t_kill - t_start:.1f} s for {OUTAGE:.0f} s\n"
              f"  main probe: {out.strip().splitlines()[-1] if out.strip() else '(no output)'}\n"
              f"  probe during the outage: "
              f"{during_out.strip().splitlines()[-1] if during_out.strip() else '(none)'}\n"
              f"  recovery (fresh credentials relay after the restart): "
              f"{'-' if recovered is None else f'{recovered:.2f} s'}\n"
              f"  av-edge RSS (KiB, every 5 s): {[kb for _, kb in samples]}\n"
              f"  RSS after {WARMUP:.0f} s: min {lo} max {hi} (+{100 * (hi - lo) / max(lo, 1):.1f}%)")
        self.assertEqual(main.returncode, 0, out[-3000:])
        self.assertIn("loss_pct=0.000", out)
        self.assertIn("refresh_failures=0", out)
        self.assertEqual(during.returncode, 0, during_out[-2000:])
        self.assertIn("loss_pct=0.000", during_out)
        self.assertIsNotNone(recovered, after_out[-2000:])
        self.assertLessEqual(recovered, RECOVERY)


if __name__ == "__main__":
    unittest.main()
