# ruff: noqa
import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import wrappers_pb2 as _wrappers_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Unsupported(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Mesh(_message.Message):
    __slots__ = ("mtls", "tracing", "logging", "metrics", "networking", "routing", "constraints", "skipCreatingInitialPolicies", "meshServices")
    class Mtls(_message.Message):
        __slots__ = ("enabledBackend", "backends", "skipValidation")
        ENABLEDBACKEND_FIELD_NUMBER: _ClassVar[int]
        BACKENDS_FIELD_NUMBER: _ClassVar[int]
        SKIPVALIDATION_FIELD_NUMBER: _ClassVar[int]
        enabledBackend: str
        backends: _containers.RepeatedCompositeFieldContainer[CertificateAuthorityBackend]
        skipValidation: bool
        def __init__(self, enabledBackend: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[CertificateAuthorityBackend, _Mapping]]] = ..., skipValidation: _Optional[bool] = ...) -> None: ...
    class Constraints(_message.Message):
        __slots__ = ("dataplaneProxy",)
        DATAPLANEPROXY_FIELD_NUMBER: _ClassVar[int]
        dataplaneProxy: Mesh.DataplaneProxyConstraints
        def __init__(self, dataplaneProxy: _Optional[_Union[Mesh.DataplaneProxyConstraints, _Mapping]] = ...) -> None: ...
    class DataplaneProxyConstraints(_message.Message):
        __slots__ = ("requirements", "restrictions")
        class Rules(_message.Message):
            __slots__ = ("tags",)
            class TagsEntry(_message.Message):
                __slots__ = ("key", "value")
                KEY_FIELD_NUMBER: _ClassVar[int]
                VALUE_FIELD_NUMBER: _ClassVar[int]
                key: str
                value: str
                def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
            TAGS_FIELD_NUMBER: _ClassVar[int]
            tags: _containers.ScalarMap[str, str]
            def __init__(self, tags: _Optional[_Mapping[str, str]] = ...) -> None: ...
        REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
        RESTRICTIONS_FIELD_NUMBER: _ClassVar[int]
        requirements: _containers.RepeatedCompositeFieldContainer[Mesh.DataplaneProxyConstraints.Rules]
        restrictions: _containers.RepeatedCompositeFieldContainer[Mesh.DataplaneProxyConstraints.Rules]
        def __init__(self, requirements: _Optional[_Iterable[_Union[Mesh.DataplaneProxyConstraints.Rules, _Mapping]]] = ..., restrictions: _Optional[_Iterable[_Union[Mesh.DataplaneProxyConstraints.Rules, _Mapping]]] = ...) -> None: ...
    MTLS_FIELD_NUMBER: _ClassVar[int]
    TRACING_FIELD_NUMBER: _ClassVar[int]
    LOGGING_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    NETWORKING_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    SKIPCREATINGINITIALPOLICIES_FIELD_NUMBER: _ClassVar[int]
    MESHSERVICES_FIELD_NUMBER: _ClassVar[int]
    mtls: Mesh.Mtls
    tracing: Unsupported
    logging: Unsupported
    metrics: Unsupported
    networking: Networking
    routing: Routing
    constraints: Mesh.Constraints
    skipCreatingInitialPolicies: _containers.RepeatedScalarFieldContainer[str]
    meshServices: Unsupported
    def __init__(self, mtls: _Optional[_Union[Mesh.Mtls, _Mapping]] = ..., tracing: _Optional[_Union[Unsupported, _Mapping]] = ..., logging: _Optional[_Union[Unsupported, _Mapping]] = ..., metrics: _Optional[_Union[Unsupported, _Mapping]] = ..., networking: _Optional[_Union[Networking, _Mapping]] = ..., routing: _Optional[_Union[Routing, _Mapping]] = ..., constraints: _Optional[_Union[Mesh.Constraints, _Mapping]] = ..., skipCreatingInitialPolicies: _Optional[_Iterable[str]] = ..., meshServices: _Optional[_Union[Unsupported, _Mapping]] = ...) -> None: ...

