"""Make the credentials of a compose stack or a test cluster: a CA, a certificate per identity
with the names the peers dial, the token issuer's keys and the identifier secret.

    .venv/bin/python deploy/make_credentials.py deploy/k8s/credentials          # Kubernetes
    python /app/deploy/make_credentials.py /credentials                         # compose's init

Everything lands in one directory, private keys mode 0600; what exists is kept, so running it
again changes nothing (and never replaces the identifier secret, which would re-key every
person). Each service then gets only its own files: compose mounts the directory (one local
stack, one user), Kubernetes builds one Secret per service from it (k8s/kustomization.yaml).

The certificates come from services/_common/pki.py's development CA, with one addition: the DNS
names the services reach each other by (`risk-index`, `colour-headless.healthcode.svc`, ...),
since grpc checks the name it dialled against the certificate. A production deployment issues
the same SPIFFE IDs and names from its own CA instead (cert-manager, Vault's PKI engine): see
deploy/README.md.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from services._common.auth import create_issuer_keys
from services._common.exchange import DEFAULT_PROVINCES, load_exchange_keys, load_provinces
from services._common.pki import DEV_IDENTITIES, DevPki

IDENTIFIER_SECRET = "identifier.secret"
POSTGRES_DSN = "postgres.dsn"
# Services by identity (their certificate's file name) and the DNS name of their Service.
SERVICE_HOSTS = {
    "declaration": "declaration",
    "risk_index": "risk-index",
    "colour": "colour",
    "display": "display",
    "gateway": "gateway",
}
# Extra Kubernetes Services a client may dial instead (client-side round robin over colour).
EXTRA_HOSTS = {"colour": ("colour-headless",)}


def hosts_for(identity: str, namespace: str) -> tuple[str, ...]:
    """The names `identity` is dialled by: compose's service name, and the Kubernetes Service
    names in `namespace` (short, namespaced and fully qualified)."""
    short = SERVICE_HOSTS.get(identity)
    if short is None:
        return ()
    names: list[str] = []
    for host in (short, *EXTRA_HOSTS.get(identity, ())):
        names += [
            host,
            f"{host}.{namespace}",
            f"{host}.{namespace}.svc",
            f"{host}.{namespace}.svc.cluster.local",
        ]
    return tuple(names)


def make_credentials(directory: Path, namespace: str = "healthcode") -> list[str]:
    """Everything a stack needs in `directory`; returns the files made now (not those kept)."""
    directory.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in directory.iterdir()}
    pki = DevPki.create(directory)
    for identity, spiffe_id in DEV_IDENTITIES.items():
        pki.issue(spiffe_id, identity, hosts=hosts_for(identity, namespace))
    create_issuer_keys(directory)
    # The keys agreed with each province (services/_common/exchange.py): the declaration
    # service computes each person's hashes with them, the risk index reads them to match an
    # import; both read the same files (HEALTHCODE_PROVINCE_KEYS=/credentials). Random here:
    # a deployment installs the keys it agreed with each province instead.
    load_exchange_keys(directory, list(load_provinces(DEFAULT_PROVINCES)), create=True)
    dsn_path = directory / POSTGRES_DSN
    if not dsn_path.exists():
        # The database's DSN for the services that keep tables (docs/storage.md): the host
        # is the cluster's `postgres` Service; the password is new, for the server to take.
        dsn = (
            f"host=postgres.{namespace}.svc port=5432 dbname=healthcode user=healthcode "
            f"password={secrets.token_urlsafe(24)}"
        )
        fd = os.open(dsn_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(dsn)
    secret_path = directory / IDENTIFIER_SECRET
    if not secret_path.exists():
        # The form `openssl rand -hex 32` prints, which HEALTHCODE_SECRET_FILE reads.
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32) + "\n")
    return sorted(p.name for p in directory.iterdir() if p.name not in before)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where the files go (made if missing)")
    parser.add_argument(
        "--namespace", default="healthcode", help="the Kubernetes namespace (default healthcode)"
    )
    args = parser.parse_args(argv)
    made = make_credentials(args.directory, args.namespace)
    if made:
        print(f"made in {args.directory}: {', '.join(made)}")
    else:
        print(f"{args.directory}: every file was there already; nothing changed")
    print("keep ca.key and issuer.key off every machine that does not issue credentials")
    return 0


if __name__ == "__main__":
    sys.exit(main())
