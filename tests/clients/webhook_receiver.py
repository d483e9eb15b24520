"""A callback receiver for mcpq's tests, verifying Standard Webhooks signatures with the
reference implementation from PyPI (`standardwebhooks`), not mcpq's own code.

Usage: webhook_receiver.py PORT SECRET LOG FAILURES
Each webhook-id's first FAILURES deliveries are answered 500; later ones are verified and
answered 200 (401 if the signature does not verify). FAILURES -1: every request is answered
410 Gone. Every request is one JSON line in LOG:
{"id", "delivery", "status", "verified", "event"}.
"""

import json
import sys
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

port, secret, log_path, failures = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
webhook = Webhook(secret)
seen = Counter()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        webhook_id = self.headers.get("webhook-id", "")
        seen[webhook_id] += 1
        line = {"id": webhook_id, "delivery": seen[webhook_id], "verified": False, "event": None}
        if failures < 0:
            status = 410
        elif seen[webhook_id] <= failures:
            status = 500
        else:
            try:
                line["event"] = webhook.verify(body, dict(self.headers.items()))
                line["verified"] = True
                status = 200
            except Exception as e:  # the reference implementation's refusal, whatever its type
                line["error"] = str(e)
                status = 401
        line["status"] = status
        with open(log_path, "a") as log:
            log.write(json.dumps(line) + "\n")
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()
