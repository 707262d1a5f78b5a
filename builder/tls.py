"""TLS for every outbound HTTPS client (registries, webhooks, fetched inputs): httpx's default
context, made once per process and CA setting.

Loading the CA bundle takes ~40 ms of CPU: a third of a LoRA build's time (a build opens two
clients) and nearly all of a webhook attempt's. Keyed by ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` so
that an operator's CA (or a test's) still takes effect.
"""

from __future__ import annotations

import functools
import os
import ssl

import httpx


def tls_context() -> ssl.SSLContext:
    """The shared context for the current CA setting."""
    return _context_for(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.cache
def _context_for(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()
