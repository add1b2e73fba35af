"""The ``fluxcelery dev`` trace viewer (standard library HTTP server + a static page)."""

from .viewer import ViewerServer, create_server, serve

__all__ = ["ViewerServer", "create_server", "serve"]
