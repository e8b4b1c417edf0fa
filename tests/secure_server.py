"""Test material for secured servers: a self-made CA with server and client certificates, and `.creds` files.

`make_pki(folder)` writes a CA, a server certificate for 127.0.0.1/localhost and a client
certificate, all signed by that CA (the `cryptography` package). `Operator(folder)` plays the part
of `nsc`: an operator, one account with JetStream and user JWTs, signed with nkeys, and the
server configuration (`operator` + a memory resolver) that trusts them.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files `make_pki` wrote."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
                 issuer_key: ec.EllipticCurvePrivateKey, extensions: list[tuple[Any, bool]]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    """A CA and a server and a client certificate it signed, as PEM files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(*(folder / name for name in ("ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("naq test CA", ca_key, None, ca_key, [(x509.BasicConstraints(ca=True, path_length=0), True)])
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    leaf = [(x509.BasicConstraints(ca=False, path_length=None), True)]
    server_names = x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server_use = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    server = _certificate("127.0.0.1", _write_key(pki.server_key), ca.subject, ca_key,
                          [*leaf, (server_names, False), (server_use, False)])
    pki.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    client = _certificate("naq client", _write_key(pki.client_key), ca.subject, ca_key,
                          [*leaf, (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)])
    pki.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    return pki


def tls_config(pki: Pki, *, verify: bool) -> str:
    """A nats-server `tls` block serving `pki`'s server certificate (`verify`: clients need one from the CA)."""
    return (f'tls {{\n  cert_file: "{pki.server_cert}"\n  key_file: "{pki.server_key}"\n'
            f'  ca_file: "{pki.ca}"\n  verify: {str(verify).lower()}\n  timeout: 5\n}}\n')


# --- operator mode: what `nsc` would make ---


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def new_keys(prefix: int) -> nkeys.KeyPair:
    """A fresh nkey pair of one role (nkeys.PREFIX_BYTE_OPERATOR, _ACCOUNT or _USER)."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def encode_jwt(issuer: nkeys.KeyPair, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT (v2) with `nats` claims about `subject`, signed by `issuer`."""
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name,
                              "sub": subject, "nats": {**nats, "version": 2}}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()).decode()
    header = json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode()
    signing_input = f"{_b64(header)}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(issuer.sign(signing_input.encode()))}"


UNLIMITED_ACCOUNT = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
                     "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


class Operator:
    """An operator with one JetStream account; `creds(name)` writes a user's `.creds` file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.keys = new_keys(nkeys.PREFIX_BYTE_OPERATOR)
        self.account = new_keys(nkeys.PREFIX_BYTE_ACCOUNT)
        self.account_id = self.account.public_key.decode()
        self.operator_jwt = encode_jwt(self.keys, self.keys.public_key.decode(), "naq-test", {"type": "operator"})
        self.account_jwt = encode_jwt(self.keys, self.account_id, "NAQ", {
            "type": "account", "limits": UNLIMITED_ACCOUNT, "default_permissions": {"pub": {}, "sub": {}}})
        system = new_keys(nkeys.PREFIX_BYTE_ACCOUNT)  # JetStream needs a system account in operator mode
        self.system_id = system.public_key.decode()
        self.system_jwt = encode_jwt(self.keys, self.system_id, "SYS", {"type": "account"})

    def server_config(self) -> str:
        """nats-server settings trusting this operator, with its account preloaded."""
        return (f'operator: "{self.operator_jwt}"\nsystem_account: {self.system_id}\nresolver: MEMORY\n'
                f'resolver_preload: {{\n  {self.account_id}: "{self.account_jwt}"\n'
                f'  {self.system_id}: "{self.system_jwt}"\n}}\n')

    def creds(self, name: str, account: nkeys.KeyPair | None = None) -> Path:
        """Write `<name>.creds` for a new user of the account (signed by `account`, default the real one)."""
        user = new_keys(nkeys.PREFIX_BYTE_USER)
        user_jwt = encode_jwt(account or self.account, user.public_key.decode(), name, {
            "type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1})
        path = self.folder / f"{name}.creds"
        path.write_text(f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
                        f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n")
        path.chmod(0o600)
        return path
