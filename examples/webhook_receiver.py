"""A tiny webhook receiver for trying msgpush: prints each message it gets and answers 200.

    python3 examples/webhook_receiver.py [--port 9000] [--secret whsec_…]

With --secret it verifies the Standard Webhooks signature (pip install standardwebhooks) and
answers 401 to a forged or stale request. Standard library only otherwise.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, HTTPServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", help="the channel's signing_secret, to verify signatures")
    args = parser.parse_args()
    verifier = None
    if args.secret:
        from standardwebhooks.webhooks import Webhook

        verifier = Webhook(args.secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if verifier is not None:
                try:
                    verifier.verify(body, dict(self.headers))
                except Exception as exc:
                    print(f"rejected: {exc}", flush=True)
                    self.send_response(401)
                    self.end_headers()
                    return
            try:
                message = json.loads(body)
                print(f"[{message.get('level')}] {message.get('title')}: {message.get('content')}", flush=True)
            except ValueError:
                print(body.decode(errors="replace"), flush=True)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        do_PUT = do_POST

        def log_message(self, *args: object) -> None:
            pass

    print(f"listening on http://127.0.0.1:{args.port}/", flush=True)
    HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
