"""Write the snapshots: the ONLY way they are written.

    python -m tests.update_snapshots                    # every stack in stacks/, and the provider schema
    python -m tests.update_snapshots aws-dev            # some stacks' plans (tests/snapshots/plan-<stack>.json)
    python -m tests.update_snapshots provider-schema    # the component provider's schema (provider/schema.json)

The test run never writes a snapshot: a missing or different one fails test_plan.py or
test_component_package.py, naming this command. Run it after an intended change, then review the
diff before committing it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOTS = ROOT / "tests" / "snapshots"
COMMAND = "python -m tests.update_snapshots"
# The component provider: its entry point and the schema every language's SDK is generated from.
PROVIDER = ROOT / "provider"
PROVIDER_SCHEMA = PROVIDER / "schema.json"
SCHEMA = "provider-schema"  # the argument that writes PROVIDER_SCHEMA


def stacks() -> list[str]:
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))


def snapshot_path(stack: str) -> Path:
    return SNAPSHOTS / f"plan-{stack}.json"


def plan_json(stack: str) -> subprocess.CompletedProcess:
    """`kumo-infra plan --stack <stack> --json`, exactly as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "kumo_infra.cli", "plan", "--stack", stack, "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def render(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def provider_entry() -> ModuleType:
    """provider/__main__.py imported as ``kumo_provider``: what it would host, without serving it."""
    spec = importlib.util.spec_from_file_location("kumo_provider", PROVIDER / "__main__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def provider_schema() -> dict:
    """The schema the provider serves (GetSchema): inferred from the components' type annotations, then
    completed by provider/__main__.py (base outputs' descriptions, secret inputs marked secret)."""
    return json.loads(provider_entry().provider().schema)


def write(path: Path, new: str) -> None:
    old = path.read_text() if path.exists() else None
    path.write_text(new)
    print(f"{path.name}: {'unchanged' if old == new else 'written'} {path}")


def main(argv: list[str]) -> int:
    known = stacks()
    wanted = argv or [*known, SCHEMA]
    unknown = [s for s in wanted if s not in known and s != SCHEMA]
    if unknown:
        print(f"unknown stack(s): {', '.join(unknown)}; known: {', '.join(known)}, or {SCHEMA}", file=sys.stderr)
        return 2
    if SCHEMA in wanted:
        write(PROVIDER_SCHEMA, render(provider_schema()))
    failed = 0
    for stack in wanted:
        if stack == SCHEMA:
            continue
        result = plan_json(stack)
        if result.returncode != 0:
            print(f"{stack}: kumo-infra plan failed (exit {result.returncode}); snapshot left as it was\n"
                  f"{result.stderr}", file=sys.stderr)
            failed += 1
            continue
        write(snapshot_path(stack), render(json.loads(result.stdout)))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
