"""The RFC 2136 front door: DNS UPDATE signed with TSIG (RFC 8945), on UDP and TCP.

cert-manager's rfc2136 solver, certbot-dns-rfc2136, lego's rfc2136 provider, acme.sh's
dns_nsupdate and plain nsupdate speak it. Like the HTTP API this module only authenticates,
validates and translates: an UPDATE becomes one atomic `Update` for the zone's writer (Vault
first, then the zone file), and the answer is NOERROR only once both have it.

What it accepts: TXT records at challenge names (`_acme-challenge.<name>` below a configured
zone) inside the key's `allow` patterns: add an RR, delete one RR (class NONE), delete the TXT
RRset or every RRset at a name (class ANY); prerequisites (RFC 2136 §2.4) against the zone as
served. Anything else is REFUSED and nothing changes. Clients find the zone by asking this server
for SOA (lego with RD=1, certbot over TCP with RD=0, nsupdate signed), so SOA and NS queries for
the configured zones are answered authoritatively from the operator's zone file; every other
query is REFUSED.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.rrset
import dns.tsig
import dns.update

from . import tsig, update_message
from .audit import AuditLog, value_hash
from .config import Config, TsigKeyConfig
from .dns_listener import DnsListener, formerr, header_reply, reply_limit
from .errors import DnsapiError, NameConflict, TooManyRecords
from .names import (
    InvalidInput,
    patterns_allow,
    validate_challenge_name,
    validate_ttl,
    validate_value,
    zone_for,
)
from .ratelimit import RateLimiter
from .records import Change, Outcome, Prerequisite, Record, Update
from .service import RecordService
from .update_message import Rr, UpdateRequest

log = logging.getLogger(__name__)

# Records in one message, all sections together. An ACME client's UPDATE holds a handful; a
# message of thousands costs a parse (and prerequisite checks) however it is signed.
MAX_RECORDS = 256
# Signed UPDATEs answered lately, remembered per key by their MAC for as long as their signature
# may still be accepted: the same message again, a client's retransmission or someone's replay,
# gets the same answer and changes nothing. Never forgotten early, or a replay would apply
# again: a key that sends more than this many within that time, those its rate limit refused
# included (one replayed later must not apply then), is refused until the oldest expire; no
# key's UPDATEs push out another's.
ANSWERED_PER_KEY = 32768


_RCODE_OF = {Outcome.NXDOMAIN: dns.rcode.NXDOMAIN, Outcome.YXDOMAIN: dns.rcode.YXDOMAIN,
             Outcome.NXRRSET: dns.rcode.NXRRSET, Outcome.YXRRSET: dns.rcode.YXRRSET,
             Outcome.FULL: dns.rcode.REFUSED, Outcome.QUOTA: dns.rcode.REFUSED,
             Outcome.CONFLICT: dns.rcode.REFUSED}


class Refused(Exception):
    """The request is answered with `rcode` and changes nothing; `reason` goes to the audit."""

    def __init__(self, rcode: dns.rcode.Rcode, reason: str) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.reason = reason


def algorithm(name: str) -> dns.name.Name:
    """The TSIG algorithm's name on the wire (RFC 8945 §6: hmac-md5 has a long one)."""
    return dns.tsig.HMAC_MD5 if name == "hmac-md5" else dns.name.from_text(name)


def keyring(keys: tuple[TsigKeyConfig, ...]) -> dict[dns.name.Name, dns.tsig.Key]:
    """dnspython's keyring: a request signed with a key or algorithm not listed is refused
    (hmac-md5 only where a key names it)."""
    ring = {}
    for key in keys:
        name = dns.name.from_text(key.name)
        ring[name] = dns.tsig.Key(name, base64.b64decode(key.secret or ""), algorithm(key.algorithm))
    return ring


