"""A webhook receiver as an order service would write one: every request's signature is
checked with the Standard Webhooks library, and the body read as a CloudEvent with the
CloudEvents Python SDK's HTTP binding (structured or binary, detected as the SDK does).
Accepted messages are appended to OUT as JSON lines; a bad signature or an event the SDK
refuses is answered 401 / 400 and appended to OUT.errors.

Usage: webhook_receiver.py PORT SECRET OUT
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.core.bindings import http as ce_http
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

port, secret, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
webhook = Webhook(secret)
lock = threading.Lock()
out = open(out_path, "a", buffering=1)
errors = open(out_path + ".errors", "a", buffering=1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code):
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            webhook.verify(body, headers, json_parse=False)
        except WebhookVerificationError as e:
            with lock:
                errors.write(json.dumps({"path": self.path, "error": f"signature: {e}"}) + "\n")
            return self.answer(401)
        try:
            event = ce_http.from_http_event(ce_http.HTTPMessage(headers=headers, body=body))
        except Exception as e:  # the SDK refused it: a bug on the sending side
            with lock:
                errors.write(json.dumps({"path": self.path, "error": f"cloudevent: {e!r}"}) + "\n")
            return self.answer(400)
        data = event.get_data()
        if isinstance(data, (bytes, str)):
            data = json.loads(data)
        time = event.get_time()
        line = {
            "path": self.path,
            "mode": "binary" if "ce-id" in headers else "structured",
            "webhook_id": headers["webhook-id"],
            "id": event.get_id(),
            "type": event.get_type(),
            "subject": event.get_subject(),
            "time": time.isoformat() if time else None,
            "data": data,
        }
        with lock:
            out.write(json.dumps(line) + "\n")
        self.answer(204)


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(f"listening on {port}", flush=True)
server.serve_forever()
