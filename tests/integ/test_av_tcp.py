"""av-edge RFC 6062 TURN-TCP relays end to end: Allocate TCP, CreatePermission, Connect to a
TCP echo peer, ConnectionBind on a new data connection, bytes both ways; a peer's incoming
connection announced by ConnectionAttempt; the errors a client can see (400, 403, 441,
446, 447); the 30 s bind deadline; teardown in both directions; a 64 MiB transfer to a slow
reader with av-edge's memory bounded; coturn's turnutils_uclient -T and -P.

The peers listen on 127.0.0.1, which the external side only reaches because these tests set
external.allow_peers: [127.0.0.1/32] (the lab exception); the tests of the enterprise rule
start the edge without it."""
import os
import re
import socket
import struct
import threading
import time

from harness import BUILD, free_port, rss_kib, wait_for
from test_av_edge import AvEdgeTest, EXT, INT
import avturn as T

PEER_HOST = "127.0.0.1"


class EchoServer:
    """A TCP echo peer on 127.0.0.1: one thread per connection, echoing until EOF."""

    def __init__(self, host=PEER_HOST):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = []     # (socket, address) of every connection
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, a = self.sock.accept()
            except OSError:
                return
            self.accepted.append((s, a))
            threading.Thread(target=self._echo, args=(s,), daemon=True).start()

    def _echo(self, s):
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                s.sendall(d)
        except OSError:
            pass
        finally:
            self.closed.set()
            try:
                s.close()
            except OSError:
                pass

    def close(self):
        self.sock.close()
        for s, _ in self.accepted:
            try:
                s.close()
            except OSError:
                pass


def recv_exactly(sock, n, already=b""):
    buf = bytearray(already)
    while len(buf) < n:
        d = sock.recv(min(65536, n - len(buf)))
        if not d:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += d
    return bytes(buf)


def closed_by_server(sock, timeout=5.0):
    """True once the other end closed (EOF or reset), reading whatever is still in flight."""
    sock.settimeout(timeout)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    return False


class TcpRelayTest(AvEdgeTest):
    def echo(self):
        e = EchoServer()
        self.addCleanup(e.close)
        return e

    def tcp_alloc(self, **kw):
        c = self.ext(tcp=True, **kw)
        m = c.allocate(transport=T.TCP)
        self.assertEqual(m.code, 0, "TCP Allocate over TCP")
        return c

    def connected(self, **edge):
        """An edge, an echo peer, a TCP allocation permitted to it and a successful Connect:
        (echo server, client, Connect answer)."""
        self.start_edge(allow_loopback=True, **edge)
        e = self.echo()
        c = self.tcp_alloc()
        self.assertEqual(c.permit(PEER_HOST).code, 0)
        m = c.connect(PEER_HOST, e.port)
        self.assertEqual(m.code, 0)
        return e, c, m

    def bound_pipe(self, c, peer_port):
        """CreatePermission + Connect + ConnectionBind: the data socket to the peer."""
        self.assertEqual(c.permit(PEER_HOST).code, 0)
        m = c.connect(PEER_HOST, peer_port)
        self.assertEqual(m.code, 0)
        self.assertTrue(m.connection_id)
        b, data, rest = c.data_connection(m.connection_id)
        self.assertEqual(b.code, 0)
        self.assertEqual(rest, b"")
        self.addCleanup(data.close)
        return data


