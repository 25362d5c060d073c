"""Every numeric flag of every subcommand has a range, checked as the command line is parsed (before anything
loads or starts), and a value outside it is one line naming the flag, the value and the range (exit code 2)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from textfit.cli import Range, build_parser, main
from textfit.serving.connections import ConnectionLimits, LimitError
from textfit.serving.server import ServeSettings

PROBES = ("0", "-1", str(10**12), "abc", "nan", "inf", "1e400", "2.5", "")
PARTNERS = {"--node-rank": ["--nnodes", "1024"], "--max-parallel-jobs": ["--max-jobs", "10000"]}
"""Flags checked against another one: that other at its largest, so that every value of the flag's own range parses."""


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
                 ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(the words that name it, its parser) for every parser with no subcommands of its own, recursively."""
    subs = [a for a in parser._actions if isinstance(a.choices, dict) and a.nargs == argparse.PARSER]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():  # type: ignore[union-attr]
            yield from _subcommands(sub, (*path, name))


def _takes_a_value(action: argparse.Action) -> bool:
    return bool(action.option_strings) and action.nargs != 0 and not isinstance(action, argparse._HelpAction)


def _numeric(action: argparse.Action) -> bool:
    """A flag whose value is a number: by its type (one that makes a number of "1"), or by its default (a flag
    left to parse as text)."""
    default = action.default
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        return True
    if isinstance(action.type, Range) or action.type is None or action.type is str:
        return isinstance(action.type, Range)
    try:
        made = action.type("1")  # type: ignore[misc,operator]
    except Exception:
        return False
    return isinstance(made, (int, float)) and not isinstance(made, bool)


def _required_args(parser: argparse.ArgumentParser) -> list[str]:
    """Dummy values for the required options and positionals: parsing stops before they are looked at."""
    out: list[str] = []
    for action in parser._actions:
        if action.option_strings and action.required:
            out += [action.option_strings[0], "x"]
        elif not action.option_strings and action.nargs != argparse.PARSER:
            out.append("x")
    return out


NUMERIC = [(path, action.option_strings[-1], action, parser)
           for path, parser in _subcommands(build_parser())
           for action in parser._actions if _takes_a_value(action) and _numeric(action)]


def test_the_walk_finds_the_numeric_flags() -> None:
    flags = {(" ".join(path), flag) for path, flag, _, _ in NUMERIC}
    expected = {("serve", "--max-batch"), ("serve", "--max-queue"), ("serve", "--max-connections"),
                ("serve", "--batches-in-flight"),
                ("serve", "--max-wait-ms"), ("serve", "--max-body-mb"), ("serve", "--threads"), ("serve", "--port"),
                ("serve", "--max-header-kb"), ("serve", "--max-headers"), ("serve", "--header-timeout"),
                ("serve", "--body-timeout"), ("serve", "--keep-alive"), ("predict", "--workers"),
                ("tune", "--heartbeat-grace"), ("tune", "--max-jobs"), ("tune", "--max-parallel-jobs"),
                ("tune", "--prune-from-epoch"), ("tune", "--seed"), ("train", "--master-port"),
                ("train", "--nproc-per-node"), ("train", "--nnodes"), ("train", "--node-rank")}
    assert expected <= flags


@pytest.mark.parametrize(("path", "flag", "action", "parser"), NUMERIC,
                         ids=[f"{' '.join(p)} {f}" for p, f, _, _ in NUMERIC])
def test_every_numeric_flag_is_ranged_and_refuses_out_of_range_values_in_one_line(
        path: tuple[str, ...], flag: str, action: argparse.Action, parser: argparse.ArgumentParser,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert isinstance(action.type, Range), f"{' '.join(path)} {flag} has no range: give it type=int_in/float_in"
    rng = action.type
    assert rng.describe() in (action.help or ""), f"{flag}'s --help does not state its range"
    assert isinstance(action.default, (int, float, type(None))) and (action.default is None or action.default in rng)
    base = [*path, *_required_args(parser), *PARTNERS.get(flag, [])]
    for probe in PROBES:
        try:
            value: float = rng.kind(probe)
        except ValueError:
            value = float("nan")
        if value in rng:
            assert getattr(build_parser().parse_args([*base, flag, probe]), action.dest) == value
            continue
        with pytest.raises(SystemExit) as info:
            main([*base, f"{flag}={probe}"])
        assert info.value.code == 2
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1, captured.err
        assert lines[0].startswith(f"error: {flag} ") and f": must be {rng.describe()}" in lines[0], lines[0]
        assert captured.out == ""
    # the range's own ends parse, and what lies just outside them does not
    for inside in (rng.lo, rng.hi) if not rng.lo_open else (rng.hi,):
        text = str(int(inside)) if rng.kind is int else repr(float(inside))
        assert getattr(build_parser().parse_args([*base, flag, text]), action.dest) == inside
    step = 1 if rng.kind is int else 1e-9 * max(1.0, abs(rng.hi))
    for outside in ((rng.hi + step,) if rng.lo_open else (rng.lo - step, rng.hi + step)):
        with pytest.raises(SystemExit):
            main([*base, f"{flag}={outside!r}"])
        capsys.readouterr()


def test_a_refusal_names_the_flag_the_value_and_the_range(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, line in (
        (["serve", "--max-batch", "0"], "error: --max-batch 0: must be an integer from 1 to 4096"),
        (["serve", "--max-queue", "-1"], "error: --max-queue -1: must be an integer from 1 to 1000000"),
        (["serve", "--max-connections", "0"], "error: --max-connections 0: must be an integer from 1 to 65535"),
        (["serve", "--max-wait-ms", "nan"], "error: --max-wait-ms nan: must be a number from 0 to 10000"),
        (["serve", "--keep-alive", "0"], "error: --keep-alive 0: must be a number over 0, up to 3600"),
        (["tune", "--train", "x", "--output", "y", "--heartbeat-grace", "-5"],
         "error: --heartbeat-grace -5: must be an integer from 1 to 86400"),
        (["train", "--train", "x", "--nnodes", "2", "--node-rank", "2"],
         "error: --node-rank 2: must be less than --nnodes (2); ranks count from 0"),
        (["tune", "--train", "x", "--output", "y", "--max-jobs", "2", "--max-parallel-jobs", "3"],
         "error: --max-parallel-jobs 3: must be at most --max-jobs (2)"),
        (["serve", "--max-batch", "1 2"], "error: --max-batch '1 2': must be an integer from 1 to 4096"),
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert capsys.readouterr().err == line + "\n"


def test_other_command_line_mistakes_are_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, fragment in ((["predict"], "the following arguments are required: --model"),
                           (["serve", "--backend", "tpu"], "--backend: invalid choice: 'tpu'"),
                           (["serve", "--port"], "--port: expected one argument"),
                           (["serve", "--no-such-flag"], "unrecognized arguments: --no-such-flag")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and fragment in err, err
        assert "usage:" not in err


@pytest.mark.parametrize(("make", "message"), [
    (lambda: ServeSettings(max_batch=0), "ServeSettings.max_batch 0: must be an integer from 1 to 4096"),
    (lambda: ServeSettings(max_batch=10**12), "ServeSettings.max_batch 1000000000000: must be an integer"),
    (lambda: ServeSettings(max_queue=0), "ServeSettings.max_queue 0: must be an integer from 1 to 1000000"),
    (lambda: ServeSettings(max_queue=-1), "ServeSettings.max_queue -1"),
    (lambda: ServeSettings(max_wait_ms=float("nan")), "ServeSettings.max_wait_ms nan: must be a number from 0"),
    (lambda: ServeSettings(max_body_bytes=0), "ServeSettings.max_body_bytes 0"),
    (lambda: ServeSettings(body_timeout_s=0), "ServeSettings.body_timeout_s 0: must be a number over 0, up to 3600"),
    (lambda: ServeSettings(max_batch=True), "ServeSettings.max_batch True"),  # type: ignore[arg-type]
    (lambda: ConnectionLimits(max_connections=0), "ConnectionLimits.max_connections 0: must be an integer from 1"),
    (lambda: ConnectionLimits(max_header_bytes=10**12), "ConnectionLimits.max_header_bytes 1000000000000"),
    (lambda: ConnectionLimits(max_headers=0), "ConnectionLimits.max_headers 0"),
    (lambda: ConnectionLimits(header_timeout_s=float("inf")), "ConnectionLimits.header_timeout_s inf"),
    (lambda: ConnectionLimits(keep_alive_s=-1), "ConnectionLimits.keep_alive_s -1"),
])
def test_the_python_api_holds_the_same_ranges(make: object, message: str) -> None:
    with pytest.raises(LimitError, match="^" + re.escape(message)):
        make()  # type: ignore[operator]


def test_the_api_ranges_are_the_flags_ranges() -> None:
    """The flags' ranges, in the flags' units, are the settings' ranges: the CLI refuses what the server would."""
    from textfit.serving.connections import CONNECTION_RANGES
    from textfit.serving.server import SERVE_RANGES

    serve = next(p for path, p in _subcommands(build_parser()) if path == ("serve",))
    flags = {a.option_strings[-1]: a.type for a in serve._actions if isinstance(a.type, Range)}
    pairs = {"--max-batch": (SERVE_RANGES["max_batch"], 1), "--max-queue": (SERVE_RANGES["max_queue"], 1),
             "--batches-in-flight": (SERVE_RANGES["batches_in_flight"], 1),
             "--max-wait-ms": (SERVE_RANGES["max_wait_ms"], 1), "--body-timeout": (SERVE_RANGES["body_timeout_s"], 1),
             "--max-body-mb": (SERVE_RANGES["max_body_bytes"], 1024 * 1024),
             "--max-connections": (CONNECTION_RANGES["max_connections"], 1),
             "--max-header-kb": (CONNECTION_RANGES["max_header_bytes"], 1024),
             "--max-headers": (CONNECTION_RANGES["max_headers"], 1),
             "--header-timeout": (CONNECTION_RANGES["header_timeout_s"], 1),
             "--keep-alive": (CONNECTION_RANGES["keep_alive_s"], 1)}
    for flag, ((_, lo, hi, _), unit) in pairs.items():
        rng = flags[flag]
        assert rng.hi * unit == hi, flag
        assert rng.lo * unit <= lo or rng.lo_open, flag  # a body over 0 MiB is at least 1 byte
    assert ServeSettings() and ConnectionLimits()  # the defaults are within their ranges
