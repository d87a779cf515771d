"""The floor under any service in front of Vault: a TCP relay that passes bytes between a client
and Vault and does nothing else (no HTTP parsing, no JSON, no work), for compare.py and
cluster.py to time the bare Vault write through, beside the same write made directly.

What the relay adds to the write is the price of one more process on the path on this machine
(two more loopback hops and the wake-ups of a process that must run for each): a service such
as dnsapi, or bench/floor_server.py, pays it before anything it does itself.

    python3 bench/relay.py VAULT_PORT PORT

Prints "ready" once it listens on 127.0.0.1:PORT; relays each connection to 127.0.0.1:VAULT_PORT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until the reading side closes, then close the other side."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
    finally:
        writer.close()


def no_delay(writer: asyncio.StreamWriter) -> None:
    """Send each piece at once, as the client and Vault do on their own sockets."""
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def serve(vault_port: int, port: int) -> None:
    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        vault_reader, vault_writer = await asyncio.open_connection("127.0.0.1", vault_port)
        no_delay(client_writer)
        no_delay(vault_writer)
        with contextlib.suppress(ConnectionError):
            await asyncio.gather(pump(client_reader, vault_writer), pump(vault_reader, client_writer))

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vault_port", type=int, help="Vault's port on 127.0.0.1")
    parser.add_argument("port", type=int, help="the port to listen on, on 127.0.0.1")
    args = parser.parse_args()
    asyncio.run(serve(args.vault_port, args.port))


if __name__ == "__main__":
    main()
