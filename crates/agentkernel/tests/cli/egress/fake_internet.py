# The fake internet of the egress tests, run inside a network namespace the test made:
# a DNS server (UDP 53) answering the names in NAMES, an HTTP server (80) that echoes the
# Host it was asked for, an HTTPS server (443, with the test CA's certificate from the
# directory in argv[2]) that echoes the Authorization it got and logs it to
# received.log there, a TCP echo service (7) and a UDP echo service (9). Prints "ready"
# once everything listens.
import os
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADDRESS = sys.argv[1]
CERTS = sys.argv[2]
NAMES = {
    "api.test": ADDRESS,
    "other.test": ADDRESS,
    "allowed.test": ADDRESS,
    "denied.test": ADDRESS,
    "www.wild.test": ADDRESS,
    # A wildcard-allowed name an attacker points at the metadata service.
    "rebind.wild.test": "169.254.169.254",
}


def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    return s


def tcp(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    return s


def dns(s):
    while True:
        query, peer = s.recvfrom(4096)
        labels, i = [], 12
        while query[i] != 0:
            labels.append(query[i + 1 : i + 1 + query[i]].decode().lower())
            i += 1 + query[i]
        qtype = int.from_bytes(query[i + 1 : i + 3], "big")
        question = query[12 : i + 5]
        name = ".".join(labels)
        address = NAMES.get(name)
        header = bytearray(query[:12])
        header[2] = 0x81
        header[3] = 0x80 if address else 0x83
        answers = b""
        if address and qtype == 1:
            answers = (
                b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04"
                + socket.inet_aton(address)
            )
        if address and qtype == 28:
            answers = (
                b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x00\x3c\x00\x10"
                + socket.inet_pton(socket.AF_INET6, "2001:db8::7")
            )
        header[6:8] = (1 if answers else 0).to_bytes(2, "big")
        header[8:12] = b"\0\0\0\0"
        s.sendto(bytes(header) + question + answers, peer)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("fake internet: " + str(self.headers.get("Host")) + "\n").encode()
        if self.path.startswith("/big"):
            body = b"x" * (64 << 20)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Secure(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        auth = str(self.headers.get("Authorization"))
        with open(os.path.join(CERTS, "received.log"), "a") as log:
            log.write(str(self.headers.get("Host")) + " " + auth + "\n")
        self.send_response(200)
        self.send_header("X-Echo", auth)
        if self.path.startswith("/chunked"):
            # The value split over two chunks: masking must see across them.
            half = len(auth) // 2
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in ("chunked: " + auth[:half], auth[half:] + "\n"):
                data = part.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")
            return
        body = ("secure: " + auth + "\n").encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def tcp_echo(s):
    while True:
        c, _ = s.accept()

        def echo(c=c):
            while True:
                data = c.recv(65536)
                if not data:
                    break
                c.sendall(data)
            c.close()

        threading.Thread(target=echo, daemon=True).start()


def udp_echo(s):
    while True:
        data, peer = s.recvfrom(4096)
        s.sendto(data, peer)


http = ThreadingHTTPServer(("0.0.0.0", 80), Handler)
https = ThreadingHTTPServer(("0.0.0.0", 443), Secure)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(os.path.join(CERTS, "cert.pem"), os.path.join(CERTS, "key.pem"))
https.socket = context.wrap_socket(https.socket, server_side=True)
services = [
    (dns, (udp(53),)),
    (http.serve_forever, ()),
    (https.serve_forever, ()),
    (tcp_echo, (tcp(7),)),
    (udp_echo, (udp(9),)),
]
for target, args in services:
    threading.Thread(target=target, args=args, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
