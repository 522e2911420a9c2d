#!/usr/bin/env python3
"""TCP echo server for tunnel tests: echoes every byte, half-closes after the client does.

Prints "listening on HOST:PORT" once ready (use --port 0 for a free port)."""
import argparse
import socket
import sys
import threading


def serve(conn: socket.socket, peer) -> None:
    total = 0
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
            total += len(data)
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    print(f"echoed {total} bytes to {peer[0]}:{peer[1]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7777)
    args = parser.parse_args()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((args.host, args.port))
    server.listen(128)
    host, port = server.getsockname()
    print(f"listening on {host}:{port}", flush=True)
    try:
        while True:
            conn, peer = server.accept()
            threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
