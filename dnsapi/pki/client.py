"""Read what one Vault/OpenBao PKI mount says about its certificates: issued and revoked serials,
each issuer's CRLs, and OCSP answers. Read-only; pki_watch decides what is news.

Listing certificates needs a token (`LIST <mount>/certs`, `<mount>/certs/revoked`); certificates,
issuers, CRLs and OCSP are public endpoints, fetched over plain HTTP with the same TLS trust.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import hvac.exceptions
import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..vault import VaultRefused, VaultSession


class PkiUnavailable(Exception):
    """A PKI endpoint did not answer or answered something unusable; the message says which."""


class Unsupported(PkiUnavailable):
    """The server does not have this endpoint (e.g. HashiCorp Vault has no `certs/detailed`)."""


OCSP_SKEW = dt.timedelta(minutes=5)  # clock difference allowed for an answer's this_update
_P = ParamSpec("_P")
_R = TypeVar("_R")
# What reading an answer that does not hold together raises: a PEM or DER that does not load,
# a duplicate extension, a field missing or of another type, a date in another form.
_MALFORMED = (ValueError, KeyError, TypeError, AttributeError, IndexError, UnsupportedAlgorithm,
              x509.DuplicateExtension, x509.UnsupportedGeneralNameType)


def _readable(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """`method`, raising PkiUnavailable for an answer that does not hold together: a broken or
    hostile answer is a mount that cannot be checked this cycle, never the end of pki-watch."""
    @functools.wraps(method)
    def read(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except _MALFORMED as exc:
            raise PkiUnavailable(f"{method.__name__}: an answer that does not hold together "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None
    return read


@dataclass(frozen=True)
class CertInfo:
    serial: str  # as Vault writes it: lowercase hex pairs joined by ':'
    common_name: str
    dns_names: tuple[str, ...]
    not_after: float  # Unix time


@dataclass(frozen=True)
class StoredCert:
    """`<mount>/cert/<serial>`: the certificate, its issuer and, once revoked, when."""

    info: CertInfo
    pem: str
    issuer_id: str
    revocation_time: float | None


@dataclass(frozen=True)
class Issuer:
    id: str
    name: str  # the issuer certificate's subject, RFC 4514
    serial: str  # of the issuer's own certificate
    pem: str


@dataclass(frozen=True)
class Crl:
    issuer_id: str
    delta: bool
    number: int | None
    this_update: float
    next_update: float | None
    serials: frozenset[str]
    signature_valid: bool


def serial_text(number: int) -> str:
    """An integer serial in Vault's spelling (`1a:2b:...`), to compare CRL entries with listings."""
    raw = number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big")
    return ":".join(f"{b:02x}" for b in raw)


def revocation_time(data: dict) -> float | None:
    """From a `cert/<serial>` or `revoke` answer: the RFC 3339 form has sub-second precision,
    the integer form only seconds; 0 or absent means not revoked."""
    text = data.get("revocation_time_rfc3339") or ""
    if text:
        whole, _, fraction = text.rstrip("Z").partition(".")
        moment = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC).timestamp()
        return moment + float(f"0.{fraction or 0}")
    return float(data["revocation_time"]) if data.get("revocation_time") else None


