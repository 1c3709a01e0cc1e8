"""TLS for real: every documented ``sslmode`` and client certificates against a throwaway
cluster with ``ssl = on`` and a CA made here with openssl (harness.tls).

Whether a connection is encrypted is read from the server (``pg_stat_ssl`` for the
flag's backends, found by ``application_name``), never assumed. One cluster serves the
whole module; tests that need another server certificate install it, reload the server
and put the good one back. Without PostgreSQL's server binaries or openssl these tests
skip with the reason, unless ``LEADERSHIP_REQUIRE_POSTGRES`` is set: then they fail.
"""

from __future__ import annotations

import logging
import ssl
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

import pytest

import leadership
from harness.cluster import Cluster, missing_tools
from harness.sql import run_sql
from harness.tls import Authority, Issued, missing_openssl, served_certificate
from leadership.backends import open_store
from leadership.store import TABLE
from tests.conftest import require

PASSWORD = "Pw-" + uuid.uuid4().hex  # pwuser's password: must never be shown
PASSPHRASE = "Pp-" + uuid.uuid4().hex  # the encrypted client key's passphrase

SERVER_FILES = ("server.crt", "server.key")
TLS_SETTINGS = {
    "ssl": "on",
    "ssl_cert_file": "server.crt",  # relative to the data directory
    "ssl_key_file": "server.key",
    "ssl_ca_file": "ca.crt",  # the CA client certificates must come from
}
HBA = [  # first match wins: these roles get in only over TLS, with their credentials
    "hostssl all certuser 127.0.0.1/32 cert",
    "host all certuser all reject",
    "hostssl all pwuser 127.0.0.1/32 scram-sha-256",
    "host all pwuser all reject",
]


@dataclass(frozen=True)
class Certificates:
    ca: Authority
    other_ca: Authority  # a CA nobody trusts here
    server: Issued  # localhost and 127.0.0.1
    wrong_host: Issued  # only wrong-host.example
    expired: Issued  # localhost and 127.0.0.1, valid for a day in 2001
    client: Issued  # CN=certuser
    foreign_client: Issued  # CN=certuser, from other_ca
    encrypted_client: Issued  # CN=certuser, key encrypted with PASSPHRASE


