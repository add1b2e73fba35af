"""The embedded default: `.delay()` with no broker configured runs on an in-process Celery
worker (memory:// broker, SQLite in .flux/), so a first user needs no services."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import json
    from fluxcelery import workflow, wait_for, FluxEngine, app
    from fluxcelery.defaults import default_engine

    seen = []
    def double(ctx):
        ctx.data["n"] = ctx.input["n"] * 2
    def flaky(ctx):
        if ctx.attempt == 1:
            raise RuntimeError("first try fails")
        return ctx.data["n"] + 1
    from fluxcelery import Backoff
    wf = (workflow("embedded-demo")
          .step("double", double)
          .commit("flaky", flaky, backoff=Backoff(base=0.05, jitter=False))
          .step("wait", lambda ctx: wait_for("go"))
          .step("done", lambda ctx: ctx.results["wait"]))
    handle = wf.delay({"n": 20})
    first = handle.get(timeout=30)
    second = default_engine().signal(handle.id, "go", {"ok": True}).get(timeout=30)
    traces = [e.task_id is not None for e in default_engine().traces(run_id=handle.id)
              if e.type == "step:start"]
    print(json.dumps({
        "broker": app.conf.broker_url,
        "first": first.status.value,
        "second": second.status.value,
        "results": second.results,
        "attempts": second.step("flaky").attempts,
        "tasks": traces,
    }))
""")


def test_delay_works_with_no_services(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
    script = tmp_path / "first_run.py"
    script.write_text(SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["broker"] == "memory://"
    assert report["first"] == "suspended"
    assert report["second"] == "completed"
    assert report["results"] == {
        "double": None,
        "flaky": 41,
        "wait": {"ok": True},
        "done": {"ok": True},
    }
    assert report["attempts"] == 2
    assert report["tasks"] and all(report["tasks"])  # every attempt ran as a Celery task
    assert (tmp_path / ".flux" / "flux.db").exists()
