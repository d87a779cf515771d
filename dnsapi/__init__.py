"""dnsapi: ACME DNS-01 challenge records for internal zones, kept in Vault, served by CoreDNS."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dnsapi")  # the installed package's metadata (pyproject.toml)
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