@dataclass(frozen=True)
class Server:
    cluster: Cluster
    certs: Certificates

    def dsn(self, user: str = "postgres", password: str = "", **query: str) -> str:
        secret = f":{password}" if password else ""
        base = f"postgresql://{user}{secret}@127.0.0.1:{self.cluster.port}/postgres"
        return f"{base}?{urlencode(query)}" if query else base

    def admin(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        return run_sql(self.dsn(sslmode="disable"), sql, params)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    require(missing_openssl())
    directory = tmp_path_factory.mktemp("tls")
    ca = Authority(directory / "ca")
    other_ca = Authority(directory / "other-ca", name="another CA")
    local = ("localhost", "127.0.0.1")
    long_ago = datetime(2001, 1, 1, tzinfo=timezone.utc)
    return Certificates(
        ca=ca,
        other_ca=other_ca,
        server=ca.issue("server", "localhost", hosts=local),
        wrong_host=ca.issue("wrong-host", "wrong-host.example", hosts=("wrong-host.example",)),
        expired=ca.issue(
            "expired",
            "localhost",
            hosts=local,
            not_before=long_ago,
            not_after=long_ago.replace(day=2),
        ),
        client=ca.issue("client", "certuser"),
        foreign_client=other_ca.issue("foreign-client", "certuser"),
        encrypted_client=ca.issue("encrypted-client", "certuser", passphrase=PASSPHRASE),
    )


@pytest.fixture(scope="module")
def server(certs: Certificates) -> Iterator[Server]:
    require(missing_tools())
    files = {
        "server.crt": certs.server.cert,
        "server.key": certs.server.key,
        "ca.crt": certs.ca.cert,
    }
    with Cluster(settings=TLS_SETTINGS, files=files, hba=HBA) as cluster:
        running = Server(cluster, certs)
        open_store(running.dsn(sslmode="disable"), timeout=10.0).close()  # creates the table
        running.admin("CREATE ROLE certuser LOGIN")
        running.admin(f"CREATE ROLE pwuser LOGIN PASSWORD '{PASSWORD}'")
        running.admin(f"GRANT SELECT, INSERT, UPDATE ON {TABLE} TO certuser, pwuser")
        yield running


def build(dsn: str) -> leadership.Flag:
    """A flag on ``dsn`` with a fresh name (interval 3 s, timeout 1 s)."""
    builder = leadership.new_flag().handle(dsn).name(f"tls-{uuid.uuid4().hex[:10]}")
    return builder.process("tls-test").interval(3.0).jitter(0.0).timeout(1.0).build()


def connected(server: Server, **query: str) -> list[tuple[bool, str | None, str | None]]:
    """Build a flag with ``query`` (``user`` and ``password`` go in the DSN's user
    information) and return (ssl, TLS version, client certificate DN) for each of its
    backends, read from pg_stat_ssl by a unique application_name."""
    user = query.pop("user", "postgres")
    password = query.pop("password", "")
    application_name = f"tls-{uuid.uuid4().hex[:12]}"
    flag = build(server.dsn(user, password, application_name=application_name, **query))
    try:
        rows = server.admin(
            "SELECT s.ssl, s.version, s.client_dn FROM pg_stat_ssl s"
            " JOIN pg_stat_activity a USING (pid) WHERE a.application_name = %s",
            (application_name,),
        )
    finally:
        flag.close()
    assert rows, f"no backend of the flag found for {query}"
    return [(bool(tls), version, client_dn) for tls, version, client_dn in rows]


def refused(server: Server, **query: str) -> str:
    """The message of the error ``build()`` raises for ``query``: one line."""
    user = query.pop("user", "postgres")
    password = query.pop("password", "")
    with pytest.raises(leadership.LeadershipError) as caught:
        build(server.dsn(user, password, **query)).close()
    message = str(caught.value)
    assert "\n" not in message, message
    return message


@contextmanager
def serving(server: Server, issued: Issued) -> Iterator[None]:
    """The server presents ``issued`` (then the good certificate again)."""
    try:
        _present(server, issued)
        yield
    finally:
        _present(server, server.certs.server)


def _present(server: Server, issued: Issued) -> None:
    server.cluster.install("server.crt", issued.cert)
    server.cluster.install("server.key", issued.key)
    server.cluster.reload()
    wanted = ssl.PEM_cert_to_DER_cert(issued.cert.read_text())
    deadline = time.monotonic() + 10
    while served_certificate("127.0.0.1", server.cluster.port) != wanted:
        assert time.monotonic() < deadline, server.cluster.log_tail()
        time.sleep(0.02)


# Each sslmode against a server with TLS on: whether the flag's connection is encrypted.


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("mode", "encrypted"),
    [
        ("disable", False),
        ("allow", True),  # unlike libpq's allow (plain first): TLS whenever offered
        ("prefer", True),
        ("require", True),
        ("verify-ca", True),
        ("verify-full", True),
    ],
)
def test_each_sslmode_on_a_tls_server(server: Server, mode: str, encrypted: bool) -> None:
    query = {"sslmode": mode}
    if mode.startswith("verify-"):
        query["sslrootcert"] = str(server.certs.ca.cert)
    found = connected(server, **query)
    assert [tls for tls, _, _ in found] == [encrypted] * len(found)
    if encrypted:
        assert all(version and version.startswith("TLS") for _, version, _ in found), found


@pytest.mark.postgres
def test_allow_and_prefer_fall_back_to_plain_without_tls_and_require_refuses(
    server: Server,
) -> None:
    cluster = server.cluster
    cluster.settings["ssl"] = "off"
    cluster.restart()
    try:
        assert served_certificate("127.0.0.1", cluster.port) is None  # no TLS offered
        for mode in ("allow", "prefer"):
            assert {tls for tls, _, _ in connected(server, sslmode=mode)} == {False}
        message = refused(server, sslmode="require")
        assert "Server refuses SSL" in message
    finally:
        cluster.settings["ssl"] = "on"
        cluster.restart()


# Certificate checks: the CA, the host name or address, the validity.


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["verify-ca", "verify-full", "require"])
def test_a_wrong_ca_fails_build_naming_the_cause(server: Server, mode: str) -> None:
    root = str(server.certs.other_ca.cert)
    message = refused(server, sslmode=mode, sslrootcert=root)
    assert "the server's TLS certificate was rejected" in message
    assert "not issued by a CA in sslrootcert" in message
    assert root in message  # which CA file was used


@pytest.mark.postgres
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_verify_full_checks_the_host_name_and_address(server: Server, host: str) -> None:
    root = str(server.certs.ca.cert)
    assert connected(server, sslmode="verify-full", sslrootcert=root, host=host)[0][0]
    with serving(server, server.certs.wrong_host):
        message = refused(server, sslmode="verify-full", sslrootcert=root, host=host)
        kind = "Hostname" if host == "localhost" else "IP address"
        assert f"{kind} mismatch, certificate is not valid for '{host}'" in message
        assert "the server's TLS certificate was rejected" in message
        # The same certificate passes verify-ca: only verify-full looks at the name.
        assert connected(server, sslmode="verify-ca", sslrootcert=root, host=host)[0][0]


