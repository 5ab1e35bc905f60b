#!/usr/bin/env python3
"""Reload soak (issue 14): each edge serves TLS load while it holds many idle TLS
connections (allocations for av-edge) and is reloaded 100 times a minute; a second run
renews its certificate before every reload. Passes with 0 failed transactions, 0 closed
held connections, every reload taken, and flat RSS (the last sample within 10% + 4 MiB of
the one after the first minute, or after the warm-up when shorter).

Knobs (environment): SOAK_SECONDS per run (default 300), SOAK_IDLE idle connections
(default 2000; av-edge holds SOAK_ALLOCS allocations, default 500), SOAK_RELOADS_PER_MIN
(default 100), SOAK_EDGES (default "revproxy access-edge av-edge conf-edge"), SOAK_MODES (default
"reload rotate"),
SUITE_BUILD (default build). Prints one line per edge and run, then 'soak-reload: N passed,
N failed'."""
import os
import resource
import selectors
import signal
import socket
import ssl
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integ"))
os.environ.setdefault("SUITE_BUILD", os.path.join(HERE, "..", "..", "build"))

import harness  # noqa: E402
import rotation as R  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", "300"))
IDLE = int(os.environ.get("SOAK_IDLE", "2000"))
ALLOCS = int(os.environ.get("SOAK_ALLOCS", "500"))
PER_MIN = float(os.environ.get("SOAK_RELOADS_PER_MIN", "100"))
EDGES = os.environ.get("SOAK_EDGES", "revproxy access-edge av-edge conf-edge").split()
MODES = os.environ.get("SOAK_MODES", "reload rotate").split()


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 3 * IDLE + 4096))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Case(harness.SuiteTest):
    """A TestCase used as a fixture holder (temp dir, daemons stopped at the end)."""

    def runTest(self):
        pass


def client_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def open_idle(host, port, n, first=None, source_ips=None):
    """n TLS connections, handshaken (and first(sock) sent on each), left idle."""
    ctx = client_ctx()
    out = []
    for i in range(n):
        src = (source_ips[i % len(source_ips)], 0) if source_ips else None
        s = socket.create_connection((host, port), timeout=20, source_address=src)
        t = ctx.wrap_socket(s)
        if first:
            first(t)
        out.append(t)
    return out


