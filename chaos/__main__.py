"""`make chaos`: run every scenario (or those named) and print the table.

    python -m chaos                 # everything, about 6 minutes on 2 cores
    python -m chaos gateway_sigkill redis_outage
    python -m chaos --list

Each scenario starts its own local cluster on loopback, is bounded by its own time limit,
and stops everything it started. Exit status 1 when any scenario failed."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chaos import abuse, faults, notifier_crash, slow_consumers
from chaos.table import Row, render


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[], Awaitable[list[Row] | Row]]
    limit: float  # seconds; the scenario fails when it runs longer


SCENARIOS = [
    Scenario("gateway_sigkill", faults.gateway_sigkill, 60),
    Scenario("redis_restart", faults.redis_restart, 60),
    Scenario("redis_crash", faults.redis_crash, 60),
    Scenario("redis_outage", faults.redis_outage, 120),
    Scenario("partition", faults.partition, 90),
    Scenario("notifier_sigkill", notifier_crash.notifier_sigkill, 120),
    Scenario("slow_consumers", slow_consumers.slow_consumers, 120),
    Scenario("hostile_input", abuse.hostile_input, 300),
]


async def run_one(scenario: Scenario) -> list[Row]:
    started = time.monotonic()
    try:
        async with asyncio.timeout(scenario.limit):
            result = await scenario.run()
    except TimeoutError:
        return [Row(scenario.name, passed=False, note=f"over its {scenario.limit:.0f} s limit")]
    except Exception as exc:
        traceback.print_exc()
        return [Row(scenario.name, passed=False, note=f"crashed: {exc!r}"[:200])]
    rows = result if isinstance(result, list) else [result]
    print(f"  {scenario.name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


async def run(selected: list[Scenario]) -> list[Row]:
    rows: list[Row] = []
    for scenario in selected:
        print(f"running {scenario.name} ...", file=sys.stderr, flush=True)
        for row in await run_one(scenario):
            rows.append(row)
            print(render([row]).splitlines()[-1], file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="scenarios to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    by_name = {s.name: s for s in SCENARIOS}
    if args.list:
        print("\n".join(f"{s.name} (limit {s.limit:.0f} s)" for s in SCENARIOS))
        return 0
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; see --list")
    selected = [by_name[n] for n in args.names] if args.names else SCENARIOS
    # The SDK logs every retry at WARNING; the table says what matters.
    logging.basicConfig(level=logging.ERROR)
    started = time.monotonic()
    rows = asyncio.run(run(selected))
    print()
    print(render(rows))
    print(f"\n{len(rows)} rows in {time.monotonic() - started:.0f} s on loopback")
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
