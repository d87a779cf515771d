"""pki-watch believes an OCSP answer only when a client would: signed by the certificate's
issuer, or by a responder certificate the issuer made for OCSP signing, and not past its next
update. Answers built here with cryptography; tests/test_pki_watch_e2e.py checks OpenBao's."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dnsapi.pki.client import Issuer, PkiClient, PkiUnavailable, StoredCert, _signed_by, cert_info

NOW = dt.datetime.now(dt.UTC)


def certificate(name: str, key, signer_key, issuer: x509.Certificate | None = None,
                ocsp_signing: bool = False, valid: tuple[dt.datetime, dt.datetime] | None = None
                ) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = valid or (NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=30))
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer else subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(start)
               .not_valid_after(end))
    if issuer is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
    if ocsp_signing:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False)
    algorithm = None if isinstance(signer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer_key, algorithm)


def answer(leaf: x509.Certificate, issuer: x509.Certificate, signer_key, *,
           responder: x509.Certificate | None = None, next_update: dt.datetime | None = None,
           this_update: dt.datetime | None = None) -> ocsp.OCSPResponse:
    """A "good" answer for `leaf` signed with `signer_key`; naming `responder` and carrying it
    when given, else naming the issuer (as OpenBao's do)."""
    if responder is None and signer_key.public_key() != issuer.public_key():
        # a forgery: the issuer's name on an answer signed with another key
        forged = certificate(issuer.subject.rfc4514_string().removeprefix("CN="), signer_key, signer_key)
        return _signed(leaf, issuer, signer_key, forged, [], next_update, this_update)
    return _signed(leaf, issuer, signer_key, responder or issuer, [responder] if responder else [],
                   next_update, this_update)


def _signed(leaf, issuer, signer_key, named, carried, next_update, this_update) -> ocsp.OCSPResponse:
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=leaf, issuer=issuer, algorithm=hashes.SHA1(), cert_status=ocsp.OCSPCertStatus.GOOD,
        this_update=this_update or NOW - dt.timedelta(minutes=5),
        next_update=next_update or NOW + dt.timedelta(hours=12),
        revocation_time=None, revocation_reason=None)
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.NAME, named)
    if carried:
        builder = builder.certificates(carried)
    algorithm = None if isinstance(signer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer_key, algorithm)


@pytest.fixture(params=["ec", "rsa", "ed25519"])
def ca(request):
    make = {"ec": lambda: ec.generate_private_key(ec.SECP256R1()),
            "rsa": lambda: rsa.generate_private_key(65537, 2048),
            "ed25519": ed25519.Ed25519PrivateKey.generate}[request.param]
    key = make()
    root = certificate("root", key, key)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    return SimpleNamespace(key=key, cert=root, leaf=certificate("www.dev.local", leaf_key, key, root),
                           make=make)


def test_an_answer_signed_by_the_issuer_is_believed(ca):
    assert _signed_by(answer(ca.leaf, ca.cert, ca.key), ca.cert)


def test_an_answer_signed_by_another_key_is_not(ca):
    assert not _signed_by(answer(ca.leaf, ca.cert, ca.make()), ca.cert)


def test_a_responder_the_issuer_made_for_ocsp_signing_is_believed_and_no_other(ca):
    responder_key = ec.generate_private_key(ec.SECP256R1())
    delegated = certificate("responder", responder_key, ca.key, ca.cert, ocsp_signing=True)
    assert _signed_by(answer(ca.leaf, ca.cert, responder_key, responder=delegated), ca.cert)
    plain = certificate("not-a-responder", responder_key, ca.key, ca.cert)  # no OCSP signing EKU
    assert not _signed_by(answer(ca.leaf, ca.cert, responder_key, responder=plain), ca.cert)
    expired = certificate("responder", responder_key, ca.key, ca.cert, ocsp_signing=True,
                          valid=(NOW - dt.timedelta(days=9), NOW - dt.timedelta(days=1)))
    assert not _signed_by(answer(ca.leaf, ca.cert, responder_key, responder=expired), ca.cert)
    stranger_key = ca.make()
    stranger = certificate("stranger", stranger_key, stranger_key)
    self_made = certificate("responder", responder_key, stranger_key, stranger, ocsp_signing=True)
    assert not _signed_by(answer(ca.leaf, ca.cert, responder_key, responder=self_made), ca.cert)


