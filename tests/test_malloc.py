"""Tests for autopipe/_malloc.py: pinned glibc malloc thresholds on CPU ranks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from autopipe._malloc import pin_malloc, user_malloc_settings

from .conftest import ROOT

# Allocate and free a 64 MiB tensor eight times and print the fewest page faults of the
# last six (glibc settles after two; the fewest, because the VM's kernel may reclaim idle
# pages between two times), with glibc's defaults and then pinned.
_FAULTS = """
import resource, torch
from autopipe._malloc import pin_malloc
def faults():
    counts = []
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(16 << 20)
        del x
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(counts[2:])
print(faults(), pin_malloc(), faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_pinned_malloc_reuses_freed_memory_without_page_faults() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True,
                         env={**env, "PYTHONPATH": str(ROOT)}, timeout=120).stdout.split()
    default, pinned, after = int(out[0]), out[1], int(out[2])
    assert default > 8000  # glibc maps a fresh block and faults every page in (64 MiB = 16,384 pages)
    assert pinned == "True"
    assert after < 1000  # the freed block is reused


def test_the_users_malloc_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                 "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert not user_malloc_settings()
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert user_malloc_settings()
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert user_malloc_settings()
    assert not pin_malloc()  # and this process's malloc is left alone
