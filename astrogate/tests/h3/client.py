#!/usr/bin/env python3
"""An HTTP/3 client (aioquic) for the tests: GET https://SNI/PATH from HOST:PORT, print the
body and how long the QUIC handshake took. Exits 1 when nothing answers within 5 s.
Usage: client.py HOST PORT SNI PATH [ALPN_PAD]
ALPN_PAD adds that many bytes of extra ALPN names, so the ClientHello spans two Initial
packets."""
import asyncio
import ssl
import sys
import time

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._body = b""
        self._done = None

    def quic_event_received(self, event):
        for ev in self._http.handle_event(event):
            if isinstance(ev, DataReceived):
                self._body += ev.data
                if ev.stream_ended and self._done and not self._done.done():
                    self._done.set_result(self._body)

    async def get(self, authority, path):
        stream = self._quic.get_next_available_stream_id()
        self._http.send_headers(
            stream,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ],
            end_stream=True,
        )
        self._done = self._loop.create_future()
        self.transmit()
        return await self._done


async def main(host, port, sni, path, pad):
    alpn = H3_ALPN + [f"x{i:03d}" + "p" * 200 for i in range(pad // 205)]
    config = QuicConfiguration(
        is_client=True, alpn_protocols=alpn, server_name=sni, verify_mode=ssl.CERT_NONE
    )
    started = time.monotonic()
    async with connect(host, port, configuration=config, create_protocol=Client) as client:
        handshake = time.monotonic() - started
        body = await client.get(sni, path)
    print(body.decode())
    print(f"handshake_ms {handshake * 1000:.3f}", file=sys.stderr)


try:
    pad = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    asyncio.run(asyncio.wait_for(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], pad), 5))
except (asyncio.TimeoutError, ConnectionError) as e:
    print(f"no answer: {e!r}", file=sys.stderr)
    sys.exit(1)