class Responder(requests.adapters.BaseAdapter):
    """Answers every request with `body`, as an OCSP responder would."""

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def send(self, request, **kwargs):
        response = requests.Response()
        response.status_code, response._content, response.url = 200, self.body, request.url
        return response

    def close(self) -> None:
        pass


def status_from(body: bytes, ca) -> str:
    """PkiClient.ocsp_status with the responder answering `body`."""
    vault = SimpleNamespace(url="http://127.0.0.1:1", config=SimpleNamespace(ca_cert=None, timeout=5))
    client = PkiClient(vault, "pki")  # type: ignore[arg-type]
    client.http.mount("http://", Responder(body))
    pem = ca.leaf.public_bytes(serialization.Encoding.PEM).decode()
    stored = StoredCert(info=cert_info(pem), pem=pem, issuer_id="i", revocation_time=None)
    issuer = Issuer(id="i", name="root", serial="01",
                    pem=ca.cert.public_bytes(serialization.Encoding.PEM).decode())
    return client.ocsp_status(stored, issuer)


def test_ocsp_status_takes_a_good_answer_and_refuses_a_forged_or_stale_one(ca):
    def der(response: ocsp.OCSPResponse) -> bytes:
        return response.public_bytes(serialization.Encoding.DER)

    assert status_from(der(answer(ca.leaf, ca.cert, ca.key)), ca) == "good"
    with pytest.raises(PkiUnavailable, match="not signed by the issuer root"):
        status_from(der(answer(ca.leaf, ca.cert, ca.make())), ca)
    with pytest.raises(PkiUnavailable, match="a stale answer"):
        status_from(der(answer(ca.leaf, ca.cert, ca.key, next_update=NOW - dt.timedelta(hours=1))), ca)
    with pytest.raises(PkiUnavailable, match="from the future"):
        status_from(der(answer(ca.leaf, ca.cert, ca.key, this_update=NOW + dt.timedelta(hours=1))), ca)


@pytest.mark.e2e
def test_an_answer_signed_with_rsa_pss_is_a_responder_pki_watch_cannot_check(tmp_path: Path):
    """openssl's responder signing with RSA-PSS, whose parameters cryptography does not read
    from an OCSP answer: a responder that does not answer in a way pki-watch can check (so
    reported), never an error that stops the watch's cycle."""
    key = rsa.generate_private_key(65537, 2048)
    root = certificate("root", key, key)
    leaf = certificate("www.dev.local", ec.generate_private_key(ec.SECP256R1()), key, root)
    (tmp_path / "ca.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, root, hashes.SHA1()).build()
    (tmp_path / "request.der").write_bytes(request.public_bytes(serialization.Encoding.DER))
    expiry = leaf.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    (tmp_path / "index.txt").write_text(f"V\t{expiry}\t\t{leaf.serial_number:X}\tunknown\t/CN=www\n")
    subprocess.run(["openssl", "ocsp", "-index", "index.txt", "-CA", "ca.pem", "-rsigner", "ca.pem",
                    "-rkey", "ca.key", "-reqin", "request.der", "-respout", "answer.der", "-nmin", "60",
                    "-rsigopt", "rsa_padding_mode:pss"], cwd=tmp_path, check=True, capture_output=True)
    body = (tmp_path / "answer.der").read_bytes()
    assert ocsp.load_der_ocsp_response(body).signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.10"
    with pytest.raises(PkiUnavailable, match="UnsupportedAlgorithm"):
        status_from(body, SimpleNamespace(leaf=leaf, cert=root))