def count_closed(socks):
    """Held connections the edge closed (readable with EOF or an error)."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    for key, _ in sel.select(timeout=0.5):
        s = key.fileobj
        try:
            s.setblocking(False)
            if s.recv(65536) == b"":
                closed += 1
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        except (OSError, ssl.SSLError):
            closed += 1
    sel.close()
    return closed


# ---- per edge: start it, hold connections, one transaction -------------------------------

def setup_revproxy(t, crt, key):
    import test_rp_proxy as M
    M.setUpModule()
    t.addCleanup(M.tearDownModule)
    from rp_upstream import Upstream
    up = Upstream(tls=True, certdir=M.CERTS)
    t.addCleanup(up.stop)
    admin = f"127.0.0.1:{harness.free_port()}"
    https, http, redir = harness.free_port(), harness.free_port(), harness.free_port()
    cfg = M.CONFIG.format(admin=admin.split(":")[1], https=https, http=http, redir=redir,
                          cd=M.CERTS, up=up.addr, tls="true", rt="5s", uextra="", extra="",
                          alog="/dev/null")
    cfg = cfg.replace(f"{M.CERTS}/revproxy.crt, key: {M.CERTS}/revproxy.key", f"{crt}, key: {key}")
    cfg = cfg.replace("header_timeout: 1s", "header_timeout: 1h\nkeepalive_timeout: 1h")
    d = t.daemon("revproxy", cfg, admin=admin)
    req = b"GET /ABS/ext/x HTTP/1.1\r\nHost: revproxy\r\n\r\n"

    def ask(s):
        s.sendall(req)
        head = b""
        while b"\r\n\r\n" not in head:
            c = s.recv(65536)
            if not c:
                raise ConnectionError("closed")
            head += c
        if not head.startswith(b"HTTP/1.1 200"):
            raise AssertionError(head[:60])
        import re
        n = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        body = head.split(b"\r\n\r\n", 1)[1]
        while len(body) < n:
            body += s.recv(65536)

    held = open_idle("127.0.0.1", https, IDLE, first=ask)

    def one():
        s = client_ctx().wrap_socket(socket.create_connection(("127.0.0.1", https), timeout=20))
        try:
            ask(s)
        finally:
            s.close()
    return d, ("127.0.0.1", https), held, one


def setup_access_edge(t, crt, key):
    from siplab import CERTS, EXT_IP, USERS, Lab, StreamUA, ensure_certs, parse_status
    ensure_certs()
    lab = Lab(t, cert=os.path.relpath(crt[:-4], CERTS),
              extra_edge="limits: {idle_timeout: 1h}\n")
    ips = [f"127.0.2.{i}" for i in range(1, 250)]
    held = open_idle(EXT_IP, lab.ext_tls, IDLE, source_ips=ips)
    n = [0]

    def one():
        n[0] += 1
        ua = StreamUA(EXT_IP, lab.ext_tls, tls=True, ip=f"127.0.3.{n[0] % 250 + 1}")
        try:
            st = parse_status(ua.register(USERS["alice"]))
            if st != 200:
                raise AssertionError(f"REGISTER {st}")
        finally:
            ua.close()
    return lab.edge, (EXT_IP, lab.ext_tls), held, one


def setup_av_edge(t, crt, key):
    import test_av_edge as M
    import avturn as T
    a = M.AvEdgeTest("assert_serving")
    a.tmp, a.daemons = t.tmp, t.daemons
    import re

    def daemon(name, cfg, admin=None):  # a relay range for the held set and the load
        lo = int(re.search(r"port_min: (\d+)", cfg).group(1))
        cfg = re.sub(r"port_max: \d+", f"port_max: {min(65535, lo + ALLOCS + 2000)}", cfg)
        return t.daemon(name, cfg, admin=admin)
    a.daemon = daemon
    a.start_edge(tls=True, auth="  unauth_rate: 0\n",
                 limits=f"  user_quota: {ALLOCS + 100}\n  allocations_per_credential: {ALLOCS + 100}\n",
                 extra=f"tls: {{cert: {crt}, key: {key}}}\n")
    ctx = client_ctx()

    def tls_client():
        c = T.Client((M.EXT, a.tls_port), "alice", "wonder", tcp=True, timeout=20)
        c.sock = ctx.wrap_socket(c.sock)
        return c
    held = []
    for _ in range(ALLOCS):
        c = tls_client()
        if c.allocate().code != 0:
            raise AssertionError("allocation for the held set failed")
        held.append(c.sock)

    def one():
        c = tls_client()
        try:
            if c.allocate().code != 0 or c.refresh(0).code != 0:
                raise AssertionError("allocate/release failed")
        finally:
            c.close()
    t.stop_signal = signal.SIGINT
    return a.edge, (M.EXT, a.tls_port), held, one


def setup_conf_edge(t, crt, key):
    import test_ce_edge as M
    from confmock import ConfMock
    ext, internal, admin = (f"127.0.0.1:{p}" for p in M.distinct_ports(3))
    cfg = M.edge_config(ext, internal, admin, "idle_timeout: 1h\nlimits: {per_conference: 100000, per_address: 100000}\n")
    cfg = cfg.replace(f"tls: {{cert: {M.CERTS}/conf-edge.crt, key: {M.CERTS}/conf-edge.key}}",
                      f"tls: {{cert: {crt}, key: {key}}}", 1)
    d = t.daemon("conf-edge", cfg, admin=admin)
    m = ConfMock(internal, M.CERTS, mode="echo")
    m.start()
    t.addCleanup(m.stop)
    harness.wait_for(lambda: d.metrics().get("conf_edge_servers", 0) >= 1, what="server")
    host, port = ext.rsplit(":", 1)
    held = []
    for i in range(IDLE):
        c = M.Client(ext, key=M.mint(f"soak{i % 50}", f"h{i}"))
        if c.line(timeout=20) != "PSOM-EDGE/1 200 admitted\r\n":
            raise AssertionError("held participant not admitted")
        held.append(c.sock)
    n = [0]

    def one():
        n[0] += 1
        c = M.Client(ext, key=M.mint("load", f"u{n[0]}-{time.time_ns()}"))
        try:
            if c.line(timeout=20) != "PSOM-EDGE/1 200 admitted\r\n":
                raise AssertionError("not admitted")
        finally:
            c.close()
    return d, (host, int(port)), held, one


SETUPS = {"revproxy": setup_revproxy, "access-edge": setup_access_edge,
          "av-edge": setup_av_edge, "conf-edge": setup_conf_edge}


def run(edge, rotate):
    t = Case()
    t.setUp()
    err = None
    try:
        cadir = os.path.join(harness.ROOT, "build", "certs")
        serial = 0x7000
        crt, key = R.make_cert(t.tmp, edge, serial, cadir)
        d, (host, port), held, one = SETUPS[edge](t, crt, key)
        pid = d.proc.pid
        prefix = edge.replace("-", "_")
        ok0 = d.metrics().get(f'{prefix}_config_reloads_total{{result="ok"}}', 0)
        load = R.Load(one, threads=2, max_each=10**9, max_s=SECONDS + 120)
        start = time.time()
        rss = [(0.0, harness.rss_kib(pid))]
        reloads = 0
        interval = 60.0 / PER_MIN
        next_at = start
        while time.time() - start < SECONDS:
            if rotate:
                serial += 1
                R.make_cert(t.tmp, edge, serial, cadir)
            d.signal(signal.SIGHUP)
            reloads += 1
            if time.time() - start >= rss[-1][0] + 10:
                rss.append((time.time() - start, harness.rss_kib(pid)))
            next_at += interval
            time.sleep(max(0.0, next_at - time.time()))
        time.sleep(1.0)
        ok, failed = load.stop()
        rss.append((time.time() - start, harness.rss_kib(pid)))
        taken = d.metrics().get(f'{prefix}_config_reloads_total{{result="ok"}}', 0) - ok0
        closed = count_closed(held)
        new_serial = R.peer_serial(host, port) if rotate else None
        warm = next((r for r in rss if r[0] >= min(60.0, SECONDS / 3)), rss[-1])
        growth = rss[-1][1] - warm[1]
        flat = growth <= warm[1] * 0.10 + 4096
        passed = (failed == 0 and closed == 0 and taken == reloads and flat and
                  (not rotate or new_serial == serial))
        print(f"{edge:12} {'rotate' if rotate else 'reload':6} {SECONDS:.0f}s: held {len(held)}, "
              f"closed {closed}; transactions {ok} ok, {failed} failed; reloads {int(taken)}/{reloads} "
              f"taken; RSS {rss[0][1]} KiB at start, {warm[1]} at {warm[0]:.0f}s, {rss[-1][1]} at end "
              f"({'+' if growth >= 0 else ''}{growth} KiB){'; serial ok' if rotate and new_serial == serial else ''}"
              f" -> {'PASS' if passed else 'FAIL'}", flush=True)
        if load.errors:
            print("   errors:", load.errors[:3], flush=True)
        for s in held:
            s.close()
        return passed
    except Exception as e:  # noqa: BLE001
        err = e
        print(f"{edge:12} {'rotate' if rotate else 'reload':6}: ERROR {e!r}", flush=True)
        return False
    finally:
        try:
            t.doCleanups()
            t.tearDown()
        except Exception as e:  # noqa: BLE001
            if not err:
                print(f"   teardown: {e}", flush=True)


def main():
    raise_fd_limit()
    passed = failed = 0
    for edge in EDGES:
        for rotate in [m == "rotate" for m in MODES]:
            if run(edge, rotate):
                passed += 1
            else:
                failed += 1
    print(f"soak-reload: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
