"""--amqp-url and --redis-url on the daemons: taken as settings, checked before any connection."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from enginefarm.cli import main


@pytest.mark.parametrize("command", ["engine", "scheduler", "cluster"])
def test_daemons_offer_the_server_options(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "--amqp-url URL[,URL...]" in result.output and "--redis-url URL" in result.output


@pytest.mark.parametrize("command", ["engine", "scheduler", "cluster"])
@pytest.mark.parametrize("option, value, says", [
    ("--amqp-url", "amqp://127.0.0.1:1/%2F,http://guest:hunter2@127.0.0.1:2/", "URL 2 of 2 has scheme 'http'"),
    ("--redis-url", "redis://127.0.0.1:1/0,redis://:hunter2@127.0.0.1:2/0", "takes one URL"),
])
def test_a_bad_server_option_is_one_line_and_exit_1(command, option, value, says):
    # The settings are refused before any connection is tried: ports 1 and 2 are never reached.
    result = CliRunner().invoke(main, [command, "--cluster", "c1", option, value])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "hunter2" not in lines[0], result.output
