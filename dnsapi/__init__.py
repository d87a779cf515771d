"""dnsapi: ACME DNS-01 challenge records for internal zones, kept in Vault, served by CoreDNS."""

__version__ = "0.1.0"
