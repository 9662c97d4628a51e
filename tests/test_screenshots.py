"""tools/screenshots: it runs the README's walkthrough as written, and writes what it shows.

The screenshots themselves need ``make run`` and Chromium (tools/screenshots, by hand); what is
checked here is what they rest on: the walkthrough's command lines read from the README as bash
reads them, each a real command of the CLI, and the README showing exactly the images the
script writes, at the size it writes them.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from batchinfer_testing.command_lines import parse_command_line
from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_tools.screenshots import (
    PAGES,
    ScreenshotError,
    chromium_command,
    walkthrough_commands,
)

README = (REPO_ROOT / "README.md").read_text()


def test_walkthrough_lines_split_as_bash_splits_them() -> None:
    readme = (
        "# x\n\n## The walkthrough\n\ntext\n\n```bash\n"
        'batchinfer add-data-point "a # b"   # a comment\n\n'
        'batchinfer publish \'{"id": "1"}\'  # {"message_id": "1"}\n'
        "```\n\n```bash\nmake demo\n```\n\n## Next\n"
    )
    assert walkthrough_commands(readme) == [
        ["batchinfer", "add-data-point", "a # b"],
        ["batchinfer", "publish", '{"id": "1"}'],
    ]


@pytest.mark.parametrize(
    "readme",
    ["# x\n\n## Usage\n\n```bash\nmake run\n```\n", "## The walkthrough\n\nnone\n\n## B\n"],
)
def test_a_readme_without_the_walkthrough_is_an_error(readme: str) -> None:
    with pytest.raises(ScreenshotError, match="walkthrough"):
        walkthrough_commands(readme)


def test_every_walkthrough_command_is_a_real_cli_command() -> None:
    commands = walkthrough_commands(README)
    assert [argv[:2] for argv in commands if argv[1] in {"add-data-point", "prediction"}] == [
        ["batchinfer", "add-data-point"],
        ["batchinfer", "prediction"],
    ]
    for argv in commands:
        assert argv[0] == "batchinfer", argv
        context = parse_command_line(argv)
        assert context.command.callback is not None


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_the_readme_shows_exactly_the_screenshots_the_script_writes() -> None:
    shown = re.findall(r"!\[[^\]]+\]\(docs/img/([^)]+)\)", README)
    assert shown == [page.image for page in PAGES]
    for page in PAGES:
        assert png_size(REPO_ROOT / "docs" / "img" / page.image) == page.window, page.image


def test_chromium_takes_one_screenshot_at_the_pages_size(tmp_path: Path) -> None:
    command = chromium_command(
        "chromium", "http://127.0.0.1:3000/x", tmp_path / "x.png", (1500, 1000)
    )
    assert "--headless" in command
    assert "--window-size=1500,1000" in command
    assert f"--screenshot={tmp_path / 'x.png'}" in command
    assert command[-1] == "http://127.0.0.1:3000/x"


def test_the_walkthrough_asks_for_no_prediction_of_a_record_it_deleted() -> None:
    """The screenshots wait for ``batchinfer prediction`` to answer: a record deleted earlier in
    the walkthrough would never get one (its request is dead-lettered "unknown record id")."""
    deleted: set[str] = set()
    for argv in walkthrough_commands(README):
        if argv[1] == "delete-data-point":
            deleted.add(argv[2])
        elif argv[1] == "publish":
            assert json.loads(argv[2])["id"] not in deleted, argv
        elif argv[1] == "prediction":
            assert argv[2] not in deleted, argv
