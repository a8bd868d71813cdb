"""Python client and command line of the service: `from serve_app.client import WanClient`,
`wan-client generate "A cat dancing on a stage"`."""

from serve_app.client.api import WanClient, WanError

__all__ = ["WanClient", "WanError"]
