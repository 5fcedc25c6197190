"""A minimal webhook receiver that verifies Vigil's signatures, for trying webhooks locally.

    .venv/bin/python scripts/webhook_receiver.py --secret-file secret.txt [--port 9000]

Each POST is verified with the tenant's secret (Standard Webhooks: id, timestamp, signature);
a verified delivery is answered 204 and one line is printed (its type and job or episode id);
a forged, altered or stale one is answered 400 and said so. Ctrl-C stops it. Only the
standard library and the `standardwebhooks` package Vigil installs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from standardwebhooks import Webhook, WebhookVerificationError

# A receiver reads a delivery's body only up to this size.
MAX_BODY_BYTES = 50 * 1024 * 1024


def summary(message: dict) -> str:
    """One line for a verified delivery: its type and what it is about."""
    data = message.get("data") or {}
    about = data.get("job_id") or data.get("id") or "?"
    extra = data.get("summary") or {k: data[k] for k in ("event_type", "count") if k in data}
    return f"verified {message.get('type')} {about} {json.dumps(extra)}"


def handler_for(webhook: Webhook) -> type[BaseHTTPRequestHandler]:
    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            length = int(self.headers.get("content-length") or 0)
            if not 0 < length <= MAX_BODY_BYTES:
                self._answer(413 if length else 400)
                return
            body = self.rfile.read(length)
            try:
                message = webhook.verify(body, dict(self.headers.items()))
            except WebhookVerificationError as exc:
                print(f"REFUSED ({exc}): not signed with this secret, altered or stale",
                      flush=True)
                self._answer(400)
                return
            print(summary(message), flush=True)
            self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:  # the lines above say what matters
            pass

    return Receiver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret-file", type=Path, required=True,
                        help="a file holding the whsec_ secret (vigil webhook-secret > secret.txt)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    secret = args.secret_file.read_text().strip()
    if not secret.startswith("whsec_"):
        parser.error(f"{args.secret_file} does not hold a whsec_ secret")
    server = ThreadingHTTPServer((args.host, args.port), handler_for(Webhook(secret)))
    print(f"listening on http://{args.host}:{server.server_port}/ (Ctrl-C stops)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
