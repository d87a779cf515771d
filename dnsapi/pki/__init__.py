"""The PKI tools: `dnsapi vault-init` (the internal CA with ACME) and `dnsapi pki-watch`
(revocation, CRL, OCSP and expiry notices). They use the Vault connection (dnsapi/vault.py),
never the record store."""
