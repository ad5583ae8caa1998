"""The Ray driver process of `mlxdeploy up` on a `cluster` spec (launch.py starts it, in a
session of its own, and writes its plan to its stdin)."""

from __future__ import annotations

import sys
from pathlib import Path

from ...spec.load import load_spec
from ...spec.problems import SpecError
from ..logs import configure_logging, exit_now
from .launch import DriverPlan, drive


def main() -> int:
    plan = DriverPlan.from_json(sys.stdin.read())
    try:
        deployment = load_spec(Path(plan.args.spec), **plan.args.overrides)
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    configure_logging(deployment.spec.server, plan.args.log_level)
    result = drive(deployment, plan)
    if result.error:
        print(f"{plan.args.spec}: {result.field}: {result.error}", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    exit_now(main())
