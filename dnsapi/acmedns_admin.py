"""`dnsapi acme-dns register|ls|rm`: the operator's side of acme-dns accounts.

acme-dns makes its users create `_acme-challenge.<name> CNAME <account name>` by hand; `register
--for NAME` creates the account and writes that CNAME into the managed block, through the same
record service as every front door (Vault first, then the zone file, under the zone writer's
lock), so it is safe while `dnsapi serve` runs. It prints the account as lego's storage file and
cert-manager's `acmedns.json` hold it. `rm` deletes the account, then its CNAMEs and TXT values.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from . import config as config_module
from .acmedns_accounts import Account, Accounts, network, parse_username
from .config import Config
from .errors import DnsapiError
from .metrics import Metrics
from .names import InvalidInput, normalize_name, zone_for
from .records import Change, Record, Update
from .service import RecordService


class AdminError(Exception):
    """What the command prints before exiting 1."""


def run_program(args: Any) -> int:
    config = config_module.load(args.config)
    if config.acme_dns is None:
        raise SystemExit("dnsapi acme-dns: the config has no acme_dns section")
    try:
        return asyncio.run(_run(config, args))
    except (AdminError, DnsapiError, InvalidInput) as exc:
        raise SystemExit(f"dnsapi acme-dns: {getattr(exc, 'message', exc)}") from None


async def _run(config: Config, args: Any) -> int:
    service = RecordService(config, Metrics())
    accounts = Accounts(service.store)
    if args.acme_dns_command == "ls":
        for account in await accounts.list():
            print(_describe(account, config))
        return 0
    await service.start()
    try:
        if args.acme_dns_command == "register":
            print(json.dumps(await register(service, accounts, args.names, tuple(args.allow_from)),
                             indent=2))
        else:
            await remove(service, accounts, args.username)
    finally:
        await service.close()
    return 0


def _describe(account: Account, config: Config) -> str:
    assert config.account_zone is not None
    return (f"{account.username} {account.fulldomain(config.account_zone)} "
            f"allowfrom={','.join(account.allowfrom) or '-'} for={','.join(account.cnames) or '-'} "
            f"by={account.created_by}")


async def register(service: RecordService, accounts: Accounts, names: list[str],
                   allowfrom: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """A new account delegated every name in `names`; {name: account} as acme-dns clients
    store it. On any failure nothing stays behind."""
    zone = service.config.account_zone
    assert zone is not None
    bad = next((entry for entry in allowfrom if network(entry) is None), None)
    if bad is not None:
        raise AdminError(f"--allow-from {bad!r} is not a network such as 10.0.0.0/8")
    domains = [normalize_name(name, "--for") for name in names]
    placeholder = f"00000000-0000-4000-8000-000000000000.{zone}"
    cnames = tuple(dict.fromkeys(service.make_cname(d, placeholder, "").fqdn for d in domains))
    account, password = await accounts.create(allowfrom, "cli", cnames)
    fulldomain = account.fulldomain(zone)
    added: list[Record] = []
    try:
        for fqdn in cnames:
            record = service.make_cname(fqdn.split(".", 1)[1], fulldomain, f"acme-dns:{account.username}")
            await service.add(record)
            added.append(record)
    except BaseException:
        await accounts.delete(account.username)
        for record in added:
            await service.remove(record.fqdn, record.value, "CNAME")
        raise
    for fqdn in cnames:
        print(f"{fqdn}. CNAME {fulldomain}. written", file=sys.stderr)
    entry = {"username": account.username, "password": password, "fulldomain": fulldomain,
             "subdomain": account.subdomain, "allowfrom": list(account.allowfrom)}
    return {domain: entry for domain in domains}


async def remove(service: RecordService, accounts: Accounts, username: str) -> None:
    """Take the account's CNAMEs and TXT values away, then the account, then its TXT values
    once more (an update that was checked before the account went). The account goes last so
    that a run stopped halfway (Vault down) can be run again: it finds the account and finishes;
    an update arriving after it is gone takes its own value out again (acmedns.update)."""
    zone = service.config.account_zone
    assert zone is not None
    name = parse_username(username)
    account = await accounts.get(name) if name else None
    if account is None:
        raise AdminError(f"no acme-dns account {username!r}")
    fulldomain = account.fulldomain(zone)
    target_zone = zone_for(fulldomain, service.writers)
    assert target_zone is not None
    values = Update((Change("remove_name", Record(fulldomain, "", 0, 0.0)),))
    for fqdn in account.cnames:
        await service.remove(fqdn, fulldomain, "CNAME")
    await service.update(target_zone, values)
    await accounts.delete(account.username)
    await service.update(target_zone, values)
    print(f"removed account {account.username} ({fulldomain}), its CNAMEs and TXT values",
          file=sys.stderr)
