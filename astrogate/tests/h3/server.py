#!/usr/bin/env python3
"""An HTTP/3 server (aioquic) for the tests: answers every GET with `NAME PATH`.
Usage: server.py NAME HOST PORT CERT KEY"""
import asyncio
import sys

from aioquic.asyncio import serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated

NAME = sys.argv[1]


class Server(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._http = None

    def quic_event_received(self, event):
        if isinstance(event, ProtocolNegotiated):
            self._http = H3Connection(self._quic)
        if self._http is None:
            return
        for ev in self._http.handle_event(event):
            if isinstance(ev, HeadersReceived):
                path = dict(ev.headers).get(b":path", b"/").decode()
                body = f"{NAME} {path}".encode()
                self._http.send_headers(
                    ev.stream_id,
                    [(b":status", b"200"), (b"content-length", str(len(body)).encode())],
                )
                self._http.send_data(ev.stream_id, body, end_stream=True)
        self.transmit()


async def main(host, port, cert, key):
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(cert, key)
    await serve(host, port, configuration=config, create_protocol=Server)
    print(f"{NAME} listening on {host}:{port}", flush=True)
    await asyncio.Future()


asyncio.run(main(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
