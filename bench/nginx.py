"""nginx as a plain reverse proxy, for reference: one worker, keep-alive upstream, no buffering."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

NGINX = "/usr/sbin/nginx"

_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream engine {{
        server {upstream};
        keepalive 512;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def nginx_path() -> str | None:
    if os.access(NGINX, os.X_OK):
        return NGINX
    return shutil.which("nginx")


def nginx_argv(binary: str, workdir: Path, port: int, upstream_hostport: str) -> list[str]:
    """Write a config under ``workdir`` (no system paths) and return the command line."""
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)  # workers may run as nobody when we are root
    conf = workdir / "nginx.conf"
    conf.write_text(_CONF.format(dir=workdir, port=port, upstream=upstream_hostport))
    return [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
