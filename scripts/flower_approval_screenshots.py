"""Screenshots of Approve / Reject on the Flower run page, for docs/approvals.md.

Starts a purchase of ``workflows/approval.py`` (in process, on a SQLite file in a temporary
directory) that waits for its ``manager`` approval, serves Flower's application with the
Workflows tab on a free loopback port with ``--basic-auth`` for ann, and drives Debian's
Chromium (``/usr/bin/chromium``, through Playwright; no browser download) as ann:

- ``flower-approval.png``: the waiting run, the request and the Approve / Reject forms;
- ``flower-approval-decided.png``: the run page after Approve, with the decision.

Usage: ``python scripts/flower_approval_screenshots.py [--out docs/img]``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1400, "height": 900}
#: Nothing listens on port 1: the runs are in process and Flower needs no broker for them.
NO_BROKER = "amqp://guest:guest@127.0.0.1:1//"
LOGIN = ("ann", "correct-horse")


@contextmanager
def flower(engine: Any, capp: Any, **options: Any) -> Iterator[str]:
    """Flower's application (``make_app``) on 127.0.0.1:<free port>; its base URL."""
    from tornado.httpserver import HTTPServer
    from tornado.ioloop import IOLoop
    from tornado.netutil import bind_sockets

    from fluxcelery.contrib.flower import make_app

    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = make_app(capp, options, engine, io_loop=IOLoop.current())
        sockets = bind_sockets(0, "127.0.0.1")
        server = HTTPServer(app)
        server.add_sockets(sockets)
        box.update(loop=loop, port=sockets[0].getsockname()[1])
        ready.set()
        try:
            loop.run_forever()
        finally:
            server.stop()
            app.executor.shutdown(wait=True)
            loop.close()

    thread = threading.Thread(target=run, name="flower", daemon=True)
    thread.start()
    if not ready.wait(15):
        raise RuntimeError("Flower did not start")
    try:
        yield f"http://127.0.0.1:{box['port']}"
    finally:
        box["loop"].call_soon_threadsafe(box["loop"].stop)
        thread.join(15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: apt-get install -y chromium", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    from fluxcelery import FluxEngine, SqlStorage
    from fluxcelery.celery.app import build_app
    from fluxcelery.settings import Settings
    from workflows.approval import purchase

    args.out.mkdir(parents=True, exist_ok=True)
    db = Path(tempfile.mkdtemp(prefix="flux-approval-shots-")) / "flux.db"
    engine = FluxEngine(storage=SqlStorage(f"sqlite:///{db}"))
    engine.register(purchase)
    capp = build_app(Settings(broker_url=NO_BROKER, celery={"task_always_eager": True}))
    run = engine.execute(
        purchase,
        {
            "request_id": "PR-2291",
            "requester": "sam",
            "amount": "640.00",
            "reason": "Two standing desks for the new team room",
        },
    )
    assert run.status.value == "suspended", run.error

    with flower(engine, capp, basic_auth=[":".join(LOGIN)]) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        context = browser.new_context(
            viewport=VIEWPORT,
            http_credentials={"username": LOGIN[0], "password": LOGIN[1]},
        )
        page = context.new_page()
        page.emulate_media(color_scheme="light")
        page.goto(f"{base}/workflows/run/{run.id}")
        page.fill("#flux-approve-comment", "Within the Q3 furniture budget")
        page.screenshot(path=str(args.out / "flower-approval.png"))
        page.click("#flux-approve")
        page.wait_for_url(f"{base}/workflows/run/{run.id}")
        page.locator("#flux-decided").wait_for()
        page.screenshot(path=str(args.out / "flower-approval-decided.png"))
        browser.close()
    engine.close()
    for name in ("flower-approval.png", "flower-approval-decided.png"):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