def cert_info(pem: str) -> CertInfo:
    cert = x509.load_pem_x509_certificate(pem.encode())
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = tuple(sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns_names = ()
    return CertInfo(serial=serial_text(cert.serial_number),
                    common_name=str(names[0].value) if names else "",
                    dns_names=dns_names, not_after=cert.not_valid_after_utc.timestamp())


class PkiClient:
    def __init__(self, session: VaultSession, mount: str) -> None:
        self.session = session
        self.mount = mount
        self.http = requests.Session()
        # Passed per request: requests lets REQUESTS_CA_BUNDLE override a Session's own verify.
        self.verify: bool | str = str(session.config.ca_cert) if session.config.ca_cert else True
        self.timeout = session.config.timeout
        self._stored: dict[str, StoredCert] = {}  # certificates never change; revocation is re-read

    @property
    def base(self) -> str:
        """The mount's URL on the node the session talks to (the active one, after a failover)."""
        return f"{self.session.url}/v1/{self.mount}"

    @_readable
    def certificates(self) -> dict[str, CertInfo]:
        """Every certificate the mount stored (leaves and its own issuers), by serial.
        OpenBao lists them with their names and expiry in one call (`certs/detailed`); where
        that endpoint is missing (HashiCorp Vault) each new serial is read once and remembered."""
        try:
            data = self._list("certs/detailed")
        except Unsupported:
            return self.certificates_one_by_one()
        infos = {}
        for serial, info in (data.get("key_info") or {}).items():
            not_after = dt.datetime.fromisoformat(info["not_after"].replace("Z", "+00:00"))
            infos[serial] = CertInfo(serial=serial, common_name=info.get("common_name") or "",
                                     dns_names=tuple(info.get("dns_names") or ()),
                                     not_after=not_after.timestamp())
        return infos

    @_readable
    def certificates_one_by_one(self) -> dict[str, CertInfo]:
        return {serial: self.stored(serial).info for serial in self._list("certs").get("keys") or ()}

    @_readable
    def revoked(self) -> set[str]:
        """Serials Vault has marked revoked, whether or not a CRL shows them yet."""
        return set(self._list("certs/revoked").get("keys") or ())

    @_readable
    def stored(self, serial: str, refresh: bool = False) -> StoredCert:
        if refresh or serial not in self._stored:
            data = self._get_json(f"cert/{serial}")
            self._stored[serial] = StoredCert(info=cert_info(data["certificate"]), pem=data["certificate"],
                                              issuer_id=data.get("issuer_id") or "",
                                              revocation_time=revocation_time(data))
        return self._stored[serial]

    @_readable
    def issuers(self) -> dict[str, Issuer]:
        issuers = {}
        for issuer_id in self._get_json("issuers", method="LIST").get("keys") or ():
            data = self._get_json(f"issuer/{issuer_id}/json")
            cert = x509.load_pem_x509_certificate(data["certificate"].encode())
            issuers[issuer_id] = Issuer(id=issuer_id, name=cert.subject.rfc4514_string(),
                                        serial=serial_text(cert.serial_number), pem=data["certificate"])
        return issuers

    @staticmethod
    @_readable
    def issuer_of(cert: StoredCert, issuers: dict[str, Issuer]) -> Issuer | None:
        """The mount's issuer that signed `cert`: Vault names it only for revoked certificates,
        otherwise the issuer whose key verifies the certificate's signature."""
        if cert.issuer_id in issuers:
            return issuers[cert.issuer_id]
        leaf = x509.load_pem_x509_certificate(cert.pem.encode())
        for issuer in issuers.values():
            try:
                leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(issuer.pem.encode()))
            except (ValueError, TypeError, InvalidSignature):
                continue
            return issuer
        return None

    @_readable
    def crls(self, issuer: Issuer) -> list[Crl]:
        """The issuer's full CRL and, when there is one, its delta CRL; signatures are checked."""
        public_key = x509.load_pem_x509_certificate(issuer.pem.encode()).public_key()
        crls = []
        for delta in (False, True):
            path = f"issuer/{issuer.id}/crl{'/delta' if delta else ''}/der"
            response = self._get(path)
            if delta and response.status_code == 404:
                continue
            if response.status_code != 200 or not response.content:
                raise PkiUnavailable(f"{self.mount}/{path}: HTTP {response.status_code}")
            try:
                crl = x509.load_der_x509_crl(response.content)
            except ValueError:
                raise PkiUnavailable(f"{self.mount}/{path}: not a DER CRL") from None
            try:
                number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            except x509.ExtensionNotFound:
                number = None
            crls.append(Crl(
                issuer_id=issuer.id, delta=delta, number=number,
                this_update=crl.last_update_utc.timestamp(),
                next_update=crl.next_update_utc.timestamp() if crl.next_update_utc else None,
                serials=frozenset(serial_text(entry.serial_number) for entry in crl),
                signature_valid=crl.is_signature_valid(public_key)))  # type: ignore[arg-type]
        return crls

    @_readable
    def ocsp_status(self, cert: StoredCert, issuer: Issuer) -> str:
        """`good`, `revoked` or `unknown` from the mount's OCSP responder; PkiUnavailable when it
        does not answer, answers an error, answers for another certificate, or answers what a
        client would reject: not signed by the issuer (or a responder it made for OCSP), or
        past its next update."""
        leaf = x509.load_pem_x509_certificate(cert.pem.encode())
        issuer_cert = x509.load_pem_x509_certificate(issuer.pem.encode())
        request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer_cert, hashes.SHA1()).build()
        try:
            body = request.public_bytes(serialization.Encoding.DER)
            response = self.http.post(f"{self.base}/ocsp", data=body,
                                      headers={"Content-Type": "application/ocsp-request"},
                                      timeout=self.timeout, verify=self.verify)
        except requests.RequestException as exc:
            raise PkiUnavailable(f"{self.mount}/ocsp: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise PkiUnavailable(f"{self.mount}/ocsp: HTTP {response.status_code}")
        try:
            answer = ocsp.load_der_ocsp_response(response.content)
        except ValueError:
            raise PkiUnavailable(f"{self.mount}/ocsp: not an OCSP response") from None
        if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise PkiUnavailable(f"{self.mount}/ocsp: {answer.response_status.name}")
        if answer.serial_number != leaf.serial_number:
            raise PkiUnavailable(f"{self.mount}/ocsp: answered for another serial")
        if not _signed_by(answer, issuer_cert):
            raise PkiUnavailable(f"{self.mount}/ocsp: the answer is not signed by the issuer "
                                 f"{issuer.name}")
        now = dt.datetime.now(dt.UTC)
        if answer.next_update_utc is not None and answer.next_update_utc < now:
            raise PkiUnavailable(f"{self.mount}/ocsp: a stale answer (next update "
                                 f"{answer.next_update_utc.isoformat(timespec='seconds')})")
        if answer.this_update_utc > now + OCSP_SKEW:
            raise PkiUnavailable(f"{self.mount}/ocsp: an answer from the future (this update "
                                 f"{answer.this_update_utc.isoformat(timespec='seconds')})")
        return answer.certificate_status.name.lower()

    def _list(self, path: str) -> dict:
        """An authenticated LIST; an empty listing (Vault's 404) is an empty dict."""
        def call() -> dict:
            try:
                return self.session.client.adapter.list(f"/v1/{self.mount}/{path}")["data"]
            except hvac.exceptions.InvalidPath as exc:
                if "unsupported path" in str(exc):
                    raise Unsupported(f"{self.mount}/{path}: not served by this Vault") from None
                return {}  # Vault answers an empty listing with 404
            except VaultRefused as exc:  # (405: a path that does not LIST on this server)
                if exc.http_status != 405:
                    raise
                raise Unsupported(f"{self.mount}/{path}: not served by this Vault") from None
        return self.session.run(call)

    def _get(self, path: str, method: str = "GET") -> requests.Response:
        try:
            return self.http.request(method, f"{self.base}/{path}", timeout=self.timeout,
                                     verify=self.verify)
        except requests.RequestException as exc:
            raise PkiUnavailable(f"{self.mount}/{path}: {type(exc).__name__}") from None

    def _get_json(self, path: str, method: str = "GET") -> dict:
        response = self._get(path, method)
        if response.status_code != 200:
            raise PkiUnavailable(f"{self.mount}/{path}: HTTP {response.status_code}")
        try:
            return response.json()["data"]
        except (ValueError, KeyError, TypeError):
            raise PkiUnavailable(f"{self.mount}/{path}: not a Vault JSON response") from None


def _signed_by(answer: ocsp.OCSPResponse, issuer: x509.Certificate) -> bool:
    """Does the issuer's key, or that of a responder certificate in the answer which the issuer
    signed for OCSP signing and which is valid now (RFC 6960 §4.2.2.2), verify the answer's
    signature? (UnsupportedAlgorithm for a signature algorithm cryptography cannot check,
    RSA-PSS among them.)"""
    keys = [issuer.public_key()]
    now = dt.datetime.now(dt.UTC)
    for responder in answer.certificates:
        try:
            responder.verify_directly_issued_by(issuer)
            usage = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in usage \
                and responder.not_valid_before_utc <= now <= responder.not_valid_after_utc:
            keys.append(responder.public_key())
    return any(_verifies(key, answer) for key in keys)


def _verifies(key: object, answer: ocsp.OCSPResponse) -> bool:
    signature, data, algorithm = answer.signature, answer.tbs_response_bytes, answer.signature_hash_algorithm
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True
