"""`dnsapi serve`: run the app until SIGTERM/SIGINT, reload on SIGHUP, tell systemd about each.

Shutdown order matters for "nothing acknowledged is lost": stop accepting connections, let
in-flight requests finish (their changes are already queued to the zone writers), then close the
service, which drains every writer queue into Vault and the zone files before returning.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import ssl
from collections.abc import Awaitable
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from . import acmedns, systemd
from . import config as config_module
from .answers import ChallengeAnswers
from .api import GUARD, RUNTIME, SERVICE, Handler, create_app
from .config import Config, hostport_text
from .connections import GuardedSite
from .dnsupdate import DnsUpdateServer
from .errors import ConfigError
from .notify import Notifier

log = logging.getLogger("dnsapi")

SHUTDOWN_TIMEOUT = 60.0  # in-flight requests (a `wait` may take propagation_timeout) get this long
STRAGGLER_GRACE = 2.0  # then connections whose request never reached dnsapi get this long


class InFlight:
    """Counts the requests inside dnsapi's handlers, so a shutdown can wait for exactly those."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.count += 1
        self.idle.clear()
        try:
            return await handler(request)
        finally:
            self.count -= 1
            if not self.count:
                self.idle.set()


class AccessLogger(AbstractAccessLogger):
    """One line per request, `127.0.0.1 "POST /v1/records" 201 1.2ms` (plus the request id, added
    by the log filter). aiohttp's configurable formatter cost ~10 % of an add's throughput."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s" %d %.1fms', request.remote, request.method, request.path_qs,
                         response.status, time * 1000)


def ssl_context(config: Config) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls.cert, config.tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: cannot load {config.tls.cert} / {config.tls.key}: {exc}") from None
    return context


async def _listen(what: str, address: tuple[str, int], start: Awaitable[None]) -> None:
    """Start a listener. A port another program holds, or one not ours to take (53 without the
    capability, an address this host lacks), is said in one line, not a traceback."""
    try:
        await start
    except OSError as exc:
        raise ConfigError(f"cannot listen for {what} on {hostport_text(*address)}: "
                          f"{os.strerror(exc.errno) if exc.errno else exc}") from None


async def serve(path: Path) -> None:
    config = config_module.load(path)
    context = ssl_context(config)
    in_flight = InFlight()
    app = create_app(config, outer=(in_flight.middleware,))
    # handler_cancellation: a client that disconnects cancels its request, so a `wait` stops
    # polling (a change already queued is still written: the zone writer owns it).
    runner = web.AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=STRAGGLER_GRACE,
                           keepalive_timeout=config.http.keepalive_timeout, handler_cancellation=True)
    acme_app = acmedns.attach(app) if config.acme_dns is not None else None
    await runner.setup()  # starts the service: zone files are checked here
    site = GuardedSite(runner, config.listen_host, config.listen_port, app[GUARD], context)
    acme_runner = None
    if acme_app is not None:
        assert config.acme_dns is not None and config.acme_dns.listen is not None
        acme_runner = web.AppRunner(acme_app, access_log_class=AccessLogger,
                                    shutdown_timeout=STRAGGLER_GRACE,
                                    keepalive_timeout=config.http.keepalive_timeout,
                                    handler_cancellation=True)
        await acme_runner.setup()
        await _listen("the acme-dns API", config.acme_dns.listen,
                      GuardedSite(acme_runner, *config.acme_dns.listen, acme_app[GUARD], context).start())
        log.info("acme-dns API on %s:%d", *config.acme_dns.listen)
    dns_update = None
    if config.dns_update is not None:
        dns_update = DnsUpdateServer(config, app[SERVICE], lambda: app[RUNTIME].audit,
                                     lambda: app[RUNTIME].limiter)
        await _listen("RFC 2136 updates", config.dns_update.listen, dns_update.start())
    answers = notifier = None
    if config.answers is not None:
        answers = ChallengeAnswers(config, app[SERVICE])
        await _listen("the challenge answers", config.answers.listen, answers.start())
        if config.answers.notify:
            source = config.answers.listen[0]
            notifier = Notifier(app[SERVICE], answers.transfers, config.challenge_label,
                                config.answers.notify,
                                None if ipaddress.ip_address(source).is_unspecified else source)
            notifier.start()
    await _listen("the HTTP API", (config.listen_host, config.listen_port), site.start())
    status = (f"serving {'https' if context else 'http'}://{config.listen_host}:{config.listen_port}, "
              f"zones: {', '.join(z.name for z in config.zones)}")
    log.info("%s", status)
    systemd.notify("READY=1", f"STATUS={status}")

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(app, path))
    await stop.wait()

    log.info("stopping: finishing in-flight requests and queued writes")
    systemd.notify("STOPPING=1", "STATUS=finishing in-flight writes")
    # Stop accepting, refuse requests that arrive now (503 shutting_down, nothing changed), and
    # let those already inside dnsapi's handlers finish. What is left then is connections whose
    # request never reached dnsapi: aiohttp closes them after a short grace instead of holding
    # the shutdown until their clients give up.
    runtime = app[RUNTIME]
    runtime.stopping.set()
    for running in [*runner.sites, *(acme_runner.sites if acme_runner else ())]:
        await running.stop()
    if dns_update is not None:
        await dns_update.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(in_flight.idle.wait(), SHUTDOWN_TIMEOUT)
    if acme_runner is not None:
        await acme_runner.cleanup()
    await runner.cleanup()  # the service finishes its queued writes here...
    if notifier is not None:  # ...which CoreDNS then transfers
        await notifier.close()
    if answers is not None:
        await answers.close()
    log.info("stopped")


# Settings a running instance cannot change (its listener, Vault session and zone writers are
# built from them): a reload keeps the running values and reports the key.
_RESTART_ONLY = {"listen_host": "listen", "listen_port": "listen", "tls": "tls", "vault": "vault",
                 "zones": "zones", "max_body_bytes": "max_body_bytes", "http": "http",
                 "dns_update": "dns_update", "acme_dns": "acme_dns", "answers": "answers",
                 # what the store keeps unserved and what the answers door takes rest on it
                 "challenge_label": "challenge_label"}


def reconfigure(app: web.Application, config: Config) -> list[str]:
    """Apply a reloaded config: tokens, rate limits, audit file (reopened, for log rotation), TTLs,
    intervals, limits. Returns the keys that changed but need a restart."""
    service = app[SERVICE]
    running = service.config
    changed = sorted({key for field, key in _RESTART_ONLY.items()
                      if getattr(running, field) != getattr(config, field)})
    config = config.model_copy(update={field: getattr(running, field) for field in _RESTART_ONLY})
    runtime = app[RUNTIME]
    old_audit = runtime.update(config)
    service.reconfigure(config, runtime.audit)
    old_audit.close()
    return changed


def _reload(app: web.Application, path: Path) -> None:
    """SIGHUP: re-read the config file and apply what can change while running (tokens, limits,
    TTLs, intervals, audit file, ...). A broken file changes nothing."""
    systemd.reloading()
    try:
        config = config_module.load(path)
        needs_restart = reconfigure(app, config)  # (nothing changes when it raises)
    except ConfigError as exc:
        log.error("reload: configuration error, keeping the running configuration: %s", exc)
    else:
        log.info("reload: applied %s (%d token(s))", path, len(config.tokens))
        if needs_restart:
            log.warning("reload: %s changed; restart dnsapi to apply", ", ".join(needs_restart))
    running = app[SERVICE].config
    systemd.notify("READY=1", f"STATUS=serving, zones: {', '.join(z.name for z in running.zones)}")
