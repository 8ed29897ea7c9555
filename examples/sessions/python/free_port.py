"""Prints a free loopback TCP port, for the agent's --app-port: on one host, every instance of
every version needs its own app port."""

import socket

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
