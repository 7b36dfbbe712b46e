"""The local web app and HTTP API of `facestudio serve`: `create_app(pipe, data_dir)` and a helper to run it."""

from .app import create_app
from .background import BackgroundServer

__all__ = ["create_app", "BackgroundServer"]
