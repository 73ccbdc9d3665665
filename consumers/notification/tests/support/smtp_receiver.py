"""A real SMTP server for todo-notifier's tests (aiosmtpd).

Listens on 127.0.0.1 at a free port, prints `PORT <n>` once it accepts
connections, then one JSON line per message it accepted: envelope sender and
recipients, and the raw message. `--refuse-first N` answers the first N
transactions with `451 4.3.0 try again later` (a transient refusal), as a
busy server would. `--port N` listens on N instead (a test that starts the
server late, on the port the notifier was given while nothing listened).
"""
import argparse
import asyncio
import json
import socket
import sys

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, refuse_first):
        self.refuse_left = refuse_first

    async def handle_DATA(self, server, session, envelope):
        if self.refuse_left > 0:
            self.refuse_left -= 1
            print(json.dumps({"refused": True}), flush=True)
            return "451 4.3.0 try again later"
        print(
            json.dumps(
                {
                    "from": envelope.mail_from,
                    "to": envelope.rcpt_tos,
                    "data": envelope.content.decode("utf-8", "replace"),
                }
            ),
            flush=True,
        )
        return "250 OK"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--refuse-first", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    port = args.port or free_port()
    controller = Controller(Handler(args.refuse_first), hostname="127.0.0.1", port=port)
    controller.start()
    print(f"PORT {port}", flush=True)
    # Until the test closes our stdin (or kills us).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    controller.stop()


asyncio.run(main())
