"""Shared parts of ArchMesh Realtime: schemas, broker, settings, logging."""

__version__ = "0.1.0"