@pytest.mark.postgres
def test_an_expired_certificate_fails_verification(server: Server) -> None:
    root = str(server.certs.ca.cert)
    with serving(server, server.certs.expired):
        for mode in ("verify-ca", "verify-full"):
            message = refused(server, sslmode=mode, sslrootcert=root)
            assert message.endswith(
                "the server's TLS certificate was rejected: certificate has expired"
            ), message
        # require without sslrootcert checks nothing, as documented, but still encrypts.
        assert connected(server, sslmode="require")[0][0]


# Client certificates: cert authentication in pg_hba.conf.


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["prefer", "require", "verify-full"])
def test_a_client_certificate_authenticates_the_role(server: Server, mode: str) -> None:
    client = server.certs.client
    query = {"sslmode": mode, "sslcert": str(client.cert), "sslkey": str(client.key)}
    if mode == "verify-full":
        query["sslrootcert"] = str(server.certs.ca.cert)
    found = connected(server, user="certuser", **query)
    assert found == [(True, found[0][1], "/CN=certuser")] * len(found)


@pytest.mark.postgres
def test_cert_authentication_refuses_without_a_trusted_client_certificate(
    server: Server,
) -> None:
    message = refused(server, user="certuser", sslmode="require")
    assert "connection requires a valid client certificate" in message
    foreign = server.certs.foreign_client
    refused(server, user="certuser", sslcert=str(foreign.cert), sslkey=str(foreign.key))
    client = server.certs.client
    message = refused(
        server, user="certuser", sslmode="disable", sslcert=str(client.cert), sslkey=str(client.key)
    )
    assert "no encryption" in message


# Files and secrets: bad files are named, no secret is ever shown.


def test_an_encrypted_client_key_is_refused_at_once(certs: Certificates) -> None:
    key = certs.encrypted_client
    dsn = (
        f"postgresql://certuser@127.0.0.1:1/db?sslmode=require&sslcert={key.cert}&sslkey={key.key}"
    )
    with pytest.raises(leadership.ConfigurationError) as caught:
        leadership.new_flag().handle(dsn).name("x").build()  # never prompts on a terminal
    message = str(caught.value)
    assert f"sslkey '{key.key}' is encrypted with a passphrase, which is not supported" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("sslrootcert=/nonexistent/ca.crt", "sslrootcert '/nonexistent/ca.crt': No such file"),
        ("sslmode=verify-ca&sslrootcert={key}", "not a PEM certificate or key"),
        ("sslcert={cert}&sslkey={other_key}", "the key does not match the certificate"),
        ("sslkey={key}", "sslkey needs sslcert"),
    ],
)
def test_unusable_certificate_files_are_named(
    certs: Certificates, query: str, expected: str
) -> None:
    query = query.format(
        cert=certs.client.cert, key=certs.client.key, other_key=certs.foreign_client.key
    )
    if "sslmode" not in query:
        query += "&sslmode=verify-full"
    with pytest.raises(leadership.ConfigurationError, match="handle: ") as caught:
        leadership.new_flag().handle(f"postgresql://u@127.0.0.1:1/db?{query}").name("x").build()
    assert expected in str(caught.value)


def test_a_key_passphrase_in_the_dsn_is_refused_and_never_shown() -> None:
    dsn = f"postgresql://u:{PASSWORD}@127.0.0.1:1/db?sslmode=require&sslpassword={PASSPHRASE}"
    with pytest.raises(leadership.ConfigurationError) as caught:
        leadership.new_flag().handle(dsn).name("x").build()
    message = str(caught.value)
    assert "unsupported DSN parameter(s) ['sslpassword']" in message
    assert PASSWORD not in message and PASSPHRASE not in message


@pytest.mark.postgres
def test_no_password_in_errors_or_logs(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    root = str(server.certs.ca.cert)
    assert connected(server, user="pwuser", password=PASSWORD, sslmode="verify-full",
                     sslrootcert=root)[0][0]  # fmt: skip
    messages = [
        refused(server, user="pwuser", password=PASSWORD, sslmode="verify-full",
                sslrootcert=str(server.certs.other_ca.cert)),
        refused(server, user="pwuser", password=PASSWORD + "x", sslmode="require"),
    ]  # fmt: skip
    assert "password authentication failed" in messages[1]
    # A running flag whose reconnection meets an expired certificate logs why, and only that.
    dsn = server.dsn("pwuser", PASSWORD, sslmode="verify-full", sslrootcert=root)
    flag = build(dsn)
    try:
        with serving(server, server.certs.expired):
            server.admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'pwuser'"
            )
            deadline = time.monotonic() + 10
            while "certificate has expired" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.05)
    finally:
        flag.close()
    for text in [*messages, caplog.text, server.cluster.log_tail(100_000)]:
        assert PASSWORD not in text
