"""The README runs as written: its SQL examples (the cookbook's canned queries) answer with rows on the demo's
database, its command examples use options the commands have, the read-only ones run, and the nightly-job
examples install regindex from the repository (a Containerfile), not from a package index that lacks it."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from regindex.cli import cli
from regindex.cookbook import CANNED
from regindex.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
READ_ONLY = {"findings", "runs", "history", "sql", "gc-preview"}


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_demo(tmp_path_factory.mktemp("demo") / "regindex-demo", echo=lambda _m: None).db_path


def code_blocks(lang: str | None = None) -> list[str]:
    blocks = re.findall(r"^```([a-z]*)\n(.*?)^```$", README, flags=re.M | re.S)
    return [body for kind, body in blocks if lang is None or kind == lang]


def run(*args: object) -> tuple[int, str]:
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.output


def test_every_sql_example_is_a_canned_query_and_every_canned_query_is_in_the_readme() -> None:
    blocks = [b.strip().rstrip(";") for b in code_blocks("sql")]
    assert blocks == [c.sql for c in CANNED]
    for c in CANNED:
        params = " ".join(f"-p {k} {v}" for k, v in c.example.items())
        assert f"`regindex sql -f {c.name}.sql {params}`" in README, c.name
        assert set(re.findall(r"(?<!:):([a-z_]+)", c.sql)) == set(c.example), c.name
        assert ":registry" in c.sql  # scoped by registry


@pytest.mark.parametrize("canned", CANNED, ids=[c.name for c in CANNED])
def test_sql_examples_answer_with_rows_on_the_demo(canned, demo_db: Path, tmp_path: Path) -> None:
    # exactly as the README says: the block saved to a file, the command line shown under it
    (tmp_path / f"{canned.name}.sql").write_text(canned.sql + ";\n")
    line = re.search(rf"`(regindex sql -f {canned.name}\.sql[^`]*)`", README)
    assert line
    args = shlex.split(line.group(1))[1:]
    args[2] = str(tmp_path / args[2])
    code, out = run(*args, "--db", demo_db, "--json")
    assert code == 0, out
    rows = json.loads(out)
    assert rows, canned.name
    if canned.name == "when_did_this_link_vanish":
        # the API DELETE left the directory: reported as such, never as a present link
        assert [(r["state"], r["gone_run"], r["directory_left_behind"]) for r in rows] == [("ok", 2, 1)]


def regindex_invocations() -> list[list[str]]:
    """Every `regindex …` command line in the README's code blocks (continuations joined, comments and shell
    operators cut), as argument lists without the leading `regindex`."""
    found = []
    for block in code_blocks():
        text_ = block.replace("\\\n", " ")
        for line in text_.splitlines():
            for m in re.finditer(r"(?:^|&&|\|\||;|\s)regindex\s+([a-z][a-z-]*)(.*)", line):
                rest = re.split(r"\s(?:&&|\|\||\||;)\s|\s#\s", m.group(1) + m.group(2))[0]
                try:
                    found.append(shlex.split(rest))
                except ValueError:
                    pytest.fail(f"unparsable README command: {line}")
    # the CronJob's args
    for m in re.finditer(r"args: (\[.*\])", README):
        found.append(json.loads(m.group(1)))
    return found


def resolve(args: list[str]) -> tuple[click.Command, list[str]]:
    group: click.Command = cli
    while isinstance(group, click.Group):
        name = args[0]
        assert name in group.commands, f"README uses `regindex {' '.join(args)}`: no command {name!r}"
        group, args = group.commands[name], args[1:]
    return group, args


def test_readme_command_examples_use_options_the_commands_have() -> None:
    invocations = regindex_invocations()
    assert len(invocations) >= 10
    for args in invocations:
        command, rest = resolve(args)
        opts = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        used = [a.split("=")[0] for a in rest if a.startswith("-") and a != "-"]
        assert set(used) <= opts, (args, set(used) - opts)
        path = args[: len(args) - len(rest)]
        shown = CliRunner().invoke(cli, [*path, "--help"], catch_exceptions=False).output
        assert all(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", shown) for o in used), (args, shown)
    # the commands table: options named in a command's row belong to it
    for row in re.findall(r"^\| `regindex ([a-z-]+)[^`]*` \|(.*)\|$", README, flags=re.M):
        name, cell = row
        if name == "db":
            continue
        command = cli.commands[name]
        opts = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        used = set(re.findall(r"`(--[a-z-]+)", cell)) | set(re.findall(r"`(-[a-z])\b", cell))
        assert used <= opts, (name, used - opts)


def test_readme_read_only_examples_run_on_the_demo(demo_db: Path) -> None:
    ran = 0
    for args in regindex_invocations():
        if args[0] not in READ_ONLY or "--file" in args or "-f" in args:
            continue
        if "--db" in args:
            i = args.index("--db")
            args = args[:i] + args[i + 2:]
        code, out = run(*args, "--db", demo_db)
        assert code in (0, 1) and not out.startswith("Error"), (args, out)
        assert out.strip(), args
        ran += 1
    assert ran >= 6


def test_nightly_job_installs_from_the_repository() -> None:
    assert "pip install regindex" not in README and "pip install -q regindex" not in README
    build = re.search(r"docker build -f Containerfile -t (\S+) \.", README)
    assert build and (ROOT / "Containerfile").is_file()
    images = re.findall(r"^\s+image: (\S+)$", README, flags=re.M)
    assert images == [build.group(1)]
    containerfile = (ROOT / "Containerfile").read_text()
    assert 'ENTRYPOINT ["regindex"]' in containerfile  # so the CronJob's args are a regindex command line
    assert "USER 10001" in containerfile and "runAsUser: 10001, fsGroup: 10001" in README


def containerfile_copies() -> list[tuple[str, str]]:
    out = []
    for line in (ROOT / "Containerfile").read_text().splitlines():
        if line.startswith("COPY "):
            *sources, dest = line.split()[1:]
            out.extend((s, dest) for s in sources)
    return out


@pytest.mark.slow
def test_what_the_containerfile_copies_builds_a_complete_package(tmp_path: Path) -> None:
    """Without a container engine: the files the Containerfile copies are enough to build regindex."""
    for src, dest in containerfile_copies():
        target = tmp_path / dest.lstrip("/")
        if dest.endswith("/"):
            target = target / Path(src).name
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / src, target)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(tmp_path / "src")],
                   check=True, cwd=tmp_path, timeout=600)
    [wheel] = dist.glob("regindex-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "regindex/migrations/env.py" in names and "regindex/cli.py" in names
    assert any(n.startswith("regindex/templates/") for n in names)


def container_builder() -> list[str] | None:
    for tool, probe in (("podman", ["podman", "info"]), ("buildah", ["buildah", "info"]), ("docker", ["docker", "info"])):
        if shutil.which(tool):
            ok = subprocess.run(probe, capture_output=True, timeout=60).returncode == 0
            if ok:
                return [tool, "bud"] if tool == "buildah" else [tool, "build"]
    return None


@pytest.mark.slow
def test_container_image_builds_and_runs(tmp_path: Path) -> None:
    builder = container_builder()
    if builder is None:
        pytest.skip("no container builder with a running engine (docker without a daemon, no podman or buildah)")
    tag = "localhost/regindex-test:latest"
    r = subprocess.run([*builder, "-f", "Containerfile", "-t", tag, "."], cwd=ROOT, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    engine = builder[0] if builder[0] != "buildah" else "podman"
    if shutil.which(engine):
        r = subprocess.run([engine, "run", "--rm", tag, "--version"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "regindex" in r.stdout
