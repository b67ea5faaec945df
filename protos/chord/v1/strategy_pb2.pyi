from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BackboneKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKBONE_KIND_UNSPECIFIED: _ClassVar[BackboneKind]
    BACKBONE_KIND_SASREC: _ClassVar[BackboneKind]
    BACKBONE_KIND_CASER: _ClassVar[BackboneKind]

class BackboneMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKBONE_MODE_UNSPECIFIED: _ClassVar[BackboneMode]
    BACKBONE_MODE_RANDOM: _ClassVar[BackboneMode]
    BACKBONE_MODE_PRETRAINED: _ClassVar[BackboneMode]

class CodeEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODE_ENCODING_UNSPECIFIED: _ClassVar[CodeEncoding]
    CODE_ENCODING_PACKED2: _ClassVar[CodeEncoding]
    CODE_ENCODING_PACKED2_DEFLATE: _ClassVar[CodeEncoding]
    CODE_ENCODING_DELTA2_DEFLATE: _ClassVar[CodeEncoding]

class ArtifactKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_KIND_UNSPECIFIED: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_BACKBONE_WEIGHTS: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_SHARED_MASK: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_REFERENCE_DATA: _ClassVar[ArtifactKind]
BACKBONE_KIND_UNSPECIFIED: BackboneKind
BACKBONE_KIND_SASREC: BackboneKind
BACKBONE_KIND_CASER: BackboneKind
BACKBONE_MODE_UNSPECIFIED: BackboneMode
BACKBONE_MODE_RANDOM: BackboneMode
BACKBONE_MODE_PRETRAINED: BackboneMode
CODE_ENCODING_UNSPECIFIED: CodeEncoding
CODE_ENCODING_PACKED2: CodeEncoding
CODE_ENCODING_PACKED2_DEFLATE: CodeEncoding
CODE_ENCODING_DELTA2_DEFLATE: CodeEncoding
ARTIFACT_KIND_UNSPECIFIED: ArtifactKind
ARTIFACT_KIND_BACKBONE_WEIGHTS: ArtifactKind
ARTIFACT_KIND_SHARED_MASK: ArtifactKind
ARTIFACT_KIND_REFERENCE_DATA: ArtifactKind

class GetModelSpecRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class LayerSpec(_message.Message):
    __slots__ = ("name", "n_channels", "channel_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    N_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    n_channels: int
    channel_size: int
    def __init__(self, name: _Optional[str] = ..., n_channels: _Optional[int] = ..., channel_size: _Optional[int] = ...) -> None: ...

class TierSpec(_message.Message):
    __slots__ = ("name", "level_bits", "default_budget_bits", "min_budget_bits", "max_budget_bits")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEVEL_BITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BUDGET_BITS_FIELD_NUMBER: _ClassVar[int]
    MIN_BUDGET_BITS_FIELD_NUMBER: _ClassVar[int]
    MAX_BUDGET_BITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    level_bits: _containers.RepeatedScalarFieldContainer[int]
    default_budget_bits: float
    min_budget_bits: float
    max_budget_bits: float
    def __init__(self, name: _Optional[str] = ..., level_bits: _Optional[_Iterable[int]] = ..., default_budget_bits: _Optional[float] = ..., min_budget_bits: _Optional[float] = ..., max_budget_bits: _Optional[float] = ...) -> None: ...

class ArtifactRef(_message.Message):
    __slots__ = ("digest", "kind", "size_bytes", "format")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    digest: str
    kind: ArtifactKind
    size_bytes: int
    format: str
    def __init__(self, digest: _Optional[str] = ..., kind: _Optional[_Union[ArtifactKind, str]] = ..., size_bytes: _Optional[int] = ..., format: _Optional[str] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("kind", "mode", "config_json", "seed", "version", "layers", "n_channels", "tiers", "profile_dim", "max_recent_items", "n_items", "reference_id", "artifacts", "generator", "weights_checksum")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    N_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_DIM_FIELD_NUMBER: _ClassVar[int]
    MAX_RECENT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    N_ITEMS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    kind: BackboneKind
    mode: BackboneMode
    config_json: str
    seed: int
    version: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerSpec]
    n_channels: int
    tiers: _containers.RepeatedCompositeFieldContainer[TierSpec]
    profile_dim: int
    max_recent_items: int
    n_items: int
    reference_id: str
    artifacts: _containers.RepeatedCompositeFieldContainer[ArtifactRef]
    generator: str
    weights_checksum: str
    def __init__(self, kind: _Optional[_Union[BackboneKind, str]] = ..., mode: _Optional[_Union[BackboneMode, str]] = ..., config_json: _Optional[str] = ..., seed: _Optional[int] = ..., version: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerSpec, _Mapping]]] = ..., n_channels: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[TierSpec, _Mapping]]] = ..., profile_dim: _Optional[int] = ..., max_recent_items: _Optional[int] = ..., n_items: _Optional[int] = ..., reference_id: _Optional[str] = ..., artifacts: _Optional[_Iterable[_Union[ArtifactRef, _Mapping]]] = ..., generator: _Optional[str] = ..., weights_checksum: _Optional[str] = ...) -> None: ...

