"""Exec probe for electra-serve under mutual TLS (deploy/k8s/components/mtls).

    python -S https-probe.py /health/ready

GETs https://127.0.0.1:$ELECTRA_HTTP_PORT/<path> presenting the pod's own certificate
($ELECTRA_TLS_CERT / $ELECTRA_TLS_KEY, issued with the `client auth` usage) and verifying the
server's chain against $ELECTRA_TLS_CLIENT_CA, the CA that signs both. Exit 0 on a 2xx answer,
1 otherwise (503 while loading or draining, refused, handshake failure), with the reason on stderr
for `kubectl describe pod`. Standard library only: `-S` skips site-packages to start faster.
"""

import os
import ssl
import sys
import urllib.request


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "/health/ready"
    url = f"https://127.0.0.1:{os.environ.get('ELECTRA_HTTP_PORT', '8000')}{path}"
    try:
        context = ssl.create_default_context(cafile=os.environ["ELECTRA_TLS_CLIENT_CA"])
        # The certificate names the Services, not the loopback address; the chain is still checked.
        context.check_hostname = False
        context.load_cert_chain(os.environ["ELECTRA_TLS_CERT"], os.environ["ELECTRA_TLS_KEY"])
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return 0 if 200 <= response.status < 300 else 1
    except Exception as exc:  # the probe's answer is its exit code; say why on stderr
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
