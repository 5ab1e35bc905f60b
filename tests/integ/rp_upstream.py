"""A mock internal web server for the revproxy tests (stdlib only): plain or HTTPS, with
paths that misbehave on purpose (slow, dies mid-body, huge, chunked, redirects, upgrade)."""
import http.server
import os
import socket
import ssl
import threading
import time
import urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, code, body, headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        n = 0
        if "chunked" in te.lower():
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    d = self.rfile.read(min(left, 1 << 20))
                    if not d:
                        raise ConnectionError("short chunk")
                    left -= len(d)
                    n += len(d)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                d = self.rfile.read(min(left, 1 << 20))
                if not d:
                    raise ConnectionError("short body")
                left -= len(d)
                n += len(d)
        return n

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.command, self.path, dict(self.headers.items()),
                             self.client_address[1]))
        u = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(u.query)
        p = u.path
        if "/slow" in p:
            time.sleep(float(q.get("s", ["3"])[0]))
        if "/die" in p:
            self.send_response(200)
            self.send_header("Content-Length", "10000000")
            self.end_headers()
            self.wfile.write(b"x" * 100000)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if "/big" in p:
            n = int(q.get("n", ["1048576"])[0])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            chunk = b"\0" * (1 << 20)
            while n:
                k = min(n, len(chunk))
                self.wfile.write(chunk[:k])
                n -= k
            return
        if "/chunked" in p:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if "/redir" in p:
            host = srv.internal_name
            self._send(302, b"", [("Location", f"https://{host}:{srv.server_port}/ABS/int/next?x=1"),
                                  ("Content-Location", "/ABS/int/here")])
            return
        if "/ws" in p and self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            conn = self.connection
            conn.settimeout(5)
            try:
                while True:
                    d = conn.recv(65536)
                    if not d:
                        break
                    conn.sendall(d.upper())
            except OSError:
                pass
            self.close_connection = True
            return
        body = (f"path={self.path}\nhost={self.headers.get('Host')}\n"
                f"xff={self.headers.get('X-Forwarded-For')}\n"
                f"proto={self.headers.get('X-Forwarded-Proto')}\n"
                f"forwarded={self.headers.get('Forwarded')}\n"
                f"peerport={self.client_address[1]}\n"
                f"auth={self.headers.get('Authorization')}\n").encode()
        self._send(200, body, [("Content-Type", "text/plain")])

    def do_POST(self):
        self.server.requests.append((self.command, self.path, dict(self.headers.items()),
                                     self.client_address[1]))
        if "/slow" in self.path:
            time.sleep(3)
        n = self._read_body()
        self._send(200, f"got {n}\n".encode())

    do_PUT = do_POST


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog (5) drops the SYNs of a burst of connections (test_acme's wrk -c20
    # through revproxy), which revproxy then sees as connect timeouts.
    request_queue_size = 128

    def handle_error(self, request, client_address):
        pass  # the tests provoke broken connections on purpose


class Upstream:
    def __init__(self, host="127.0.0.1", tls=False, certdir=None, name="web", port=0):
        self.srv = Server((host, port), Handler)
        self.srv.requests = []
        self.srv.internal_name = name
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(os.path.join(certdir, f"{name}.crt"), os.path.join(certdir, f"{name}.key"))
            self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True)
        self.port = self.srv.server_address[1]
        self.addr = f"{host}:{self.port}"
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()

    @property
    def requests(self):
        return self.srv.requests

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


class RecordingUpstream:
    """A plain-TCP upstream that keeps every byte it receives, for the framing tests: it
    reads requests strictly (CRLF lines, Content-Length or chunked with CRLF after each
    chunk), records each one's exact bytes, and answers each with 200 "ok". Bytes it
    cannot frame are recorded too (in `junk`), and the connection is closed."""

    def __init__(self, host="127.0.0.1"):
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind((host, 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.addr = f"{host}:{self.port}"
        self.requests = []  # exact bytes of each request, in arrival order
        self.junk = []      # bytes that did not frame as a request
        self.conns = 0
        self.open = 0       # connections not yet closed
        self.lock = threading.Lock()
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self):
        while True:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                self.open += 1
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    @staticmethod
    def _frame(buf):
        """Length of the first complete request in buf, 0 if incomplete, -1 if bad."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return 0
        head = buf[:end].split(b"\r\n")
        te = cl = None
        for line in head[1:]:
            name, sep, value = line.partition(b":")
            if not sep or name != name.strip() or not name:
                return -1
            n, v = name.lower(), value.strip()
            if n == b"transfer-encoding":
                if te is not None or v.lower() != b"chunked":
                    return -1
                te = v
            elif n == b"content-length":
                if cl is not None or not v.isdigit():
                    return -1
                cl = int(v)
        if te is not None and cl is not None:
            return -1
        pos = end + 4
        if cl is not None:
            return pos + cl if len(buf) >= pos + cl else 0
        if te is None:
            return pos
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return 0
            size = buf[pos:eol].split(b";")[0]
            if not size or any(c not in b"0123456789abcdefABCDEF" for c in size):
                return -1
            size = int(size, 16)
            pos = eol + 2
            if size == 0:
                while True:  # trailer section up to the empty line
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        return 0
                    line, pos = buf[pos:eol], eol + 2
                    if not line:
                        return pos
            if len(buf) < pos + size + 2:
                return 0
            if buf[pos + size:pos + size + 2] != b"\r\n":
                return -1
            pos += size + 2

    def _serve(self, s):
        buf = b""
        s.settimeout(30)
        try:
            while True:
                n = self._frame(buf)
                if n < 0:
                    break
                if n > 0:
                    with self.lock:
                        self.requests.append(buf[:n])
                    buf = buf[n:]
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    continue
                d = s.recv(65536)
                if not d:
                    break
                buf += d
        except OSError:
            pass
        s.close()
        with self.lock:
            if buf:
                self.junk.append(buf)
            self.open -= 1

    def stop(self):
        self.ls.close()
