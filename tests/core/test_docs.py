"""The docs say what the code does: every setting is in the README's table with its default,
the README's commands point at files that exist, and the public API is what `__all__` lists."""

from __future__ import annotations

import inspect
import re

import batchpredict
from batchpredict.config import Settings
from tests.conftest import REPO


def settings_table() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- settings-table")[1].split("<!-- /settings-table -->")[0]
    return dict(re.findall(r"^\| `(BATCHPREDICT_[A-Z0-9_]+)` \| `?([^`|]*)`? \|", block, re.M))


def test_every_setting_is_documented_with_its_default() -> None:
    table = settings_table()
    code = dict(Settings.describe())
    assert sorted(table) == sorted(code)
    for name, default in code.items():
        if default and not default.startswith("/") and table[name][:1] != "(":
            assert table[name] == default, name


def test_readme_first_screen_commands_exist() -> None:
    first_screen = "\n".join((REPO / "README.md").read_text().splitlines()[:15])
    assert "bash install.sh && .venv/bin/batchpredict run examples/requests.jsonl" in first_screen
    assert ".venv/bin/python -m pytest" in first_screen
    assert (REPO / "install.sh").exists() and (REPO / "examples/requests.jsonl").exists()
    assert ".venv/bin/python -m pytest" in (REPO / ".ci/run").read_text()


def test_public_api_is_what_all_lists() -> None:
    # submodules become attributes once anything imports them: they are not the API
    exported = {n for n in dir(batchpredict)
                if not n.startswith("_") and not inspect.ismodule(getattr(batchpredict, n))}
    assert set(batchpredict.__all__) == exported


def reference_block() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("<!-- reference")[1].split("<!-- /reference -->")[0]


def test_every_cli_command_is_documented() -> None:
    import click

    from batchpredict.cli import main

    def commands(group: click.Group, prefix: str) -> list[str]:
        found = []
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                found += commands(cmd, f"{prefix} {name}")
            else:
                found.append(f"{prefix} {name}")
        return found

    documented = set(re.findall(r"^\| `(batchpredict [a-z ]+)` \|", reference_block(), re.M))
    assert sorted(commands(main, "batchpredict")) == sorted(documented)


def test_every_rest_route_is_documented(tmp_path) -> None:
    from batchpredict.server.app import create_app

    spec = create_app(Settings(data_dir=str(tmp_path))).openapi()
    routes = set()
    for path, ops in spec["paths"].items():
        path = re.sub(r"^/v1(beta1)?/", "/{version}/", path)
        routes.add((", ".join(sorted(m.upper() for m in ops)), path))
    documented = set(re.findall(r"^\| `([A-Z, ]+)` \| `([^`]+)`", reference_block(), re.M))
    assert sorted(routes) == sorted(documented)
