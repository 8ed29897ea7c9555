"""WebSocket load for the router benchmarks, on asyncio alone (no third-party package).

  ws_client.py hold HOST:PORT PATH COUNT [HEADER ...]
      Opens COUNT WebSockets (each reads the server's first message), prints `open N failed F`,
      then keeps them open until stdin closes, and prints `closed N` after closing them.
  ws_client.py rtt HOST:PORT PATH MESSAGES [HEADER ...]
      One WebSocket; sends MESSAGES small text messages one at a time, each after the previous
      echo arrived; prints `rtt_ms p50 P50 p99 P99 n N`.

HEADER is `Name: value`. 127.0.0.1 only in the benchmarks.
"""
import asyncio
import base64
import os
import statistics
import struct
import sys
import time


async def handshake(addr, path, headers):
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {addr}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", *headers, "", ""]
    writer.write("\r\n".join(lines).encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        writer.close()
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    await read_frame(reader)  # the server's greeting
    return reader, writer


async def read_frame(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if b1 & 0x80 else None
    data = await reader.readexactly(n)
    if mask:
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
    return b0 & 0x0F, data


def text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


async def hold(addr, path, count, headers):
    sockets, failed = [], 0
    sem = asyncio.Semaphore(256)

    async def one():
        nonlocal failed
        async with sem:
            try:
                sockets.append(await handshake(addr, path, headers))
            except Exception as e:  # noqa: BLE001 - counted and reported
                failed += 1
                if failed <= 3:
                    print(f"failed: {e}", file=sys.stderr)

    await asyncio.gather(*(one() for _ in range(count)))
    print(f"open {len(sockets)} failed {failed}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for _, writer in sockets:
        writer.close()
    print(f"closed {len(sockets)}", flush=True)


async def rtt(addr, path, messages, headers):
    reader, writer = await handshake(addr, path, headers)
    times = []
    for i in range(messages):
        start = time.perf_counter()
        writer.write(text_frame(f"m{i}".encode()))
        await read_frame(reader)
        times.append((time.perf_counter() - start) * 1000)
    writer.close()
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"rtt_ms p50 {statistics.median(times):.3f} p99 {p99:.3f} n {len(times)}")


def main():
    mode, addr, path, n, *headers = sys.argv[1:]
    if mode == "hold":
        asyncio.run(hold(addr, path, int(n), headers))
    elif mode == "rtt":
        asyncio.run(rtt(addr, path, int(n), headers))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
