"""Sync code (a Flask-style worker thread): cancel() from another thread unblocks a blocking read.

Run:  python examples/sync_worker/worker.py
"""

from __future__ import annotations

import threading
import time

from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients.openai import OpenAI
from scoped_clients.provider import LocalProvider


def main() -> None:
    with LocalProvider(token_interval=0.02) as provider:
        client = OpenAI(base_url=provider.url + "/v1", api_key="local")
        scope = RequestScope("sync-request")

        def handle_request() -> None:
            with scope:
                try:
                    completion = client.chat.completions.create(
                        model="local-500", messages=[{"role": "user", "content": "hi"}], max_tokens=500
                    )
                    print("answer:", completion.choices[0].message.content)
                except ScopeCancelled as exc:
                    print("worker:", exc)
                    raise

        worker = threading.Thread(target=handle_request)
        worker.start()
        (log,) = provider.wait_for_requests(1)
        log.wait_units(10)
        t = time.monotonic()
        scope.cancel("client_disconnected")  # e.g. from the server's connection-watching thread
        seen = log.wait_disconnect()
        worker.join()
        print(f"provider saw the disconnect {1000 * (seen - t):.2f} ms after cancel()")
        print("report:", scope.report.summary() if scope.report else None)
        client.close()


if __name__ == "__main__":
    main()
