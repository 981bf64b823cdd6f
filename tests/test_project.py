"""The project's own promises: the README's commands, CI, and the packages the suite needs."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import ROOT
from tests.vm.harness import REQUIRED_DEBIAN_PACKAGES

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_starts_with_the_main_job_and_the_test_command():
    main_job, tests = readme_commands()[:2]
    assert "pip install" in main_job and "kumo-infra plan --stack aws-dev" in main_job
    assert tests == "bash scripts/test"


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec bash scripts/test\n" in ci and "set -euo pipefail" in ci


def test_scripts_test_installs_every_debian_package_the_suite_uses():
    assert "cat tests/debian-packages*.txt" in (ROOT / "scripts" / "test").read_text()
    lines = [line for f in sorted((ROOT / "tests").glob("debian-packages*.txt")) for line in f.read_text().splitlines()]
    listed = {w for line in lines if not line.startswith("#") for w in line.split()}  # as scripts/test reads them
    assert set(REQUIRED_DEBIAN_PACKAGES) <= listed
    assert {"cloud-init", "shellcheck", "lua5.4"} <= listed
    assert {"python3", "python3-venv"} <= listed  # .venv, and the wheel test's fresh virtualenv


def test_ci_deselects_no_test():
    # The VM boots and the wheel install are slow, but CI runs them: nothing in the default options skips them.
    addopts = PYPROJECT["tool"]["pytest"]["ini_options"]["addopts"]
    assert "-m" not in addopts.split() and "not " not in addopts
    assert "-m" not in (ROOT / ".ci" / "run").read_text()


def test_stack_config_dir_is_stacks():
    assert "stackConfigDir: stacks" in (ROOT / "Pulumi.yaml").read_text()
