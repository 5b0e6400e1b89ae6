"""One TOML file configures every process: top-level keys are shared, [section] keys are
one process's own; command-line flags override both."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or names an unknown setting."""


def load(path: str | None, section: str) -> dict[str, Any]:
    """Settings for `section`: the file's top-level values overlaid by its [section] table."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    settings = {key: value for key, value in data.items() if not isinstance(value, dict)}
    own = data.get(section, {})
    if not isinstance(own, dict):
        raise ConfigError(f"config file {path}: [{section}] must be a table")
    settings.update(own)
    return settings


def resolve(args: argparse.Namespace, defaults: dict[str, Any], section: str) -> argparse.Namespace:
    """Fill every setting in `defaults`: flag if given, else config file, else default.

    Flags must default to None so that "not given" can be told apart from a value.
    """
    settings = load(getattr(args, "config", None), section)
    unknown = sorted(set(_own_keys(args, section)) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{section}]: {', '.join(unknown)}")
    for key, default in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, settings.get(key, default))
    return args


def _own_keys(args: argparse.Namespace, section: str) -> list[str]:
    path = getattr(args, "config", None)
    if path is None:
        return []
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    own = data.get(section, {})
    return list(own) if isinstance(own, dict) else []


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """--config and --log-level, which every process takes."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="logging threshold (default INFO)",
    )
