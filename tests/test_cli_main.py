"""Tests for autopipe/cli/main.py: version, subcommands, the error handler."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from autopipe.cli.main import SUBCOMMANDS, main
from tests.conftest import ROOT, example_spec


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("autopipe ")


def test_the_parser_leaves_the_runtime_unloaded() -> None:
    """Building the CLI (every command does) must not import torch.distributed.pipelining:
    that alone took ~1.4 s of CPU from each `autopipe plan`."""
    code = ("import sys; from autopipe.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith(('autopipe.runtime', "
            "'torch.distributed.pipelining'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


def test_a_training_rank_leaves_the_planner_unloaded() -> None:
    """`autopipe train` builds its own parser only, and `import autopipe` defers `autopipe.plan`:
    PuLP, HiGHS, the partitioner and the profilers (~10 MiB) stay out of every rank."""
    code = ("import sys; from autopipe.cli.main import build_parser; build_parser('train'); "
            "import autopipe, autopipe.runtime.train, autopipe.runtime.launch, autopipe.runtime.prepare; "
            "print(sorted(m for m in sys.modules if m.startswith(('pulp', 'highspy', 'autopipe.partition', "
            "'autopipe.profile.estimate', 'autopipe.api')))); print(autopipe.plan.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["[]", "autopipe.api"]


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert "usage: autopipe " + name in capsys.readouterr().out


def test_python_dash_m() -> None:
    out = subprocess.run([sys.executable, "-m", "autopipe", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("autopipe ")


@pytest.mark.parametrize("flag, malloc, cores, flush", [([], True, True, True),
                                                        (["--no-pin-malloc"], False, True, True),
                                                        (["--no-pin-cores"], True, False, True),
                                                        (["--no-flush-denormal"], True, True, False)])
def test_train_passes_what_to_pin(flag: list[str], malloc: bool, cores: bool, flush: bool, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import autopipe

    runtime_train = importlib.import_module("autopipe.runtime.train")

    spec = example_spec("mlp")
    plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile="estimate",
                         method="dp")
    plan.save(tmp_path / "plan.json")
    seen: list[object] = []
    monkeypatch.setattr(runtime_train, "train", lambda spec, plan, config, log: seen.append(config))
    assert main(["train", str(ROOT / "examples" / "mlp.py") + ":build", "--plan",
                 str(tmp_path / "plan.json"), "--steps", "1", *flag]) == 0
    assert [(c.pin_malloc, c.pin_cores, c.flush_denormal)  # type: ignore[attr-defined]
            for c in seen] == [(malloc, cores, flush)]


def test_closed_pipe_ends_output_quietly(tmp_path: Path) -> None:
    import autopipe

    spec = example_spec("mlp")
    plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile="estimate",
                         method="dp")
    plan.save(tmp_path / "plan.json")
    show = [sys.executable, "-m", "autopipe", "show", str(tmp_path / "plan.json")]
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write fails
    try:
        gone = subprocess.run(show, stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    finally:
        os.close(write)
    assert gone.returncode == 141 and gone.stderr == "", gone.stderr  # as SIGPIPE: 128 + 13
    head = subprocess.run(f"{shlex.join(show)} | head -1", shell=True, capture_output=True,
                          text=True, cwd=ROOT)
    assert len(head.stdout.splitlines()) == 1 and head.stderr == "", head.stderr



def test_a_gpus_search_into_a_closed_pipe_ends_quietly_with_its_plan_written(tmp_path: Path) -> None:
    """`autopipe plan ... --gpus 2 --batch-size 8 | head -3` (reported as a BrokenPipeError
    traceback): the search prints its rows on stderr and the plan on stdout after writing the
    file; a reader gone before the first line ends it as SIGPIPE would, silently."""
    out = tmp_path / "plan.json"
    plan = [sys.executable, "-m", "autopipe", "plan", f"{ROOT}/examples/mlp.py:build", "--gpus", "2",
            "--batch-size", "8", "--device-spec", "h100", "-o", str(out)]
    read, write = os.pipe()
    os.close(read)
    try:
        gone = subprocess.run(plan, stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    finally:
        os.close(write)
    assert gone.returncode == 141 and "Traceback" not in gone.stderr and "Error" not in gone.stderr, gone.stderr
    assert out.exists()
    head = subprocess.run(f"{shlex.join(plan)} 2>&1 | head -3", shell=True, capture_output=True,
                          text=True, cwd=ROOT)
    assert len(head.stdout.splitlines()) == 3 and "Traceback" not in head.stdout, head.stdout


_SEED_SPEC = '''
import os
from examples.mlp import build as mlp


def build(**knobs):
    with open(os.environ["SEED_OUT"], "w") as f:
        f.write(f"{os.environ.get('PYTHONHASHSEED')} {hash('a set of layer types')}")
    return mlp(**knobs)
'''


@pytest.mark.parametrize("seed", [None, "7"])
def test_tracing_commands_run_under_one_hash_seed(seed: str | None, tmp_path: Path) -> None:
    """[Note: one hash seed]: `autopipe plan` traces under PYTHONHASHSEED=0 whatever this
    process drew (so does every rank `autopipe train` starts), and a seed the user set is kept."""
    spec = tmp_path / "seed_spec.py"
    spec.write_text(_SEED_SPEC)
    out = tmp_path / "seed.txt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    env.update(SEED_OUT=str(out), PYTHONPATH=str(ROOT), **({"PYTHONHASHSEED": seed} if seed else {}))
    done = subprocess.run([sys.executable, "-m", "autopipe", "plan", f"{spec}:build", "--stages", "2",
                           "--device-spec", "h100", "--method", "uniform", "-o", str(tmp_path / "p.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    want = seed or "0"
    expected = subprocess.run([sys.executable, "-c", "print(hash('a set of layer types'))"],
                              env={**env, "PYTHONHASHSEED": want}, capture_output=True, text=True,
                              check=True).stdout.strip()
    assert out.read_text() == f"{want} {expected}"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, where no file can be made")
def test_a_file_that_cannot_be_written_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`autopipe consolidate ckpt -o /proc/x.safetensors` (or a full disk) ended in a traceback
    of the temp file beside it (`FileNotFoundError: ... '/proc/.x.safetensors.cnwwz6it.tmp'`,
    exit 1) until 2026-12-07: now the file asked for, the reason, a hint and exit code 2."""
    import argparse

    from autopipe._jsonio import atomic_output
    from autopipe.cli import consolidate_cmd

    def run(args: argparse.Namespace) -> int:
        with atomic_output(args.output) as tmp:
            Path(tmp).write_bytes(b"x")
        return 0

    monkeypatch.setattr(consolidate_cmd, "run", run)
    assert main(["consolidate", "ckpt", "-o", "/proc/x.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == ("autopipe consolidate: error: /proc/x.safetensors: "
                                   "No such file or directory")
    assert "hint: check the path" in err and "Traceback" not in err

    def bug(args: argparse.Namespace) -> int:
        raise OSError("not about a file")

    monkeypatch.setattr(consolidate_cmd, "run", bug)
    with pytest.raises(OSError, match="not about a file"):  # a bug stays a traceback
        main(["consolidate", "ckpt", "-o", "m.safetensors"])
