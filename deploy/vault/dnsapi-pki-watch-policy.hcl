# dnsapi pki-watch: list certificates of pki_root, pki (written by `dnsapi vault-init`)
path "pki_root/certs" {
  capabilities = ["list"]
}
path "pki_root/certs/detailed" {
  capabilities = ["list"]
}
path "pki_root/certs/revoked" {
  capabilities = ["list"]
}
path "pki/certs" {
  capabilities = ["list"]
}
path "pki/certs/detailed" {
  capabilities = ["list"]
}
path "pki/certs/revoked" {
  capabilities = ["list"]
}
# its state
path "secret/data/dnsapi/pki-watch/state" {
  capabilities = ["create", "read", "update"]
}
