# dnsapi: challenge records under secret/dnsapi/ only (written by `dnsapi vault-init`)
path "secret/data/dnsapi/*" {
  capabilities = ["create", "read", "update", "delete"]
}
path "secret/metadata/dnsapi/*" {
  capabilities = ["list", "read", "delete"]
}
