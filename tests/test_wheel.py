"""The package users install: the built wheel, installed with one cloud extra into a fresh virtualenv.

Every other test runs against the editable checkout, where a file left out of the
wheel or an import nobody declared goes unnoticed. Here the wheel is built from a
copy of the working tree, installed as ``pip install kumo-infra[aws]`` would install
it (versions held to requirements.txt's pins), and driven from a directory outside
the checkout: the CLI's validate, render and plan, and a user's own Pulumi program
under the SDK's mock engine importing the component.

The import scan (no build needed) checks the declarations themselves: every
third-party module the package imports is declared, the cloud-neutral code needs
no extra, and each cloud's component needs only its own extra.

``-m 'not wheel'`` deselects the slow part while iterating; CI runs it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from kumo_infra import targets
from tests.conftest import ROOT, deployment

PACKAGE = ROOT / "kumo_infra"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Each registered target's component module, and the extra named after the target that carries its SDK.
COMPONENT_MODULES = {name: target.component.partition(":")[0] for name, target in targets.registry().items()}
INSTALLED_CLOUD = "aws"  # one cloud's extra is installed for real: AWS, the README's default stack
# What .gitignore keeps out of a checkout: a build from a clean clone never sees these.
NOT_IN_A_CHECKOUT = (".git", ".venv", "*.egg-info", "__pycache__", "*.pyc", ".hypothesis", ".pytest_cache",
                     "build", "dist", ".ruff_cache")


# -- the declarations: every import is declared (static, fast) ------------------------------------------------


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def requirement_name(requirement: str) -> str:
    return normalized(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))


CORE = {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
EXTRAS = {extra: {requirement_name(r) for r in reqs}
          for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items()}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(third-party top-level modules, kumo_infra modules) imported anywhere in the file, lazy imports too."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    outside, inside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
                # "from . import catalog" names a module; "from .x import y" names something in x.
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                targets = [node.module]
        else:
            continue
        for target in targets:
            if target == "__future__":
                continue
            if target.split(".")[0] == "kumo_infra":
                inside.add(target)
            elif target.split(".")[0] not in sys.stdlib_module_names:
                outside.add(target.split(".")[0])
    return outside, inside


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if p.parent.name != "files"}
IMPORTS = {name: imports_of(path) for name, path in MODULES.items()}


def reachable(*start: str) -> set[str]:
    """The kumo_infra modules loaded by importing ``start`` (parent packages included, as Python loads them)."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += IMPORTS[name][1]
    return seen


def distributions_needed(modules: set[str]) -> dict[str, set[str]]:
    """Installed distribution -> the kumo_infra modules importing it."""
    providers = importlib.metadata.packages_distributions()
    needed: dict[str, set[str]] = {}
    for module in modules:
        for top in IMPORTS[module][0]:
            dists = providers.get(top)
            assert dists, f"{module} imports {top}, which no installed distribution provides"
            needed.setdefault(normalized(dists[0]), set()).add(module)
    return needed


def test_the_import_scan_sees_the_imports_it_judges():
    # Guards the scan itself: if it found nothing, every declaration test below would pass vacuously.
    assert {"pulumi_tls"} <= IMPORTS["kumo_infra.component"][0]  # a lazy import inside a function
    assert {"pulumi", "pulumi_aws"} <= IMPORTS["kumo_infra.targets.aws.component"][0]
    assert "kumo_infra.component" in reachable("kumo_infra.targets.aws.component")
    assert "kumo_infra.targets.aws.component" in reachable("kumo_infra.clouds.aws")  # the old path re-exports
    assert "kumo_infra.bootstrap.policy" in reachable("kumo_infra.cli")  # through a function-level import
    assert {"pydantic", "pyyaml", "pulumi"} <= set(distributions_needed(reachable("kumo_infra.cli")))


def test_every_third_party_import_is_declared():
    declared = CORE.union(*EXTRAS.values())
    undeclared = {d: sorted(m) for d, m in distributions_needed(set(MODULES)).items() if d not in declared}
    assert not undeclared, f"imported but not in pyproject's dependencies or extras: {undeclared}"