class TestTcpRelay(TcpRelayTest):
    def test_connect_bind_echo_both_ways(self):
        self.start_edge(allow_loopback=True)
        e = self.echo()
        c = self.tcp_alloc()
        self.assertEqual(c.relay[0], EXT)
        data = self.bound_pipe(c, e.port)
        # The peer sees the connection coming from the relayed address's IP.
        wait_for(lambda: e.accepted, what="peer connection")
        self.assertEqual(e.accepted[0][1][0], EXT)
        for size in (1, 1000, 100000):
            payload = os.urandom(size)
            data.sendall(payload)
            self.assertEqual(recv_exactly(data, size), payload)
        self.wait_metric("av_edge_tcp_connections_total", 1)
        self.wait_metric("av_edge_tcp_connections", 1)
        self.wait_metric('av_edge_relayed_bytes_total{direction="to_peer"}', 101001)
        self.wait_metric('av_edge_relayed_bytes_total{direction="to_client"}', 101001)
        # Data and control connections keep working side by side.
        self.assertEqual(c.refresh().code, 0)
        self.assert_serving()

    def test_tls_control_and_data_connections(self):
        import ssl
        self.start_edge(allow_loopback=True, tls=True)
        e = self.echo()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        def tls_client():
            c = T.Client((EXT, self.tls_port), "alice", "wonder", tcp=True)
            c.sock = ctx.wrap_socket(c.sock)
            self.addCleanup(c.close)
            return c

        c = tls_client()
        self.assertEqual(c.allocate(transport=T.TCP).code, 0)
        self.assertEqual(c.permit(PEER_HOST).code, 0)
        m = c.connect(PEER_HOST, e.port)
        self.assertEqual(m.code, 0)
        d = tls_client()
        b = d.request(T.CONNECTION_BIND, [(T.A_CONNECTION_ID, struct.pack("!I", m.connection_id))])
        self.assertEqual(b.code, 0)
        d.sock.sendall(b"over TLS both ways")
        self.assertEqual(recv_exactly(d.sock, 18, d.rxbuf), b"over TLS both ways")

    def test_peer_initiated_connection_attempt_and_bind(self):
        self.start_edge(allow_loopback=True)
        c = self.tcp_alloc()
        self.assertEqual(c.permit(PEER_HOST).code, 0)
        peer = socket.create_connection(tuple(c.relay), timeout=5, source_address=(PEER_HOST, 0))
        self.addCleanup(peer.close)
        cid, paddr = c.connection_attempt()
        self.assertEqual(paddr, peer.getsockname())
        peer.sendall(b"hello before the bind")  # held until the client binds
        b, data, rest = c.data_connection(cid)
        self.assertEqual(b.code, 0)
        self.addCleanup(data.close)
        data.settimeout(5)
        self.assertEqual(recv_exactly(data, 21, rest), b"hello before the bind")
        data.sendall(b"and back")
        peer.settimeout(5)
        self.assertEqual(recv_exactly(peer, 8), b"and back")

    def test_peer_without_permission_is_refused(self):
        self.start_edge(allow_loopback=True)
        c = self.tcp_alloc()
        self.assertEqual(c.permit("127.0.0.1").code, 0)
        # 127.0.0.7 has no permission: the edge closes it and says nothing to the client.
        peer = socket.create_connection(tuple(c.relay), timeout=5, source_address=("127.0.0.7", 0))
        self.addCleanup(peer.close)
        self.assertTrue(closed_by_server(peer))
        self.wait_metric("av_edge_tcp_connections_failed_total", 1)
        c.sock.settimeout(0.5)
        with self.assertRaises((TimeoutError, socket.timeout)):
            c.connection_attempt()

    def test_403_connect_without_permission(self):
        self.start_edge(allow_loopback=True)
        e = self.echo()
        c = self.tcp_alloc()
        self.assertEqual(c.connect(PEER_HOST, e.port).code, 403)
        time.sleep(0.2)
        self.assertEqual(e.accepted, [], "no connection to a peer without permission")

    def test_403_enterprise_rule_on_connect(self):
        """External allocations may not Connect to loopback, internal networks or the edge's
        own addresses, whatever the permissions (av_turn_peer_policy, as for UDP peers)."""
        self.start_edge(extra="internal_networks: [10.0.0.0/8]\n")
        e = self.echo()
        c = self.tcp_alloc()
        self.assertEqual(c.connect(PEER_HOST, e.port).code, 403)      # loopback
        self.assertEqual(c.connect("10.1.2.3", 80).code, 403)          # internal network
        self.assertEqual(c.connect(EXT, self.ext_port).code, 403)      # the edge itself
        self.wait_metric('av_edge_denied_peers_total{reason="loopback"}', 1)
        self.wait_metric('av_edge_denied_peers_total{reason="internal_network"}', 1)
        self.assertEqual(e.accepted, [])
        # With the lab exception the same loopback peer gets through, internal ones never.
        self.edge.stop(self.stop_signal)
        self.start_edge(allow_loopback=True, extra="internal_networks: [10.0.0.0/8]\n")
        c = self.tcp_alloc()
        self.assertEqual(c.permit(PEER_HOST).code, 0)
        self.assertEqual(c.connect(PEER_HOST, e.port).code, 0)
        self.assertEqual(c.connect("10.1.2.3", 80).code, 403)

    def test_447_closed_port(self):
        self.start_edge(allow_loopback=True)
        c = self.tcp_alloc()
        self.assertEqual(c.permit(PEER_HOST).code, 0)
        closed = free_port(PEER_HOST)
        self.assertEqual(c.connect(PEER_HOST, closed).code, 447)
        self.wait_metric("av_edge_tcp_connections_failed_total", 1)
        self.assert_serving()

    def test_446_second_connect_to_same_peer(self):
        e, c, _ = self.connected()
        self.assertEqual(c.connect(PEER_HOST, e.port).code, 446)

    def test_400_bad_connection_id_and_441_other_user(self):
        _, c, m = self.connected()
        b, s, _ = c.data_connection((m.connection_id + 1) & 0xFFFFFFFF or 1)
        s.close()
        self.assertEqual(b.code, 400)
        b, s, _ = c.data_connection(m.connection_id, user="bob", password="builder")
        s.close()
        self.assertEqual(b.code, 441)
        # The owner still binds it, once; a second bind of the same id is a 400.
        b, s, _ = c.data_connection(m.connection_id)
        self.addCleanup(s.close)
        self.assertEqual(b.code, 0)
        b, s2, _ = c.data_connection(m.connection_id)
        s2.close()
        self.assertEqual(b.code, 400)

    def test_allocate_tcp_refusals(self):
        self.start_edge()
        u = self.ext()
        self.assertEqual(u.allocate(transport=T.TCP).code, 400)  # UDP control: RFC 6062 §5.1
        c = self.ext(tcp=True)
        self.assertEqual(c.allocate([(T.A_EVEN, b"\0")], transport=T.TCP).code, 400)
        self.assertEqual(c.allocate([(T.A_DF, b"")], transport=T.TCP).code, 400)
        self.assertEqual(c.allocate(transport=T.TCP).code, 0)
        # A TCP allocation has no channels (RFC 6062 6.2).
        self.assertEqual(c.channel_bind(0x4000, "192.0.2.1", 5000).code, 400)

    def test_tcp_relays_turned_off_get_442(self):
        self.start_edge(relay_tcp=False)
        c = self.ext(tcp=True)
        self.assertEqual(c.allocate(transport=T.TCP).code, 442)
        self.assertEqual(self.ext().allocate(transport=T.TCP).code, 442)
        # UDP relays over the same TCP control connection are still served.
        self.assertEqual(c.allocate().code, 0)

    def test_user_quota_counts_tcp_allocations(self):
        self.start_edge(limits="  user_quota: 1\n")
        c = self.tcp_alloc()
        d = self.ext(tcp=True)
        self.assertEqual(d.allocate(transport=T.TCP).code, 486)
        self.assertEqual(self.ext().allocate().code, 486)
        c.close()
        wait_for(lambda: self.ext().allocate().code == 0, what="quota given back")

    def test_bandwidth_cap_paces_the_pipe(self):
        """bandwidth_per_allocation applies to TCP relays: reading pauses instead of dropping,
        so every byte arrives, just no faster than the cap (both directions count)."""
        self.start_edge(allow_loopback=True,
                        limits="  user_quota: 50\n  bandwidth_per_allocation: 100k\n")
        e = self.echo()
        c = self.tcp_alloc()
        data = self.bound_pipe(c, e.port)
        payload = os.urandom(200 * 1024)
        data.settimeout(20)  # before the sender starts: its sendall() keeps the timeout it began with
        t0 = time.time()
        threading.Thread(target=data.sendall, args=(payload,), daemon=True).start()
        self.assertEqual(recv_exactly(data, len(payload)), payload)
        elapsed = time.time() - t0
        # 400 KiB charged at 100 KiB/s with a 100 KiB burst: at least about 3 s.
        self.assertGreater(elapsed, 2.5, f"200 KiB echoed in {elapsed:.2f} s")

    def test_connection_id_expires_after_30s(self):
        e, c, m = self.connected()
        time.sleep(31)
        b, s, _ = c.data_connection(m.connection_id)
        s.close()
        self.assertEqual(b.code, 400)
        self.assertTrue(e.closed.wait(5), "the unbound peer connection was closed")
        self.wait_metric("av_edge_tcp_connections_failed_total", 1)


