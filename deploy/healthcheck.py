"""The image's health check: exit 0 once ALICE is ready (`/readyz` answers 2xx), 1 otherwise.

Python's standard library rather than curl, so the image needs no Debian package beyond its
base image's. It runs inside the container, next to the server:
- the port follows PORT, then BENTOML_PORT, then 3000, as the image's entrypoint does;
- with ALICE_TLS_CERTFILE set the server speaks only HTTPS, with a certificate made for the
  host's public names, not 127.0.0.1: the check does not verify it (as `curl -k`);
- it never goes through HTTP_PROXY/HTTPS_PROXY, which a container may have for downloads.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request

TIMEOUT_S = 4  # under the HEALTHCHECK's --timeout=5s, so a slow answer is reported here


def readyz_url() -> str:
    port = os.environ.get("PORT") or os.environ.get("BENTOML_PORT") or "3000"
    scheme = "https" if os.environ.get("ALICE_TLS_CERTFILE") else "http"
    return f"{scheme}://127.0.0.1:{port}/readyz"


def main() -> int:
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=unverified)
    )
    url = readyz_url()
    try:
        with opener.open(url, timeout=TIMEOUT_S):
            return 0
    except OSError as error:  # refused, timed out, TLS failure, or a 4xx/5xx (HTTPError)
        print(f"{url}: {error}", file=sys.stderr)  # docker inspect shows it in .State.Health
        return 1


if __name__ == "__main__":
    sys.exit(main())