class GetStrategyRequest(_message.Message):
    __slots__ = ("device_id", "request_id", "backbone_version", "tier", "budget_bits", "profile", "recent_items", "reference_id")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    BUDGET_BITS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    RECENT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    request_id: str
    backbone_version: str
    tier: str
    budget_bits: float
    profile: _containers.RepeatedScalarFieldContainer[float]
    recent_items: _containers.RepeatedScalarFieldContainer[int]
    reference_id: str
    def __init__(self, device_id: _Optional[str] = ..., request_id: _Optional[str] = ..., backbone_version: _Optional[str] = ..., tier: _Optional[str] = ..., budget_bits: _Optional[float] = ..., profile: _Optional[_Iterable[float]] = ..., recent_items: _Optional[_Iterable[int]] = ..., reference_id: _Optional[str] = ...) -> None: ...

class ServerTimings(_message.Message):
    __slots__ = ("batch_size", "queue_us", "model_us", "total_us", "worker")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    MODEL_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    queue_us: int
    model_us: int
    total_us: int
    worker: int
    def __init__(self, batch_size: _Optional[int] = ..., queue_us: _Optional[int] = ..., model_us: _Optional[int] = ..., total_us: _Optional[int] = ..., worker: _Optional[int] = ...) -> None: ...

class GetStrategyReply(_message.Message):
    __slots__ = ("request_id", "codes", "n_channels", "crc32", "version", "encoding", "level_counts", "timings", "avg_bits")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    N_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    LEVEL_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    AVG_BITS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    codes: bytes
    n_channels: int
    crc32: int
    version: str
    encoding: CodeEncoding
    level_counts: _containers.RepeatedScalarFieldContainer[int]
    timings: ServerTimings
    avg_bits: float
    def __init__(self, request_id: _Optional[str] = ..., codes: _Optional[bytes] = ..., n_channels: _Optional[int] = ..., crc32: _Optional[int] = ..., version: _Optional[str] = ..., encoding: _Optional[_Union[CodeEncoding, str]] = ..., level_counts: _Optional[_Iterable[int]] = ..., timings: _Optional[_Union[ServerTimings, _Mapping]] = ..., avg_bits: _Optional[float] = ...) -> None: ...

class DeviceMetrics(_message.Message):
    __slots__ = ("hr5", "hr10", "ndcg5", "ndcg10", "adapt_ms", "infer_ms", "rpc_ms", "bytes_up", "bytes_down", "avg_bits")
    HR5_FIELD_NUMBER: _ClassVar[int]
    HR10_FIELD_NUMBER: _ClassVar[int]
    NDCG5_FIELD_NUMBER: _ClassVar[int]
    NDCG10_FIELD_NUMBER: _ClassVar[int]
    ADAPT_MS_FIELD_NUMBER: _ClassVar[int]
    INFER_MS_FIELD_NUMBER: _ClassVar[int]
    RPC_MS_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    AVG_BITS_FIELD_NUMBER: _ClassVar[int]
    hr5: float
    hr10: float
    ndcg5: float
    ndcg10: float
    adapt_ms: float
    infer_ms: float
    rpc_ms: float
    bytes_up: int
    bytes_down: int
    avg_bits: float
    def __init__(self, hr5: _Optional[float] = ..., hr10: _Optional[float] = ..., ndcg5: _Optional[float] = ..., ndcg10: _Optional[float] = ..., adapt_ms: _Optional[float] = ..., infer_ms: _Optional[float] = ..., rpc_ms: _Optional[float] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ..., avg_bits: _Optional[float] = ...) -> None: ...

class ReportMetricsRequest(_message.Message):
    __slots__ = ("device_id", "round", "tier", "metrics")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    round: int
    tier: str
    metrics: DeviceMetrics
    def __init__(self, device_id: _Optional[str] = ..., round: _Optional[int] = ..., tier: _Optional[str] = ..., metrics: _Optional[_Union[DeviceMetrics, _Mapping]] = ...) -> None: ...

class ReportMetricsReply(_message.Message):
    __slots__ = ("accepted", "duplicate")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class FetchArtifactRequest(_message.Message):
    __slots__ = ("digest", "offset", "max_chunk_bytes")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    max_chunk_bytes: int
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ...) -> None: ...
