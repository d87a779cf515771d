"""The OpenAPI 3 description of the HTTP API, served at `/openapi.json`.

It is built from the running configuration, so the schemas say exactly what this instance
accepts: names under its zones starting with its challenge label, its TTL bounds. A test runs
schemathesis against a live service with this document.
"""

from __future__ import annotations

import re
from typing import Any

from . import __version__
from .config import Config
from .names import MAX_VALUE_LENGTH

_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "invalid request: bad JSON, unknown or missing field, bad name, value or TTL",
        401: "missing or unknown bearer token",
        403: "the token may not change this name, or the request came from a web page (Origin) "
             "not listed in allowed_origins",
        408: "the request body did not arrive within http.request_timeout",
        409: "a name the zone file cannot hold (name_conflict), or the token's or zone's record "
             "limit is reached (token_quota_exceeded, too_many_records)",
        413: "request body larger than max_body_bytes",
        429: "over the token's rate limit, its limit of waits, or too many refused requests from "
             "this address (see Retry-After)",
        500: "the zone file could not be written (the change is in Vault and will be written)",
        503: "Vault is unreachable or refused dnsapi's token, dnsapi is shutting down, or too many "
             "waits are in progress (see Retry-After); nothing was changed",
        504: "stored, but the DNS servers did not answer it within propagation_timeout",
    }
    return {str(s): _json(_ref("Error"), meaning[s]) for s in statuses}


def document(config: Config) -> dict[str, Any]:
    zones = "|".join(re.escape(z.name) for z in config.zones)
    fqdn = {
        "type": "string", "maxLength": 254,
        "pattern": rf"^{re.escape(config.challenge_label)}(\.{_LABEL})*\.({zones})\.?$",
        "description": f"`{config.challenge_label}.<name>` below one of the zones "
                       f"({', '.join(z.name for z in config.zones)}); a trailing dot is allowed",
        "example": f"{config.challenge_label}.www.{config.zones[0].name}",
    }
    value = {"type": "string", "minLength": 1, "maxLength": MAX_VALUE_LENGTH,
             "pattern": "^[A-Za-z0-9_=-]+$",
             "description": "the DNS-01 key authorization digest (base64url)",
             "example": "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"}
    ttl = {"type": "integer", "minimum": config.min_ttl, "maximum": config.max_ttl,
           "description": f"seconds (default {config.default_ttl})"}
    target = {"type": "object", "additionalProperties": False, "required": ["fqdn", "value"],
              "properties": {"fqdn": fqdn, "value": value}}
    authed_write = _errors(400, 401, 403, 408, 413, 429, 500, 503)
    query_fqdn = {"name": "fqdn", "in": "query", "schema": fqdn}
    schemas = {
        "Error": {"type": "object", "required": ["error", "message"], "properties": {
            "error": {"type": "string", "description": "machine-readable code, e.g. invalid_name"},
            "message": {"type": "string"}}},
        "Target": target,
        "AddRequest": {**target, "required": ["fqdn", "value"], "properties": {
            "fqdn": fqdn, "value": value, "ttl": ttl,
            "wait": {"type": "boolean", "description": "answer only once every DNS server in "
                                                      "dns_servers serves the value"}}},
        "AddResult": {"type": "object", "required": ["fqdn", "value", "ttl", "created"], "properties": {
            "fqdn": {"type": "string"}, "value": {"type": "string"}, "ttl": {"type": "integer"},
            "created": {"type": "boolean", "description": "false: the value was already there"},
            "served_after_ms": {"type": "integer", "description": "with wait: how long until served"}}},
        "RemoveResult": {"type": "object", "required": ["fqdn", "value", "existed"], "properties": {
            "fqdn": {"type": "string"}, "value": {"type": "string"}, "existed": {"type": "boolean"}}},
        "Record": {"type": "object", "required": ["fqdn", "type", "value", "ttl", "created_at"],
                   "properties": {
            "fqdn": {"type": "string"}, "value": {"type": "string"}, "ttl": {"type": "integer"},
            "type": {"type": "string", "enum": ["TXT", "CNAME"],
                     "description": "CNAME: an acme-dns delegation; its value is the target"},
            "created_at": {"type": "number", "description": "Unix time"}}},
        "Checks": {"type": "object", "additionalProperties": {"type": "string"}},
    }
    secured: list[dict[str, list[str]]] = [{"bearer": []}] if not config.open_on_loopback else []
    paths = {
        "/v1/records": {
            "post": {"summary": "Add a TXT value (idempotent)", "operationId": "addRecord",
                     "security": secured, "requestBody": _body("AddRequest"),
                     "responses": {"201": _json(_ref("AddResult"), "added"),
                                   "200": _json(_ref("AddResult"), "already present"),
                                   **authed_write, **_errors(409, 504)}},
            "delete": {"summary": "Remove exactly one TXT value",
                       "description": "Instead of the body, `fqdn` and `value` may be sent as query "
                                      "parameters (for clients that cannot send a DELETE body); "
                                      "not both.",
                       "operationId": "removeRecord", "security": secured,
                       "requestBody": _body("Target"),
                       "responses": {"200": _json(_ref("RemoveResult"), "removed, or was not there"),
                                     **authed_write}},
            "get": {"summary": "List the records this token may see", "operationId": "listRecords",
                    "security": secured, "parameters": [{**query_fqdn, "required": False}],
                    "responses": {"200": _json({"type": "object", "required": ["records"],
                                                "properties": {"records": {"type": "array",
                                                                           "items": _ref("Record")}}},
                                               "records, sorted by name and value"),
                                  **_errors(400, 401, 403, 429, 503)}},
        },
        "/present": {"post": {"summary": "lego httpreq provider: add and wait until served",
                              "operationId": "legoPresent", "security": secured,
                              "requestBody": _body("Target"),
                              "responses": {"200": _json(_ref("AddResult"), "added and served"),
                                            **authed_write, **_errors(409, 504)}}},
        "/cleanup": {"post": {"summary": "lego httpreq provider: remove", "operationId": "legoCleanup",
                              "security": secured, "requestBody": _body("Target"),
                              "responses": {"200": _json(_ref("RemoveResult"), "removed, or was not there"),
                                            **authed_write}}},
        "/healthz": {"get": {"summary": "The process answers", "operationId": "healthz",
                             "responses": {"200": _json({"type": "object"}, "alive")}}},
        "/readyz": {"get": {"summary": "Vault reachable with write access, zone files parse and are "
                                       "writable", "operationId": "readyz",
                            "responses": {"200": _json({"type": "object", "properties": {
                                "status": {"type": "string"}, "checks": _ref("Checks")}}, "ready"),
                                "503": _json(_ref("Error"), "not ready; `checks` says what fails")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                             "responses": {"200": {"description": "text exposition format", "content": {
                                 "text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                  "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0")}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "dnsapi", "version": __version__,
                 "description": "ACME DNS-01 challenge records for internal zones, stored in Vault "
                                "and served by CoreDNS."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "an API token from "
                                                                     "`dnsapi hash-token`"}}},
    }
