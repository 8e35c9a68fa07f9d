"""Installing and starting the tool as the README says: the script runs through its shebang
(from a shell or cron's bare environment), and its three lists of packages (the PEP 723 block,
requirements.txt, pyproject.toml) say one thing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from support import ROOT, SCRIPT

import inat_photos as ip

tomllib = pytest.importorskip("tomllib")

# The test tools and the --gpu packages: none of them belongs in requirements.txt.
NOT_RUNTIME = {
    "pytest",
    "pytest-xdist",
    "hypothesis",
    "ruff",
    "trustme",
    "ssim-pil",
    "requests",
    "pyopencl",
}
CRON_ENV = {"PATH": "/usr/bin:/bin"}
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def script_block(text: str) -> dict:
    """The PEP 723 `script` metadata block of a Python file, parsed."""
    found = re.search(r"(?m)^# /// script$\s(?P<body>(^#(| .*)$\s)+)^# ///$", text)
    assert found, "no '# /// script' block"
    body = "".join(line[2:] + "\n" for line in found["body"].splitlines())
    return tomllib.loads(body)


def requirement_lines(path: Path) -> list[str]:
    """A requirements file's requirements, comments and -r lines left out."""
    lines = (line.split(" #")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith(("#", "-r"))]


def normalised(requirements: list[str]) -> list[str]:
    return sorted(str(Requirement(line)).lower() for line in requirements)


def test_pep723_block_names_the_packages_of_requirements_txt() -> None:
    block = script_block(SCRIPT.read_text())
    wanted = normalised(requirement_lines(ROOT / "requirements.txt"))
    assert normalised(block["dependencies"]) == wanted
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert block["requires-python"] == project["requires-python"]


def test_script_block_parser_sees_a_difference() -> None:
    text = SCRIPT.read_text().replace('#     "tqdm>=4.66",\n', "", 1)
    assert normalised(script_block(text)["dependencies"]) != normalised(
        requirement_lines(ROOT / "requirements.txt")
    )


def test_requirements_txt_is_runtime_only_and_dev_adds_the_rest() -> None:
    runtime = {
        Requirement(line).name.lower() for line in requirement_lines(ROOT / "requirements.txt")
    }
    assert not runtime & NOT_RUNTIME
    dev = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert "-r requirements.txt" in dev and "-r requirements-gpu.txt" in dev
    dev_names = {
        Requirement(line).name.lower() for line in requirement_lines(ROOT / "requirements-dev.txt")
    }
    gpu = {
        Requirement(line).name.lower() for line in requirement_lines(ROOT / "requirements-gpu.txt")
    }
    assert dev_names | gpu >= NOT_RUNTIME


def test_every_runtime_package_is_checked_before_import() -> None:
    # The start-up check must know a module of each package, or a missing one gives a traceback.
    names = {
        Requirement(line).name.lower() for line in requirement_lines(ROOT / "requirements.txt")
    }
    assert len(ip.RUNTIME_MODULES) == len(names)


def test_script_is_executable_in_git() -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "--stage", "inat_photos.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert listed.startswith("100755 "), listed


@pytest.mark.skipif(os.name == "nt", reason="shebangs are a POSIX matter")
def test_shebang_finds_the_venv_beside_the_script_in_crons_environment(tmp_path: Path) -> None:
    # Set up as the README says: the packages in .venv beside the script (here: the
    # environment these tests run in, which .ci/run installs that way).
    folder = tmp_path / "clone"
    folder.mkdir()
    script = folder / "inat_photos.py"
    shutil.copy2(SCRIPT, script)
    assert os.access(SCRIPT, os.X_OK), "inat_photos.py is not executable in this checkout"
    (folder / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)

    # --help: --version is answered before the script looks for its packages.
    done = subprocess.run(
        [str(script), "--help"], env=CRON_ENV, cwd=tmp_path, capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: inat_photos.py ")


@pytest.mark.skipif(os.name == "nt", reason="shebangs are a POSIX matter")
def test_without_its_packages_the_script_says_how_to_install_them(tmp_path: Path) -> None:
    script = tmp_path / "inat_photos.py"
    shutil.copy2(SCRIPT, script)
    done = subprocess.run(
        [str(script), "--help"], env=CRON_ENV, cwd=tmp_path, capture_output=True, text=True
    )
    if done.returncode == 0:
        pytest.skip("the system's python3 has every package of requirements.txt")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert "lacks the package(s)" in done.stderr and ".venv" in done.stderr


def test_the_wheel_installs_an_inat_photos_command(tmp_path: Path) -> None:
    # Built offline with the setuptools at hand; `pipx install .` builds the same wheel.
    setuptools = pytest.importorskip("setuptools")
    if tuple(int(part) for part in setuptools.__version__.split(".")[:2]) < (70, 1):
        pytest.importorskip("wheel", reason="setuptools before 70.1 builds wheels with 'wheel'")
    built = subprocess.run(
        [*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "dist", str(ROOT)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("inat_photos-*.whl")
    assert wheel.name.startswith(f"inat_photos-{ip.__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(meta).decode()
        entry = next(n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt"))
        assert "inat_photos = inat_photos:main" in archive.read(entry).decode()
    required = [
        line.split(": ", 1)[1]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ") and "extra ==" not in line
    ]
    assert normalised(required) == normalised(requirement_lines(ROOT / "requirements.txt"))

    target = tmp_path / "installed"
    subprocess.run(
        [*PIP, "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    for flag, expected in (("--version", ip.__version__), ("--help", "usage:")):
        done = subprocess.run(
            [str(target / "bin" / "inat_photos"), flag],
            env=env,
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("```", 2)[1]
    test_command = next(line for line in quick_start.splitlines() if "pytest" in line)
    assert "requirements-dev.txt" in test_command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
