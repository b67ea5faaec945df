"""The device side: a virtual phone (no Ray), its gRPC transport, a thin Ray actor hosting many."""

from device_client.actor import DeviceHost, HostConfig, device_actor_class
from device_client.device import DeviceJob, DeviceReport, RoundRecord, VirtualDevice
from device_client.transport import NetworkFaults, RetryPolicy, Transport, TransportError

__all__ = [
    "DeviceHost",
    "DeviceJob",
    "DeviceReport",
    "HostConfig",
    "NetworkFaults",
    "RetryPolicy",
    "RoundRecord",
    "Transport",
    "TransportError",
    "VirtualDevice",
    "device_actor_class",
]
