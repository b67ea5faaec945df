"""cloud_server package."""
