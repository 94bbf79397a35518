"""TLS for the head's TCP API: the server's context, the client's, and a local CA.

The head serves HTTPS when its config names ``tls_cert``/``tls_key``; clients (hpcbatch's
own, boto3, the aws CLI) verify it against a CA bundle. ``hpcbatch cluster up`` has no
site CA to ask, so it makes its own (``make_local_ca``) and issues the head's certificate
from it, for the names the head is reached by (localhost, 127.0.0.1, ::1, this host):
the CA's certificate is the bundle the client, the CLI and the tests trust.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from hpcbatch.errors import ClientError

__all__ = ["client_context", "issue_certificate", "make_local_ca", "server_context", "wrap_client"]


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """The head's TLS context: TLS 1.2 or newer, the certificate chain in ``cert``."""
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        if not os.path.isfile(path):
            raise ClientError(f"{name}: {path} does not exist")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise ClientError(f"tls_cert {cert} / tls_key {key}: cannot be loaded: {exc}") from None
    return context


_client_contexts: dict[str | None, ssl.SSLContext] = {}


def client_context(ca_bundle: str | None) -> ssl.SSLContext:
    """A verifying client context trusting ``ca_bundle`` (else the system's CAs); cached."""
    context = _client_contexts.get(ca_bundle)
    if context is None:
        try:
            context = ssl.create_default_context(cafile=ca_bundle)
        except FileNotFoundError:
            raise ClientError(f"CA bundle {ca_bundle} does not exist") from None
        except (ssl.SSLError, OSError) as exc:
            raise ClientError(f"CA bundle {ca_bundle}: cannot be loaded: {exc}") from None
        _client_contexts[ca_bundle] = context
    return context


def wrap_client(sock: socket.socket, host: str, ca_bundle: str | None) -> ssl.SSLSocket:
    """``sock``, connected to ``host``, after a verified TLS handshake (closed if it fails).

    An untrusted certificate is an OSError saying which CA bundle was used and how to name
    another, so the caller reports it as it reports any connection that could not be made.
    """
    try:
        return client_context(ca_bundle).wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise OSError(
            f"certificate verify failed: {exc.verify_message} (trusting {ca_bundle or 'the system CAs'}; "
            "name the head's CA bundle with $HPCBATCH_CA_BUNDLE or ca_bundle=)"
        ) from None
    except BaseException:
        sock.close()
        raise


def _write_private(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def make_local_ca(cert_path: str | Path, key_path: str | Path, name: str = "hpcbatch local CA") -> None:
    """A CA key (0600) and self-signed certificate (0644), valid ten years; kept if both exist."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    if cert_path.exists() and key_path.exists():
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])  # X.509 caps a CN at 64
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(Path(key_path), key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), 0o600)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def issue_certificate(
    ca_cert: str | Path, ca_key: str | Path, cert_path: str | Path, key_path: str | Path,
    names: list[str] | None = None, days: int = 825,
) -> None:
    """A server certificate (0644) and key (0600) signed by the CA, for ``names`` (host
    names or IP addresses; default: localhost, 127.0.0.1, ::1 and this host's name)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names = names or ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    ca = x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
    signer = serialization.load_pem_private_key(Path(ca_key).read_bytes(), password=None)
    alt: list[x509.GeneralName] = []
    for entry in dict.fromkeys(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            alt.append(x509.DNSName(entry))
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    )
    _write_private(Path(key_path), key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), 0o600)
    _write_private(Path(cert_path), cert.public_bytes(serialization.Encoding.PEM), 0o644)
