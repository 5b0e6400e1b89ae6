"""One TOML file configures every process: top-level keys are shared, [section] keys are
one process's own; command-line flags override both."""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import logs


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or names an unknown setting."""


#: Every process that reads the one config file (its [table] name) and the module holding
#: its DEFAULTS. A table none of them reads, or a top-level key none of them knows, is
#: refused with the closest valid name: a misspelt setting must never be ignored silently.
#: Ordered cheapest import first: another process's module is imported only to look up a
#: top-level key that the reading process does not know itself.
PROCESS_MODULES = {
    "controller": "controller.cli",
    "fillsim": "fillsim.cli",
    "aumsim": "aumsim.cli",
    "launcher": "launcher",
    "positions": "positions.cli",
}


def _closest(name: str, valid: list[str] | set[str], shown: str = "'{}'") -> str:
    """` (did you mean X?)` for the valid name closest to a misspelt one, else ``."""
    matches = difflib.get_close_matches(name, sorted(valid), n=1)
    return f" (did you mean {shown.format(matches[0])}?)" if matches else ""


def read(path: str) -> dict[str, Any]:
    """The config file as TOML, with its table names checked; ConfigError saying why not."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for name, value in data.items():
        if isinstance(value, dict) and name not in PROCESS_MODULES:
            hint = _closest(name, set(PROCESS_MODULES), "[{}]")
            tables = ", ".join(f"[{process}]" for process in PROCESS_MODULES)
            raise ConfigError(
                f"config file {path}: unknown table [{name}]{hint}; the tables are {tables}"
            )
    return data


def load(path: str | None, section: str) -> tuple[dict[str, Any], list[str]]:
    """Settings for `section` (the file's top-level values overlaid by its [section] table)
    and the keys the [section] table itself names, from one read of the file."""
    if path is None:
        return {}, []
    data = read(path)
    settings = {key: value for key, value in data.items() if not isinstance(value, dict)}
    own = data.get(section, {})
    if not isinstance(own, dict):
        raise ConfigError(f"config file {path}: [{section}] must be a table")
    settings.update(own)
    return settings, list(own)


def known_settings(process: str) -> set[str]:
    """The settings `process` takes (its DEFAULTS), importing its module if need be."""
    module: Any = importlib.import_module(PROCESS_MODULES[process])
    return set(module.DEFAULTS)


def setting_of(process: str, key: str, path: str | None) -> Any:
    """The value `process` runs with for `key` when started with `--config path` and no flag
    for it: its [process] table, else the top level, else its default (the tools use it to
    find what a process uses, e.g. the controller's journal)."""
    module: Any = importlib.import_module(PROCESS_MODULES[process])
    settings = resolve(argparse.Namespace(config=path), module.DEFAULTS, process)
    return getattr(settings, key)


def check_top_level(path: str, keys: list[str], defaults: dict[str, Any]) -> None:
    """Refuse a top-level key that no process takes. Keys this process knows cost nothing;
    only an unknown one makes the other processes' settings be looked up."""
    unknown = set(keys) - set(defaults)
    everything = set(defaults)
    for process in PROCESS_MODULES:
        if not unknown:
            return
        names = known_settings(process)
        everything |= names
        unknown -= names
    if unknown:
        key = min(unknown)
        raise ConfigError(
            f"config file {path}: unknown top-level setting '{key}'{_closest(key, everything)}"
        )


def resolve(args: argparse.Namespace, defaults: dict[str, Any], section: str) -> argparse.Namespace:
    """Fill every setting in `defaults`: flag if given, else config file, else default.

    Flags must default to None so that "not given" can be told apart from a value.
    """
    path = getattr(args, "config", None)
    settings, own_keys = load(path, section)
    unknown = sorted(set(own_keys) - set(defaults))
    if unknown:
        hints = ", ".join(f"'{key}'{_closest(key, set(defaults))}" for key in unknown)
        raise ConfigError(f"unknown setting(s) in [{section}]: {hints}")
    if path is not None:
        check_top_level(path, [k for k in settings if k not in own_keys], defaults)
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
