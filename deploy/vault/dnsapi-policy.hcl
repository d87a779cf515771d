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
# pki-watch's state is its own
path "secret/data/dnsapi/pki-watch/*" {
  capabilities = ["deny"]
}
path "secret/metadata/dnsapi/pki-watch/*" {
  capabilities = ["deny"]
}
