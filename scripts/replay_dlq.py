#!/usr/bin/env python3
"""Move dead-lettered messages back onto the ingress queue once their cause is fixed.

    python scripts/replay_dlq.py --dry-run                      # list what is in the DLQ
    python scripts/replay_dlq.py --code unknown_workflow        # replay one kind of failure
    python scripts/replay_dlq.py --queue orders.workflow --limit 10

Messages keep their message id, so one that did start a run meanwhile is a duplicate and
starts nothing. A message that is still bad goes back to the DLQ with its reason.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--queue", default=os.environ.get("FLUX_INGRESS_QUEUE", "orders.workflow"))
    p.add_argument(
        "--broker",
        default=os.environ.get("FLUX_INGRESS_URL")
        or os.environ.get("FLUX_BROKER_URL")
        or "amqp://guest:guest@127.0.0.1:5672//",
    )
    p.add_argument("--code", default=None, help="only messages with this x-flux-error-code")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--dry-run", action="store_true", help="list, move nothing")
    args = p.parse_args(argv)
    from fluxcelery.ingress import replay_dead_letters

    try:
        moved = replay_dead_letters(
            args.broker, args.queue, code=args.code, limit=args.limit, dry_run=args.dry_run
        )
    except Exception as exc:
        print(f"replay failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for m in moved:
        print(f"{m['message_id'] or '(no id)'}  [{m['code']}]  {(m['error'] or '')[:120]}")
    verb = "would replay" if args.dry_run else "replayed"
    print(f"{verb} {len(moved)} message(s) from {args.queue}.dlq", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
