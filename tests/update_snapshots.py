"""Write the plan snapshots (tests/snapshots/plan-<stack>.json): the ONLY way they are written.

    python -m tests.update_snapshots            # every stack in stacks/
    python -m tests.update_snapshots aws-dev    # some of them

The test run never writes a snapshot: a missing or different one fails test_plan.py, naming this
command. Run it after an intended change, then review the diff before committing it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOTS = ROOT / "tests" / "snapshots"
COMMAND = "python -m tests.update_snapshots"


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


def main(argv: list[str]) -> int:
    known = stacks()
    wanted = argv or known
    unknown = [s for s in wanted if s not in known]
    if unknown:
        print(f"unknown stack(s): {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    failed = 0
    for stack in wanted:
        result = plan_json(stack)
        if result.returncode != 0:
            print(f"{stack}: kumo-infra plan failed (exit {result.returncode}); snapshot left as it was\n"
                  f"{result.stderr}", file=sys.stderr)
            failed += 1
            continue
        path = snapshot_path(stack)
        new = render(json.loads(result.stdout))
        old = path.read_text() if path.exists() else None
        path.write_text(new)
        print(f"{stack}: {'unchanged' if old == new else 'written'} {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
