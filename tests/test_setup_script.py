"""scripts/setup.sh in a sandbox with stand-in programs: where npm exists, a failed splat-transform install stops
setup loudly and leaves no stamp, so the next setup tries again and CI never runs the tests without the tool."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sandbox(tmp_path: Path, npm_body: str) -> Path:
    """A copy of the files setup.sh reads, a .venv whose python does nothing, and an npm that runs ``npm_body``."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("pyproject.toml", "constraints.txt", "scripts/setup.sh"):
        shutil.copy(ROOT / name, repo / name)
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, body in {
        "npm": npm_body,
        "ldconfig": 'echo "libusb-1.0.so.0 (libc6,x86-64) => /lib/libusb-1.0.so.0"',
        "chromium": "exit 0",
    }.items():
        (tools / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (tools / name).chmod(0o755)
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").write_text("#!/usr/bin/env bash\nexit 0\n")
    (repo / ".venv" / "bin" / "python").chmod(0o755)
    return repo


def setup(repo: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "NPM_TRY_SECONDS": "3"}
    return subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, env=env, capture_output=True, text=True, timeout=60)


INSTALLS = 'mkdir -p .venv/node/node_modules/.bin && printf "#!/bin/sh\\n" > .venv/node/node_modules/.bin/splat-transform && chmod +x .venv/node/node_modules/.bin/splat-transform'


@pytest.mark.parametrize(
    "npm_body", ["echo 'npm ERR! network' >&2; exit 1", "exit 0"], ids=["npm fails", "npm installs nothing"]
)
def test_setup_stops_without_a_stamp_when_splat_transform_does_not_install(tmp_path, npm_body):
    repo = sandbox(tmp_path, npm_body)
    result = setup(repo, tmp_path)
    assert result.returncode != 0 and "could not install @playcanvas/splat-transform" in result.stderr
    assert not (repo / ".venv" / ".distilled-splat-installed").exists()


def test_an_npm_that_stalls_is_stopped_and_tried_again(tmp_path):
    """npm 11 once stalled for good after fetching (a CI setup waited 12 minutes): the try is cut off and the
    next one installs."""
    stalls_first = f'if [ ! -e "{tmp_path}/tried" ]; then touch "{tmp_path}/tried"; sleep 30; fi; {INSTALLS}'
    repo = sandbox(tmp_path, stalls_first)
    result = setup(repo, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "did not install @playcanvas/splat-transform@2.7.1 (try 1 of 3)" in result.stderr
    assert (repo / ".venv" / ".distilled-splat-installed").is_file()


def test_setup_writes_its_stamp_once_splat_transform_is_installed_and_then_skips(tmp_path):
    repo = sandbox(tmp_path, INSTALLS)
    assert setup(repo, tmp_path).returncode == 0
    assert (repo / ".venv" / ".distilled-splat-installed").is_file()
    (tmp_path / "bin" / "npm").write_text("#!/usr/bin/env bash\nexit 1\n")  # a second run installs nothing
    assert setup(repo, tmp_path).returncode == 0
    (repo / ".venv" / "node" / "node_modules" / ".bin" / "splat-transform").unlink()  # the tool went missing
    assert setup(repo, tmp_path).returncode != 0, "a stamp without the tool does not skip the install"


def test_a_kernel_build_that_fails_is_said_and_setup_still_succeeds(tmp_path):
    """Without a compiler (or with a broken one) setup finishes: rendering falls back to PyTorch, said once."""
    repo = sandbox(tmp_path, INSTALLS)
    python = repo / ".venv" / "bin" / "python"
    python.write_text('#!/usr/bin/env bash\ncase "$*" in *load_kernels*) exit 1;; esac\nexit 0\n')
    for attempt in ("install", "stamped"):
        result = setup(repo, tmp_path)
        assert result.returncode == 0, attempt
        assert "the C++ CPU rasteriser could not be built; rendering will use PyTorch" in result.stderr, attempt
    assert (repo / ".venv" / ".distilled-splat-installed").is_file()