class CertificateAuthorityBackend(_message.Message):
    __slots__ = ("name", "type", "dpCert", "conf", "mode", "rootChain")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STRICT: _ClassVar[CertificateAuthorityBackend.Mode]
        PERMISSIVE: _ClassVar[CertificateAuthorityBackend.Mode]
    STRICT: CertificateAuthorityBackend.Mode
    PERMISSIVE: CertificateAuthorityBackend.Mode
    class DpCert(_message.Message):
        __slots__ = ("rotation", "requestTimeout")
        class Rotation(_message.Message):
            __slots__ = ("expiration",)
            EXPIRATION_FIELD_NUMBER: _ClassVar[int]
            expiration: str
            def __init__(self, expiration: _Optional[str] = ...) -> None: ...
        ROTATION_FIELD_NUMBER: _ClassVar[int]
        REQUESTTIMEOUT_FIELD_NUMBER: _ClassVar[int]
        rotation: CertificateAuthorityBackend.DpCert.Rotation
        requestTimeout: _duration_pb2.Duration
        def __init__(self, rotation: _Optional[_Union[CertificateAuthorityBackend.DpCert.Rotation, _Mapping]] = ..., requestTimeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DPCERT_FIELD_NUMBER: _ClassVar[int]
    CONF_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ROOTCHAIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    dpCert: CertificateAuthorityBackend.DpCert
    conf: _struct_pb2.Struct
    mode: CertificateAuthorityBackend.Mode
    rootChain: Unsupported
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., dpCert: _Optional[_Union[CertificateAuthorityBackend.DpCert, _Mapping]] = ..., conf: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., mode: _Optional[_Union[CertificateAuthorityBackend.Mode, str]] = ..., rootChain: _Optional[_Union[Unsupported, _Mapping]] = ...) -> None: ...

class Networking(_message.Message):
    __slots__ = ("outbound",)
    class Outbound(_message.Message):
        __slots__ = ("passthrough",)
        PASSTHROUGH_FIELD_NUMBER: _ClassVar[int]
        passthrough: _wrappers_pb2.BoolValue
        def __init__(self, passthrough: _Optional[_Union[_wrappers_pb2.BoolValue, _Mapping]] = ...) -> None: ...
    OUTBOUND_FIELD_NUMBER: _ClassVar[int]
    outbound: Networking.Outbound
    def __init__(self, outbound: _Optional[_Union[Networking.Outbound, _Mapping]] = ...) -> None: ...

class Routing(_message.Message):
    __slots__ = ("localityAwareLoadBalancing", "zoneEgress", "defaultForbidMeshExternalServiceAccess")
    LOCALITYAWARELOADBALANCING_FIELD_NUMBER: _ClassVar[int]
    ZONEEGRESS_FIELD_NUMBER: _ClassVar[int]
    DEFAULTFORBIDMESHEXTERNALSERVICEACCESS_FIELD_NUMBER: _ClassVar[int]
    localityAwareLoadBalancing: bool
    zoneEgress: bool
    defaultForbidMeshExternalServiceAccess: bool
    def __init__(self, localityAwareLoadBalancing: _Optional[bool] = ..., zoneEgress: _Optional[bool] = ..., defaultForbidMeshExternalServiceAccess: _Optional[bool] = ...) -> None: ...

class EnvoyAdmin(_message.Message):
    __slots__ = ("port",)
    PORT_FIELD_NUMBER: _ClassVar[int]
    port: int
    def __init__(self, port: _Optional[int] = ...) -> None: ...

