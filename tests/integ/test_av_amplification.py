"""Amplification (issue 13, item 4): with the default config no unauthenticated UDP answer
is larger than what its source sent, real clients still work (coturn's turnutils_uclient,
aioice from Debian's python3-aiortc), and the table of request bytes -> answer bytes for
every unauthenticated request type, over UDP and TCP, is printed next to coturn 4.6.1's
(run on loopback with a config written here). README "Amplification" publishes it."""
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from harness import SuiteTest, free_port, wait_for
import avturn as T

EXT = "127.0.0.181"     # av-edge external listener and relay
INT = "127.0.0.182"
ADMIN = "127.0.0.183"
COTURN = "127.0.0.184"
PEER = "127.0.0.185"    # a peer address allowed for labs
SECRET = "amplification-test-secret"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-aiortc (aioice)

A_EVEN_PORT, A_RAF = 0x18, 0x17


def req(method, attrs=(), fp=False, key=None):
    return T.build(method, T.REQUEST, list(attrs), key=key, fingerprint=fp)[0]


def requests():
    """(name, bytes) for every kind of unauthenticated request a scanner can send."""
    tid = os.urandom(12)
    transport = (T.A_TRANSPORT, bytes([17, 0, 0, 0]))
    lifetime = (T.A_LIFETIME, struct.pack("!I", 600))
    forged = [transport, (T.A_USERNAME, b"alice"), (T.A_REALM, b"edge.lab"), (T.A_NONCE, b"x" * 16)]
    classic = struct.pack("!HH", 1, 0) + os.urandom(16)  # RFC 3489: no magic cookie
    return [
        ("Binding", req(T.BINDING)),
        ("Binding + FINGERPRINT", req(T.BINDING, fp=True)),
        ("Binding, RFC 3489 (no cookie)", classic),
        ("Binding, unknown required attribute", req(T.BINDING, [(0x0031, b"zz")])),
        ("Allocate as Chromium sends it", req(T.ALLOCATE, [transport])),
        ("Allocate + FINGERPRINT", req(T.ALLOCATE, [transport], fp=True)),
        ("Allocate as aioice sends it", req(T.ALLOCATE, [lifetime, transport])),
        ("Allocate as turnutils_uclient sends it",
         req(T.ALLOCATE, [transport, lifetime, (A_EVEN_PORT, b"\x80"), (A_RAF, b"\x01\0\0\0")], fp=True)),
        ("Allocate, forged nonce and integrity", req(T.ALLOCATE, forged, fp=True, key=os.urandom(16))),
        ("Refresh", req(T.REFRESH)),
        ("CreatePermission", T.build(T.CREATE_PERMISSION, T.REQUEST,
                                     [(T.A_PEER, T.xaddr("192.0.2.1", 9, tid))], tid=tid,
                                     fingerprint=False)[0]),
        ("ChannelBind", T.build(T.CHANNEL_BIND, T.REQUEST,
                                [(T.A_CHANNEL, struct.pack("!HH", 0x4000, 0)),
                                 (T.A_PEER, T.xaddr("192.0.2.1", 9, tid))], tid=tid,
                                fingerprint=False)[0]),
        ("Unknown method", req(0x0FF)),
        ("Send indication", T.build(T.SEND, T.INDICATION, [(T.A_PEER, T.xaddr("192.0.2.1", 9, tid)),
                                                           (T.A_DATA, b"x" * 8)], tid=tid,
                                    fingerprint=False)[0]),
        ("ChannelData", struct.pack("!HH", 0x4000, 8) + b"x" * 8),
    ]


def udp_answers(server, data, sends, gap=0.05, wait=0.2):
    """Sends data `sends` times from one fresh socket (a retransmitting client, or an
    attacker in a victim's name), gap seconds apart: bytes received in all. Waits at most
    `wait` after the last send (at most one answer per send is expected)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    got, answers = 0, 0
    try:
        for i in range(sends):
            s.sendto(data, server)
            end = time.time() + (gap if i + 1 < sends else wait)
            while time.time() < end and answers <= i:
                s.settimeout(max(0.01, end - time.time()))
                try:
                    got += len(s.recv(4096))
                    answers += 1
                except socket.timeout:
                    break
    finally:
        s.close()
    return got


def tcp_answer(server, data, wait=0.2):
    """The first answer over a fresh TCP connection: its length (0 for none)."""
    s = socket.create_connection(server, timeout=2)
    got = b""
    try:
        s.sendall(data)
        s.settimeout(wait)
        while len(got) < 20 or len(got) < 20 + struct.unpack("!H", got[2:4])[0]:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except (socket.timeout, ConnectionError):
        pass
    finally:
        s.close()
    return len(got)


def run_briefly(argv, cap, secs=3):
    """Runs a client against cap (which never answers) until its first datagram is in."""
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cap.thread.join(secs)
    p.kill()
    p.wait()


class FirstAllocate:
    """A UDP socket that records the first datagram a client sends it (never answers)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]
        self.first = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            self.first = self.sock.recv(4096)
        except OSError:
            pass

    def size(self):
        self.thread.join(6)
        self.sock.close()
        return len(self.first) if self.first else None


