"""The control plane's own TLS material: generation, reuse, renewal, provided files, real handshakes."""

from __future__ import annotations

import asyncio
import socket
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from controlplane import tls
from controlplane.tls import CpTls, TlsError, cert_sans, client_ssl_context, ensure_cp_tls


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generates_ca_and_server_cert(tmp_path: Path) -> None:
    cp = ensure_cp_tls(tmp_path, None, None, ["cp.example.com", "198.18.0.10"])
    tls_dir = tmp_path / "tls"
    assert cp.generated
    assert (cp.cert_file, cp.key_file, cp.ca_file) == (tls_dir / "server.crt", tls_dir / "server.key",
                                                        tls_dir / "ca.crt")
    assert cp.cert_pem == cp.cert_file.read_bytes() and cp.key_pem == cp.key_file.read_bytes()
    assert cp.ca_pem == cp.ca_file.read_bytes()  # type: ignore[union-attr]

    ca = load_cert(tls_dir / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.not_valid_after_utc - datetime.now(UTC) > timedelta(days=3640)

    server = load_cert(tls_dir / "server.crt")
    server.verify_directly_issued_by(ca)
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert timedelta(days=360) < server.not_valid_after_utc - datetime.now(UTC) <= timedelta(days=366)
    sans = cert_sans(server)
    assert {"localhost", "127.0.0.1", "::1", socket.gethostname().lower(), "cp.example.com",
            "198.18.0.10"} <= sans
    san_ext = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "198.18.0.10" in {str(ip) for ip in san_ext.get_values_for_type(x509.IPAddress)}


def test_permissions(tmp_path: Path) -> None:
    ensure_cp_tls(tmp_path, None, None, [])
    tls_dir = tmp_path / "tls"
    assert mode(tls_dir) == 0o700
    assert mode(tls_dir / "server.key") == 0o600
    assert mode(tls_dir / "ca.key") == 0o600
    assert not [p for p in tls_dir.iterdir() if p.name.endswith(".tmp")]


def test_reuse_gives_the_same_bytes(tmp_path: Path) -> None:
    first = ensure_cp_tls(tmp_path, None, None, ["cp.example.com"])
    second = ensure_cp_tls(tmp_path, None, None, ["cp.example.com"])
    assert (first.ca_pem, first.cert_pem, first.key_pem) == (second.ca_pem, second.cert_pem, second.key_pem)
    # asking for a subset of the SANs needs no new certificate either
    assert ensure_cp_tls(tmp_path, None, None, []).cert_pem == first.cert_pem


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    ensure_cp_tls(tmp_path, None, None, [])
    tls_dir = tmp_path / "tls"
    tls_dir.chmod(0o755)
    (tls_dir / "server.key").chmod(0o644)
    ensure_cp_tls(tmp_path, None, None, [])
    assert mode(tls_dir) == 0o700 and mode(tls_dir / "server.key") == 0o600


def test_missing_san_reissues_server_cert_not_ca(tmp_path: Path) -> None:
    first = ensure_cp_tls(tmp_path, None, None, [])
    second = ensure_cp_tls(tmp_path, None, None, ["new.example.com", "10.0.0.7"])
    assert second.ca_pem == first.ca_pem
    assert second.cert_pem != first.cert_pem and second.key_pem != first.key_pem
    sans = cert_sans(load_cert(second.cert_file))
    assert {"new.example.com", "10.0.0.7", "localhost"} <= sans


def test_expiring_server_cert_is_reissued(tmp_path: Path) -> None:
    first = ensure_cp_tls(tmp_path, None, None, [])
    tls_dir = tmp_path / "tls"
    ca = load_cert(tls_dir / "ca.crt")
    ca_key = serialization.load_pem_private_key((tls_dir / "ca.key").read_bytes(), None)
    short, short_key = tls.issue_server_cert(ca, ca_key, tls.requested_sans([]),  # type: ignore[arg-type]
                                             valid_for=timedelta(days=10))
    (tls_dir / "server.key").write_bytes(short_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tls_dir / "server.crt").write_bytes(short.public_bytes(serialization.Encoding.PEM))
    renewed = ensure_cp_tls(tmp_path, None, None, [])
    assert renewed.ca_pem == first.ca_pem
    assert load_cert(renewed.cert_file).not_valid_after_utc - datetime.now(UTC) > timedelta(days=300)


def test_half_written_pair_is_reissued(tmp_path: Path) -> None:
    """A crash between writing server.key and server.crt leaves a key that is not the certificate's."""
    first = ensure_cp_tls(tmp_path, None, None, [])
    other = ensure_cp_tls(tmp_path / "elsewhere", None, None, [])
    first.key_file.write_bytes(other.key_pem)
    fixed = ensure_cp_tls(tmp_path, None, None, [])
    assert fixed.ca_pem == first.ca_pem and fixed.cert_pem != first.cert_pem
    cert = load_cert(fixed.cert_file)
    key = serialization.load_pem_private_key(fixed.key_pem, None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(serialization.Encoding.DER, spki) == \
        key.public_key().public_bytes(serialization.Encoding.DER, spki)


def test_ca_without_its_key_is_an_error(tmp_path: Path) -> None:
    ensure_cp_tls(tmp_path, None, None, [])
    (tmp_path / "tls" / "ca.key").unlink()
    (tmp_path / "tls" / "server.crt").unlink()
    with pytest.raises(TlsError, match=r"ca\.key is missing.*delete"):
        ensure_cp_tls(tmp_path, None, None, [])


def test_invalid_hostname(tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="cannot go into a certificate"):
        ensure_cp_tls(tmp_path, None, None, ["has space.example.com"])


# --- provided files ---------------------------------------------------------------------------------------------

def test_provided_cert_and_key(tmp_path: Path) -> None:
    made = ensure_cp_tls(tmp_path / "made", None, None, ["cp.example.com"])
    cp = ensure_cp_tls(tmp_path, made.cert_file, made.key_file, [])
    assert not cp.generated and cp.ca_file is None and cp.ca_pem is None
    assert cp.cert_pem == made.cert_pem and cp.key_pem == made.key_pem
    assert not (tmp_path / "tls").exists()  # nothing generated
    with_ca = ensure_cp_tls(tmp_path, made.cert_file, made.key_file, [], ca_file=made.ca_file)
    assert with_ca.ca_file == made.ca_file and with_ca.ca_pem == made.ca_pem


def test_provided_mismatch_names_the_files(tmp_path: Path) -> None:
    a = ensure_cp_tls(tmp_path / "a", None, None, [])
    b = ensure_cp_tls(tmp_path / "b", None, None, [])
    with pytest.raises(TlsError) as e:
        ensure_cp_tls(tmp_path, a.cert_file, b.key_file, [])
    assert str(b.key_file) in str(e.value) and str(a.cert_file) in str(e.value)
    assert "does not belong to the certificate" in str(e.value)


def test_provided_files_errors(tmp_path: Path) -> None:
    a = ensure_cp_tls(tmp_path / "a", None, None, [])
    with pytest.raises(TlsError, match="without its key"):
        ensure_cp_tls(tmp_path, a.cert_file, None, [])
    with pytest.raises(TlsError, match="without its certificate"):
        ensure_cp_tls(tmp_path, None, a.key_file, [])
    missing = tmp_path / "nope.crt"
    with pytest.raises(TlsError, match=f"{missing} does not exist"):
        ensure_cp_tls(tmp_path, missing, a.key_file, [])
    with pytest.raises(TlsError, match="holds no PEM certificate"):
        ensure_cp_tls(tmp_path, a.key_file, a.key_file, [])
    with pytest.raises(TlsError, match="is not a PEM private key"):
        ensure_cp_tls(tmp_path, a.cert_file, a.cert_file, [])
    with pytest.raises(TlsError, match="CA file was configured without"):
        ensure_cp_tls(tmp_path, None, None, [], ca_file=a.ca_file)


# --- real handshakes on 127.0.0.1 ----------------------------------------------------------------------------------

async def _serve(cp: CpTls) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.readline()
            writer.write(b"pong:" + data)
            await writer.drain()
        except (ssl.SSLError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=cp.server_ssl_context())
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("server_hostname", ["127.0.0.1", "localhost"])
async def test_handshake_with_ca(tmp_path: Path, server_hostname: str) -> None:
    cp = ensure_cp_tls(tmp_path, None, None, [])
    server, port = await _serve(cp)
    try:
        ctx = client_ssl_context(cp.ca_file)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_hostname)
        ssl_obj = writer.get_extra_info("ssl_object")
        assert ssl_obj.version() in ("TLSv1.2", "TLSv1.3")
        writer.write(b"ping\n")
        assert await reader.readline() == b"pong:ping\n"
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_handshake_with_another_ca_fails(tmp_path: Path) -> None:
    cp = ensure_cp_tls(tmp_path / "cp", None, None, [])
    stranger = ensure_cp_tls(tmp_path / "stranger", None, None, [])
    server, port = await _serve(cp)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl_context(stranger.ca_file),
                                          server_hostname="127.0.0.1")
        # and the right CA with a name the certificate does not carry fails too
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", port, ssl=cp.client_ssl_context(),
                                          server_hostname="not-this-cp.example.com")
    finally:
        server.close()
        await server.wait_closed()


def test_server_context_refuses_old_tls(tmp_path: Path) -> None:
    ctx = ensure_cp_tls(tmp_path, None, None, []).server_ssl_context()
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


async def test_grpc_server_credentials(tmp_path: Path) -> None:
    import grpc
    from grpc import aio

    cp = ensure_cp_tls(tmp_path, None, None, [])
    server = aio.server()
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(cp.grpc_key_cert_pairs()))
    await server.start()
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cp.ca_pem)
        async with aio.secure_channel(f"localhost:{port}", creds, options=[("grpc.enable_http_proxy", 0)]) as channel:
            call = channel.unary_unary("/kuma.Test/Ping")
            with pytest.raises(aio.AioRpcError) as e:
                await call(b"", timeout=5)
            # the TLS handshake worked: the server answered that it has no such method
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(None)
