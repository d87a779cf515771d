# dnsapi: challenge records under secret/dnsapi/ only (written by `dnsapi vault-init`)
path "secret/data/dnsapi/*" {
  capabilities = ["create", "read", "update", "delete"]
}
path "secret/metadata/dnsapi/*" {
  capabilities = ["list", "read", "delete"]
}
# the zone secrets: written with check-and-set, never deleted (their versions are the history)
path "secret/data/dnsapi/zones/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/dnsapi/zones/*" {
  capabilities = ["list", "read"]
}
