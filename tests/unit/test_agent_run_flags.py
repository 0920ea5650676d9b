"""`kuma-dp run`'s fast flag path (agent/run_flags.py) gives the run command exactly the keyword arguments
click gives it, and leaves every unusual or wrong command line to click (whose messages stay the same)."""

from __future__ import annotations

import random
from typing import Any

import click
import pytest

from agent import commands, run_flags
from agent.config import SETTINGS


def click_kwargs(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    got: dict[str, Any] = {}

    def capture(config_file: str | None, flags: dict[str, Any]) -> None:
        got.update(flags, config_file=config_file)

    monkeypatch.setattr(run_flags, "run_command", capture)
    commands.main(["run", *args], standalone_mode=False)
    return got


def value_spellings() -> list[tuple[str, str]]:
    """(option name, keyword argument) of every option that takes a value, short names included."""
    names = [(name, "config_file") for name in run_flags.CONFIG_FILE_NAMES]
    for s in SETTINGS:
        if s.flag and s.attr != run_flags.DNS_FLAG:
            names += [(name, s.attr) for name in run_flags.option_names(s)]
    return names


PLAIN = [
    [],
    ["--cp-address", "https://cp:5678", "--dataplane-file", "web.yaml", "--dataplane-token-file", "web.token",
     "--ca-cert-file", "ca.crt"],
    ["-d", "web.yaml", "-v", "address=10.0.0.5", "-v", "port=8080", "-c", "kuma-dp.yaml"],
    ["--cp-address=https://cp:5678?a=b", "--mesh=", "--name", "", "--dataplane-var=k=v"],
    ["--mesh", "one", "--mesh", "two", "--dns-enabled", "--no-dns-enabled", "--dns-upstream", "1.1.1.1:53"],
    ["--config-dir", "/run/a", "--runtime-dir", "/run/b", "--dns-enabled"],
]


@pytest.mark.parametrize("args", PLAIN)
def test_plain_flags_parse_as_click_parses_them(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    fast = run_flags.parse_fast(args)
    assert fast is not None
    assert fast == click_kwargs(args, monkeypatch)


def test_random_plain_command_lines_parse_as_click_parses_them(monkeypatch: pytest.MonkeyPatch) -> None:
    spellings = value_spellings()
    values = ["web", "", "a=b", "10.0.0.5", "https://cp:5678/x?y=z", "with space", "x-y"]
    rng = random.Random(14)
    for _ in range(300):
        args: list[str] = []
        for _ in range(rng.randint(0, 12)):
            if rng.random() < 0.1:
                args.append(rng.choice(["--dns-enabled", "--no-dns-enabled"]))
                continue
            name, _attr = rng.choice(spellings)
            value = rng.choice(values)
            args += [f"{name}={value}"] if name.startswith("--") and rng.random() < 0.4 else [name, value]
        fast = run_flags.parse_fast(args)
        assert fast is not None, args
        assert fast == click_kwargs(args, monkeypatch), args


@pytest.mark.parametrize("args", [
    ["--help"], ["-h"], ["--mesh"], ["--mesh", "--name", "x"], ["--mesh", "-x"], ["--no-such-flag", "x"],
    ["stray"], ["--", "--mesh", "x"], ["-d=web.yaml"], ["-dweb.yaml"], ["--dns-enabled=true"], ["--mes", "x"],
    ["--cp-address", "https://cp:5678", "--dataplane-file"],
])
def test_anything_unusual_is_left_to_click(args: list[str]) -> None:
    assert run_flags.parse_fast(args) is None


def test_click_still_reports_what_the_fast_path_leaves_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(click.NoSuchOption) as e:
        click_kwargs(["--mes", "x"], monkeypatch)
    assert "--mes" in e.value.format_message()
    with pytest.raises(click.BadOptionUsage, match="requires an argument"):
        click_kwargs(["--dataplane-file"], monkeypatch)