class Dataplane(_message.Message):
    __slots__ = ("networking", "metrics", "probes")
    class Networking(_message.Message):
        __slots__ = ("address", "advertisedAddress", "gateway", "inbound", "outbound", "transparent_proxying", "admin", "listeners")
        class Inbound(_message.Message):
            __slots__ = ("port", "servicePort", "serviceAddress", "address", "tags", "health", "serviceProbe", "state", "name", "protocol")
            class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
                __slots__ = ()
                Ready: _ClassVar[Dataplane.Networking.Inbound.State]
                NotReady: _ClassVar[Dataplane.Networking.Inbound.State]
                Ignored: _ClassVar[Dataplane.Networking.Inbound.State]
            Ready: Dataplane.Networking.Inbound.State
            NotReady: Dataplane.Networking.Inbound.State
            Ignored: Dataplane.Networking.Inbound.State
            class TagsEntry(_message.Message):
                __slots__ = ("key", "value")
                KEY_FIELD_NUMBER: _ClassVar[int]
                VALUE_FIELD_NUMBER: _ClassVar[int]
                key: str
                value: str
                def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
            class Health(_message.Message):
                __slots__ = ("ready",)
                READY_FIELD_NUMBER: _ClassVar[int]
                ready: bool
                def __init__(self, ready: _Optional[bool] = ...) -> None: ...
            class ServiceProbe(_message.Message):
                __slots__ = ("interval", "timeout", "unhealthy_threshold", "healthy_threshold", "tcp")
                class Tcp(_message.Message):
                    __slots__ = ()
                    def __init__(self) -> None: ...
                INTERVAL_FIELD_NUMBER: _ClassVar[int]
                TIMEOUT_FIELD_NUMBER: _ClassVar[int]
                UNHEALTHY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
                HEALTHY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
                TCP_FIELD_NUMBER: _ClassVar[int]
                interval: _duration_pb2.Duration
                timeout: _duration_pb2.Duration
                unhealthy_threshold: _wrappers_pb2.UInt32Value
                healthy_threshold: _wrappers_pb2.UInt32Value
                tcp: Dataplane.Networking.Inbound.ServiceProbe.Tcp
                def __init__(self, interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., unhealthy_threshold: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., healthy_threshold: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., tcp: _Optional[_Union[Dataplane.Networking.Inbound.ServiceProbe.Tcp, _Mapping]] = ...) -> None: ...
            PORT_FIELD_NUMBER: _ClassVar[int]
            SERVICEPORT_FIELD_NUMBER: _ClassVar[int]
            SERVICEADDRESS_FIELD_NUMBER: _ClassVar[int]
            ADDRESS_FIELD_NUMBER: _ClassVar[int]
            TAGS_FIELD_NUMBER: _ClassVar[int]
            HEALTH_FIELD_NUMBER: _ClassVar[int]
            SERVICEPROBE_FIELD_NUMBER: _ClassVar[int]
            STATE_FIELD_NUMBER: _ClassVar[int]
            NAME_FIELD_NUMBER: _ClassVar[int]
            PROTOCOL_FIELD_NUMBER: _ClassVar[int]
            port: int
            servicePort: int
            serviceAddress: str
            address: str
            tags: _containers.ScalarMap[str, str]
            health: Dataplane.Networking.Inbound.Health
            serviceProbe: Dataplane.Networking.Inbound.ServiceProbe
            state: Dataplane.Networking.Inbound.State
            name: str
            protocol: str
            def __init__(self, port: _Optional[int] = ..., servicePort: _Optional[int] = ..., serviceAddress: _Optional[str] = ..., address: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., health: _Optional[_Union[Dataplane.Networking.Inbound.Health, _Mapping]] = ..., serviceProbe: _Optional[_Union[Dataplane.Networking.Inbound.ServiceProbe, _Mapping]] = ..., state: _Optional[_Union[Dataplane.Networking.Inbound.State, str]] = ..., name: _Optional[str] = ..., protocol: _Optional[str] = ...) -> None: ...
        class Outbound(_message.Message):
            __slots__ = ("address", "port", "tags", "backendRef")
            class TagsEntry(_message.Message):
                __slots__ = ("key", "value")
                KEY_FIELD_NUMBER: _ClassVar[int]
                VALUE_FIELD_NUMBER: _ClassVar[int]
                key: str
                value: str
                def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
            ADDRESS_FIELD_NUMBER: _ClassVar[int]
            PORT_FIELD_NUMBER: _ClassVar[int]
            TAGS_FIELD_NUMBER: _ClassVar[int]
            BACKENDREF_FIELD_NUMBER: _ClassVar[int]
            address: str
            port: int
            tags: _containers.ScalarMap[str, str]
            backendRef: Unsupported
            def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., tags: _Optional[_Mapping[str, str]] = ..., backendRef: _Optional[_Union[Unsupported, _Mapping]] = ...) -> None: ...
        class Gateway(_message.Message):
            __slots__ = ("tags", "type")
            class GatewayType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
                __slots__ = ()
                DELEGATED: _ClassVar[Dataplane.Networking.Gateway.GatewayType]
                BUILTIN: _ClassVar[Dataplane.Networking.Gateway.GatewayType]
            DELEGATED: Dataplane.Networking.Gateway.GatewayType
            BUILTIN: Dataplane.Networking.Gateway.GatewayType
            class TagsEntry(_message.Message):
                __slots__ = ("key", "value")
                KEY_FIELD_NUMBER: _ClassVar[int]
                VALUE_FIELD_NUMBER: _ClassVar[int]
                key: str
                value: str
                def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
            TAGS_FIELD_NUMBER: _ClassVar[int]
            TYPE_FIELD_NUMBER: _ClassVar[int]
            tags: _containers.ScalarMap[str, str]
            type: Dataplane.Networking.Gateway.GatewayType
            def __init__(self, tags: _Optional[_Mapping[str, str]] = ..., type: _Optional[_Union[Dataplane.Networking.Gateway.GatewayType, str]] = ...) -> None: ...
        class TransparentProxying(_message.Message):
            __slots__ = ("redirect_port_inbound", "redirect_port_outbound", "direct_access_services", "reachable_services", "ip_family_mode", "reachable_backends")
            REDIRECT_PORT_INBOUND_FIELD_NUMBER: _ClassVar[int]
            REDIRECT_PORT_OUTBOUND_FIELD_NUMBER: _ClassVar[int]
            DIRECT_ACCESS_SERVICES_FIELD_NUMBER: _ClassVar[int]
            REACHABLE_SERVICES_FIELD_NUMBER: _ClassVar[int]
            IP_FAMILY_MODE_FIELD_NUMBER: _ClassVar[int]
            REACHABLE_BACKENDS_FIELD_NUMBER: _ClassVar[int]
            redirect_port_inbound: int
            redirect_port_outbound: int
            direct_access_services: _containers.RepeatedScalarFieldContainer[str]
            reachable_services: _containers.RepeatedScalarFieldContainer[str]
            ip_family_mode: int
            reachable_backends: Unsupported
            def __init__(self, redirect_port_inbound: _Optional[int] = ..., redirect_port_outbound: _Optional[int] = ..., direct_access_services: _Optional[_Iterable[str]] = ..., reachable_services: _Optional[_Iterable[str]] = ..., ip_family_mode: _Optional[int] = ..., reachable_backends: _Optional[_Union[Unsupported, _Mapping]] = ...) -> None: ...
        ADDRESS_FIELD_NUMBER: _ClassVar[int]
        ADVERTISEDADDRESS_FIELD_NUMBER: _ClassVar[int]
        GATEWAY_FIELD_NUMBER: _ClassVar[int]
        INBOUND_FIELD_NUMBER: _ClassVar[int]
        OUTBOUND_FIELD_NUMBER: _ClassVar[int]
        TRANSPARENT_PROXYING_FIELD_NUMBER: _ClassVar[int]
        ADMIN_FIELD_NUMBER: _ClassVar[int]
        LISTENERS_FIELD_NUMBER: _ClassVar[int]
        address: str
        advertisedAddress: str
        gateway: Dataplane.Networking.Gateway
        inbound: _containers.RepeatedCompositeFieldContainer[Dataplane.Networking.Inbound]
        outbound: _containers.RepeatedCompositeFieldContainer[Dataplane.Networking.Outbound]
        transparent_proxying: Dataplane.Networking.TransparentProxying
        admin: EnvoyAdmin
        listeners: _containers.RepeatedCompositeFieldContainer[Unsupported]
        def __init__(self, address: _Optional[str] = ..., advertisedAddress: _Optional[str] = ..., gateway: _Optional[_Union[Dataplane.Networking.Gateway, _Mapping]] = ..., inbound: _Optional[_Iterable[_Union[Dataplane.Networking.Inbound, _Mapping]]] = ..., outbound: _Optional[_Iterable[_Union[Dataplane.Networking.Outbound, _Mapping]]] = ..., transparent_proxying: _Optional[_Union[Dataplane.Networking.TransparentProxying, _Mapping]] = ..., admin: _Optional[_Union[EnvoyAdmin, _Mapping]] = ..., listeners: _Optional[_Iterable[_Union[Unsupported, _Mapping]]] = ...) -> None: ...
    NETWORKING_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    networking: Dataplane.Networking
    metrics: Unsupported
    probes: Unsupported
    def __init__(self, networking: _Optional[_Union[Dataplane.Networking, _Mapping]] = ..., metrics: _Optional[_Union[Unsupported, _Mapping]] = ..., probes: _Optional[_Union[Unsupported, _Mapping]] = ...) -> None: ...

