"""One TOML file configures every process: top-level keys are shared, [section] keys are
one process's own; command-line flags override both."""

from __future__ import annotations

import argparse
import importlib
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import logs


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or names an unknown setting."""


def load(path: str | None, section: str) -> tuple[dict[str, Any], list[str]]:
    """Settings for `section` (the file's top-level values overlaid by its [section] table)
    and the keys the [section] table itself names, from one read of the file."""
    if path is None:
        return {}, []
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
    return settings, list(own)


def resolve(args: argparse.Namespace, defaults: dict[str, Any], section: str) -> argparse.Namespace:
    """Fill every setting in `defaults`: flag if given, else config file, else default.

    Flags must default to None so that "not given" can be told apart from a value.
    """
    settings, own_keys = load(getattr(args, "config", None), section)
    unknown = sorted(set(own_keys) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{section}]: {', '.join(unknown)}")
    for key, default in defaults.items():
        if getattr(args, key, None) is None:
            value = settings.get(key, default)
            if key in settings and default is not None:
                value = _typed(key, value, default, section)
            setattr(args, key, value)
    return args


def _typed(key: str, value: Any, default: Any, section: str) -> Any:
    """A config file value checked against its default's type (ints allowed for floats)."""
    expected = type(default)
    if expected in (int, float) and type(value) in (int, float):
        return float(value) if expected is float else value
    if expected is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if type(value) is expected and expected is not list:
        return value
    kinds = {list: "a list of strings", int: "a number", float: "a number", str: "a string"}
    kind = kinds.get(expected, f"a {expected.__name__}")
    raise ConfigError(f"[{section}] {key} must be {kind}, got {value!r}")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """--config and --log-level, which every process takes."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    add_log_level(parser, default=None)


def add_log_level(parser: argparse.ArgumentParser, default: str | None = "INFO") -> None:
    shown = default or "INFO"
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.upper,
        default=default,
        help=f"logging threshold (default {shown})",
    )


def settings(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    defaults: dict[str, Any],
    section: str,
    check: Callable[[argparse.Namespace], None] | None = None,
) -> argparse.Namespace:
    """Parse flags, fill the rest from the config file, start logging.

    Bad settings end the process with exit code 2 and one line saying why, as argparse does.
    """
    args = parser.parse_args(argv)
    try:
        resolve(args, defaults, section)
        if check is not None:
            check(args)
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    logs.setup(section, args.log_level)
    return args


def run_tool_or(
    argv: list[str] | None, tools: dict[str, str], serve: Callable[[list[str]], int]
) -> int:
    """`python -m PROCESS TOOL ...` runs a tool module's main(); anything else is `serve`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in tools:
        return importlib.import_module(tools[argv[0]]).main(argv[1:])
    return serve(argv)


def ticker_list(text: str) -> list[str]:
    """argparse type for --tickers: a comma-separated list of at least one ticker."""
    tickers = [t.strip() for t in text.split(",") if t.strip()]
    if not tickers:
        raise argparse.ArgumentTypeError("at least one ticker is needed")
    return tickers
