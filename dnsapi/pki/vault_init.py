"""`dnsapi vault-init`: make a Vault/OpenBao ready for dnsapi and be its internal ACME CA.

Idempotent by construction: every step reads what is there, writes only what differs, and reports
`created`, `updated` or `unchanged`; a second run reports no change. Secrets (the AppRole
secret_id, tokens) are written only to 0600 files, never printed. Every file goes through
`write_file` (no writing through symlinks); a directory other users could change is reported as a
`warning`.

The steps follow the order Vault needs: a file audit device first (so the rest is on record; on
OpenBao, which accepts audit devices only from its config, the stanza to add is printed); KV v2
mount and the service policy; AppRole; the root CA
and (by default) an intermediate issuing CA signed by it; the issuing role for the zones; cluster,
AIA/CRL/OCSP URLs, CRL auto-rebuild and auto-tidy; the mount tuned for ACME's headers; ACME
enabled with `dns_resolver` pointing at the DNS server that serves the zones; the root exported.
The API calls are those Vault ≥ 1.14 and OpenBao share (both serve ACME from the PKI mount).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions

from .. import files
from ..config import AppRoleConfig, Config, hostport_text, parse_duration
from ..vault import is_kv2

ACME_RESPONSE_HEADERS = ["Last-Modified", "Location", "Replay-Nonce", "Link"]
ACME_REQUEST_HEADERS = ["If-Modified-Since"]

# The file audit device: where vault-init enables it over the API (HashiCorp Vault, with sudo),
# and where the stanza it prints for OpenBao's config points. OpenBao refuses API-created audit
# devices since 2.3 (CVE-2025-54997) with this message (vault/logical_system.go).
AUDIT_DEVICE = "file"
VAULT_AUDIT_FILE = "/var/log/vault/audit.log"
OPENBAO_AUDIT_FILE = "/var/log/openbao/audit.log"
API_AUDIT_REFUSED = "cannot enable audit device via API"


def audit_stanza(file_path: str) -> str:
    """The declarative file audit device for an OpenBao server config: the block of
    deploy/vault/openbao-raft.hcl. It must be the same on every node."""
    return (f'audit "file" "{AUDIT_DEVICE}" {{\n'
            '  description = "every request, for the record of issuance"\n'
            '  options {\n'
            f'    file_path = "{file_path}"\n'
            '    mode      = "0600"\n'
            '  }\n'
            '}\n')


class InitError(Exception):
    """vault-init cannot go on; the message says what to fix."""


@dataclass(frozen=True)
class Step:
    status: str  # created | updated | unchanged | skipped | warning
    what: str
    detail: str = ""


def render_policy(kv_mount: str, prefix: str) -> str:
    """The service's least-privilege policy: its own prefix of the KV v2 mount, nothing else;
    the zone secrets it writes but never deletes, so that a stolen token cannot destroy their
    version history; and not pki-watch's state, so that it cannot silence a revocation notice
    (the more specific path wins in Vault, and a deny wins over every other policy).
    (`deploy/vault/dnsapi-policy.hcl` is this text for the default mount and prefix.)"""
    return (
        f"# dnsapi: challenge records under {kv_mount}/{prefix}/ only (written by `dnsapi vault-init`)\n"
        f'path "{kv_mount}/data/{prefix}/*" {{\n  capabilities = ["create", "read", "update", "delete"]\n}}\n'
        f'path "{kv_mount}/metadata/{prefix}/*" {{\n  capabilities = ["list", "read", "delete"]\n}}\n'
        f"# the zone secrets: written with check-and-set, never deleted (their versions are the history)\n"
        f'path "{kv_mount}/data/{prefix}/zones/*" {{\n  capabilities = ["create", "read", "update"]\n}}\n'
        f'path "{kv_mount}/metadata/{prefix}/zones/*" {{\n  capabilities = ["list", "read"]\n}}\n'
        f"# pki-watch's state is its own\n"
        f'path "{kv_mount}/data/{prefix}/pki-watch/*" {{\n  capabilities = ["deny"]\n}}\n'
        f'path "{kv_mount}/metadata/{prefix}/pki-watch/*" {{\n  capabilities = ["deny"]\n}}\n'
    )


def render_pki_watch_policy(kv_mount: str, prefix: str, mounts: tuple[str, ...]) -> str:
    """`dnsapi pki-watch`'s policy: listing the watched mounts' certificates (certificates, CRLs
    and OCSP are public), and its state, written with check-and-set and never deleted. Nothing
    else: no challenge record, no zone.
    (`deploy/vault/dnsapi-pki-watch-policy.hcl` is this text for the defaults.)"""
    rules = "".join(f'path "{mount}/{path}" {{\n  capabilities = ["list"]\n}}\n'
                    for mount in mounts for path in ("certs", "certs/detailed", "certs/revoked"))
    header = f"# dnsapi pki-watch: list certificates of {', '.join(mounts)} (written by `dnsapi vault-init`)"
    state = (f'# its state\npath "{kv_mount}/data/{prefix}/pki-watch/state" {{\n'
             '  capabilities = ["create", "read", "update"]\n}\n')
    return f"{header}\n{rules}{state}"


def differences(desired: dict[str, Any], current: dict[str, Any] | None,
                durations: tuple[str, ...] = ()) -> list[str]:
    """Keys of `desired` whose value `current` does not have (durations compared in seconds,
    lists as sets). Keys Vault adds on its own are ignored."""
    if current is None:
        return list(desired)
    changed = []
    for key, want in desired.items():
        have = current.get(key)
        if key in durations:
            want, have = parse_duration(want), parse_duration(have)
        elif isinstance(want, list):
            want, have = sorted(want), sorted(have or [])
        if want != have:
            changed.append(key)
    return changed


def write_file(path: Path, text: str, mode: int) -> int:
    """`files.write_file`, refusing a symlink at `path` so the operator hears of it (the rename
    would only replace it). A file replaced keeps its owner and group, and its mode unless that
    lets others in: the operator gave a credential to the user a service runs as, and a renewed
    secret_id owned by root alone would stop that service at its next login. Returns the mode
    written."""
    refuse_symlink(path)
    try:
        before = path.stat()
    except FileNotFoundError:
        files.write_file(path, text.encode(), mode)
        return mode
    kept = stat.S_IMODE(before.st_mode)
    mode = kept if not kept & 0o007 else mode
    try:
        files.write_file(path, text.encode(), mode, owner=(before.st_uid, before.st_gid))
    except PermissionError:
        raise InitError(f"{path}: cannot give its new content the file's owner (uid {before.st_uid}, "
                        f"gid {before.st_gid}) as this user; run vault-init as root") from None
    return mode


def refuse_symlink(path: Path) -> None:
    """vault-init runs as an admin (often root): a link planted where it writes would make it
    overwrite, or read, a file of the planter's choosing."""
    if path.is_symlink():
        raise InitError(f"{path} is a symbolic link (to {os.readlink(path)}): vault-init does not "
                        "read or write through links; remove it, or put the real path in the config")


