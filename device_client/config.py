"""Device settings from command-line flags, ``SPLITASR_DEVICE_*`` variables and an INI file.

Precedence: flag > environment > file > default. The file is ``SPLITASR_DEVICE_CONFIG`` or
``~/.config/splitasr/device.ini``, with a ``[device]`` section::

    [device]
    server = asr.example.com:50051
    token = my-api-key
    tls = true
    root_cert = /etc/ssl/asr-ca.pem
    adapter = ~/adapters/me.safetensors
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import UsageError

ENV_PREFIX = "SPLITASR_DEVICE_"
DEFAULT_CONFIG_FILE = Path("~/.config/splitasr/device.ini")
DEFAULT_SERVER = "127.0.0.1:50051"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class DeviceConfig:
    server: str = DEFAULT_SERVER  # HOST:PORT of the gRPC API
    token: str | None = None  # API key, sent as "authorization: Bearer <token>"
    tls: bool = False  # use TLS (system roots, or root_cert)
    root_cert: Path | None = None  # PEM file of the CA that signed the server's certificate
    adapter: Path | None = None  # this device's adapter file


def _parse(name: str, value: str) -> object:
    if name == "tls":
        lowered = value.strip().lower()
        if lowered not in _TRUE | _FALSE:
            raise UsageError(f"tls must be true or false, got {value!r}")
        return lowered in _TRUE
    if name in ("root_cert", "adapter"):
        return Path(value).expanduser() if value else None
    return value or None


def _from_file(path: Path | None, explicit: bool) -> dict[str, str]:
    if path is None or not path.is_file():
        if explicit:
            raise UsageError(f"config file {path} does not exist")
        return {}
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise UsageError(f"config file {path}: {exc}") from None
    return dict(parser["device"]) if parser.has_section("device") else {}


def load_config(overrides: Mapping[str, object] | None = None, env: Mapping[str, str] | None = None,
                config_file: Path | None = None) -> DeviceConfig:
    """Resolve the settings; ``overrides`` are flag values (None = not given)."""
    env = os.environ if env is None else env
    explicit = config_file is not None or f"{ENV_PREFIX}CONFIG" in env
    path = config_file or Path(env.get(f"{ENV_PREFIX}CONFIG", str(DEFAULT_CONFIG_FILE))).expanduser()
    values: dict[str, object] = {}
    known = {f.name for f in fields(DeviceConfig)}
    for name, raw in _from_file(path, explicit).items():
        if name not in known:
            raise UsageError(f"config file {path}: unknown setting {name!r} (known: {', '.join(sorted(known))})")
        values[name] = _parse(name, raw)
    for name in known:
        if f"{ENV_PREFIX}{name.upper()}" in env:
            values[name] = _parse(name, env[f"{ENV_PREFIX}{name.upper()}"])
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    return DeviceConfig(**values)