class TestTcpRelayTeardown(TcpRelayTest):
    def test_client_close_closes_peer(self):
        self.start_edge(allow_loopback=True)
        e = self.echo()
        c = self.tcp_alloc()
        data = self.bound_pipe(c, e.port)
        data.sendall(b"x")
        self.assertEqual(recv_exactly(data, 1), b"x")
        data.close()
        self.assertTrue(e.closed.wait(5), "peer saw the close")
        wait_for(lambda: self.edge.metrics().get("av_edge_tcp_connections") == 0,
                 what="no TCP connections left")

    def test_peer_close_closes_client(self):
        self.start_edge(allow_loopback=True)
        c = self.tcp_alloc()
        self.assertEqual(c.permit(PEER_HOST).code, 0)
        peer = socket.create_connection(tuple(c.relay), timeout=5, source_address=(PEER_HOST, 0))
        cid, _ = c.connection_attempt()
        b, data, _ = c.data_connection(cid)
        self.addCleanup(data.close)
        self.assertEqual(b.code, 0)
        peer.sendall(b"last words")
        peer.close()
        self.assertEqual(recv_exactly(data, 10), b"last words")
        self.assertTrue(closed_by_server(data))

    def test_allocation_deletion_closes_its_connections(self):
        self.start_edge(allow_loopback=True)
        e = self.echo()
        c = self.tcp_alloc()
        data = self.bound_pipe(c, e.port)
        self.assertEqual(c.refresh(0).code, 0)
        self.assertTrue(closed_by_server(data), "data connection closed")
        self.assertTrue(e.closed.wait(5), "peer connection closed")
        # The relayed listener is gone too.
        with self.assertRaises(OSError):
            socket.create_connection(tuple(c.relay), timeout=2).close()

    def test_control_connection_close_ends_everything(self):
        self.start_edge(allow_loopback=True)
        e = self.echo()
        c = self.tcp_alloc()
        data = self.bound_pipe(c, e.port)
        c.close()
        self.assertTrue(closed_by_server(data))
        self.assertTrue(e.closed.wait(5))
        self.wait_metric("av_edge_allocations", 0)