def unsafe_directories(path: Path) -> list[str]:
    """Why another user could swap or plant files where `path` lands: a directory on the way
    (the real one and every parent, since replacing any of them redirects the write) that is
    group- or world-writable without the sticky bit, or owned by someone other than root or us."""
    directory = path.parent.resolve()
    reasons = []
    for current in (directory, *directory.parents):
        info = current.stat()
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
            reasons.append(f"{current} is writable by other users "
                           f"(mode {stat.S_IMODE(info.st_mode):04o}, no sticky bit)")
        elif info.st_uid not in (0, os.geteuid()):
            reasons.append(f"{current} is owned by another user (uid {info.st_uid})")
    return reasons


class VaultInit:
    def __init__(self, config: Config, client: hvac.Client,
                 report: Callable[[Step], None] = lambda change: None,
                 audit_file: str | None = None) -> None:
        for key, approle in (("vault.approle", config.vault.approle),
                             ("pki_watch.approle", _watch_approle(config))):
            if approle is not None and (approle.role_id_file is None or approle.secret_id_file is None):
                raise InitError(f"{key}: vault-init writes the AppRole credentials to {key}.role_id_file "
                                f"and {key}.secret_id_file; use those two instead of literal role_id "
                                "/ secret_id")
        self.config = config
        self.client = client
        self.pki = config.vault_init.pki
        self.report = report
        self.audit_file = audit_file  # None: VAULT_AUDIT_FILE, or OPENBAO_AUDIT_FILE in the stanza
        self.changes: list[Step] = []

    def run(self) -> list[Step]:
        """Every step in order; returns what each one found or did."""
        self.audit()
        self.kv_mount()
        self.policy()
        self.approle()
        self.pki_mounts()
        root_pem = self.root_ca()
        if self.pki.intermediate:
            self.intermediate_ca()
        self.issuing_role()
        for mount in dict.fromkeys([self.pki.root_mount, self.pki.mount]):
            self.mount_urls(mount)
            self.crl_and_tidy(mount)
        self.acme()
        self.export_root(root_pem)
        return self.changes

    # -- helpers -----------------------------------------------------------------------------

    def _note(self, status: str, what: str, detail: str = "") -> None:
        change = Step(status, what, detail)
        self.changes.append(change)
        self.report(change)

    def _read(self, path: str) -> dict[str, Any] | None:
        try:
            response = self.client.read(path)
        except hvac.exceptions.InvalidPath:
            return None
        return None if response is None else response.get("data")

    def _ensure(self, path: str, desired: dict[str, Any], what: str,
                durations: tuple[str, ...] = ()) -> None:
        current = self._read(path)
        changed = differences(desired, current, durations)
        if not changed:
            self._note("unchanged", what)
            return
        self.client.write_data(path, data=desired)
        self._note("created" if current is None else "updated", what,
                   "" if current is None else "set " + ", ".join(changed))

    def _mounts(self) -> dict[str, Any]:
        return self.client.sys.list_mounted_secrets_engines()["data"]

    def _write(self, path: Path, text: str, mode: int) -> int:
        """Every file vault-init writes goes through here: its directory is made if need be
        (private for a private file), others' access on the way is reported, then `write_file`."""
        path.parent.mkdir(mode=0o700 if mode & 0o077 == 0 else 0o755, parents=True, exist_ok=True)
        for reason in unsafe_directories(path):
            warning = Step("warning", f"{reason}: another user could replace files written there")
            if warning not in self.changes:
                self._note(warning.status, warning.what)
        return write_file(path, text, mode)

    # -- steps ---------------------------------------------------------------------------------

    def audit(self) -> None:
        """A file audit device, so every issuance request is on record (paths in clear, values
        HMAC'd). One that exists is kept; otherwise one is enabled over the API, and when the
        server refuses that as OpenBao does, the stanza for its config is printed instead."""
        try:
            devices = self.client.sys.list_enabled_audit_devices()["data"]
        except hvac.exceptions.Forbidden:
            self._note("warning", "audit devices: this token may not read sys/audit (it needs "
                       "sudo); check with an admin token: bao audit list (or vault audit list)")
            return
        if devices:
            found = ", ".join(f"{path} ({device['type']})" for path, device in sorted(devices.items()))
            self._note("unchanged", f"audit device {found}")
            return
        file_path = self.audit_file or VAULT_AUDIT_FILE
        try:
            self.client.sys.enable_audit_device("file", path=AUDIT_DEVICE,
                                                options={"file_path": file_path})
        except hvac.exceptions.InvalidRequest as exc:
            if API_AUDIT_REFUSED not in str(exc):
                self._note("warning", f"no audit device, and enabling one at {file_path} failed "
                           f"({str(exc).strip()}): enable one where the server may write, e.g. "
                           "vault audit enable file file_path=/var/log/vault/audit.log")
                return
            stanza = audit_stanza(self.audit_file or OPENBAO_AUDIT_FILE)
            self._note("warning", "no audit device, and this server creates none over the API "
                       "(OpenBao since 2.3): add this to every node's server config, then "
                       "restart or SIGHUP each node:\n"
                       + "".join(f"            {line}\n" for line in stanza.splitlines()).rstrip())
            return
        self._note("created", f"audit device {AUDIT_DEVICE}/ (file)", f"writing to {file_path}")

    def kv_mount(self) -> None:
        mount = self.config.vault.kv_mount
        found = self._mounts().get(f"{mount}/")
        if found is None:
            self.client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
            self._note("created", f"KV v2 secrets engine at {mount}/")
        elif not is_kv2(found):
            raise InitError(f"vault.kv_mount: {mount}/ exists but is not a KV version 2 mount "
                            f"(type {found['type']}, options {found.get('options')})")
        else:
            self._note("unchanged", f"KV v2 secrets engine at {mount}/")

    def policy(self) -> None:
        name = self.config.vault_init.policy
        self._policy(name, render_policy(self.config.vault.kv_mount, self.config.vault.prefix))
        vault = self.config.vault
        self._policy(f"{name}-pki-watch",
                     render_pki_watch_policy(vault.kv_mount, vault.prefix, self.config.pki_watch.mounts))

    def _policy(self, name: str, text: str) -> None:
        try:
            current = self.client.sys.read_policy(name)["data"]["rules"]
        except hvac.exceptions.InvalidPath:
            current = None
        if current == text:
            self._note("unchanged", f"policy {name}")
            return
        self.client.sys.create_or_update_acl_policy(name=name, policy=text)
        self._note("created" if current is None else "updated", f"policy {name}")

    def approle(self) -> None:
        """The service's AppRole, and pki-watch's: two roles, so that neither can do the other's
        work (pki-watch must not write challenge records, the service must not touch its state)."""
        init = self.config.vault_init
        watch_policy = f"{init.policy}-pki-watch"
        service = self.config.vault.approle
        if service is None:
            self._note("skipped", "AppRole", "vault.approle is not set: dnsapi authenticates with a "
                       f"token; give that token the {init.policy} policy")
        else:
            self._approle(service, init.approle_role, init.policy)
        watch = _watch_approle(self.config)
        if watch is not None:
            self._approle(watch, f"{init.approle_role}-pki-watch", watch_policy)
        elif self.config.pki_watch.vault is not None:
            self._note("skipped", "pki-watch AppRole", "pki_watch.token_file is set: give that token "
                       f"the {watch_policy} policy")
        else:
            self._note("skipped", "pki-watch AppRole", "pki_watch.approle is not set: pki-watch needs a "
                       f"login of its own, this AppRole or a token with the {watch_policy} policy in "
                       "pki_watch.token_file")

    def _approle(self, approle: AppRoleConfig, role: str, policy: str) -> None:
        assert approle.role_id_file and approle.secret_id_file
        init = self.config.vault_init
        if f"{approle.mount}/" not in self.client.sys.list_auth_methods()["data"]:
            self.client.sys.enable_auth_method("approle", path=approle.mount)
            self._note("created", f"AppRole auth method at {approle.mount}/")
        else:
            self._note("unchanged", f"AppRole auth method at {approle.mount}/")
        role_path = f"auth/{approle.mount}/role/{role}"
        self._ensure(role_path, {
            "token_policies": [policy],
            "token_ttl": f"{int(init.token_ttl)}s",
            "token_max_ttl": f"{int(init.token_max_ttl)}s", "token_type": "service",
            "secret_id_ttl": "0s", "bind_secret_id": True,
        }, f"AppRole role {role}", durations=("token_ttl", "token_max_ttl", "secret_id_ttl"))

        role_id = self.client.read(f"{role_path}/role-id")["data"]["role_id"]
        if _read_file(approle.role_id_file) == role_id:
            self._note("unchanged", f"role_id file {approle.role_id_file}")
        else:
            mode = self._write(approle.role_id_file, role_id + "\n", 0o600)
            self._note("created", f"role_id file {approle.role_id_file}", f"mode {mode:04o}")

        secret_id = _read_file(approle.secret_id_file)
        if secret_id and self._secret_id_valid(role_path, secret_id):
            self._note("unchanged", f"secret_id file {approle.secret_id_file}")
        else:
            fresh = self.client.write_data(f"{role_path}/secret-id", data={})["data"]["secret_id"]
            mode = self._write(approle.secret_id_file, fresh + "\n", 0o600)
            self._note("created", f"secret_id file {approle.secret_id_file}",
                       f"new secret_id, mode {mode:04o}")
        if stat.S_IMODE(approle.secret_id_file.stat().st_mode) & 0o077:
            self._note("warning", f"{approle.secret_id_file} is readable by others than its owner "
                                  "(pki-watch's unit joins the group dnsapi): give it to the user "
                                  "its service runs as, mode 0400 (docs/operations.md)")

    def _secret_id_valid(self, role_path: str, secret_id: str) -> bool:
        try:
            response = self.client.write_data(f"{role_path}/secret-id/lookup",
                                              data={"secret_id": secret_id})
        except (hvac.exceptions.InvalidPath, hvac.exceptions.InvalidRequest):
            return False
        # An unknown secret_id is answered with 204 No Content, which hvac hands back as a bare
        # requests.Response rather than a dict.
        return isinstance(response, dict) and bool(response.get("data"))

    def pki_mounts(self) -> None:
        mounts = self._mounts()
        wanted = {self.pki.root_mount: self.pki.root_ttl, self.pki.mount: self.pki.intermediate_ttl}
        if not self.pki.intermediate:
            wanted = {self.pki.root_mount: self.pki.root_ttl}
        for mount, ttl in wanted.items():
            found = mounts.get(f"{mount}/")
            if found is None:
                self.client.sys.enable_secrets_engine("pki", path=mount,
                                                      config={"max_lease_ttl": f"{int(ttl)}s"})
                self._note("created", f"PKI secrets engine at {mount}/")
                continue
            if found["type"] != "pki":
                raise InitError(f"vault_init.pki: {mount}/ exists but is a {found['type']} mount")
            tune = self._read(f"sys/mounts/{mount}/tune") or {}
            if (parse_duration(tune.get("max_lease_ttl")) or 0) < ttl:
                self.client.sys.tune_mount_configuration(mount, max_lease_ttl=f"{int(ttl)}s")
                self._note("updated", f"PKI secrets engine at {mount}/", "raised max_lease_ttl")
            else:
                self._note("unchanged", f"PKI secrets engine at {mount}/")

    def _issuer_pem(self, mount: str) -> str | None:
        if not self.client.list(f"{mount}/issuers"):
            return None
        return str(self.client.read(f"{mount}/issuer/default")["data"]["certificate"])

    def root_ca(self) -> str:
        existing = self._issuer_pem(self.pki.root_mount)
        if existing:
            self._note("unchanged", f"root CA in {self.pki.root_mount}/")
            return existing
        response = self.client.write_data(f"{self.pki.root_mount}/root/generate/internal", data={
            "common_name": self.pki.common_name, "issuer_name": "root",
            "key_type": self.pki.key_type, "key_bits": self.pki.key_bits,
            "ttl": f"{int(self.pki.root_ttl)}s"})
        self._note("created", f"root CA in {self.pki.root_mount}/",
                   f"{self.pki.key_type}{self.pki.key_bits or ''} {self.pki.common_name!r}")
        return str(response["data"]["certificate"])

    def intermediate_ca(self) -> None:
        if self._issuer_pem(self.pki.mount):
            self._note("unchanged", f"intermediate CA in {self.pki.mount}/")
            return
        name = f"{self.pki.common_name} - issuing"
        csr = self.client.write_data(f"{self.pki.mount}/intermediate/generate/internal", data={
            "common_name": name, "key_type": self.pki.key_type,
            "key_bits": self.pki.key_bits})["data"]["csr"]
        signed = self.client.write_data(f"{self.pki.root_mount}/root/sign-intermediate", data={
            "csr": csr, "common_name": name, "ttl": f"{int(self.pki.intermediate_ttl)}s",
            "format": "pem"})["data"]["certificate"]
        # Only the intermediate: the chain clients get is then leaf + intermediate, without the
        # root, which they must already trust and servers should not send.
        self.client.write_data(f"{self.pki.mount}/intermediate/set-signed",
                               data={"certificate": signed})
        self._note("created", f"intermediate CA in {self.pki.mount}/", f"signed by {self.pki.root_mount}/")

    def issuing_role(self) -> None:
        """The only role ACME may use (see `acme`): DNS names in the configured zones."""
        self._ensure(f"{self.pki.mount}/roles/{self.pki.role}", {
            "allowed_domains": [zone.name for zone in self.config.zones],
            "allow_subdomains": True, "allow_bare_domains": True,
            "allow_wildcard_certificates": True,
            # Only names in the zones: roles allow localhost by default, and ACME can validate
            # an IP identifier only by http-01, which bypasses dnsapi's scoping.
            "allow_localhost": False, "allow_ip_sans": False, "allow_any_name": False,
            "key_type": "any", "max_ttl": f"{int(self.pki.max_ttl)}s", "no_store": False,
            "server_flag": True, "client_flag": False,
        }, f"PKI role {self.pki.mount}/roles/{self.pki.role}", durations=("max_ttl",))

    def mount_urls(self, mount: str) -> None:
        base = f"{self.pki.cluster_url}/v1/{mount}"
        self._ensure(f"{mount}/config/cluster", {"path": base, "aia_path": base},
                     f"cluster path of {mount}/")
        self._ensure(f"{mount}/config/urls", {
            "issuing_certificates": ["{{cluster_aia_path}}/issuer/{{issuer_id}}/der"],
            "crl_distribution_points": ["{{cluster_aia_path}}/issuer/{{issuer_id}}/crl/der"],
            "ocsp_servers": ["{{cluster_path}}/ocsp"],
            "enable_templating": True,
        }, f"AIA, CRL and OCSP URLs of {mount}/")

    def crl_and_tidy(self, mount: str) -> None:
        self._ensure(f"{mount}/config/crl", {
            "expiry": f"{int(self.pki.crl_expiry)}s", "auto_rebuild": True, "enable_delta": True,
        }, f"CRL auto-rebuild of {mount}/", durations=("expiry",))
        self._ensure(f"{mount}/config/auto-tidy", {
            "enabled": True, "interval_duration": f"{int(self.pki.tidy_interval)}s",
            "tidy_cert_store": True, "tidy_revoked_certs": True,
            "tidy_revoked_cert_issuer_associations": True, "tidy_expired_issuers": True,
            "tidy_acme": True,
        }, f"auto-tidy of {mount}/", durations=("interval_duration",))

    def acme(self) -> None:
        mount = self.pki.mount
        tune_path = f"sys/mounts/{mount}/tune"
        tune = self._read(tune_path) or {}
        if differences({"allowed_response_headers": ACME_RESPONSE_HEADERS,
                        "passthrough_request_headers": ACME_REQUEST_HEADERS}, tune):
            self.client.sys.tune_mount_configuration(
                mount, allowed_response_headers=ACME_RESPONSE_HEADERS,
                passthrough_request_headers=ACME_REQUEST_HEADERS)
            self._note("updated", f"{mount}/ tuned for ACME headers")
        else:
            self._note("unchanged", f"{mount}/ tuned for ACME headers")
        resolver = self.pki.acme_dns_resolver
        if resolver is None:
            if not self.config.dns_servers:
                raise InitError("vault_init.pki.acme_dns_resolver: set it (or dns_servers) to the "
                                "IP:PORT of a DNS server that serves the zones; Vault's ACME "
                                "validates DNS-01 there")
            resolver = hostport_text(*self.config.dns_servers[0])
        if self._read(f"{mount}/config/acme") is None:
            raise InitError(f"{mount}/config/acme does not exist: this server has no ACME "
                            "(HashiCorp Vault needs 1.14 or later; OpenBao has it)")
        # Every ACME directory of the mount issues under the role, from the default issuer, with
        # serverAuth only. Which challenges are offered cannot be configured: OpenBao/Vault offer
        # http-01, dns-01 and tls-alpn-01 for every DNS name (docs/runbook.md, "What the ACME
        # directory can and cannot restrict").
        self._ensure(f"{mount}/config/acme", {
            "enabled": True, "dns_resolver": resolver, "eab_policy": self.pki.eab_policy,
            "allowed_roles": [self.pki.role], "default_directory_policy": f"role:{self.pki.role}",
            "allowed_issuers": ["default"], "allow_role_ext_key_usage": False,
        }, f"ACME on {mount}/ (DNS-01 checked at {resolver})")

    def export_root(self, root_pem: str) -> None:
        path = self.pki.root_ca_file
        text = root_pem.strip() + "\n"
        if _read_file(path, strip=False) == text:
            self._note("unchanged", f"root CA certificate at {path}")
            return
        self._write(path, text, 0o644)
        self._note("created", f"root CA certificate at {path}", "for trust distribution")

    def directory_url(self) -> str:
        return f"{self.pki.cluster_url}/v1/{self.pki.mount}/acme/directory"


def _watch_approle(config: Config) -> AppRoleConfig | None:
    return config.pki_watch.vault.approle if config.pki_watch.vault is not None else None


def _read_file(path: Path | None, strip: bool = True) -> str | None:
    """The file's text, None if it does not exist (or is not text). A symlink is refused before
    anything is read or minted in Vault (see `refuse_symlink`), and so is a file this user may
    not read: run as another admin, vault-init would otherwise mint a new secret_id and replace
    the file the service runs on."""
    if path is None:
        return None
    refuse_symlink(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise InitError(f"{path} is not text: not what vault-init writes; move it away if it may "
                        "be replaced") from None
    except OSError as exc:
        raise InitError(f"cannot read {path}: {exc.strerror}; run vault-init as a user who may "
                        "(it compares the file with what Vault holds before writing it)") from None
    return text.strip() if strip else text
