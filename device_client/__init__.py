"""device_client package."""
