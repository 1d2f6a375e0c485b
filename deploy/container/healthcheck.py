"""The container's HEALTHCHECK: is the gateway's control listener answering ``/healthz``?

Run by the container runtime inside the container (no curl in a slim image). Exit 0 when
``LOCKGATE_HEALTH_URL`` (default ``https://127.0.0.1:8470/healthz``) answers 200 within two
seconds, else 1 with the reason on stderr. Over HTTPS the certificate is checked against
``LOCKGATE_HEALTH_CA`` when it is set; without it only the answer is checked (the probe
dials the gateway's own loopback address and sends nothing secret).
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "https://127.0.0.1:8470/healthz"


def probe(url: str, ca_file: str | None, timeout: float = 2.0) -> str | None:
    """None when ``url`` answers 200, else why not."""
    context = None
    if url.startswith("https:"):
        if ca_file:
            context = ssl.create_default_context(cafile=ca_file)
        else:  # loopback only: the liveness of our own process, not a trust decision
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:  # noqa: S310
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def main() -> int:
    url = os.environ.get("LOCKGATE_HEALTH_URL", DEFAULT_URL)
    problem = probe(url, os.environ.get("LOCKGATE_HEALTH_CA") or None)
    if problem is not None:
        print(f"lockgate healthcheck: {url}: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