def test_the_cli_needs_no_cloud_extra():
    # `pip install kumo-infra` alone: validate, size and render work; plan needs the stack's cloud.
    needed = distributions_needed(reachable("kumo_infra.cli"))
    assert not {d: sorted(m) for d, m in needed.items() if d not in CORE}


@pytest.mark.parametrize("cloud", sorted(COMPONENT_MODULES))
def test_each_component_needs_only_its_own_extra(cloud):
    assert cloud in EXTRAS, f"no '{cloud}' extra in pyproject"
    needed = distributions_needed(reachable("kumo_infra.cli", COMPONENT_MODULES[cloud]))
    missing = {d: sorted(m) for d, m in needed.items() if d not in CORE | EXTRAS[cloud]}
    assert not missing, f"kumo-infra[{cloud}] would lack: {missing}"


def test_node_scripts_use_only_the_standard_library():
    # They run on the machine before anything is installed (kumo_infra/bootstrap/files/*.py).
    for script in (PACKAGE / "bootstrap" / "files").glob("*.py"):
        for node in ast.walk(ast.parse(script.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names, f"{script.name} imports {name}"


def test_requirements_pin_every_declared_distribution():
    # The stack program (`pulumi up` from the checkout) runs with requirements.txt: the tested versions.
    pinned = {requirement_name(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
              if "==" in line}
    assert CORE.union(*EXTRAS.values()) <= pinned


# -- the built wheel, installed fresh -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the working tree (a build never writes into the shared checkout)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_IN_A_CHECKOUT))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
                             str(work / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (built,) = (work / "dist").glob("kumo_infra-*.whl")
    return built


@pytest.mark.wheel
def test_every_file_under_the_package_is_in_the_wheel(wheel):
    with zipfile.ZipFile(wheel) as archive:
        packed = set(archive.namelist())
    in_tree = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert "kumo_infra/bootstrap/files/kumo-bootstrap.sh" in in_tree  # the scan sees the data files
    assert sorted(in_tree - packed) == []


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """A fresh virtualenv (no system site-packages) with ``kumo-infra[aws]`` from the wheel."""
    work = tmp_path_factory.mktemp("installed")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    # requirements.txt's pins as constraints (pip refuses an editable line in a constraints file).
    constraints = work / "constraints.txt"
    constraints.write_text("\n".join(line for line in (ROOT / "requirements.txt").read_text().splitlines()
                                     if line and not line.startswith(("#", "-"))) + "\n")
    # --no-compile: the SDKs hold ~10,000 modules; only the imported ones get compiled, on first import.
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",
                             "--disable-pip-version-check", "--constraint", str(constraints),
                             f"kumo-infra[{INSTALLED_CLOUD}] @ {wheel.as_uri()}"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    outside = work / "elsewhere"  # no Pulumi.yaml, no stacks/, no kumo_infra/: not the checkout
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {"venv": venv, "cwd": outside, "env": env}


def run_installed(installed: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True,
                          timeout=600)


def write_stack(directory: Path) -> Path:
    """An AWS stack with a DKIM domain: its key is a pulumi-tls resource."""
    config = {"kumo:deployment": deployment(name="wheel-test", dkim={"domains": ["example.com"]},
                                            network={"ssh_cidrs": ["198.51.100.0/24"]})}
    path = directory / "Pulumi.wheel-aws.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    return path


@pytest.mark.wheel
def test_installed_package_is_the_wheel_not_the_checkout(installed):
    result = run_installed(installed, "python", "-c", "import kumo_infra, pulumi_aws, pulumi_tls, pulumi_random;"
                                                      "print(kumo_infra.__file__)")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(installed["venv"])
    # pulumi-tls and pulumi-random came in as core dependencies: declared, not just pinned.
    requires = run_installed(installed, "python", "-c", "import importlib.metadata as m;"
                                                        "print('\\n'.join(m.requires('kumo-infra')))").stdout
    assert re.search(r"^pulumi-tls\b", requires, re.M) and re.search(r"^pulumi-random\b", requires, re.M)


@pytest.mark.wheel
def test_installed_cli_validates_renders_and_plans_outside_the_checkout(installed):
    stack = write_stack(installed["cwd"])
    validate = run_installed(installed, "kumo-infra", "validate", "--config", str(stack))
    assert validate.returncode == 0, validate.stderr
    assert "stack wheel-aws: valid (aws us-east-1" in validate.stdout

    # The installed package renders and plans exactly what the checkout does: the same files read.
    for command in (["render", "--config", str(stack)], ["plan", "--config", str(stack), "--json"]):
        from_wheel = run_installed(installed, "kumo-infra", *command)
        assert from_wheel.returncode == 0, f"{command[0]}: {from_wheel.stderr}"
        from_checkout = subprocess.run([str(Path(sys.executable).parent / "kumo-infra"), *command], cwd=ROOT,
                                       capture_output=True, text=True, timeout=600)
        assert from_checkout.returncode == 0, from_checkout.stderr
        assert from_wheel.stdout == from_checkout.stdout, f"{command[0]} differs between the wheel and the checkout"
    rendered = run_installed(installed, "kumo-infra", "render", "--config", str(stack)).stdout
    assert "- path: /usr/local/sbin/kumo-bootstrap" in rendered and "- path: /usr/local/sbin/kumo-fetch-secret" \
        in rendered
    plan = json.loads(from_wheel.stdout)
    types = {r["type"] for r in plan["resources"]}
    assert {"kumo:index:AwsKumoMta", "aws:ec2/instance:Instance", "tls:index/privateKey:PrivateKey"} <= types


# A user's own program and unit test: the component from the installed package, the SDK's mock engine,
# and the user's own mocks (nothing of kumo-infra's offline runner).
USER_PROGRAM = '''
import json
import sys

import pulumi

registered = []


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        registered.append({"type": args.typ, "name": args.name, "inputs": args.inputs})
        computed = {"publicIp": "192.0.2.10", "privateIp": "10.0.0.10", "allocationId": "eipalloc-1",
                    "arn": "arn:aws:test:::" + args.name, "name": args.name + "-x",
                    "publicKeyPem": "-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\\n",
                    "result": "generated"}
        return args.name + "-id", {**computed, **args.inputs}

    def call(self, args):
        answers = {
            "aws:ec2/getAmi:getAmi": {"id": "ami-1", "imageId": "ami-1", "name": "img", "architecture": "x86_64"},
            "aws:index/getAvailabilityZones:getAvailabilityZones": {"names": ["zone-a"], "zoneIds": ["z1"]},
        }
        return answers[args.token]


pulumi.runtime.set_mocks(Mocks(), project="my-program", stack="test", preview=False)

from kumo_infra.targets.aws.component import AwsKumoMta  # noqa: E402 (after set_mocks, as Pulumi's testing guide does)
from kumo_infra.clouds.aws import AwsKumoMta as OldPath  # noqa: E402 (programs written before issue 9)

assert OldPath is AwsKumoMta


@pulumi.runtime.test
def program():
    mail = AwsKumoMta("mail", {"deployment": json.loads(sys.argv[1])})
    return pulumi.Output.all(mail.nodes, mail.public_ips).apply(
        lambda values: print(json.dumps({"nodes": values[0], "public_ips": values[1], "registered": registered},
                                        default=str)))


program()
'''


@pytest.mark.wheel
def test_users_pulumi_program_imports_the_installed_component_under_the_mock_engine(installed):
    program = installed["cwd"] / "my_program_test.py"
    program.write_text(USER_PROGRAM)
    # The authenticated API: its generated password is a pulumi-random resource.
    config = deployment(name="mine", hostname="mta.mine.example", network={"api_cidrs": ["198.51.100.0/24"]})
    result = run_installed(installed, "python", str(program), json.dumps(config))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    by_type = {}
    for r in out["registered"]:
        by_type.setdefault(r["type"], []).append(r)
    assert [r["name"] for r in by_type["kumo:index:AwsKumoMta"]] == ["mail"]
    (instance,) = by_type["aws:ec2/instance:Instance"]
    assert instance["inputs"]["userDataBase64"]  # rendered from the packaged bootstrap files
    assert by_type["random:index/randomPassword:RandomPassword"]  # pulumi-random came with the package
    assert out["nodes"][0]["hostname"] == "mta.mine.example" and out["public_ips"] == ["192.0.2.10"]