class AmplificationTest(SuiteTest):
    def start_edge(self):
        self.port = free_port(EXT)
        admin = f"{ADMIN}:{free_port(ADMIN)}"
        base = free_port(EXT) // 100 * 100
        return self.daemon("av-edge", f"""admin: {{ listen: {admin} }}
external:
  listen: [{EXT}:{self.port}]
  tcp_listen: []
  tls_listen: []
  allow_peers: [{PEER}/32]
internal: {{ listen: [{INT}:{free_port(INT)}] }}
relay: {{ addresses: [{EXT}], port_min: {base}, port_max: {base + 99} }}
auth:
  realm: edge.lab
  secret: {SECRET}
  users: [{{name: alice, password: wonder}}]
director: {{ enabled: false }}
""", admin=admin)

    def start_coturn(self):
        """coturn 4.6.1 on loopback, configured like av-edge (REST secret, realm)."""
        if not shutil.which("turnserver"):
            return None
        port = free_port(COTURN)
        d = tempfile.mkdtemp(prefix="coturn-", dir=self.tmp)
        conf = os.path.join(d, "turnserver.conf")
        with open(conf, "w") as f:
            f.write(f"""listening-ip={COTURN}
relay-ip={COTURN}
listening-port={port}
min-port=41000
max-port=41999
realm=edge.lab
use-auth-secret
static-auth-secret={SECRET}
no-tls
no-dtls
no-cli
simple-log
log-file={d}/turn.log
pidfile={d}/turn.pid
""")
        p = subprocess.Popen(["turnserver", "-c", conf], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (p.terminate(), p.wait(10)))
        wait_for(lambda: udp_answers((COTURN, port), req(T.BINDING, [(T.A_SOFTWARE, b"x" * 64)]), 1),
                 timeout=10, what="coturn answering")
        return (COTURN, port)

    def test_amplification_table_and_no_udp_answer_larger_than_its_request(self):
        self.start_edge()
        av = (EXT, self.port)
        co = self.start_coturn()
        rows = []
        for name, data in requests():
            row = [name, len(data), udp_answers(av, data, 1), udp_answers(av, data, 4),
                   tcp_answer(av, data)]
            if co:
                row += [udp_answers(co, data, 1), tcp_answer(co, data)]
            rows.append(row)
        head = ["request", "bytes", "av-edge UDP", "av-edge UDP, 4 sends", "av-edge TCP"]
        if co:
            head += ["coturn 4.6.1 UDP", "coturn 4.6.1 TCP"]
        print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(str(x) for x in r) + " |")
        for name, n, once, four, tcp in (r[:5] for r in rows):
            self.assertLessEqual(once, n, f"{name}: {n} bytes drew {once} over UDP")
            self.assertLessEqual(four, 4 * n, f"{name}: 4 x {n} bytes drew {four} over UDP")
        by = {r[0]: r for r in rows}
        # answered over TCP at once, and over UDP once the retransmissions cover the answer
        self.assertGreater(by["Allocate as Chromium sends it"][4], 28)
        self.assertGreater(by["Allocate as Chromium sends it"][3], 0)
        self.assertGreater(by["Binding"][3], 0)
        self.assertGreater(by["Allocate as turnutils_uclient sends it"][2], 0)  # at once

    def test_real_clients_first_allocate_and_relay(self):
        """Each client's first Allocate, measured on a socket that never answers, and each
        client allocating through av-edge with the default config."""
        sizes = {}
        if shutil.which("turnutils_uclient"):
            cap = FirstAllocate()
            run_briefly(["turnutils_uclient", "-W", SECRET, "-n", "1", "-m", "1", "-e", PEER,
                         "-p", str(cap.port), "127.0.0.1"], cap)
            sizes["turnutils_uclient"] = cap.size()
        have_aioice = os.path.exists(SYSTEM_PYTHON) and subprocess.run(
            [SYSTEM_PYTHON, "-c", "import aioice"], capture_output=True).returncode == 0
        aioice_script = """
import asyncio, sys, time
import aioice.turn as t
async def main():
    t0 = time.time()
    tr, _ = await asyncio.wait_for(t.create_turn_endpoint(
        asyncio.DatagramProtocol, server_addr=(sys.argv[1], int(sys.argv[2])),
        username=sys.argv[3], password=sys.argv[4]), float(sys.argv[5]))
    print("RELAY", tr.get_extra_info("sockname")[0], round(time.time() - t0, 2), flush=True)
    tr.close()
asyncio.run(main())
"""
        if have_aioice:
            cap = FirstAllocate()
            run_briefly([SYSTEM_PYTHON, "-c", aioice_script, "127.0.0.1", str(cap.port),
                         "alice", "wonder", "2"], cap)
            sizes["aioice"] = cap.size()
        sizes["Chromium (source: TurnAllocateRequest, REQUESTED-TRANSPORT only)"] = 28
        print("\nfirst Allocate, bytes:", sizes)

        self.start_edge()
        # turnutils_uclient relaying through the default config: test_av_edge.TestStockClients.
        if have_aioice:
            p = subprocess.run([SYSTEM_PYTHON, "-c", aioice_script, EXT, str(self.port), "alice",
                                "wonder", "10"], capture_output=True, timeout=30)
            out = p.stdout.decode() + p.stderr.decode()
            self.assertIn(f"RELAY {EXT}", out, out[-2000:])
            print("aioice allocated in", out.split()[-1], "s")
        if not sizes:
            self.skipTest("neither turnutils_uclient nor aioice is installed")


if __name__ == "__main__":
    unittest.main()
