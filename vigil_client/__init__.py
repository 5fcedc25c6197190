"""A Python client for the Vigil API, and the `vigil` command-line tool (vigil_client.cli)."""

from vigil_client.client import Client, VigilError

__all__ = ["Client", "VigilError"]
