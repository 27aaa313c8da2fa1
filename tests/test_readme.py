"""Tests for README.md: its shell commands run as written, and its links resolve.

Every command of a fenced ``bash`` block (continuation lines joined, comments dropped,
``a && b`` split into its parts) is either in RUN, and run here as written in a temporary
directory that sees the repository's ``examples/`` and ``profiles/``, or matches a SKIP
prefix, and is reported as skipped with the reason. A command in neither list fails
``test_every_command_is_listed``: the README cannot grow an untested command silently.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"

# Cheap commands, run in the order the README gives them (a repeated one runs once).
RUN = (
    "autopipe plan examples/gpt2.py:build --stages 4 --microbatches 8 -o plan.json",
    "autopipe show plan.json",
    "autopipe plan examples/gpt2.py:build --stages 4 --microbatches 8 --device-spec h100 -o plan-h100.json",
    "autopipe show plan.json --png plan.png --trace trace.json",
    "autopipe plan examples/gpt2.py:build --stages 4 --microbatches 8 --device-spec h100 -o new-plan.json",
    "autopipe check new-plan.json --baseline plan-h100.json --tolerance 0.01",
    "autopipe plan examples/llama.py:build --spec-arg device=meta --stages 2 -o llama-plan.json",
    "autopipe plan examples/gpt2.py:build --profile profiles/cpu/gpt2.json --stages 2 --microbatches 4 "
    "--memory 51MiB -o plan-recompute.json",
    "autopipe plan examples/gpt2.py:build --stages 4 --microbatches 8 --profile profiles/cpu/gpt2.json "
    "--granularity layer -o plan-layers.json",
    "autopipe export plan-layers.json --format torchtitan -o torchtitan.json",
    "autopipe export plan-layers.json --format megatron",
    "autopipe plan examples/gpt2.py:build --gpus 4 --batch-size 32 --profile profiles/cpu/gpt2.json "
    "-o plan-gpus.json",
)

# Commands not run here, keyed on how they start.
SKIP = {
    "pip install torch==2.13.0": "installs packages (test_quick_start_installs_as_ci_does checks it)",
    "pip install -e ": "installs packages (test_quick_start_installs_as_ci_does checks it)",
    "pip download ": "fetches wheels for a GPU machine without a registry",
    "pip install --no-index ": "installs carried wheels on a GPU machine",
    "export PYTHONPATH=": "sets up a GPU machine's carried wheels",
    "python -m pytest": "is the test suite itself",
    "autopipe plan examples/llama.py:build --spec-arg preset=70b ": "plans a 70B shape (30-80 s)",
    "autopipe plan examples/llama.py:build --spec-arg preset=7b ": "searches a 7B shape on 16 GPUs (about a minute)",
    "autopipe train ": "trains on 4 ranks (tests/test_runtime_train.py trains every example)",
    "torchrun ": "trains on 4 ranks (tests/test_runtime_train.py trains every example)",
    "python -m benchmarks.gpu_suite ": "needs a GPU",
    "python -m benchmarks.bench_estimator_h200": "a minute of estimates at GPU shapes (CI runs its tests)",
    "autopipe consolidate ": "needs a checkpoint of a training run (tests/test_runtime_checkpoint.py runs it)",
    "python -m benchmarks.bench_init_memory": "trains a 1 GB Llama on 2 ranks (3-4 min)",
}

# Arguments naming a file the command writes; it must exist afterwards.
OUTPUT_FLAGS = ("-o", "--png", "--trace")


def bash_commands(text: str) -> list[str]:
    """The commands of ``text``'s fenced bash blocks, in order, whitespace normalised."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            commands += [" ".join(part.split()) for part in line.split("&&") if part.strip()]
    return commands


def skip_reason(command: str) -> str | None:
    return next((why for prefix, why in SKIP.items() if command.startswith(prefix)), None)


COMMANDS = bash_commands(README.read_text())
SKIPPED = [c for c in dict.fromkeys(COMMANDS) if c not in RUN and skip_reason(c)]


def test_every_command_is_listed() -> None:
    unlisted = [c for c in COMMANDS if c not in RUN and not skip_reason(c)]
    assert not unlisted, f"README commands in neither RUN nor SKIP of {__file__}: {unlisted}"
    stale = [c for c in RUN if c not in COMMANDS]
    assert not stale, f"RUN lists commands the README no longer has: {stale}"
    assert [c for c in RUN if skip_reason(c)] == []


def test_bash_commands_parses_continuations_and_comments() -> None:
    text = "x\n```bash\n# a comment\na --b \\\n    c  # trailing\nd && e\n```\n```python\nf\n```\n"
    assert bash_commands(text) == ["a --b c", "d", "e"]


@pytest.mark.slow
def test_readme_commands_run(tmp_path: Path) -> None:
    for name in ("examples", "profiles"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for command in dict.fromkeys(c for c in COMMANDS if c in RUN):
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stderr[-2000:]}"
        args = shlex.split(command)
        for flag, value in itertools.pairwise(args):
            if flag in OUTPUT_FLAGS:
                assert (tmp_path / value).is_file(), f"{command} did not write {value}"


@pytest.mark.parametrize("command", SKIPPED, ids=[c[:60] for c in SKIPPED])
def test_readme_command_skipped(command: str) -> None:
    pytest.skip(f"not run here: {command[:70]}: {skip_reason(command)}")


def test_quick_start_installs_as_ci_does() -> None:
    """The README's first install commands are .ci/run's, without its --quiet."""
    ci = [" ".join(line.replace("--quiet", "").split())
          for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.startswith("pip install")]
    readme = [c for c in COMMANDS if c.startswith("pip install")][:len(ci)]
    assert ci and readme == ci


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))])
def test_relative_links_resolve(page: str) -> None:
    path = ROOT / page if page == "README.md" else ROOT / "docs" / page
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s) and other absolute links
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", dest.read_text(), flags=re.MULTILINE)
            if anchor not in {_slug(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{page}: links to nothing: {broken}"
