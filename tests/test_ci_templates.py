"""The CI templates in examples/ci/: what they promise, checked in their parsed form, their shell
run for real with stand-in commands, every kumo-infra call parsed by kumo-infra's own parser, and
each file judged by real linters (GitHub's and GitLab's published schemas through
check-jsonschema, zizmor for the workflow, shellcheck for every script)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import yaml

from kumo_infra.cli import build_parser
from tests.conftest import ROOT

GITHUB = ROOT / "examples" / "ci" / "github-actions.yml"
GITLAB = ROOT / "examples" / "ci" / "gitlab-ci.yml"

# Each SHA read from the action's own repository at the tag named (`git rev-parse TAG^{commit}`).
PINNED_ACTIONS = {
    "actions/checkout": ("3d3c42e5aac5ba805825da76410c181273ba90b1", "v7.0.1"),
    "actions/setup-python": ("5fda3b95a4ea91299a34e894583c3862153e4b97", "v7.0.0"),
    "pulumi/actions": ("8e5e406f4007fca908480587cb9893c07090f58d", "v7.0.0"),
    "aws-actions/configure-aws-credentials": ("e6de054238d6b7531b4efff3b6587d9aade6a06c", "v6.2.3"),
    "azure/login": ("f5d393ae46f8fde4be8b75f32e3fc50e654ad0ca", "v3.0.1"),
    "google-github-actions/auth": ("7c6bc770dae815cd3e89ee6cdf493a5fab2cc093", "v3.0.0"),
    "google-github-actions/setup-gcloud": ("aa5489c8933f4cc7a4f7d45035b3b1440c9c10db", "v3.0.1"),
}

# Long-lived credentials, by the names the actions, CLIs and providers read them under.
LONG_LIVED_KEYS = (
    "aws-access-key-id", "aws-secret-access-key", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "creds", "client-secret", "ARM_CLIENT_SECRET", "AZURE_CLIENT_SECRET", "ARM_CLIENT_CERTIFICATE_PATH",
    "credentials_json", "GOOGLE_CREDENTIALS", "GOOGLE_APPLICATION_CREDENTIALS_JSON",
)

CI_COMMANDS = {"up", "smoke", "destroy", "sweep"}
STACK_NAME = "ci-aws-dev-4242-1"  # what ci up prints; stands for every shell expansion

# What kumo-infra needs and no other step may see: the state backend's token, the stacks'
# passphrase, the stacks' secret config (KUMO_SECRET_<KEY>).
PULUMI_SECRETS = ("PULUMI_ACCESS_TOKEN", "PULUMI_CONFIG_PASSPHRASE")
SECRET_PREFIX = "KUMO_SECRET_"
# The GitLab wrapper (the secrets snippet) that hands them to kumo-infra alone.
KUMO_INFRA = ("kumo-infra", "kumo_infra")


# --- reading the templates ------------------------------------------------------------------

def github() -> dict:
    doc = yaml.safe_load(GITHUB.read_text())
    # YAML 1.1 reads the bare key `on` as true.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def gitlab() -> dict:
    return yaml.safe_load(GITLAB.read_text())


def gitlab_job(doc: dict, name: str) -> dict:
    """A job with its `extends` chain applied as GitLab does: hashes merged, everything else replaced."""
    job = doc[name]
    parents = job.get("extends", [])
    resolved: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        resolved = _deep_merge(resolved, gitlab_job(doc, parent))
    return _deep_merge(resolved, {k: v for k, v in job.items() if k != "extends"})


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def gitlab_jobs(doc: dict) -> dict[str, dict]:
    keywords = {"stages", "variables", "default", "workflow", "include", "image", "services", "cache"}
    return {name: gitlab_job(doc, name) for name in doc if not name.startswith(".") and name not in keywords}


def steps_running(steps: list[dict], command: str) -> list[dict]:
    return [s for s in steps if command in s.get("run", "")]


def one(items: list) -> Any:
    assert len(items) == 1, items
    return items[0]


def walk(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (key, value) of every mapping, and (None, item) of every list item, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield None, item
            yield from walk(item)


def shell_sources() -> Iterator[tuple[str, str]]:
    """(where, script) for every shell script both templates run, composed as the runner runs it."""
    for job_name, job in github()["jobs"].items():
        for step in job["steps"]:
            if "run" in step:
                yield f"github {job_name}: {step['name']}", step["run"]
    for job_name, job in gitlab_jobs(gitlab()).items():
        # GitLab runs before_script and script in one shell, after_script in another.
        yield f"gitlab {job_name}: script", "\n".join(job.get("before_script", []) + job["script"])
        if job.get("after_script"):
            yield f"gitlab {job_name}: after_script", "\n".join(job["after_script"])


def kumo_infra_calls(script: str, commands: tuple[str, ...] = KUMO_INFRA) -> list[list[str]]:
    """Each `kumo-infra ...` command line of a script (called by one of ``commands``: the CLI or
    GitLab's wrapper) as its argument vector after the command, with every shell expansion
    ("$VAR", "$(...)") standing for a stack name."""
    calls = []
    called = "|".join(re.escape(command) for command in commands)
    for line in script.splitlines():
        # At a command's place only: a comment or a message naming kumo-infra is no call.
        start = re.search(rf"(?:^|[;&|]|\bthen|\belse|\bdo)\s*((?:{called})\s)", line)
        if start is None or line.lstrip().startswith("#"):
            continue
        command = line[start.start(1):].split("|")[0].split(">")[0]
        command = re.sub(r'"\$\((?:[^()]|\([^()]*\))*\)"|"\$\{?\w+\}?"|\$\{?\w+\}?', STACK_NAME, command)
        calls.append(shlex.split(command)[1:])
    return calls


def parse_kumo_infra(argv: list[str]):
    return build_parser().parse_args(argv)


def subcommand_options(argv: list[str]) -> set[str]:
    """The option strings the subcommand named by argv (``ci destroy ...``) declares."""
    parser = build_parser()
    for word in argv[:2]:
        choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        parser = choices[word]
    return {option for action in parser._actions for option in action.option_strings}


def minutes(text: str) -> float:
    """A GitLab or Go duration ('2h 30m', '105m') in minutes."""
    parts = re.findall(r"(\d+)\s*([hms])", text)
    assert parts and re.fullmatch(r"(\s*\d+\s*[hms])+\s*", text), text
    return sum(int(n) * {"h": 60, "m": 1, "s": 1 / 60}[unit] for n, unit in parts)


def up_ttl(script: str) -> timedelta:
    up = one([argv for argv in kumo_infra_calls(script) if argv[:2] == ["ci", "up"]])
    return parse_kumo_infra(up).ttl


def sdk_pin() -> str:
    return re.search(r"^pulumi==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)


# --- GitHub Actions ------------------------------------------------------------------------

def test_github_destroy_step_always_runs_with_the_name_up_wrote():
    steps = github()["jobs"]["ephemeral"]["steps"]
    up = one([s for s in steps if s.get("id") == "up"])
    assert up is one(steps_running(steps, "kumo-infra ci up"))
    smoke = one(steps_running(steps, "kumo-infra ci smoke"))
    destroy = one(steps_running(steps, "kumo-infra ci destroy"))
    name = "${{ steps.up.outputs.stack }}"
    for step in (smoke, destroy):
        assert step["env"]["KUMO_STACK_NAME"] == name
        assert '--stack-name "$KUMO_STACK_NAME"' in step["run"]
    # Runs after success, failure and cancellation; skipped only when up never named a stack.
    assert destroy["if"] == "always() && steps.up.outputs.stack != ''"
    assert "continue-on-error" not in destroy
    order = [id(s) for s in steps]
    assert order.index(id(up)) < order.index(id(smoke)) < order.index(id(destroy))
    # A step between up and the destroy without always() would be skipped after a failure:
    # the fresh logins the destroy depends on must run whenever it does.
    between = steps[order.index(id(smoke)) + 1:order.index(id(destroy))]
    assert between, "the destroy logs in again before it runs"
    for step in between:
        assert step["if"].startswith("always() && steps.up.outputs.stack != ''"), step["name"]


def test_github_concurrency_is_per_ref_and_never_cancels_a_running_stack():
    jobs = github()["jobs"]
    ephemeral = jobs["ephemeral"]
    group = ephemeral["concurrency"]["group"]
    assert "${{ github.ref }}" in group and "${{ matrix.stack }}" in group
    assert ephemeral["concurrency"]["cancel-in-progress"] is False
    # A failed stack must not cancel its siblings (their destroy would get 5 minutes).
    assert ephemeral["strategy"]["fail-fast"] is False
    sweep = jobs["sweep"]
    assert "github.ref" not in sweep["concurrency"]["group"]
    assert sweep["concurrency"]["group"] != group
    assert sweep["concurrency"]["cancel-in-progress"] is False


def test_github_logs_in_by_oidc_only():
    doc = github()
    assert doc["permissions"] == {"contents": "read"}
    logins = {"aws-actions/configure-aws-credentials": {"role-to-assume", "aws-region"},
              "azure/login": {"client-id", "tenant-id", "subscription-id"},
              "google-github-actions/auth": {"workload_identity_provider", "service_account"}}
    for job_name, job in doc["jobs"].items():
        used = {s["uses"].split("@")[0]: s for s in job["steps"] if "uses" in s}
        assert set(logins) <= set(used), job_name
        assert job["permissions"] == {"contents": "read", "id-token": "write"}, job_name
        for action, inputs in logins.items():
            for step in job["steps"]:
                if step.get("uses", "").startswith(action + "@"):
                    assert set(step["with"]) >= inputs, (job_name, step["name"])
    # The provider fetches fresh tokens itself on Azure (the action's login would expire).
    env = doc["jobs"]["ephemeral"]["env"]
    assert env["ARM_USE_OIDC"] == "${{ vars.KUMO_AZURE_CLIENT_ID != '' }}"
    assert_no_long_lived_keys(doc)


def assert_no_long_lived_keys(doc: Any) -> None:
    for key, value in walk(doc):
        for name in LONG_LIVED_KEYS:
            assert key != name, f"{name} is a long-lived credential"
            if isinstance(value, str):
                assert not re.search(rf"\b{re.escape(name)}\b", value), f"{name} in {value!r}"


def test_long_lived_key_check_catches_a_stored_aws_key():
    planted = github()
    planted["jobs"]["ephemeral"]["steps"][0]["with"] = {"aws-secret-access-key": "${{ secrets.KEY }}"}
    with pytest.raises(AssertionError, match="aws-secret-access-key"):
        assert_no_long_lived_keys(planted)


def test_github_actions_are_pinned_to_verified_commits():
    text = GITHUB.read_text()
    uses = re.findall(r"uses:\s*([\w.-]+/[\w.-]+)@(\S+)(?:\s*#\s*(\S+))?", text)
    assert {action for action, _, _ in uses} == set(PINNED_ACTIONS)
    for action, ref, tag in uses:
        assert (ref, tag) == PINNED_ACTIONS[action], action


def is_secret_name(name: Any) -> bool:
    return isinstance(name, str) and (name in PULUMI_SECRETS or name.startswith(SECRET_PREFIX))


def secret_leaks_github(doc: dict) -> list[str]:
    """Where a secret reaches more than a kumo-infra step's own env: the workflow's or a job's env,
    a step that is no kumo-infra call, an action's inputs."""
    leaks = [f"workflow env: {k}" for k, v in (doc.get("env") or {}).items() if "secrets." in str(v)]
    for job_name, job in doc["jobs"].items():
        leaks += [f"{job_name} env: {k}" for k, v in (job.get("env") or {}).items()
                  if "secrets." in str(v) or is_secret_name(k)]
        for step in job["steps"]:
            outside_env = {k: v for k, v in step.items() if k != "env"}
            if any("secrets." in str(v) for _, v in walk(outside_env)):
                leaks.append(f"{job_name}: {step['name']} outside its env")
            if "kumo-infra ci " not in step.get("run", ""):
                leaks += [f"{job_name}: {step['name']}: {k}" for k, v in (step.get("env") or {}).items()
                          if "secrets." in str(v) or is_secret_name(k)]
    return leaks


def test_github_gives_pulumis_and_the_stacks_secrets_to_the_kumo_infra_steps_alone():
    doc = github()
    assert secret_leaks_github(doc) == []
    for job in doc["jobs"].values():
        for step in steps_running(job["steps"], "kumo-infra ci "):
            for name in PULUMI_SECRETS:
                assert step["env"][name] == f"${{{{ secrets.{name} }}}}", (step["name"], name)
    # The stack's secret config: up alone gives it to the new stack.
    steps = doc["jobs"]["ephemeral"]["steps"]
    for step in steps_running(steps, "kumo-infra ci "):
        secret_env = {k: v for k, v in step["env"].items() if k.startswith(SECRET_PREFIX)}
        expected = ({"KUMO_SECRET_RELAY_PASSWORD": "${{ secrets.KUMO_SECRET_RELAY_PASSWORD }}"}
                    if "kumo-infra ci up" in step["run"] else {})
        assert secret_env == expected, step["name"]
    # Every value reaches a script through env, never pasted into its text.
    for key, value in walk(doc):
        if key == "run":
            assert "${{" not in value, value


def test_github_secret_check_catches_a_job_level_passphrase_and_a_secret_given_to_an_action():
    planted = json.loads(json.dumps(github()))  # each YAML alias its own copy: one place planted
    planted["jobs"]["ephemeral"]["env"]["PULUMI_CONFIG_PASSPHRASE"] = "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
    planted["jobs"]["sweep"]["steps"][0]["with"]["token"] = "${{ secrets.PULUMI_ACCESS_TOKEN }}"
    assert secret_leaks_github(planted) == ["ephemeral env: PULUMI_CONFIG_PASSPHRASE", "sweep: Check out outside its env"]


# How long a login's credentials last, in minutes: they are not renewed during the job. AWS: the
# role session configure-aws-credentials asks for (role-duration-seconds, exported as static keys).
# Azure: the az CLI's token, which it cannot renew once the GitHub token it was given has expired
# ("OIDC login session valid for 1hr ... no built-in refresh mechanism", Azure/login#290). Google's
# credential file fetches a new GitHub token at each refresh: not bounded.
AZURE_LOGIN_MINUTES = 60


def login_minutes(step: dict) -> Optional[tuple[str, float]]:
    """(cloud, minutes its credentials last) when the step is a login that expires."""
    action = step.get("uses", "").split("@")[0]
    if action == "aws-actions/configure-aws-credentials":
        return "aws", int(step["with"]["role-duration-seconds"]) / 60
    if action == "azure/login":
        return "azure", AZURE_LOGIN_MINUTES
    return None


def expired_logins(job: dict) -> list[str]:
    """Each login whose credentials may expire before the next login of that cloud (or the job's
    end): the steps after it until then must each have a timeout, together within its lifetime."""
    problems = []
    open_: dict[str, tuple[str, float, list[dict]]] = {}  # cloud -> (login step, minutes, steps since)

    def close(cloud: str) -> None:
        login, lifetime, spanned = open_.pop(cloud)
        unbounded = [s["name"] for s in spanned if "timeout-minutes" not in s]
        total = sum(s.get("timeout-minutes", 0) for s in spanned)
        if unbounded:
            problems.append(f"{login}: no timeout-minutes on {unbounded}")
        elif total > lifetime:
            problems.append(f"{login}: lasts {lifetime:g} min, then {total:g} min of "
                            f"{[s['name'] for s in spanned]}")

    for step in job["steps"]:
        login = login_minutes(step)
        if login is not None and login[0] in open_:
            close(login[0])
        for _, _, spanned in open_.values():
            spanned.append(step)
        if login is not None:
            open_[login[0]] = (step["name"], login[1], [])
    for cloud in list(open_):
        close(cloud)
    return problems


def test_github_each_login_lasts_through_every_step_it_serves():
    for job_name, job in github()["jobs"].items():
        assert expired_logins(job) == [], job_name


def test_github_login_check_catches_an_aws_session_ending_before_the_smoke():
    job = github()["jobs"]["ephemeral"]
    job["steps"] = [s for s in job["steps"] if s["name"] != "Log in to AWS again for the smoke"]
    assert expired_logins(job) == [
        "Log in to AWS (OIDC): lasts 60 min, then 68 min of ['kumo-infra ci up', 'Log in to Azure again for the smoke', "
        "'kumo-infra ci smoke']"]


def test_github_runs_on_infrastructure_changes_and_sweeps_on_a_schedule():
    doc = github()
    for event in ("push", "pull_request"):
        assert "stacks/**" in doc["on"][event]["paths"]
    assert doc["on"]["schedule"][0]["cron"]
    assert "github.event_name != 'schedule'" in doc["jobs"]["ephemeral"]["if"]
    sweep = doc["jobs"]["sweep"]
    assert "github.event_name == 'schedule'" in sweep["if"]
    call = one(steps_running(sweep["steps"], "kumo-infra ci sweep"))
    assert parse_kumo_infra(one(kumo_infra_calls(call["run"]))).older_than == timedelta(hours=6)


def test_github_timeouts_leave_the_destroy_its_time_and_end_before_the_ttl():
    job = github()["jobs"]["ephemeral"]
    steps = job["steps"]
    ttl = up_ttl(one(steps_running(steps, "kumo-infra ci up"))["run"])
    # Any hung step is stopped by its own limit, and the destroy, last, still has its whole time...
    assert steps[-1] is one(steps_running(steps, "kumo-infra ci destroy"))
    assert [s["name"] for s in steps if "timeout-minutes" not in s] == []
    assert sum(s["timeout-minutes"] for s in steps) < job["timeout-minutes"]
    # ...and the job ends before the sweep may take the stack for an abandoned one.
    assert timedelta(minutes=job["timeout-minutes"]) < ttl


def test_github_installs_the_pulumi_cli_of_the_pinned_sdk():
    for job in github()["jobs"].values():
        step = one([s for s in job["steps"] if s.get("uses", "").startswith("pulumi/actions@")])
        assert step["with"] == {"pulumi-version": sdk_pin()}


# --- GitLab CI -----------------------------------------------------------------------------

def ephemeral_gitlab_jobs() -> dict[str, dict]:
    return {n: j for n, j in gitlab_jobs(gitlab()).items() if j.get("stage") == "ephemeral"}


def test_gitlab_has_one_ephemeral_job_per_cloud_and_a_sweep():
    jobs = gitlab_jobs(gitlab())
    assert {j["variables"]["KUMO_CLOUDS"] for j in ephemeral_gitlab_jobs().values()} == {"aws", "azure", "gcp"}
    assert jobs["kumo-sweep"]["stage"] == "sweep"
    assert jobs["kumo-sweep"]["variables"]["KUMO_CLOUDS"].split() == ["aws", "azure", "gcp"]


def test_gitlab_jobs_are_serialized_per_ref_and_never_interrupted():
    for name, job in ephemeral_gitlab_jobs().items():
        assert "$CI_COMMIT_REF_SLUG" in job["resource_group"] and "$KUMO_BASE_STACK" in job["resource_group"], name
        assert job["interruptible"] is False, name
    sweep = gitlab_jobs(gitlab())["kumo-sweep"]
    assert sweep["resource_group"] == "kumo-sweep" and sweep["interruptible"] is False


def test_gitlab_hides_the_secrets_first_in_every_section_and_calls_kumo_infra_through_the_wrapper():
    doc = gitlab()
    hide = doc[".kumo-snippets"]["secrets"]
    for name, job in gitlab_jobs(doc).items():
        assert job["before_script"][0] == hide, name
        if job.get("after_script"):
            assert job["after_script"][0] == hide, name
    for where, script in shell_sources():
        if where.startswith("gitlab"):
            assert kumo_infra_calls(script, ("kumo-infra",)) == [], where
            assert kumo_infra_calls(script, ("kumo_infra",)), where


def test_gitlab_logs_in_by_oidc_only():
    doc = gitlab()
    for name, job in gitlab_jobs(doc).items():
        assert {t: v["aud"] for t, v in job["id_tokens"].items()} == {
            "KUMO_AWS_ID_TOKEN": "$CI_SERVER_URL",
            "KUMO_AZURE_ID_TOKEN": "api://AzureADTokenExchange",
            "KUMO_GCP_ID_TOKEN": "https://iam.googleapis.com/$KUMO_GCP_WORKLOAD_IDENTITY_PROVIDER",
        }, name
        assert job["before_script"][-1] == doc[".kumo-snippets"]["login"], name
    # Secrets are project CI/CD variables, never in the file.
    for key, _ in walk(doc):
        assert key not in ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_ACCESS_TOKEN") and not str(key).startswith(
            "KUMO_SECRET_"), key
    assert_no_long_lived_keys(doc)


