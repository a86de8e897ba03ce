"""The local cluster's PKI: one CA, the API server's serving certificate, client certificates
for the admin user and each component, and the service-account signing key.

ECDSA P-256 throughout, so generating everything takes milliseconds on every ``up``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localcluster import network

VALIDITY = dt.timedelta(days=365)
REAL_NODE_NAME = "node-1"

# name -> (common name, organizations). Organisation = Kubernetes group.
CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("kubernetes-admin", ("system:masters",)),
    "controller-manager": ("system:kube-controller-manager", ()),
    "scheduler": ("system:kube-scheduler", ()),
    "kwok": ("kwok-controller", ("system:masters",)),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ("system:masters",)),
    # The real node: the Node authorizer knows a kubelet by this name and group.
    "kubelet": (f"system:node:{REAL_NODE_NAME}", ("system:nodes",)),
    "kube-proxy": ("system:kube-proxy", ()),  # bound to system:node-proxier by default
}

API_SERVER_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
API_SERVER_IPS = ("127.0.0.1", "10.96.0.1", network.NODE_IP)


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def kubelet_serving_cert(self) -> Path:
        return self.dir / "kubelet-serving.crt"

    @property
    def kubelet_serving_key(self) -> Path:
        return self.dir / "kubelet-serving.key"

    @property
    def front_proxy_ca(self) -> Path:
        return self.dir / "front-proxy-ca.crt"

    @property
    def front_proxy_client_cert(self) -> Path:
        return self.dir / "front-proxy-client.crt"

    @property
    def front_proxy_client_key(self) -> Path:
        return self.dir / "front-proxy-client.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def client_cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey
             ) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def generate(directory: Path) -> Pki:
    """Create a fresh PKI in ``directory`` and return where each file is."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)

    def new_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Name, x509.Certificate]:
        key = _key()
        name = _name(cn)
        cert = (
            _builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return key, name, cert

    ca_key, ca_name, ca = new_ca("localcluster-ca")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.ca_key, ca_key)

    def issue(cert_path: Path, key_path: Path, subject: x509.Name, usage: x509.ObjectIdentifier,
              sans: list[x509.GeneralName] | None = None,
              signer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None = None) -> None:
        sign_key, sign_name = signer or (ca_key, ca_name)
        key = _key()
        b = _builder(subject, sign_name, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        ).add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False),
            critical=True,
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert_path.write_bytes(
            b.sign(sign_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        _write_key(key_path, key)

    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in API_SERVER_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in API_SERVER_IPS]
    issue(pki.serving_cert, pki.serving_key, _name("kube-apiserver"),
          ExtendedKeyUsageOID.SERVER_AUTH, sans)
    issue(pki.kubelet_serving_cert, pki.kubelet_serving_key, _name(REAL_NODE_NAME),
          ExtendedKeyUsageOID.SERVER_AUTH,
          [x509.DNSName(REAL_NODE_NAME), x509.IPAddress(ipaddress.ip_address(network.NODE_IP))])
    for name, (cn, orgs) in CLIENTS.items():
        issue(pki.client_cert(name), pki.client_key(name), _name(cn, orgs),
              ExtendedKeyUsageOID.CLIENT_AUTH)

    # The aggregation layer (front proxy): lets extension API servers (e.g. a metrics API)
    # trust requests the API server proxies to them.
    fp_key, fp_name, fp_ca = new_ca("localcluster-front-proxy-ca")
    pki.front_proxy_ca.write_bytes(fp_ca.public_bytes(serialization.Encoding.PEM))
    issue(pki.front_proxy_client_cert, pki.front_proxy_client_key, _name("front-proxy-client"),
          ExtendedKeyUsageOID.CLIENT_AUTH, signer=(fp_key, fp_name))

    sa = _key()
    _write_key(pki.sa_key, sa)
    pki.sa_pub.write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki
