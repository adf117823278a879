"""A small threaded HTTP service that embeds kvs in its own configuration.

It owns its ``cfg.ConfigOpts``, its options (``[DEFAULT] bind_host`` and
``bind_port``), a ``--trace`` flag and its config file, which also holds
``[kvs]`` and ``[store:counter]``.  kvs is embedded the way oslo.cache is:

1. ``kvs.register_opts(CONF)`` before the service parses anything;
2. the service parses its own arguments and files, as it always does;
3. ``kvs.configure_stores(CONF)`` configures the stores of that same CONF.

Run it with ``python examples/counter_service.py --config-file service.conf``;
``GET /hit`` counts one hit with ``update()`` (no lost update across threads
and processes) and ``GET /settings`` shows the service's own settings.  It
prints ``listening on HOST:PORT`` once it serves.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from oslo_config import cfg

import kvs

CONF = cfg.ConfigOpts()
CONF.register_opts([
    cfg.HostAddressOpt("bind_host", default="127.0.0.1", help="Address to listen on."),
    cfg.PortOpt("bind_port", default=8081, help="Port to listen on (0: any free port)."),
])
CONF.register_cli_opt(cfg.BoolOpt("trace", default=False, help="Log every request."))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/hit":
            store = kvs.get_key_value_store("counter")
            body: Any = {"hits": store.update("hits", lambda n: n + 1, default=0)}
        elif self.path == "/settings":
            body = {"bind_port": CONF.bind_port, "trace": CONF.trace,
                    "config_file": list(CONF.config_file), "project": CONF.project,
                    "lock_timeout": kvs.get_key_value_store("counter").lock_timeout}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if CONF.trace:
            super().log_message(format, *args)


def main(argv: Sequence[str] | None = None) -> None:
    kvs.register_opts(CONF)                                    # 1. before parsing
    CONF(list(sys.argv[1:] if argv is None else argv), project="counter-service")  # 2.
    kvs.configure_stores(CONF)                                 # 3. after parsing
    server = ThreadingHTTPServer((CONF.bind_host, CONF.bind_port), Handler)
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
