"""A fast local webhook receiver for benchmarks: asyncio, HTTP/1.1 keep-alive, records receipt times.

Run as ``python bench/receiver.py PORT OUT.jsonl``; on SIGTERM it writes one line per POST:
``{"timerId": ..., "receivedAt": <unix seconds>, "attempt": n}`` and exits.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

RESPONSE = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


async def main(port: int, out_path: str) -> None:
    received: list[tuple[float, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                received.append((time.time(), body))
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    with open(out_path, "w") as fh:
        for at, body in received:
            data = json.loads(body)
            fh.write(json.dumps({"timerId": data["timerId"], "receivedAt": at, "attempt": data["attempt"]}) + "\n")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