class TestTcpRelayLoad(TcpRelayTest):
    BIG = 64 << 20

    def test_64mib_to_slow_reader_keeps_rss_bounded(self):
        # Under AddressSanitizer the transfer still runs (the pipe's pauses and resumes under
        # its eyes), but its quarantine holds freed memory, so RSS says nothing there.
        san = os.path.basename(BUILD.rstrip("/")).endswith("-san")
        self.start_edge(allow_loopback=True)
        e = self.echo()
        c = self.tcp_alloc()
        data = self.bound_pipe(c, e.port)
        pid = self.edge.proc.pid
        idle = rss_kib(pid)
        block = os.urandom(1 << 20)
        sent, failed = [0], []
        # One timeout for the whole test, set before the sender starts: a sendall() measures
        # its deadline from its own start, so the client's 2 s would end a block that waits
        # out the stall below, and the sender would stop with the reader still waiting.
        data.settimeout(60)

        def sender():
            try:
                for _ in range(self.BIG // len(block)):
                    data.sendall(block)
                    sent[0] += len(block)
            except OSError as e:
                failed.append(e)

        th = threading.Thread(target=sender, daemon=True)
        th.start()
        # Not reading at all: every queue fills to its cap and the sender stalls.
        time.sleep(2.0)
        stalled = sent[0]
        stalled_rss = rss_kib(pid)
        self.assertLess(stalled, self.BIG, "the sender is held back by the slow reader")
        # Then slowly, then at full speed, checking every byte.
        got, samples = 0, [stalled_rss]
        t0 = time.time()
        while got < self.BIG:
            try:
                n = len(data.recv(16384 if time.time() - t0 < 2 else 1 << 20))
            except socket.timeout:
                self.fail(f"nothing for 60 s after {got} of {sent[0]} bytes sent "
                          f"(sender: {failed or 'still sending'})")
            self.assertTrue(n, f"closed after {got} bytes")
            got += n
            if got % (4 << 20) < n:
                samples.append(rss_kib(pid))
        th.join(30)
        self.assertEqual(failed, [])
        self.assertEqual(got, self.BIG)
        peak = max(samples)
        print(f"\n  64 MiB via TCP relay to a slow reader: sender stalled at {stalled >> 20} MiB; "
              f"edge RSS idle {idle} KiB, peak {peak} KiB")
        if not san:
            self.assertLess(peak - idle, 8192, f"av-edge RSS grew {peak - idle} KiB")


class TestTcpRelayStockClient(TcpRelayTest):
    """coturn's turnutils_uclient as the RFC 6062 client. It relays client to client: each
    session's allocation Connects to its partner's relayed address (-T), or a plain TCP peer
    socket connects there (-P, "active peer"). The partner is the edge's own relayed address,
    which the enterprise rule refuses on the external side, so these run on the internal
    side (as the UDP client-to-client test does)."""

    def uclient(self, args, n=50, m=4):
        p = self.run_tool(["turnutils_uclient"] + args + ["-u", "bob", "-w", "builder",
                           "-p", str(self.int_port), "-n", str(n), "-m", str(m), "-l", "172",
                           INT], timeout=60)
        return p.stdout.decode() + p.stderr.decode()

    def test_uclient_tcp_relay_connect_and_connection_attempt(self):
        self.start_edge()
        out = self.uclient(["-T"])
        self.assertIn("Total lost packets 0 (0.000000%)", out, out[-2000:])
        recv = re.findall(r"tot_recv_msgs=(\d+)", out)
        self.assertTrue(recv and max(map(int, recv)) >= 200, out[-1000:])
        # Every Connect made one outbound and one incoming (ConnectionAttempt) connection.
        self.wait_metric("av_edge_tcp_connections_total", 8)
        self.wait_metric('av_edge_relayed_bytes_total{direction="to_client"}', 200 * 172)
        self.assertEqual(self.edge.metrics().get("av_edge_tcp_connections_failed_total"), 0)

    def test_uclient_passive_tcp_with_active_peer(self):
        """-P: uclient's peer socket connects to the relayed address, the client binds the
        ConnectionAttempt's id. (uclient counts only what its client side receives, so it
        reports half as lost; the edge's byte counters show both directions complete.)"""
        self.start_edge()
        out = self.uclient(["-P"], n=20, m=1)
        recv = re.findall(r"tot_recv_msgs=(\d+)", out)
        self.assertTrue(recv and max(map(int, recv)) >= 20, out[-1000:])
        self.wait_metric("av_edge_tcp_connections_total", 1)
        self.wait_metric('av_edge_relayed_bytes_total{direction="to_peer"}', 20 * 172)
        self.wait_metric('av_edge_relayed_bytes_total{direction="to_client"}', 20 * 172)
