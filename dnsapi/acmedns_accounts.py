"""acme-dns accounts: one Vault secret each, the password kept only as a slow hash.

An account is what acme-dns's POST /register hands out: a username and a subdomain (both
UUIDs), a 40-character password, and optionally the networks its updates may come from. Its
name `<subdomain>.<acme_dns.zone>` is the one name it may put TXT values at; challenge names are
delegated to it by a CNAME (`dnsapi acme-dns register --for NAME` writes that CNAME too).

The password is stored as scrypt(password, per-account salt): a leaked secret does not give the
password. scrypt is slow on purpose, and acme-dns clients send the password with every update,
so a successful check is remembered in memory by a fast hash of (username, password, stored
hash): a changed or deleted account never matches a remembered check, as each update reads the
account from Vault afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import secrets
import string
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .errors import TooManyRequests
from .store import VaultStore

PASSWORD_LENGTH = 40  # acme-dns's
PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-_"
SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # RFC 7914 interactive-login parameters (16 MiB each)
SCRYPT_MAXMEM = 64 * 1024 * 1024
VERIFIED_MAX = 4096  # remembered successful checks; forgotten all at once past this
# scrypt runs at once (each 16 MiB and tens of ms of a core), in threads of their own: anyone
# may make one with a made-up username, so they must not take the zone writers' threads or
# unbounded memory. A check waits this long for a turn, then is refused (429).
HASHING_MOST = 2
HASHING_WAIT = 2.0
# Account reads for a check at once: a made-up username costs a Vault read before its scrypt, and
# those reads must not fill the threads zone writes use (store.VAULT_THREADS). Same wait.
LOOKUPS_MOST = 4
_DUMMY_SALT = bytes(16)  # for unknown usernames: the same work as a real check


def new_password() -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


def hash_password(password: str, salt: bytes) -> str:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, maxmem=SCRYPT_MAXMEM, dklen=32,
                          **SCRYPT).hex()


def parse_username(text: str) -> str | None:
    """A username as acme-dns reads it (Go's uuid.Parse: plain, braced, urn:uuid: or bare hex
    forms), canonical; None when it is no UUID."""
    try:
        return str(uuid.UUID(text))
    except (ValueError, TypeError):
        return None


def valid_password(text: str) -> bool:
    """acme-dns's validKey: exactly 40 characters of the base64url alphabet."""
    return len(text) == PASSWORD_LENGTH and all(ch in PASSWORD_ALPHABET for ch in text)


def network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """An allowfrom entry as acme-dns reads it (brackets dropped, then Go's net.ParseCIDR, which
    wants a prefix length); None when it is not one."""
    text = entry.replace("[", "").replace("]", "")
    address, _, prefix = text.partition("/")
    # Go takes only a decimal prefix length and no IPv6 zone; Python would also take a
    # netmask ("/255.255.255.0") or a hostmask, and "%eth0".
    if not (prefix.isascii() and prefix.isdigit()) or "%" in address:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


@dataclass(frozen=True)
class Account:
    username: str
    subdomain: str
    allowfrom: tuple[str, ...]  # networks as given (brackets dropped); empty: from anywhere
    password_hash: str  # hex scrypt
    salt: str  # hex
    created_at: float
    created_by: str  # who registered it: a register token, a source address, or the CLI
    cnames: tuple[str, ...] = ()  # challenge names `dnsapi acme-dns register --for` delegated

    def fulldomain(self, zone: str) -> str:
        return f"{self.subdomain}.{zone}"

    def allows_source(self, address: str | None) -> bool:
        """acme-dns's AllowedFrom: any source when the list is empty, else one inside it."""
        if not self.allowfrom:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in net for entry in self.allowfrom if (net := network(entry)) is not None)

    def secret(self) -> dict[str, Any]:
        return {"subdomain": self.subdomain, "allowfrom": list(self.allowfrom),
                "password_scrypt": self.password_hash, "salt": self.salt,
                "scrypt": "n={n},r={r},p={p}".format(**SCRYPT), "created_at": self.created_at,
                "created_by": self.created_by, "cnames": list(self.cnames)}

    @classmethod
    def from_secret(cls, username: str, data: dict[str, Any]) -> Account | None:
        """The account in a secret's data; None for one that is not a whole account (a hand
        edit must lock the account, never open it)."""
        try:
            account = cls(username, str(uuid.UUID(data["subdomain"])),
                          tuple(str(n) for n in data.get("allowfrom") or ()),
                          bytes.fromhex(data["password_scrypt"]).hex(),
                          bytes.fromhex(data["salt"]).hex(), float(data.get("created_at") or 0),
                          str(data.get("created_by") or ""),
                          tuple(str(n) for n in data.get("cnames") or ()))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        if data.get("scrypt") != "n={n},r={r},p={p}".format(**SCRYPT) or len(account.salt) < 32:
            return None
        return account