class ZoneIngress(_message.Message):
    __slots__ = ("zone", "networking", "availableServices")
    class Networking(_message.Message):
        __slots__ = ("address", "advertisedAddress", "port", "advertisedPort", "admin")
        ADDRESS_FIELD_NUMBER: _ClassVar[int]
        ADVERTISEDADDRESS_FIELD_NUMBER: _ClassVar[int]
        PORT_FIELD_NUMBER: _ClassVar[int]
        ADVERTISEDPORT_FIELD_NUMBER: _ClassVar[int]
        ADMIN_FIELD_NUMBER: _ClassVar[int]
        address: str
        advertisedAddress: str
        port: int
        advertisedPort: int
        admin: EnvoyAdmin
        def __init__(self, address: _Optional[str] = ..., advertisedAddress: _Optional[str] = ..., port: _Optional[int] = ..., advertisedPort: _Optional[int] = ..., admin: _Optional[_Union[EnvoyAdmin, _Mapping]] = ...) -> None: ...
    class AvailableService(_message.Message):
        __slots__ = ("tags", "instances", "mesh", "externalService", "ports")
        class TagsEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: str
            def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
        TAGS_FIELD_NUMBER: _ClassVar[int]
        INSTANCES_FIELD_NUMBER: _ClassVar[int]
        MESH_FIELD_NUMBER: _ClassVar[int]
        EXTERNALSERVICE_FIELD_NUMBER: _ClassVar[int]
        PORTS_FIELD_NUMBER: _ClassVar[int]
        tags: _containers.ScalarMap[str, str]
        instances: int
        mesh: str
        externalService: bool
        ports: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, tags: _Optional[_Mapping[str, str]] = ..., instances: _Optional[int] = ..., mesh: _Optional[str] = ..., externalService: _Optional[bool] = ..., ports: _Optional[_Iterable[int]] = ...) -> None: ...
    ZONE_FIELD_NUMBER: _ClassVar[int]
    NETWORKING_FIELD_NUMBER: _ClassVar[int]
    AVAILABLESERVICES_FIELD_NUMBER: _ClassVar[int]
    zone: str
    networking: ZoneIngress.Networking
    availableServices: _containers.RepeatedCompositeFieldContainer[ZoneIngress.AvailableService]
    def __init__(self, zone: _Optional[str] = ..., networking: _Optional[_Union[ZoneIngress.Networking, _Mapping]] = ..., availableServices: _Optional[_Iterable[_Union[ZoneIngress.AvailableService, _Mapping]]] = ...) -> None: ...