def test_gitlab_runs_on_infrastructure_changes_and_sweeps_only_on_a_schedule():
    for name, job in ephemeral_gitlab_jobs().items():
        never, change = job["rules"]
        assert never == {"if": '$CI_PIPELINE_SOURCE == "schedule"', "when": "never"}, name
        assert "stacks/**/*" in change["changes"], name
    sweep = gitlab_jobs(gitlab())["kumo-sweep"]
    assert sweep["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "schedule"'}]
    assert parse_kumo_infra(one(kumo_infra_calls("\n".join(sweep["script"])))).older_than == timedelta(hours=6)


def test_gitlab_timeouts_leave_after_script_its_time_and_end_before_the_ttl():
    for name, job in ephemeral_gitlab_jobs().items():
        variables = job["variables"]
        # The runner stops the script at its own limit, so after_script (the destroy) still runs.
        assert (minutes(variables["RUNNER_SCRIPT_TIMEOUT"]) + minutes(variables["RUNNER_AFTER_SCRIPT_TIMEOUT"])
                < minutes(job["timeout"])), name
        assert timedelta(minutes=minutes(job["timeout"])) < up_ttl("\n".join(job["script"])), name


def test_gitlab_installs_the_pulumi_cli_of_the_pinned_sdk():
    doc = gitlab()
    assert doc[".kumo"]["variables"]["PULUMI_VERSION"] == sdk_pin()
    assert '--version "$PULUMI_VERSION"' in doc[".kumo-snippets"]["tools"]


# The GitLab job's own shell, run with a stand-in kumo-infra that records its arguments.
STAND_IN = """#!/bin/bash
printf '%s\\n' "$*" >> "$CALLS"
if [ -n "$ENV_DIR" ]; then env -0 > "$ENV_DIR/kumo-infra-$2"; fi
case "$2:$KUMO_SCENARIO" in
  up:refused) echo "error: --stack: no stack file" >&2; exit 2 ;;
  up:*) echo ci-aws-dev-4242-1; [ "$KUMO_SCENARIO" = up-fails ] && exit 1; echo summary; echo ci-aws-dev-4242-1 ;;
  smoke:smoke-fails) exit 1 ;;
  destroy:destroy-fails) exit 1 ;;
esac
exit 0
"""


def run_gitlab_job(tmp_path: Path, scenario: str, secrets: Optional[dict] = None) -> tuple[int, list[str]]:
    """The job's before_script (less the installs), script and after_script in bash as the runner
    runs them; ``secrets`` join the job's environment as project CI/CD variables, and right after the
    secrets snippet each section runs a stand-in for any other command, recording what it sees
    (ENV_DIR/other-script, ENV_DIR/other-after_script), as the stand-in kumo-infra does."""
    job = ephemeral_gitlab_jobs()["kumo-ephemeral-aws"]
    tools = gitlab()[".kumo-snippets"]["tools"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "kumo-infra"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    calls = tmp_path / "calls"
    project = tmp_path / "project"
    (project / ".kumo-ci").mkdir(parents=True)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "KUMO_SCENARIO": scenario,
           "CI_PROJECT_DIR": str(project), "KUMO_CI_DIR": str(project / ".kumo-ci"),
           "KUMO_BASE_STACK": "aws-dev", "KUMO_CLOUDS": "", **(secrets or {})}
    if secrets:
        env["ENV_DIR"] = str(tmp_path)

    def section(name: str, lines: list[str]) -> str:
        hide, *rest = [line for line in lines if line != tools]
        other = f'env -0 > "$ENV_DIR/other-{name}"' if secrets else ":"
        return "\n".join([hide, other, *rest])

    # The runner's own shell options; before_script and script share one shell.
    script = subprocess.run(["bash", "-eo", "pipefail", "-c", section("script", job["before_script"] + job["script"])],
                            env=env, cwd=project, capture_output=True, text=True)
    # GitLab ignores after_script's exit status: only its calls count.
    subprocess.run(["bash", "-eo", "pipefail", "-c", section("after_script", job["after_script"])], env=env,
                   cwd=project, capture_output=True, text=True)
    return script.returncode, calls.read_text().splitlines() if calls.exists() else []


DESTROY = f"ci destroy --stack-name {STACK_NAME}"


@pytest.mark.parametrize("scenario, job_fails, calls", [
    ("ok", False, ["ci up --stack aws-dev --ttl 3h", f"ci smoke --stack-name {STACK_NAME}", DESTROY]),
    ("smoke-fails", True, ["ci up --stack aws-dev --ttl 3h", f"ci smoke --stack-name {STACK_NAME}", DESTROY]),
    ("up-fails", True, ["ci up --stack aws-dev --ttl 3h", DESTROY]),
    ("destroy-fails", True, ["ci up --stack aws-dev --ttl 3h", f"ci smoke --stack-name {STACK_NAME}", DESTROY,
                             DESTROY]),
    ("refused", True, ["ci up --stack aws-dev --ttl 3h"]),
])
def test_gitlab_job_destroys_the_stack_up_named_exactly_once_it_exists(tmp_path, scenario, job_fails, calls):
    """up's first line names the stack; whatever fails after it, the stack is destroyed (by the
    script, whose failure fails the job, or else by after_script); when up named nothing, nothing
    is destroyed."""
    returncode, recorded = run_gitlab_job(tmp_path, scenario)
    assert (returncode != 0) is job_fails
    assert recorded == calls


def recorded_env(path: Path) -> dict[str, str]:
    return dict(item.split("=", 1) for item in path.read_text().split("\0") if "=" in item)


def test_gitlab_gives_pulumis_and_the_stacks_secrets_to_kumo_infra_alone(tmp_path):
    secrets = {"PULUMI_CONFIG_PASSPHRASE": "pass phrase\nwith 'quotes' $HOME and `id`",
               "PULUMI_ACCESS_TOKEN": "pul-0123456789", "KUMO_SECRET_RELAY_PASSWORD": "hunter2 -x"}
    kept = {"PULUMI_BACKEND_URL": "s3://kumo-state"}
    # destroy-fails: the script's destroy fails, so after_script's destroy runs too.
    returncode, calls = run_gitlab_job(tmp_path, "destroy-fails", {**secrets, **kept})
    assert returncode != 0 and calls[-2:] == [DESTROY, DESTROY]
    for section in ("script", "after_script"):
        other = recorded_env(tmp_path / f"other-{section}")
        assert not set(secrets) & set(other), section
        assert other["PULUMI_BACKEND_URL"] == kept["PULUMI_BACKEND_URL"], section
    # after_script's destroy overwrote the script's: both sections hand the exact values over.
    for command in ("up", "smoke", "destroy"):
        seen = recorded_env(tmp_path / f"kumo-infra-{command}")
        assert {name: seen.get(name) for name in {**secrets, **kept}} == {**secrets, **kept}, command


STUB_AZ = """#!/bin/bash
printf '%s\\n' "$*" >> "$AZ_CALLS"
"""


def test_gitlab_login_keeps_tokens_off_command_lines_and_out_of_reach(tmp_path):
    ci_dir = tmp_path / ".kumo-ci"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "az").write_text(STUB_AZ)
    (bin_dir / "az").chmod(0o755)
    tokens = {"KUMO_AWS_ID_TOKEN": "aws.jwt.token", "KUMO_AZURE_ID_TOKEN": "azure.jwt.token",
              "KUMO_GCP_ID_TOKEN": "gcp.jwt.token"}
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "AZ_CALLS": str(tmp_path / "az-calls"),
           "KUMO_CI_DIR": str(ci_dir), "CI_JOB_ID": "77", "KUMO_CLOUDS": "aws azure gcp", **tokens,
           "KUMO_AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/kumo-ci", "KUMO_AWS_REGION": "us-east-1",
           "KUMO_AZURE_CLIENT_ID": "client", "KUMO_AZURE_TENANT_ID": "tenant", "KUMO_AZURE_SUBSCRIPTION_ID": "sub",
           "KUMO_GCP_WORKLOAD_IDENTITY_PROVIDER": "projects/1/locations/global/workloadIdentityPools/p/providers/q",
           "KUMO_GCP_SERVICE_ACCOUNT": "kumo-ci@proj.iam.gserviceaccount.com"}
    login = gitlab()[".kumo-snippets"]["login"]
    run = subprocess.run(["bash", "-eo", "pipefail", "-c", login + '\nenv -0 > "$KUMO_CI_DIR/env"'], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    exported = dict(item.split("=", 1) for item in (ci_dir / "env").read_text().split("\0") if "=" in item)
    assert exported["AWS_ROLE_ARN"] == env["KUMO_AWS_ROLE_ARN"]
    assert exported["ARM_USE_OIDC"] == "true"
    for cloud, token in (("aws", "aws.jwt.token"), ("azure", "azure.jwt.token"), ("gcp", "gcp.jwt.token")):
        path = ci_dir / "oidc" / cloud
        assert path.read_text() == token
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert exported["AWS_WEB_IDENTITY_TOKEN_FILE"] == str(ci_dir / "oidc" / "aws")
    assert exported["ARM_OIDC_TOKEN_FILE_PATH"] == str(ci_dir / "oidc" / "azure")
    az_calls = (tmp_path / "az-calls").read_text()
    assert f"--federated-token @{ci_dir}/oidc/azure" in az_calls
    assert not any(token in az_calls for token in tokens.values())
    credential = yaml.safe_load((ci_dir / "oidc" / "gcp.json").read_text())
    assert credential["audience"] == f"//iam.googleapis.com/{env['KUMO_GCP_WORKLOAD_IDENTITY_PROVIDER']}"
    assert credential["credential_source"] == {"file": str(ci_dir / "oidc" / "gcp")}
    assert credential["service_account_impersonation_url"].endswith(
        f"/serviceAccounts/{env['KUMO_GCP_SERVICE_ACCOUNT']}:generateAccessToken")
    assert exported["GOOGLE_APPLICATION_CREDENTIALS"] == exported["CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE"] == str(
        ci_dir / "oidc" / "gcp.json")


def test_gitlab_login_names_the_missing_variable(tmp_path):
    env = {"PATH": os.environ["PATH"], "KUMO_CI_DIR": str(tmp_path), "CI_JOB_ID": "77", "KUMO_CLOUDS": "aws",
           "KUMO_AWS_ID_TOKEN": "aws.jwt.token"}
    run = subprocess.run(["bash", "-eo", "pipefail", "-c", gitlab()[".kumo-snippets"]["login"]], env=env,
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert "KUMO_AWS_ROLE_ARN" in run.stderr


# --- both: kumo-infra's own parser, real linters -------------------------------------------

@pytest.mark.parametrize("template", ["github", "gitlab"])
def test_every_kumo_infra_call_parses_with_the_real_cli(template):
    calls = [argv for where, script in shell_sources() if where.startswith(template)
             for argv in kumo_infra_calls(script)]
    used = set()
    for argv in calls:
        args = parse_kumo_infra(argv)  # exit 2 (SystemExit) on any flag the CLI does not know
        assert args.command == "ci", argv
        # Spelled out: argparse would also take a prefix (--stack for --stack-name).
        flags = {word.split("=")[0] for word in argv if word.startswith("--")}
        assert flags <= subcommand_options(argv), argv
        used.add(args.ci_command)
        if args.ci_command in ("smoke", "destroy"):
            assert args.stack_name == STACK_NAME, argv
    assert used == CI_COMMANDS


def test_the_parser_check_refuses_a_flag_the_cli_does_not_know():
    with pytest.raises(SystemExit) as exit_:
        parse_kumo_infra(kumo_infra_calls('kumo-infra ci destroy --stack-name "$KUMO_STACK_NAME" --ttl 3h')[0])
    assert exit_.value.code == 2
    assert "--stack" not in subcommand_options(["ci", "destroy"])


def venv_tool(name: str) -> str:
    """A tool requirements-dev.txt installs: beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / name
    path = str(beside) if beside.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -r requirements-dev.txt (bash scripts/test does)")
    return path


def lint(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True)


def test_github_workflow_matches_the_published_schema(tmp_path):
    check = venv_tool("check-jsonschema")
    result = lint(check, "--builtin-schema", "vendor.github-workflows", str(GITHUB))
    assert result.returncode == 0, result.stdout + result.stderr
    # The same check fails a workflow with a keyword GitHub does not have.
    broken = tmp_path / GITHUB.name
    broken.write_text(GITHUB.read_text().replace("    timeout-minutes:", "    tmeout-minutes:", 1))
    assert lint(check, "--builtin-schema", "vendor.github-workflows", str(broken)).returncode != 0


def gitlab_schema_check(doc: dict, path: Path) -> subprocess.CompletedProcess:
    """GitLab's schema over the file and over its jobs as GitLab runs them: the schema takes a hidden
    job (.kumo, where most settings live) for any YAML, so only the resolved jobs show its mistakes."""
    path.write_text(yaml.safe_dump(doc))
    resolved = path.with_name("resolved-" + path.name)
    resolved.write_text(yaml.safe_dump({"stages": doc["stages"], **gitlab_jobs(doc)}))
    return lint(venv_tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", "--data-transform",
                "gitlab-ci", str(path), str(resolved))


def test_gitlab_pipeline_matches_the_published_schema(tmp_path):
    check = venv_tool("check-jsonschema")
    result = lint(check, "--builtin-schema", "vendor.gitlab-ci", "--data-transform", "gitlab-ci", str(GITLAB))
    assert result.returncode == 0, result.stdout + result.stderr
    result = gitlab_schema_check(gitlab(), tmp_path / "gitlab-ci.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    broken = gitlab()
    broken[".kumo-ephemeral"]["tmeout"] = broken[".kumo-ephemeral"].pop("timeout")
    assert gitlab_schema_check(broken, tmp_path / "broken.yml").returncode != 0


def test_github_workflow_passes_zizmor(tmp_path):
    zizmor = venv_tool("zizmor")
    result = lint(zizmor, "--offline", "--persona=pedantic", "--no-progress", str(GITHUB))
    assert result.returncode == 0, result.stdout + result.stderr
    # Its checks bite: an action pinned to a moving tag is refused.
    moved = tmp_path / "moved.yml"
    moved.write_text(GITHUB.read_text().replace(f"@{PINNED_ACTIONS['actions/checkout'][0]}", "@v7"))
    assert "unpinned-uses" in lint(zizmor, "--offline", "--no-progress", str(moved)).stdout


def distinct_shell_sources() -> Iterator[tuple[str, str]]:
    """Each script once: the GitLab jobs of the three clouds share theirs."""
    seen = set()
    for where, script in shell_sources():
        if script not in seen:
            seen.add(script)
            yield where, script


@pytest.mark.parametrize("where, script", [pytest.param(w, s, id=w) for w, s in distinct_shell_sources()])
def test_every_script_passes_shellcheck(where, script):
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed; run the suite with `bash scripts/test`, which installs it")
    result = subprocess.run([shellcheck, "--severity=style", "--shell=bash", "-"], input=script,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"{where}:\n{result.stdout}"
