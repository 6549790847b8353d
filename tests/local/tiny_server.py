"""A tiny HTTP server run as a Deployment's container in the executor tests.

`--port`/`--host` as the executor sets them; `--config-file PATH` is served at /config;
`/ready` answers 200 (with `--ready-file PATH`: only once that file exists); `/env/NAME` answers an environment variable; `/pid` the pid."""

import argparse
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="0.0.0.0")
parser.add_argument("--config-file")
parser.add_argument("--ready-file")
args = parser.parse_args()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/ready":
            if args.ready_file and not os.path.exists(args.ready_file):
                self.send_error(503)
                return
            body = b"ok"
        elif self.path == "/config" and args.config_file:
            with open(args.config_file, "rb") as handle:
                body = handle.read()
        elif self.path.startswith("/env/"):
            body = os.environ.get(self.path[5:], "").encode()
        elif self.path == "/pid":
            body = str(os.getpid()).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
