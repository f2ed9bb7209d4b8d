#!/usr/bin/env python3
"""New QUIC connections, one after another, for the benchmark: N handshakes to HOST:PORT with
SNI, each closed once established. Prints `median_ms P90_ms per_second`.
Usage: handshakes.py HOST PORT SNI N"""
import asyncio
import ssl
import statistics
import sys
import time

from aioquic.asyncio.client import connect
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration


async def main(host, port, sni, n):
    times = []
    started = time.monotonic()
    for _ in range(n):
        config = QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, server_name=sni, verify_mode=ssl.CERT_NONE
        )
        t = time.monotonic()
        async with connect(host, port, configuration=config) as client:
            times.append(time.monotonic() - t)
            client.close()
    total = time.monotonic() - started
    times.sort()
    p90 = times[int(len(times) * 0.9) - 1]
    print(f"{statistics.median(times) * 1000:.3f} {p90 * 1000:.3f} {n / total:.1f}")


asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
