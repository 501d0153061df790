from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

from regindex.cli import cli
from regindex.sample import StorageWriter

from .worlds import World, build_world


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "regindex.db"


@pytest.fixture
def base(tmp_path: Path) -> Path:
    b = tmp_path / "storage"
    b.mkdir()
    return b


@pytest.fixture
def rng() -> random.Random:
    return random.Random(7)


@pytest.fixture
def private(base: Path) -> StorageWriter:
    return StorageWriter(base / "private")


Invoke = Callable[..., Result]


@pytest.fixture
def invoke() -> Invoke:
    runner = CliRunner()

    def run(*args: Any, expect: int | None = 0) -> Result:
        result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (result.exit_code, result.output)
        return result

    return run


@pytest.fixture
def scan(invoke: Invoke, base: Path, db_path: Path) -> Callable[..., Result]:
    def run(*extra: Any, expect: int | None = None) -> Result:
        return invoke("scan", base, "--db", db_path, "-q", *extra, expect=expect)

    return run


@pytest.fixture
def damaged_world(base: Path, scan: Callable[..., Result]) -> World:
    """The generated registry with three orphan layer links and a dangling tag (4 errors), scanned once."""
    world = build_world(base)
    world.w.remove_blob(world.base_img.layers[0])  # 3 orphan layer links
    world.w.remove_tag_current("library/base", "latest")  # 1 dangling tag
    assert scan().exit_code == 1
    return world


@pytest.fixture
def findings(invoke: Invoke, db_path: Path) -> Callable[..., list[dict[str, Any]]]:
    def run(*extra: Any) -> list[dict[str, Any]]:
        out = invoke("findings", "--db", db_path, "--format", "json", *extra).output
        return json.loads(out)

    return run


def ident(f: dict[str, Any]) -> tuple[Any, ...]:
    return (f["kind"], f["severity"], f["registry"], f["repository"], f["digest"], f["tag"], f["parent_digest"])


@pytest.fixture
def unlistable(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[str], bool]], None]:
    """Make os.scandir refuse (EACCES) the directories a predicate picks: as root, chmod would not stop us."""

    def refuse(picked: Callable[[str], bool]) -> None:
        real = os.scandir

        def scandir(path: Any = ".") -> Any:
            if picked(str(path)):
                raise PermissionError(13, "Permission denied")
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)

    return refuse


PG_URL = os.environ.get("REGINDEX_TEST_PG_URL")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL database (REGINDEX_TEST_PG_URL names the server), dropped after the test."""
    if not PG_URL:
        if os.environ.get("REGINDEX_REQUIRE_POSTGRES") == "1":
            pytest.fail("REGINDEX_TEST_PG_URL is not set")
        pytest.skip("REGINDEX_TEST_PG_URL not set")
    name = "regindex_test_" + uuid.uuid4().hex[:10]
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
