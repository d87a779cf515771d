"""The floor under one add: an aiohttp service that does nothing but the one Vault write an add
needs, for compare.py to time beside dnsapi's add and the bare write.

It reads the JSON body of a POST, writes a secret as large as the zone's with check-and-set over
aiohttp (as dnsapi does), and answers 201: no token, no checks, no zone file, no audit. What it
costs beyond the bare write is what any Python HTTP service pays here for that write; dnsapi's
add cannot cost less.

    VAULT_TOKEN=... python3 bench/floor_server.py VAULT_URL SECRET_PATH DATA_JSON_FILE PORT

Prints "ready" once it listens on 127.0.0.1:PORT. SECRET_PATH is under the KV v2 mount
`secret` and must exist (its current version is read at start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

import aiohttp
from aiohttp import web


async def serve(vault: str, path: str, data: dict, port: int) -> None:
    url = f"{vault}/v1/secret/data/{path}"
    headers = {"X-Vault-Token": os.environ["VAULT_TOKEN"]}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(url) as response:
            version = (await response.json())["data"]["metadata"]["version"]

        async def add(request: web.Request) -> web.Response:
            nonlocal version
            await request.json()
            async with session.post(url, json={"options": {"cas": version}, "data": data}) as response:
                version = (await response.json())["data"]["version"]
            return web.json_response({"created": True}, status=201)

        app = web.Application()
        app.router.add_post("/v1/records", add)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vault", help="Vault's address, e.g. http://127.0.0.1:8200")
    parser.add_argument("path", help="the secret to write, under the KV v2 mount `secret`")
    parser.add_argument("data", type=Path, help="a JSON file: the secret's data")
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    asyncio.run(serve(args.vault.rstrip("/"), args.path, json.loads(args.data.read_text()), args.port))


if __name__ == "__main__":
    main()
