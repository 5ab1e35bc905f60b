"""A tiny UDP DNS server for the ACME lab: pebble resolves the names it validates here.

A records for the configured names (sip.lab.test -> 127.0.0.11, ...), an empty answer
(NOERROR, no records) for AAAA and CAA of those names (no CAA: any CA may issue), and
NXDOMAIN for every other name. One thread, loopback only; no recursion, no TCP.

    stub = DnsStub({"sip.lab.test": "127.0.0.11"}); stub.start(); ... stub.stop()
    python3 dnsstub.py 127.0.0.1:5353 sip.lab.test=127.0.0.11 ...   (by hand)
"""
import socket
import struct
import sys
import threading

QTYPE_A = 1


def _qname(msg, off):
    """The question's name (lowercase, no trailing dot) and the offset after it."""
    labels = []
    while True:
        if off >= len(msg):
            raise ValueError("truncated name")
        n = msg[off]
        off += 1
        if n == 0:
            return ".".join(labels).lower(), off
        if n & 0xC0:
            raise ValueError("compression in a question")
        labels.append(msg[off:off + n].decode("ascii", "replace"))
        off += n


def answer(query, records):
    """The response to one query datagram, or None for something that is not a query."""
    if len(query) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qd != 1:
        return None
    name, off = _qname(query, 12)
    if off + 4 > len(query):
        return None
    qtype, qclass = struct.unpack("!HH", query[off:off + 4])
    question = query[12:off + 4]
    rd = flags & 0x0100
    addr = records.get(name)
    if addr is None:
        rcode, answers = 3, []  # NXDOMAIN
    elif qtype == QTYPE_A:
        rcode, answers = 0, [addr]
    else:
        rcode, answers = 0, []  # AAAA, CAA, ...: the name exists, no such records
    hdr = struct.pack("!HHHHHH", qid, 0x8400 | rd | rcode, 1, len(answers), 0, 0)
    body = b""
    for a in answers:  # name as a pointer to the question (offset 12)
        body += struct.pack("!HHHIH", 0xC00C, QTYPE_A, 1, 5, 4) + socket.inet_aton(a)
    return hdr + question + body


class DnsStub:
    def __init__(self, records, host="127.0.0.1", port=0):
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.addr = "%s:%d" % self.sock.getsockname()
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                r = answer(data, self.records)
            except (ValueError, struct.error):
                r = None
            if r:
                self.queries += 1
                self.sock.sendto(r, peer)

    def stop(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


if __name__ == "__main__":
    host, port = sys.argv[1].rsplit(":", 1)
    recs = dict(a.split("=", 1) for a in sys.argv[2:])
    s = DnsStub(recs, host, int(port)).start()
    print("dnsstub on", s.addr, recs, flush=True)
    try:
        s._thread.join()
    except KeyboardInterrupt:
        s.stop()