class DataplaneInsight(_message.Message):
    __slots__ = ("subscriptions", "mTLS", "metadata", "openTelemetry", "hostDns")
    class MTLS(_message.Message):
        __slots__ = ("certificate_expiration_time", "last_certificate_regeneration", "certificate_regenerations", "issuedBackend", "supportedBackends")
        CERTIFICATE_EXPIRATION_TIME_FIELD_NUMBER: _ClassVar[int]
        LAST_CERTIFICATE_REGENERATION_FIELD_NUMBER: _ClassVar[int]
        CERTIFICATE_REGENERATIONS_FIELD_NUMBER: _ClassVar[int]
        ISSUEDBACKEND_FIELD_NUMBER: _ClassVar[int]
        SUPPORTEDBACKENDS_FIELD_NUMBER: _ClassVar[int]
        certificate_expiration_time: _timestamp_pb2.Timestamp
        last_certificate_regeneration: _timestamp_pb2.Timestamp
        certificate_regenerations: int
        issuedBackend: str
        supportedBackends: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, certificate_expiration_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_certificate_regeneration: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., certificate_regenerations: _Optional[int] = ..., issuedBackend: _Optional[str] = ..., supportedBackends: _Optional[_Iterable[str]] = ...) -> None: ...
    class HostDns(_message.Message):
        __slots__ = ("state", "message", "time")
        STATE_FIELD_NUMBER: _ClassVar[int]
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        TIME_FIELD_NUMBER: _ClassVar[int]
        state: str
        message: str
        time: _timestamp_pb2.Timestamp
        def __init__(self, state: _Optional[str] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    MTLS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    OPENTELEMETRY_FIELD_NUMBER: _ClassVar[int]
    HOSTDNS_FIELD_NUMBER: _ClassVar[int]
    subscriptions: _containers.RepeatedCompositeFieldContainer[DiscoverySubscription]
    mTLS: DataplaneInsight.MTLS
    metadata: _struct_pb2.Struct
    openTelemetry: Unsupported
    hostDns: DataplaneInsight.HostDns
    def __init__(self, subscriptions: _Optional[_Iterable[_Union[DiscoverySubscription, _Mapping]]] = ..., mTLS: _Optional[_Union[DataplaneInsight.MTLS, _Mapping]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., openTelemetry: _Optional[_Union[Unsupported, _Mapping]] = ..., hostDns: _Optional[_Union[DataplaneInsight.HostDns, _Mapping]] = ...) -> None: ...

class ZoneIngressInsight(_message.Message):
    __slots__ = ("subscriptions", "metadata")
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    subscriptions: _containers.RepeatedCompositeFieldContainer[DiscoverySubscription]
    metadata: _struct_pb2.Struct
    def __init__(self, subscriptions: _Optional[_Iterable[_Union[DiscoverySubscription, _Mapping]]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class DiscoverySubscription(_message.Message):
    __slots__ = ("id", "control_plane_instance_id", "connect_time", "disconnect_time", "status", "version", "generation", "configVersion", "lastNack")
    class LastNack(_message.Message):
        __slots__ = ("type", "version", "errorDetail", "time")
        TYPE_FIELD_NUMBER: _ClassVar[int]
        VERSION_FIELD_NUMBER: _ClassVar[int]
        ERRORDETAIL_FIELD_NUMBER: _ClassVar[int]
        TIME_FIELD_NUMBER: _ClassVar[int]
        type: str
        version: str
        errorDetail: str
        time: _timestamp_pb2.Timestamp
        def __init__(self, type: _Optional[str] = ..., version: _Optional[str] = ..., errorDetail: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTROL_PLANE_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECT_TIME_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CONFIGVERSION_FIELD_NUMBER: _ClassVar[int]
    LASTNACK_FIELD_NUMBER: _ClassVar[int]
    id: str
    control_plane_instance_id: str
    connect_time: _timestamp_pb2.Timestamp
    disconnect_time: _timestamp_pb2.Timestamp
    status: DiscoverySubscriptionStatus
    version: Version
    generation: int
    configVersion: str
    lastNack: DiscoverySubscription.LastNack
    def __init__(self, id: _Optional[str] = ..., control_plane_instance_id: _Optional[str] = ..., connect_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., disconnect_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[DiscoverySubscriptionStatus, _Mapping]] = ..., version: _Optional[_Union[Version, _Mapping]] = ..., generation: _Optional[int] = ..., configVersion: _Optional[str] = ..., lastNack: _Optional[_Union[DiscoverySubscription.LastNack, _Mapping]] = ...) -> None: ...

class DiscoverySubscriptionStatus(_message.Message):
    __slots__ = ("last_update_time", "total", "cds", "eds", "lds", "rds", "sds")
    LAST_UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CDS_FIELD_NUMBER: _ClassVar[int]
    EDS_FIELD_NUMBER: _ClassVar[int]
    LDS_FIELD_NUMBER: _ClassVar[int]
    RDS_FIELD_NUMBER: _ClassVar[int]
    SDS_FIELD_NUMBER: _ClassVar[int]
    last_update_time: _timestamp_pb2.Timestamp
    total: DiscoveryServiceStats
    cds: DiscoveryServiceStats
    eds: DiscoveryServiceStats
    lds: DiscoveryServiceStats
    rds: DiscoveryServiceStats
    sds: DiscoveryServiceStats
    def __init__(self, last_update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., total: _Optional[_Union[DiscoveryServiceStats, _Mapping]] = ..., cds: _Optional[_Union[DiscoveryServiceStats, _Mapping]] = ..., eds: _Optional[_Union[DiscoveryServiceStats, _Mapping]] = ..., lds: _Optional[_Union[DiscoveryServiceStats, _Mapping]] = ..., rds: _Optional[_Union[DiscoveryServiceStats, _Mapping]] = ..., sds: _Optional[_Union[DiscoveryServiceStats, _Mapping]] = ...) -> None: ...

class DiscoveryServiceStats(_message.Message):
    __slots__ = ("responses_sent", "responses_acknowledged", "responses_rejected")
    RESPONSES_SENT_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    responses_sent: int
    responses_acknowledged: int
    responses_rejected: int
    def __init__(self, responses_sent: _Optional[int] = ..., responses_acknowledged: _Optional[int] = ..., responses_rejected: _Optional[int] = ...) -> None: ...

class Version(_message.Message):
    __slots__ = ("kumaDp", "envoy", "dependencies")
    class DependenciesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KUMADP_FIELD_NUMBER: _ClassVar[int]
    ENVOY_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    kumaDp: KumaDpVersion
    envoy: EnvoyVersion
    dependencies: _containers.ScalarMap[str, str]
    def __init__(self, kumaDp: _Optional[_Union[KumaDpVersion, _Mapping]] = ..., envoy: _Optional[_Union[EnvoyVersion, _Mapping]] = ..., dependencies: _Optional[_Mapping[str, str]] = ...) -> None: ...

class KumaDpVersion(_message.Message):
    __slots__ = ("version", "gitTag", "gitCommit", "buildDate", "kumaCpCompatible")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GITTAG_FIELD_NUMBER: _ClassVar[int]
    GITCOMMIT_FIELD_NUMBER: _ClassVar[int]
    BUILDDATE_FIELD_NUMBER: _ClassVar[int]
    KUMACPCOMPATIBLE_FIELD_NUMBER: _ClassVar[int]
    version: str
    gitTag: str
    gitCommit: str
    buildDate: str
    kumaCpCompatible: bool
    def __init__(self, version: _Optional[str] = ..., gitTag: _Optional[str] = ..., gitCommit: _Optional[str] = ..., buildDate: _Optional[str] = ..., kumaCpCompatible: _Optional[bool] = ...) -> None: ...

class EnvoyVersion(_message.Message):
    __slots__ = ("version", "build", "kumaDpCompatible")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    KUMADPCOMPATIBLE_FIELD_NUMBER: _ClassVar[int]
    version: str
    build: str
    kumaDpCompatible: bool
    def __init__(self, version: _Optional[str] = ..., build: _Optional[str] = ..., kumaDpCompatible: _Optional[bool] = ...) -> None: ...
