"""The key and certificate chain that sign C2PA content credentials.

Configured by the user: `FACESTUDIO_C2PA_KEY` (a PEM private key: EC P-256/P-384, Ed25519 or RSA) and
`FACESTUDIO_C2PA_CERT` (its PEM certificate chain, signer first), both or neither. Without them facestudio uses
the pair in `FACESTUDIO_C2PA_DIR` (default `$XDG_CONFIG_HOME/facestudio/c2pa`, i.e. `~/.config/facestudio/c2pa`),
creating it on first use: a local certificate authority made on this machine and a signing certificate it
issued. That chain is self-signed: readers verify the signature but report the signer as untrusted (no public
trust list holds it). C2PA refuses a self-signed certificate as the signer itself, and asks of the signer's
certificate: not a CA, key usage digitalSignature, an extended key usage (emailProtection here), subject and
authority key identifiers.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import FaceStudioError

KEY_ENV, CERT_ENV, DIR_ENV = "FACESTUDIO_C2PA_KEY", "FACESTUDIO_C2PA_CERT", "FACESTUDIO_C2PA_DIR"
KEY_FILE, CHAIN_FILE = "signer-key.pem", "signer-chain.pem"
_CREATING = threading.Lock()


@dataclass(frozen=True)
class SigningCredentials:
    """A private key and its certificate chain, as PEM bytes, and the C2PA name of the signing algorithm."""

    key: bytes
    chain: bytes
    algorithm: str
    source: str  # where they came from, for messages


def default_folder() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(os.environ.get(DIR_ENV) or Path(config) / "facestudio" / "c2pa").expanduser()


def signing_credentials() -> SigningCredentials:
    """The configured key and chain, else the local pair (created on first use); `FaceStudioError` naming the
    setting when they cannot be read."""
    key_path, cert_path = os.environ.get(KEY_ENV), os.environ.get(CERT_ENV)
    if bool(key_path) != bool(cert_path):
        raise FaceStudioError(f"C2PA signing: set both {KEY_ENV} (the private key) and {CERT_ENV} (its certificate "
                              "chain), or neither for the local self-signed pair")
    if key_path:
        key, chain = _read(Path(key_path).expanduser(), KEY_ENV), _read(Path(cert_path).expanduser(), CERT_ENV)
        source = f"{KEY_ENV}={key_path}"
    else:
        folder = default_folder()
        if not (folder / KEY_FILE).exists():
            create_local_pair(folder)
        key, chain = _read(folder / KEY_FILE, DIR_ENV), _read(folder / CHAIN_FILE, DIR_ENV)
        source = str(folder)
    return SigningCredentials(key, chain, _algorithm(key, source), source)


def create_local_pair(folder: Path) -> None:
    """Write a local CA and a signing certificate it issued (10 years) into `folder`, atomically: the folder
    appears whole or not at all, and a pair another process made meanwhile is kept."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    with _CREATING:
        if (folder / KEY_FILE).exists():
            return
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = _certificate(ca_key, ca_key, "facestudio local CA (self-signed)", ca=True)
        signer = _certificate(key, ca_key, "facestudio local signer", ca=False, issuer=ca)
        pem = serialization.Encoding.PEM
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            (staging / KEY_FILE).write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
            (staging / CHAIN_FILE).write_bytes(signer.public_bytes(pem) + ca.public_bytes(pem))
            (staging / "ca.pem").write_bytes(ca.public_bytes(pem))
            os.chmod(staging / KEY_FILE, 0o600)
            try:
                staging.rename(folder)  # fails if the folder exists (made meanwhile, or the user's own)
            except OSError:
                if not (folder / KEY_FILE).exists():
                    raise FaceStudioError(f"C2PA signing: {folder} exists without {KEY_FILE}; move it away or set "
                                          f"{DIR_ENV}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _certificate(key, issuer_key, name: str, *, ca: bool, issuer=None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "facestudio user")])
    usage = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                           "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
    usage.update({"key_cert_sign": True, "crl_sign": True} if ca else {"digital_signature": True})
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(subject if issuer is None else issuer.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
               .add_extension(x509.KeyUsage(**usage), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if not ca:
        builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                  critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise FaceStudioError(f"C2PA signing ({setting}): cannot read {path} ({e.strerror or e})") from None


def _algorithm(key_pem: bytes, source: str) -> str:
    """The C2PA signing algorithm for the key's type (ES256/ES384/ES512, Ed25519, PS256 for RSA)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise FaceStudioError(f"C2PA signing ({source}): not an unencrypted PEM private key ({e})") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in ("secp256r1", "secp384r1", "secp521r1"):
        return {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}[key.curve.name]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    raise FaceStudioError(f"C2PA signing ({source}): unsupported key type {type(key).__name__} (use EC P-256, "
                          "P-384, P-521, Ed25519 or RSA)")
