"""A webhook receiver as users write them: an aiohttp web application, recording receipt times.

Run as ``python bench/receiver_aiohttp.py PORT OUT.jsonl``; it prints ``ready`` once listening and on
SIGTERM writes one line per request, ``{"timerId": ..., "receivedAt": <unix seconds>, "attempt": n}``,
like ``receiver.py`` (the raw-socket receiver that costs the shared CPUs as little as possible).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from aiohttp import web


async def main(port: int, out_path: str) -> None:
    received: list[tuple[float, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((time.time(), body))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()
    with open(out_path, "w") as fh:
        for at, body in received:
            data = json.loads(body)
            fh.write(json.dumps({"timerId": data["timerId"], "receivedAt": at, "attempt": data["attempt"]}) + "\n")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
