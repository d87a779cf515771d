# One node of a 3-node OpenBao (or Vault) cluster with integrated storage (raft), the file
# audit device declared in the config, and TLS on the API listener. docs/ha.md explains the
# layout; the end-to-end tests (tests/cluster.py) render their nodes from this very file.
#
# Fill in every placeholder (a name in double braces); every node gets this file with its own
# values. A line whose placeholder you have no value for is left out: in production the
# tls_disable and the two autopilot_* lines go; without TLS (loopback tests only) the
# tls_cert_file, tls_key_file and leader_ca_cert_file lines go and tls_disable = "true" stays.
# The retry_join block is written once per node of the cluster (this node included: joining
# itself is skipped), so a node that restarts finds whichever node leads now.
# HashiCorp Vault: add `disable_mlock = true` (recommended with integrated storage; OpenBao has
# no mlock and warns about the key).
#
#   bao server -config /etc/openbao/openbao.hcl

ui            = false
api_addr      = "{{api_addr}}"      # https://THIS-NODE:8200, as clients and other nodes reach it
cluster_addr  = "{{cluster_addr}}"  # https://THIS-NODE:8201, node-to-node (raft and forwarding)

# Standbys answer reads from their own raft state (OpenBao 2.5+); "true" forwards every read
# to the active node. dnsapi works with either: it reads only from the active node.
disable_standby_reads = {{disable_standby_reads}}

listener "tcp" {
  address         = "{{address}}"          # e.g. 0.0.0.0:8200
  cluster_address = "{{cluster_address}}"  # e.g. 0.0.0.0:8201
  tls_disable     = "{{tls_disable}}"
  tls_cert_file   = "{{tls_cert_file}}"    # this node's certificate (its names and IPs)
  tls_key_file    = "{{tls_key_file}}"
}

storage "raft" {
  path    = "{{data_dir}}"      # owned by the openbao user, mode 0700
  node_id = "{{node_id}}"       # unique per node, e.g. openbao-1
  # 1 is the tightest election timing (5 is the default, for slow or busy networks): a lost
  # leader is replaced in a few seconds.
  performance_multiplier = 1
  # How soon autopilot promotes a joining node to voter (defaults 2s and 10s; the tests use
  # 500ms and 1s).
  autopilot_update_interval    = "{{autopilot_update_interval}}"
  autopilot_reconcile_interval = "{{autopilot_reconcile_interval}}"

  retry_join {
    leader_api_addr     = "{{peer_api_addr}}"
    leader_ca_cert_file = "{{leader_ca_cert_file}}"  # the CA that signed the nodes' certificates
  }
}

# Every request and response, with secret values HMAC'd (paths in clear). OpenBao (since 2.3)
# accepts audit devices only from its config; the declaration must be the same on every node
# (`dnsapi vault-init` prints this block). audit_log: e.g. /var/log/openbao/audit.log, in a
# directory the openbao user owns; rotate it with logrotate and SIGHUP (it is reopened).
audit "file" "file" {
  description = "every request, for the record of issuance"
  options {
    file_path = "{{audit_log}}"
    mode      = "0600"
  }
}