class Accounts:
    """Create, find, check, list and delete accounts in Vault."""

    def __init__(self, store: VaultStore) -> None:
        self.store = store
        self._verified: set[str] = set()
        self._hashing = asyncio.Semaphore(HASHING_MOST)
        self._lookups = asyncio.Semaphore(LOOKUPS_MOST)
        self._hashers = ThreadPoolExecutor(HASHING_MOST, thread_name_prefix="scrypt")

    @contextlib.asynccontextmanager
    async def _turn(self, semaphore: asyncio.Semaphore) -> AsyncIterator[None]:
        """One of the checks' limited turns, when one is free within HASHING_WAIT; else 429."""
        try:
            async with asyncio.timeout(HASHING_WAIT):
                await semaphore.acquire()
        except TimeoutError:
            raise TooManyRequests("too many acme-dns password checks at once; retry in 1s", 1.0,
                                  "too_many_password_checks") from None
        try:
            yield
        finally:
            semaphore.release()

    async def _hash(self, password: str, salt: bytes) -> str:
        """scrypt in one of the door's own threads, when one is free within HASHING_WAIT."""
        async with self._turn(self._hashing):
            return await asyncio.get_running_loop().run_in_executor(
                self._hashers, hash_password, password, salt)

    async def create(self, allowfrom: tuple[str, ...], created_by: str,
                     cnames: tuple[str, ...] = ()) -> tuple[Account, str]:
        """A new account and its password (the only time the password exists in the clear)."""
        password, salt = new_password(), secrets.token_bytes(16)
        password_hash = await self._hash(password, salt)
        account = Account(str(uuid.uuid4()), str(uuid.uuid4()), allowfrom, password_hash,
                          salt.hex(), time.time(), created_by, cnames)
        await self.store.create_account(account.username, account.secret())
        return account, password

    async def get(self, username: str) -> Account | None:
        data = await self.store.read_account(username)
        return Account.from_secret(username, data) if data else None

    async def verify(self, user: str, password: str) -> Account | None:
        """The account whose username and password these are, else None: acme-dns's checks in
        its order (a username that is a UUID, a well-formed key, a known account, the right
        password), with as much work for an unknown username as for a known one."""
        username = parse_username(user)
        if username is None or not valid_password(password):
            return None
        async with self._turn(self._lookups):
            account = await self.get(username)
        if account is None:
            await self._hash(password, _DUMMY_SALT)
            return None
        remembered = hashlib.sha256(f"{username}\0{password}\0{account.password_hash}"
                                    .encode()).hexdigest()
        if remembered in self._verified:
            return account
        computed = await self._hash(password, bytes.fromhex(account.salt))
        if not hmac.compare_digest(computed, account.password_hash):
            return None
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified.add(remembered)
        return account

    async def count(self) -> int:
        return sum(parse_username(name) == name for name in await self.store.list_accounts())

    async def list(self) -> list[Account]:
        names = await self.store.list_accounts()
        found = await asyncio.gather(*(self.get(name) for name in names if parse_username(name) == name))
        return sorted((a for a in found if a is not None), key=lambda a: a.created_at)

    async def delete(self, username: str) -> None:
        await self.store.delete_account(username)
