"""A port squatter for the trust tests: accepts WebSocket upgrades on 127.0.0.1:PORT, sends connect.challenge
like a gateway, and prints every byte it receives (hex, unmasked frame payloads too) to stdout.

usage: squatter.py PORT [--wait]   (--wait: keep trying to bind until the port is free; "bound" once it is)
Runs as another user in the tests (setpriv), so it writes only to the pipe its parent reads.
"""

import base64
import hashlib
import socket
import sys
import threading
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHALLENGE = b'{"type":"event","event":"connect.challenge","payload":{"nonce":"squat","ts":0}}'
lock = threading.Lock()


def say(line: str) -> None:
    with lock:
        print(line, flush=True)


def bind(port: int, wait: bool) -> socket.socket:
    while True:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            if not wait:
                raise
            time.sleep(0.001)
            continue
        sock.listen(16)
        return sock


def recv(conn: socket.socket) -> bytes:
    data = conn.recv(65536)
    if not data:
        raise EOFError
    say(f"recv {data.hex()}")
    return data


def frames(conn: socket.socket, buffer: bytes) -> None:
    """Decode client frames (masked) and print each payload unmasked."""
    while True:
        while len(buffer) < 2:
            buffer += recv(conn)
        length, offset = buffer[1] & 0x7F, 2
        if length == 126:
            length, offset = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            length, offset = int.from_bytes(buffer[2:10], "big"), 10
        masked = buffer[1] & 0x80
        end = offset + (4 if masked else 0) + length
        while len(buffer) < end:
            buffer += recv(conn)
        key = buffer[offset:offset + 4] if masked else b"\0\0\0\0"
        payload = buffer[end - length:end]
        say(f"frame {bytes(b ^ key[i % 4] for i, b in enumerate(payload)).hex()}")
        buffer = buffer[end:]


def serve(conn: socket.socket) -> None:
    with conn:
        try:
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                buffer += recv(conn)
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            conn.sendall(bytes([0x81, len(CHALLENGE)]) + CHALLENGE)
            frames(conn, buffer)
        except (OSError, EOFError, StopIteration):
            say("closed")


def main() -> None:
    listener = bind(int(sys.argv[1]), "--wait" in sys.argv[2:])
    say("bound")
    while True:
        conn, _ = listener.accept()
        say("conn")
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
