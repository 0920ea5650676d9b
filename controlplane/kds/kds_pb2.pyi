# ruff: noqa
import datetime

from envoy.service.discovery.v3 import discovery_pb2 as _discovery_pb2
from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KumaResource(_message.Message):
    __slots__ = ("meta", "spec", "status")
    class Meta(_message.Message):
        __slots__ = ("name", "mesh", "version", "labels")
        class LabelsEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: str
            def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
        NAME_FIELD_NUMBER: _ClassVar[int]
        MESH_FIELD_NUMBER: _ClassVar[int]
        VERSION_FIELD_NUMBER: _ClassVar[int]
        LABELS_FIELD_NUMBER: _ClassVar[int]
        name: str
        mesh: str
        version: str
        labels: _containers.ScalarMap[str, str]
        def __init__(self, name: _Optional[str] = ..., mesh: _Optional[str] = ..., version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...
    META_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    meta: KumaResource.Meta
    spec: _any_pb2.Any
    status: _any_pb2.Any
    def __init__(self, meta: _Optional[_Union[KumaResource.Meta, _Mapping]] = ..., spec: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., status: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class ZoneHealthCheckRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ZoneHealthCheckResponse(_message.Message):
    __slots__ = ("interval",)
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    interval: _duration_pb2.Duration
    def __init__(self, interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
