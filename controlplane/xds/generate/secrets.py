"""SDS: the proxy's identity certificate and the mesh CA bundle it trusts (names as Kuma's)."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from ..resources import SECRET, XdsResource, content_hash
from .context import ProxyContext
from .envoy import CA_SECRET, IDENTITY_SECRET


def generate(ctx: ProxyContext) -> list[XdsResource]:
    if not ctx.mtls:
        return []
    assert ctx.identity is not None and ctx.topology.ca_bundle_pem is not None
    mesh, identity, bundle = ctx.mesh, ctx.identity, ctx.topology.ca_bundle_pem

    def identity_secret() -> XdsResource:
        name = IDENTITY_SECRET.format(mesh=mesh)
        msg = secret_pb2.Secret(name=name, tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=identity.cert_pem),
            private_key=base_pb2.DataSource(inline_bytes=identity.key_pem)))
        return XdsResource.of(SECRET, name, msg)

    def ca_secret() -> XdsResource:
        name = CA_SECRET.format(mesh=mesh)
        msg = secret_pb2.Secret(name=name, validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=bundle)))
        return XdsResource.of(SECRET, name, msg)

    return [
        ctx.memo.get(("identity", mesh, ctx.dataplane.meta.name, identity.fingerprint), identity_secret),
        ctx.memo.get(("ca", mesh, content_hash(bundle)), ca_secret),
    ]