class DnsUpdateServer:
    """Answers UPDATE, SOA and NS on one address, UDP and TCP."""

    def __init__(self, config: Config, service: RecordService, audit: Callable[[], AuditLog],
                 limiter: Callable[[], RateLimiter]) -> None:
        """`audit` and `limiter`: the running ones, which a reload replaces (as it replaces the
        service's config, whose TTL bounds this door reads on each UPDATE); `dns_update`'s own
        settings need a restart."""
        assert config.dns_update is not None
        self.settings = config.dns_update
        self.service = service
        self.audit = audit
        self.limiter = limiter
        self.metrics = service.metrics
        self.keys = {k.name: k for k in self.settings.keys}
        self.keyring = keyring(self.settings.keys)  # dnspython's, for everything but the quick path
        self.tsig_keys = tsig.Keyring(self.keyring.values())
        self.listener = DnsListener(self.handle, self.metrics)
        # key -> MAC -> (when it may be forgotten, its reply: a future while it is worked out)
        self._answered: dict[str, OrderedDict[bytes, tuple[float, asyncio.Future[bytes]]]] = {}

    @property
    def config(self) -> Config:
        return self.service.config

    async def start(self) -> None:
        host, port = self.settings.listen
        await self.listener.start(host, port)
        log.info("RFC 2136 UPDATE on %s:%d (UDP and TCP), %d key(s)", host, port, len(self.keys))

    async def close(self) -> None:
        await self.listener.close()

    # -- one message -------------------------------------------------------------------------

    async def handle(self, wire: bytes, remote: str, tcp: bool) -> bytes | None:
        """The reply to one message (None: nothing to answer: no header, or not a request)."""
        if len(wire) < 12 or wire[2] & 0x80:
            return None  # a response, even one whose TSIG does not check: answering it could loop
        if sum(struct.unpack_from("!HHHH", wire, 4)) > MAX_RECORDS:
            return self._formerr(wire, remote)  # (before parsing: unsigned, it costs the sender nothing)
        started = time.perf_counter()
        signer: tsig.Signer | None
        checked = tsig.verified(wire, self.tsig_keys)
        request = update_message.read(checked[0]) if checked is not None else None
        if checked is not None and request is not None:  # a plain signed UPDATE: the quick way
            opcode, signer, quick = dns.opcode.UPDATE, checked[1], request
            answered = await self._update_once(wire, quick, signer, remote, lambda rcode: tsig.sign(
                quick.reply(rcode), signer, self.tsig_keys))
            if isinstance(answered, bytes):
                return answered  # (the same message again: answered as before)
            rcode, reply = answered
        else:
            parsed = self._parse(wire, remote)
            if not isinstance(parsed, tuple):
                return parsed
            message, signer = parsed
            if message.flags & dns.flags.QR:
                return None  # a response: answering it could start a loop between two servers
            max_size = reply_limit(tcp, message.edns, message.payload)
            opcode = message.opcode()
            if opcode == dns.opcode.UPDATE and isinstance(message, dns.update.UpdateMessage):
                converted = update_message.from_dnspython(message)
                # With EDNS the reply carries OPT: dnspython's way, rare enough to cost what it does.
                answered = await self._update_once(wire, converted, signer, remote, lambda rcode: tsig.sign(
                    converted.reply(rcode), signer, self.tsig_keys) if message.edns < 0
                    else _reply(message, rcode).to_wire(max_size=max_size))
                if isinstance(answered, bytes):
                    return answered
                rcode, reply = answered
            else:
                answer = await self._query(message) if opcode == dns.opcode.QUERY \
                    else _reply(message, dns.rcode.NOTIMP)
                rcode = answer.rcode()
                try:
                    reply = answer.to_wire(max_size=max_size)
                except dns.exception.TooBig:  # (echoing several long questions): the header alone
                    reply = header_reply(wire, rcode, truncated=not tcp) or b""
        self.metrics.dns_requests.labels(dns.opcode.to_text(opcode), dns.rcode.to_text(rcode)).inc()
        self.metrics.dns_request_seconds.observe(time.perf_counter() - started)
        return reply

    async def _update_once(self, wire: bytes, request: UpdateRequest, signer: tsig.Signer | None,
                           remote: str, reply_of: Callable[[dns.rcode.Rcode], bytes]
                           ) -> tuple[dns.rcode.Rcode, bytes] | bytes:
        """(rcode, reply) of an UPDATE applied now; for a signed UPDATE that came before, the
        reply given then (with this message's id: a forwarder may re-id a retry), alone: it
        changes nothing."""
        if signer is None:
            rcode = await self._update(request, signer, remote)
            return rcode, reply_of(rcode)
        answered = self._answered_by(signer.key)
        earlier = self._answered_earlier(answered, signer, remote)
        if earlier is not None:  # (shielded: a waiter that goes away must not cancel it for all)
            return wire[:2] + (await asyncio.shield(earlier))[2:]
        if len(answered) >= ANSWERED_PER_KEY:
            rcode = dns.rcode.REFUSED
            self._audit(remote, signer.key, request.updates, "refused", rcode,
                        f"key {signer.key} sent more signed UPDATEs than can be told from replays "
                        f"within {2 * tsig.FUDGE} s")
            return rcode, reply_of(rcode)
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        # (a signature is accepted within FUDGE of its time, which was within FUDGE of now)
        answered[signer.mac] = (time.monotonic() + 2 * tsig.FUDGE, answer)
        try:
            rcode = await self._update(request, signer, remote)
            reply = reply_of(rcode)
        except BaseException:
            answered.pop(signer.mac, None)  # (an error nobody foresaw: worked out afresh next time)
            answer.cancel()  # ...and whoever waits for it is let go
            raise
        answer.set_result(reply)
        return rcode, reply

    def _answered_by(self, key: str) -> OrderedDict[bytes, tuple[float, asyncio.Future[bytes]]]:
        """The UPDATEs `key` signed that may still be repeated, those past it forgotten."""
        answered = self._answered.setdefault(key, OrderedDict())
        now = time.monotonic()
        while answered and next(iter(answered.values()))[0] <= now:
            answered.popitem(last=False)
        return answered

    def _answered_earlier(self, answered: Mapping[bytes, tuple[float, asyncio.Future[bytes]]],
                          signer: tsig.Signer, remote: str) -> asyncio.Future[bytes] | None:
        """The reply (or the reply being worked out) to this signed UPDATE, if it came before,
        within its signature's time; each repeat is audited."""
        known = answered.get(signer.mac)
        if known is None:
            return None
        self.audit().refused(remote, action="dns_update", token=f"key:{signer.key}", result="repeated",
                             error="the same signed UPDATE again: answered as before, nothing changed")
        return known[1]

    def _parse(self, wire: bytes, remote: str
               ) -> tuple[dns.message.Message, tsig.Signer | None] | bytes | None:
        """dnspython's reading of the message and who signed it, one record per RRset (RFC 2136
        applies an UPDATE's records in order); or the error reply when it is malformed or its
        signature does not check."""
        try:
            message = dns.message.from_wire(wire, keyring=self.keyring, one_rr_per_rrset=True)
        except (dns.message.UnknownTSIGKey, dns.tsig.BadAlgorithm):
            return self._tsig_error(wire, remote, dns.rcode.BADKEY, "unknown TSIG key or algorithm")
        except dns.tsig.BadSignature:
            return self._tsig_error(wire, remote, dns.rcode.BADSIG, "bad TSIG signature")
        except dns.tsig.BadTime:
            return self._tsig_error(wire, remote, dns.rcode.BADTIME, "TSIG time outside the fudge")
        except (dns.exception.DNSException, ValueError, IndexError, struct.error):
            return self._formerr(wire, remote)
        if message.had_tsig and isinstance(message.keyring, dns.tsig.Key) and message.mac:
            if message.tsig is not None and abs(message.tsig[0].time_signed - time.time()) > tsig.FUDGE:
                # (within its own fudge, which was longer)
                return self._tsig_error(wire, remote, dns.rcode.BADTIME, "TSIG time outside the fudge")
            name = message.keyring.name.to_text(omit_final_dot=True).lower()
            return message, tsig.Signer(name, message.mac)
        return message, None

    async def _query(self, query: dns.message.Message) -> dns.message.Message:
        """SOA and NS of a configured zone, authoritatively; NODATA with the SOA for a name
        below one (clients walk up the labels); REFUSED for everything else."""
        if len(query.question) != 1:
            return _reply(query, dns.rcode.FORMERR)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        zone = zone_for(name, self.config.zone_names)
        if zone is None or question.rdclass != dns.rdataclass.IN \
                or question.rdtype not in (dns.rdatatype.SOA, dns.rdatatype.NS):
            return _reply(query, dns.rcode.REFUSED)
        try:
            soa, ns = await asyncio.to_thread(self.service.writers[zone].file.apex)
        except DnsapiError:
            return _reply(query, dns.rcode.SERVFAIL)
        reply = _reply(query, dns.rcode.NOERROR)
        reply.flags |= dns.flags.AA
        apex = dns.name.from_text(zone)
        wanted = soa if question.rdtype == dns.rdatatype.SOA else ns
        if name == zone and wanted is not None:
            reply.answer.append(dns.rrset.from_rdata_list(apex, wanted.ttl, list(wanted)))
        else:
            reply.authority.append(dns.rrset.from_rdata_list(apex, soa.ttl, list(soa)))
        return reply

    async def _update(self, request: UpdateRequest, signer: tsig.Signer | None,
                      remote: str) -> dns.rcode.Rcode:
        """Apply the UPDATE; its rcode."""
        key = self.keys.get(signer.key) if signer is not None else None
        who = key.name if key is not None else None
        try:
            if key is None:
                raise Refused(dns.rcode.NOTAUTH, "unsigned UPDATE")
            wait = self.limiter().allow(f"key:{key.name}")  # (beside the other doors': api.caller)
            if wait:
                raise Refused(dns.rcode.REFUSED, f"key {key.name} is over its rate limit")
            zone, update, names = await self._translate(request, key)
            outcome = await self.service.update(zone, update)
        except Refused as refused:
            self._audit(remote, who, request.updates, "refused", refused.rcode, refused.reason)
            return refused.rcode
        except NameConflict as exc:
            self._audit(remote, who, request.updates, "refused", dns.rcode.REFUSED, exc.message)
            return dns.rcode.REFUSED
        except (DnsapiError, TooManyRecords) as exc:
            self._audit(remote, who, request.updates, "failed", dns.rcode.SERVFAIL, exc.message)
            return dns.rcode.SERVFAIL
        rcode = _RCODE_OF.get(outcome, dns.rcode.NOERROR)
        self._audit(remote, who, request.updates, outcome.value, rcode, None, names)
        return rcode

    async def _translate(self, request: UpdateRequest, key: TsigKeyConfig
                         ) -> tuple[str, Update, list[str]]:
        """The message as one Update for its zone, every name and value checked. The operator's
        records are known without reading the file unless it changed (then read in a thread:
        a large zone must not stall the event loop)."""
        if len(request.zones) != 1 or request.zones[0][1] != dns.rdatatype.SOA:
            raise Refused(dns.rcode.FORMERR, "the zone section must hold one SOA question")
        zone, _, zone_class = request.zones[0]
        if zone not in self.config.zone_names or zone_class != dns.rdataclass.IN:
            raise Refused(dns.rcode.NOTAUTH, f"not a zone this server updates: {zone}")
        file = self.service.writers[zone].file
        rules = file.known_rules()
        types = (rules if rules is not None else await asyncio.to_thread(file.rules)).types
        prerequisites = self._prerequisites(request.prerequisites, zone, types)
        changes, names = [], []
        for rr in request.updates:
            fqdn = self._name(rr.name, zone, key)
            names.append(fqdn)
            changes.append(self._change(rr, fqdn, types, key))
        return zone, Update(tuple(changes), prerequisites), names

    def _name(self, name: str, zone: str, key: TsigKeyConfig) -> str:
        """A challenge name in `zone` that `key` may change, or Refused."""
        try:
            fqdn, found = validate_challenge_name(name, self.config.zone_names,
                                                  self.config.challenge_label)
        except InvalidInput as exc:
            raise Refused(dns.rcode.REFUSED, exc.message) from None
        if found != zone:
            raise Refused(dns.rcode.NOTZONE, f"{fqdn} is not in zone {zone}")
        if not patterns_allow(key.allow, fqdn, self.config.challenge_label):
            raise Refused(dns.rcode.REFUSED, f"key {key.name} may not change {fqdn}")
        return fqdn

    def _change(self, rr: Rr, fqdn: str, types: Mapping[str, frozenset[int]],
                key: TsigKeyConfig) -> Change:
        """RFC 2136 §2.5: add (class IN), delete one RR (NONE), delete an RRset or every RRset
        at the name (ANY) — for dnsapi's TXT records only."""
        if rr.rdclass == dns.rdataclass.NONE and rr.ttl:  # (of class ANY: read as 0, by both readers)
            raise Refused(dns.rcode.FORMERR, "a deletion's TTL must be 0 (RFC 2136 §2.5)")
        if rr.rdclass == dns.rdataclass.NONE and rr.rdtype == dns.rdatatype.ANY:
            raise Refused(dns.rcode.FORMERR, "a deletion of one record cannot be of type ANY")
        if rr.rdclass == dns.rdataclass.ANY:
            if rr.rdtype == dns.rdatatype.ANY and types.get(fqdn, frozenset()) - {dns.rdatatype.TXT}:
                raise Refused(dns.rcode.REFUSED, f"{fqdn} holds the operator's records")
            if rr.rdtype not in (dns.rdatatype.TXT, dns.rdatatype.ANY):
                raise Refused(dns.rcode.REFUSED, "only TXT records can be changed")
            return Change("remove_name", Record(fqdn, "", 0, 0.0))
        if rr.rdtype != dns.rdatatype.TXT:
            raise Refused(dns.rcode.REFUSED, f"only TXT records can be changed, not "
                                             f"{dns.rdatatype.RdataType.to_text(rr.rdtype)}")
        if rr.rdclass not in (dns.rdataclass.IN, dns.rdataclass.NONE):
            raise Refused(dns.rcode.FORMERR, "an added record must be of class IN")
        value = self._value(rr)
        if rr.rdclass == dns.rdataclass.NONE:
            return Change("remove", Record(fqdn, value, 0, 0.0))
        try:
            ttl = validate_ttl(rr.ttl, self.config.min_ttl, self.config.max_ttl)
        except InvalidInput as exc:
            raise Refused(dns.rcode.REFUSED, exc.message) from None
        return Change("add", Record(fqdn, value, ttl, time.time(), f"key:{key.name}"))

    @staticmethod
    def _value(rr: Rr) -> str:
        if rr.strings is None or len(rr.strings) != 1:
            raise Refused(dns.rcode.REFUSED, "a TXT value must be one string")
        try:
            return validate_value(rr.strings[0].decode("ascii"))
        except (UnicodeDecodeError, InvalidInput):
            raise Refused(dns.rcode.REFUSED, "a TXT value must be base64url, 1-255 characters") from None

    def _prerequisites(self, rrs: tuple[Rr, ...], zone: str,
                       types: Mapping[str, frozenset[int]]) -> tuple[Prerequisite, ...]:
        """RFC 2136 §2.4, evaluated against the zone as served: the operator's records here (they
        change only by an edit), dnsapi's TXT records in the writer, atomically with the update.
        Records of class IN with one name and type form one RRset to compare (§3.2.3)."""
        found: list[Prerequisite] = []
        exact: dict[tuple[str, int], list[Rr]] = {}
        for rr in rrs:
            if rr.ttl:
                raise Refused(dns.rcode.FORMERR, "a prerequisite's TTL must be 0 (RFC 2136 §2.4)")
            if zone_for(rr.name, (zone,)) != zone:
                raise Refused(dns.rcode.NOTZONE, f"prerequisite name {rr.name} is not in zone {zone}")
            if rr.rdclass == dns.rdataclass.IN:
                exact.setdefault((rr.name, rr.rdtype), []).append(rr)
            elif rr.rdclass not in (dns.rdataclass.ANY, dns.rdataclass.NONE):
                raise Refused(dns.rcode.FORMERR, "prerequisite class must be IN, NONE or ANY")
            elif (prerequisite := self._prerequisite(rr, types.get(rr.name, frozenset()))):
                found.append(prerequisite)
        for (name, rdtype), rrset in exact.items():
            if rdtype != dns.rdatatype.TXT:  # only the operator has other types, and they are not
                raise Refused(dns.rcode.NXRRSET, f"prerequisite on {name} does not hold")  # compared
            values = frozenset(self._value(rr) for rr in rrset)
            found.append(Prerequisite("exists_exactly", name, Outcome.NXRRSET, values))
        return tuple(found)

    @staticmethod
    def _prerequisite(rr: Rr, held: frozenset[int]) -> Prerequisite | None:
        """One prerequisite of class ANY (in use) or NONE (not in use); None when the operator's
        records `held` at its name decide it and it holds."""
        name, rdtype, in_use = rr.name, rr.rdtype, rr.rdclass == dns.rdataclass.ANY
        if rdtype == dns.rdatatype.ANY:  # the name is (not) in use, by any record of anyone's
            if in_use:
                return None if held else Prerequisite("exists", name, Outcome.NXDOMAIN, rdtype="ANY")
            if held:
                raise Refused(dns.rcode.YXDOMAIN, f"{name} is in use")
            return Prerequisite("absent", name, Outcome.YXDOMAIN, rdtype="ANY")
        if rdtype not in (dns.rdatatype.TXT, dns.rdatatype.CNAME):  # only the operator has others
            if (rdtype in held) != in_use:
                raise Refused(dns.rcode.NXRRSET if in_use else dns.rcode.YXRRSET,
                              f"prerequisite on {name} does not hold")
            return None
        kind = "TXT" if rdtype == dns.rdatatype.TXT else "CNAME"  # (dnsapi's TXT, acme-dns's CNAMEs)
        if in_use:
            return None if rdtype in held else Prerequisite("exists", name, Outcome.NXRRSET, rdtype=kind)
        if rdtype in held:
            raise Refused(dns.rcode.YXRRSET, f"{name} has {kind} records")
        return Prerequisite("absent", name, Outcome.YXRRSET, rdtype=kind)

    # -- replies and the audit trail ----------------------------------------------------------

    def _tsig_error(self, wire: bytes, remote: str, error: int, reason: str) -> bytes | None:
        """NOTAUTH carrying a TSIG RR with the error and an empty MAC, unsigned (RFC 8945 §5.3);
        but BADTIME, when the MAC checks, signed, with the request's time signed and ours in
        the other data (§5.2.3), so that the client can tell its clock is off."""
        try:
            request = dns.message.from_wire(wire, keyring=False)
        except dns.exception.DNSException:
            return self._formerr(wire, remote)
        reply = _unsigned_reply(request, dns.rcode.NOTAUTH)
        # BADTIME's other data: our time, 48 bits (RFC 8945 §5.2.3); nothing for other errors
        other = struct.pack("!Q", int(time.time()))[2:] if error == dns.rcode.BADTIME else b""
        checked = tsig.verified(wire, self.tsig_keys, for_badtime=True) if other else None
        if checked is not None and request.tsig is not None:
            answer = tsig.sign(reply.to_wire(), checked[1], self.tsig_keys, error,
                               request.tsig[0].time_signed, other)
        else:
            if request.keyname is not None and request.tsig is not None:
                signed = request.tsig[0]
                record = dns.rdtypes.ANY.TSIG.TSIG(
                    dns.rdataclass.ANY, dns.rdatatype.TSIG, signed.algorithm, signed.time_signed,
                    signed.fudge, b"", request.id, error, other)
                reply.additional.append(dns.rrset.from_rdata(request.keyname, 0, record))
            answer = reply.to_wire()
        updates = update_message.from_dnspython(request).updates \
            if isinstance(request, dns.update.UpdateMessage) else ()
        self._audit(remote, str(request.keyname).rstrip(".") if request.keyname else None, updates,
                    "refused", dns.rcode.NOTAUTH, reason)
        return answer

    def _formerr(self, wire: bytes, remote: str) -> bytes | None:
        """FORMERR echoing the id and opcode, when there is a header to echo."""
        reply = formerr(wire)
        if reply is None:
            return None
        self.metrics.dns_requests.labels("unknown", "FORMERR").inc()
        self.audit().refused(remote, action="dns_update", result="refused", status=int(dns.rcode.FORMERR),
                             error="malformed message")
        return reply

    def _audit(self, remote: str, key: str | None, updates: tuple[Rr, ...], result: str,
               rcode: int, error: str | None, names: list[str] | None = None) -> None:
        values = [self._digest(rr) for rr in updates]
        entry = dict(token=f"key:{key}" if key else None, action="dns_update",
                     fqdn=",".join(names)[:300] if names else None,
                     value_sha256=",".join(v for v in values if v)[:300] or None,
                     result=result, status=int(rcode), error=error)
        if rcode == dns.rcode.NOERROR:
            self.audit().write(remote=remote, **entry)
        else:
            self.audit().refused(remote, **entry)

    @staticmethod
    def _digest(rr: Rr) -> str | None:
        with contextlib.suppress(UnicodeDecodeError):
            return value_hash(b"".join(rr.strings).decode("ascii")) if rr.strings else None
        return None


def _reply(request: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    """A reply to `request` with `rcode`, signed with the request's key when it was signed and
    verified (dnspython keeps the key on the request)."""
    reply = dns.message.make_response(request)
    reply.set_rcode(rcode)
    return reply


def _unsigned_reply(request: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    """A reply that carries no signature: to a request whose key or signature failed."""
    reply = type(request)(id=request.id)
    reply.flags = dns.flags.QR | (request.flags & dns.flags.RD)
    reply.set_opcode(request.opcode())
    reply.set_rcode(rcode)
    reply.question = list(request.question)
    return reply
