"""Prometheus metrics, served at `/metrics`.

Each service instance has its own registry (tests and benchmarks run several in one process).
Labels are bounded: routes are the registered route patterns (anything else is `unmatched`),
zones are the configured zones, Vault operations a fixed set of names.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST as CONTENT_TYPE,
)
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # no `_created` series: they double the output and nobody graphs them

__all__ = ["CONTENT_TYPE", "Metrics"]

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("dnsapi_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram("dnsapi_http_request_duration_seconds",
                                         "HTTP request latency (including any propagation wait)",
                                         ["route", "method"], buckets=_SLOW, registry=r)
        self.vault_seconds = Histogram("dnsapi_vault_operation_duration_seconds",
                                       "Vault operation latency", ["operation"], buckets=_FAST, registry=r)
        self.vault_errors = Counter("dnsapi_vault_errors", "Vault operations that failed "
                                    "(unreachable, refused, or errored)", ["operation"], registry=r)
        self.vault_detours = Counter("dnsapi_vault_direct_detours", "zone writes sent from the event "
                                     "loop that went the threaded way instead (no plain answer: a "
                                     "failover, a token to refresh, an error)", ["operation"],
                                     registry=r)
        self.cas_conflicts = Counter("dnsapi_vault_cas_conflicts", "check-and-set conflicts with "
                                     "other writers", ["zone"], registry=r)
        self.batch_changes = Histogram("dnsapi_batch_changes", "changes applied by one Vault write",
                                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.zone_rewrites = Counter("dnsapi_zone_rewrites", "zone file rewrites", ["zone"], registry=r)
        self.zone_errors = Counter("dnsapi_zone_write_errors", "zone file writes that failed",
                                   ["zone"], registry=r)
        self.zone_write_seconds = Histogram("dnsapi_zone_write_duration_seconds", "bringing the zone "
                                            "file up to date for a batch (read, render, write, "
                                            "fsync: in a worker thread while Vault writes; then "
                                            "the rename)", ["zone"], buckets=_FAST, registry=r)
        self.zone_serial = Gauge("dnsapi_zone_serial", "SOA serial of the zone file dnsapi last wrote",
                                 ["zone"], registry=r)
        self.zone_records = Gauge("dnsapi_zone_records", "challenge records in the zone (as in Vault)",
                                  ["zone"], registry=r)
        self.propagation_seconds = Histogram("dnsapi_propagation_wait_seconds", "time from a stored "
                                             "add until every DNS server answered it", buckets=_SLOW,
                                             registry=r)
        self.propagation_timeouts = Counter("dnsapi_propagation_timeouts", "waits that hit "
                                            "propagation_timeout", registry=r)

        self.connections = Gauge("dnsapi_http_connections", "open HTTP connections", registry=r)
        self.requests_in_progress = Gauge("dnsapi_http_requests_in_progress", "HTTP requests inside "
                                          "dnsapi's handlers (a slow body, a `wait`, a queued write; "
                                          "this scrape among them)", registry=r)
        self.connections_refused = Counter("dnsapi_http_connections_refused", "connections refused "
                                           "at once, by limit (per_address, total)", ["reason"],
                                           registry=r)
        self.connections_closed = Counter("dnsapi_http_connections_closed", "connections closed by "
                                          "dnsapi: request or keep-alive timeout, or displaced by a "
                                          "new one when all were taken", ["reason"], registry=r)
        self.accept_errors = Counter("dnsapi_http_accept_errors", "connections the listener could "
                                     "not accept (out of descriptors)", registry=r)
        self.refusals_limited = Counter("dnsapi_http_refusals_rate_limited", "requests answered 429 "
                                        "because their source address had too many refused "
                                        "requests", registry=r)
        self.waits = Gauge("dnsapi_propagation_waits", "names being polled for `wait` requests",
                           registry=r)
        self.waits_refused = Counter("dnsapi_propagation_waits_refused", "`wait` requests refused "
                                     "by the per-token or total limit", registry=r)
        self.dns_requests = Counter("dnsapi_dns_requests", "RFC 2136 front door: messages by "
                                    "opcode and the rcode answered", ["opcode", "rcode"], registry=r)
        self.answers = Counter("dnsapi_answers", "challenge answers (answers.listen): queries "
                               "answered, by rcode", ["rcode"], registry=r)
        self.notify_serial = Gauge("dnsapi_notify_serial", "answers.notify: the zone's serial "
                                   "each target was last seen holding", ["zone", "target"],
                                   registry=r)
        self.notify_failures = Counter("dnsapi_notify_failures", "answers.notify: NOTIFY rounds "
                                       "after which the target did not hold the zone's serial",
                                       ["zone", "target"], registry=r)
        self.dns_dropped = Counter("dnsapi_dns_dropped", "UDP messages to a DNS door (RFC 2136, "
                                   "answers) dropped unanswered: too many were being answered "
                                   "at once", registry=r)
        self.dns_request_seconds = Histogram("dnsapi_dns_request_duration_seconds", "RFC 2136 front "
                                             "door: time to answer a message", buckets=_SLOW,
                                             registry=r)
        self.bad_records = Counter("dnsapi_vault_bad_records", "records in Vault that failed this "
                                   "node's validation, once each: kept there, not served",
                                   ["zone"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
