"""Papercuts of issue 14: a misspelt config table or key is refused naming the closest valid
one; no command accepts an abbreviated flag; audit finds the controller's journal from the
same configuration."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest
from helpers import ROOT

from common import config
from common.protocol import pack, split_message
from controller import cli
from controller.book import Book
from controller.engine import Engine
from controller.journal import JournalWriter

#: Every command's parser, by the module and function that build it.
PARSERS = [
    "controller.cli",
    "controller.tools.audit",
    "controller.tools.replay",
    "fillsim.cli",
    "aumsim.cli",
    "positions.cli",
    "positions.report",
    "launcher",
]


def namespace(path) -> argparse.Namespace:
    return argparse.Namespace(config=str(path))


def controller_settings(tmp_path, text: str) -> argparse.Namespace:
    path = tmp_path / "system.toml"
    path.write_text(text)
    return config.resolve(namespace(path), cli.DEFAULTS, "controller")


# -- config -------------------------------------------------------------------------------


def test_a_misspelt_table_is_refused_naming_the_closest(tmp_path):
    with pytest.raises(config.ConfigError) as info:
        controller_settings(tmp_path, '[controler]\njournal = "x"\n')
    assert str(info.value) == (
        f"config file {tmp_path / 'system.toml'}: unknown table [controler] (did you mean "
        "[controller]?); the tables are [controller], [fillsim], [aumsim], [launcher], "
        "[positions]"
    )


def test_a_table_with_no_close_name_lists_the_tables(tmp_path):
    with pytest.raises(config.ConfigError, match=r"unknown table \[zzz\]; the tables are"):
        controller_settings(tmp_path, "[zzz]\n")


def test_a_misspelt_key_in_a_table_is_refused_naming_the_closest(tmp_path):
    with pytest.raises(config.ConfigError) as info:
        controller_settings(tmp_path, "[controller]\nsnapshot_intervl = 5\n")
    assert str(info.value) == (
        "unknown setting(s) in [controller]: 'snapshot_intervl' (did you mean 'snapshot_interval'?)"
    )


def test_a_misspelt_top_level_key_is_refused_naming_the_closest(tmp_path):
    with pytest.raises(config.ConfigError) as info:
        controller_settings(tmp_path, 'jurnal = "x"\n')
    assert str(info.value) == (
        f"config file {tmp_path / 'system.toml'}: unknown top-level setting 'jurnal' "
        "(did you mean 'journal'?)"
    )


def test_a_top_level_key_of_another_process_is_fine(tmp_path):
    # `accounts` is the AUM simulator's (and the launcher's), not the controller's.
    settings = controller_settings(tmp_path, 'accounts = 7\njournal = "j"\n')
    assert settings.journal == "j"


def test_a_misspelt_table_stops_a_real_process_with_one_line(tmp_path):
    path = tmp_path / "system.toml"
    path.write_text("[controler]\n")
    result = subprocess.run(
        [sys.executable, "-m", "controller", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"controller: config file {path}: unknown table [controler] (did you mean "
        "[controller]?); the tables are [controller], [fillsim], [aumsim], [launcher], "
        "[positions]\n"
    )


# -- no abbreviated flags -------------------------------------------------------------------


@pytest.mark.parametrize("module", PARSERS)
def test_no_parser_accepts_abbreviations(module):
    parser = importlib.import_module(module).parser()
    assert parser.allow_abbrev is False


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("launcher", ["--fill-server", "3"]),  # the example: --fill-servers
        ("controller.cli", ["--snapshot", "5"]),
        ("fillsim.cli", ["--sell-frac", "0.5"]),
    ],
)
def test_a_prefix_of_a_flag_is_an_error(module, argv, capsys):
    with pytest.raises(SystemExit) as info:
        importlib.import_module(module).parser().parse_args(argv)
    assert info.value.code == 2
    assert f"unrecognized arguments: {' '.join(argv)}" in capsys.readouterr().err


def test_the_keys_tool_refuses_a_prefix(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["keys", "desk", "--dir", str(tmp_path), "--rol", "fill"])
    assert info.value.code == 2
    assert "unrecognized arguments: --rol fill" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- audit finds the journal -----------------------------------------------------------------


def make_journal(path) -> None:
    """A journal of one split, written by a real Engine."""
    writer = JournalWriter(path)
    engine = Engine(Book(["AAPL"]), journal=writer)
    engine.receive(pack(split_message("aum", 1, {"A": 100})))
    engine.commit()
    writer.close()


@pytest.mark.parametrize(
    "text",
    ['[controller]\njournal = "{j}"\n', 'journal = "{j}"\n', '[launcher]\njournal = "{j}"\n'],
    ids=["controller-table", "top-level", "launcher-table"],
)
def test_audit_reads_the_controllers_journal_from_the_config(tmp_path, text, capsys):
    journal = tmp_path / "kept" / "controller.journal"
    journal.parent.mkdir()
    make_journal(journal)
    path = tmp_path / "system.toml"
    path.write_text(text.format(j=journal))
    assert cli.main(["audit", "--config", str(path), "--verify"]) == 0
    assert capsys.readouterr().out.startswith("audit verify: OK")


def test_audit_refuses_to_guess_between_two_existing_journals(tmp_path, capsys):
    one, two = tmp_path / "one.journal", tmp_path / "two.journal"
    make_journal(one)
    make_journal(two)
    path = tmp_path / "system.toml"
    path.write_text(f'[controller]\njournal = "{one}"\n[launcher]\njournal = "{two}"\n')
    assert cli.main(["audit", "--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"audit: the configuration names two journals ({one} and {two}: the controller's "
        "own and the launcher's); say which with --journal\n"
    )
    assert cli.main(["audit", "--config", str(path), "--journal", str(two), "--verify"]) == 0


def test_audit_reports_a_bad_config_in_one_line(tmp_path, capsys):
    path = tmp_path / "system.toml"
    path.write_text("[controler]\n")
    assert cli.main(["audit", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("audit: config file") and "did you mean [controller]?" in err
    assert err.count("\n") == 1
