"""Test certificates made with the ``openssl`` command, and a probe of a server's TLS.

:class:`Authority` is a certificate authority in a directory of its own (an EC P-256 key
and a self-signed certificate); :meth:`Authority.issue` signs a certificate for a server
(``hosts``: DNS names and IP addresses in its subjectAltName) or for a client (its common
name is the PostgreSQL role, as ``cert`` authentication expects), valid over any window,
past ones included (``openssl ca -startdate/-enddate``: ``-days`` cannot be negative).
Passphrases reach ``openssl`` through its environment, never its command line.

:func:`served_certificate` reads the certificate a PostgreSQL server presents on TCP
(``SSLRequest``, then a handshake that checks nothing).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

__all__ = ["Authority", "Issued", "TlsError", "missing_openssl", "served_certificate"]

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
"""PostgreSQL's SSLRequest message: length 8, then the request code."""

KEY_OPTIONS = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")

CA_CONFIG = """\
[ca]
default_ca = authority

[authority]
database = {directory}/index.txt
new_certs_dir = {directory}/issued
certificate = {directory}/ca.crt
private_key = {directory}/ca.key
serial = {directory}/serial
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none

[anything]
commonName = supplied
"""


class TlsError(RuntimeError):
    """An ``openssl`` command failed; the message holds its error output."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


def missing_openssl() -> str | None:
    """Why certificates cannot be made here, or None when they can."""
    return None if shutil.which("openssl") else "the openssl command is not installed"


def _openssl(*args: str, env: dict[str, str] | None = None) -> None:
    try:
        done = subprocess.run(
            ["openssl", *args],
            capture_output=True,
            timeout=60,
            env={**os.environ, **(env or {})},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TlsError(f"openssl {args[0]} failed: {error}") from None
    if done.returncode != 0:
        output = done.stderr.decode(errors="replace").strip()
        raise TlsError(f"openssl {args[0]} failed: {output[-2000:]}")


def _stamp(moment: datetime) -> str:
    """``moment`` in the GeneralizedTime form ``openssl ca`` takes (YYYYMMDDHHMMSSZ)."""
    return moment.astimezone(timezone.utc).strftime("%Y%m%d%H%M%SZ")


class Authority:
    """A certificate authority in ``directory`` (created if needed): ``cert`` is its
    self-signed certificate, valid from a day ago for ``days`` days."""

    def __init__(self, directory: Path, name: str = "leadership test CA", days: int = 30) -> None:
        self.directory = directory
        (directory / "issued").mkdir(parents=True, exist_ok=True)
        (directory / "index.txt").touch()
        self._config = directory / "ca.cnf"
        self._config.write_text(CA_CONFIG.format(directory=directory))
        self.cert = directory / "ca.crt"
        self.key = directory / "ca.key"
        _openssl(
            *("req", "-x509", "-new", *KEY_OPTIONS, "-keyout", str(self.key)),
            *("-out", str(self.cert), "-days", str(days), "-subj", f"/CN={name}"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        )

    def issue(
        self,
        name: str,
        common_name: str,
        *,
        hosts: Sequence[str] = (),
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        passphrase: str | None = None,
    ) -> Issued:
        """Sign a new key's certificate, written as ``<name>.crt`` and ``<name>.key``.

        ``hosts`` (DNS names or IP addresses) make a server certificate, none a client
        one. The validity defaults to from an hour ago to a day ahead. With
        ``passphrase`` the key file is encrypted (AES-256, PKCS#8).
        """
        now = datetime.now(timezone.utc)
        start = not_before or now - timedelta(hours=1)
        end = not_after or now + timedelta(days=1)
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        request, extensions = self.directory / f"{name}.csr", self.directory / f"{name}.ext"
        usage = "serverAuth" if hosts else "clientAuth"
        lines = [
            "[extensions]",
            "basicConstraints = critical,CA:FALSE",
            "keyUsage = critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage = {usage}",
        ]
        if hosts:
            lines.append("subjectAltName = " + ",".join(_alt_name(host) for host in hosts))
        extensions.write_text("\n".join(lines) + "\n")
        plain_key = key if passphrase is None else self.directory / f"{name}.plain.key"
        _openssl(
            *("req", "-new", *KEY_OPTIONS, "-keyout", str(plain_key)),
            *("-out", str(request), "-subj", f"/CN={common_name}"),
        )
        _openssl(
            *("ca", "-batch", "-notext", "-create_serial", "-config", str(self._config)),
            *("-in", str(request), "-out", str(cert)),
            *("-startdate", _stamp(start), "-enddate", _stamp(end)),
            *("-extfile", str(extensions), "-extensions", "extensions"),
        )
        if passphrase is not None:
            _openssl(
                *("pkey", "-in", str(plain_key), "-out", str(key), "-aes256"),
                *("-passout", "env:LEADERSHIP_TEST_PASSPHRASE"),
                env={"LEADERSHIP_TEST_PASSPHRASE": passphrase},
            )
            plain_key.unlink()
        key.chmod(0o600)
        return Issued(cert, key)


def _alt_name(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"DNS:{host}"
    return f"IP:{host}"


def served_certificate(host: str, port: int, timeout: float = 5.0) -> bytes | None:
    """The DER certificate the PostgreSQL server at ``host:port`` presents, or None when
    it answers the SSLRequest with "no TLS here". Nothing is verified."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout) as sock:
        sock.sendall(SSL_REQUEST)
        if sock.recv(1) != b"S":
            return None
        with context.wrap_socket(sock, server_hostname=host) as tls:
            return tls.getpeercert(binary_form=True)
