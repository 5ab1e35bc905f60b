#!/usr/bin/env python3
"""The lab's internal web server: the reverse proxy's upstream. Serves DIR (the compose lab's
htdocs: address book under /ABS/int, meeting content under /etc/place/null, DL expansion under
/GroupExpansion/int) over HTTPS with the lab certificate "web", TLS 1.2+ as mbedTLS clients need.

Usage: webserver.py ADDRESS PORT CERT KEY DIR"""
import functools
import http.server
import ssl
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("web: %s %s\n" % (self.address_string(), fmt % args))


def main():
    addr, port, cert, key, root = sys.argv[1:6]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    srv = http.server.ThreadingHTTPServer((addr, int(port)), functools.partial(Handler, directory=root))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    sys.stderr.write(f"web: serving {root} on https://{addr}:{port}\n")
    srv.serve_forever()


if __name__ == "__main__":
    main()
