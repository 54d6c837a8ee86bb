"""Server mode: the HTTP API and websocket event stream of a queue (see docs/http-api.md).

``trioqueue serve`` is the command line; :func:`serve` is the same from Python, for a
program that wants to run the server in its own nursery::

    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve, registry, config, ServerSettings(port=0))
"""

from ._app import App
from ._openapi import openapi_document
from ._serve import serve
from ._settings import ServerSettings, ServerState

__all__ = ["App", "ServerSettings", "ServerState", "openapi_document", "serve"]
