"""Pre-flight checks of ``mnedge live --check``: configuration, model, proxy addresses.

A 0MQ SUB or PUB socket "connects" even when nothing listens (it retries in
the background), so the proxy is checked with a plain TCP connection to each
address with a short timeout: that is what tells a wrong host or port, or a
proxy that is not running, before the service is started.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from mnedge_live.config import parse_address

#: Seconds a TCP connection to a proxy address may take.
CONNECT_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Check:
    """Outcome of one check: its name, whether it passed, and what was found or what is wrong."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        """One printable line: ``ok   NAME: DETAIL`` or ``FAIL NAME: DETAIL``."""
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def check_config(toml_path: str | None, overrides: dict[str, Any]) -> tuple[Check, Any]:
    """Load and validate the options; returns the check and the config (None when invalid)."""
    from mnedge_live.config import ConfigError, LiveConfig

    try:
        config = LiveConfig.from_sources(toml_path, overrides)
    except (ConfigError, TypeError) as exc:
        return Check("config", False, str(exc)), None
    source = toml_path or "defaults and flags"
    return Check("config", True, f"{source} is valid (mode {config.mode})"), config


def check_model(model_path: str | None, backend: str) -> Check:
    """Load and verify the model (the store's model in use or the embedded one when no path) on ``backend``."""
    from mnedge_live.engine import load_engine

    try:
        engine = load_engine(model_path, backend=backend, warmup=True)
    except Exception as exc:  # any reason the service could not start with this model
        return Check("model", False, f"cannot load the model: {exc}")
    return Check("model", True, f"{engine.model_id} from {engine.artifact.path} on {engine.backend_name}")


def check_address(name: str, address: str, timeout: float = CONNECT_TIMEOUT_S) -> Check:
    """Open (and close) a TCP connection to a proxy address."""
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        return Check(name, False, str(exc))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return Check(name, False, f"nothing accepts a connection at {host}:{port} ({reason}); "
                                  "is the 0MQ proxy running there?")
    except (UnicodeError, ValueError) as exc:   # a host name the resolver cannot encode ("bad..host")
        return Check(name, False, f"{host!r} is not a valid host name: {exc}")
    return Check(name, True, f"{host}:{port} accepts connections")


def run_checks(toml_path: str | None, overrides: dict[str, Any], timeout: float = CONNECT_TIMEOUT_S) -> list[Check]:
    """Every check in order; stops after the configuration check when the configuration is invalid."""
    first, config = check_config(toml_path, overrides)
    if config is None:
        return [first]
    return [first,
            check_model(config.model_path, config.backend),
            check_address("in_address", config.in_address, timeout),
            check_address("out_address", config.out_address, timeout)]
