"""Flower's own pages tell the truth about a failed step (SPEC section 5): a real worker on
RabbitMQ, a real ``fluxcelery flower`` process, and Debian's Chromium. The task page of a
step that failed for good shows FAILURE and the user's exception; Flower's "Failed" filter on
its tasks page lists that task."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("flower")

from test_browser_flower import _need_browser

from fluxcelery import RunStatus

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.timeout(150)]

FLUXCELERY = str(Path(sys.executable).with_name("fluxcelery"))
SECRET = "tok-live-5e4d3c2b1a09"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def flower_url(rabbit_cluster, tmp_path: Path) -> Iterator[str]:
    """``fluxcelery flower`` on the cluster's broker and database, in its own process group."""
    port = free_port()
    log = (tmp_path / "flower.log").open("wb")
    proc = subprocess.Popen(
        [FLUXCELERY, "flower", f"--port={port}", "--address=127.0.0.1"],
        env=rabbit_cluster.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "flower.log").read_text()) from None
            time.sleep(0.2)
    try:
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=15)
        log.close()


def test_flowers_task_page_and_failed_filter_show_the_failed_step(
    rabbit_cluster, flower_url: str
) -> None:
    import it_workflows as w

    sync_playwright = _need_browser()
    rabbit_cluster.worker("flower-failure", concurrency=1)
    time.sleep(2)  # Flower's event receiver is bound before the run starts
    result = rabbit_cluster.engine.start(w.declined, {"api_token": SECRET}).get(timeout=30)
    assert result.status == RunStatus.ROLLED_BACK
    task_id = result.step("charge").task_id
    assert task_id

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # Flower's own task page: the task's state and the user's exception.
            status = page.locator(".detail-row", has=page.locator("dt", has_text="Status"))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                page.goto(f"{flower_url}/task/{task_id}")
                if status.first.inner_text().split()[-1] in ("FAILURE", "SUCCESS"):
                    break  # settled (RETRY and STARTED come first)
                time.sleep(0.5)
            assert status.first.inner_text().split() == ["Status", "FAILURE"]
            text = page.inner_text("body")
            assert "flux.it-declined.charge" in text
            assert "PaymentDeclined('card declined for ***')" in text
            assert "in decline" in text  # the handler's frame in the traceback
            assert SECRET not in text
            page.screenshot(path=str(Path(os.environ.get("TMPDIR", "/tmp")) / "flower-task.png"))

            # Flower's tasks page, "Failed" filter: the step's task is listed.
            page.goto(f"{flower_url}/tasks")
            page.click("button.task-state-filter[data-task-state='FAILURE']")
            row = page.locator("#tasks-table tbody tr", has_text=task_id[:8])
            row.first.wait_for(timeout=15000)
            listed = page.inner_text("#tasks-table tbody")
            assert "flux.it-declined.charge" in listed
            assert "flux.it-declined.reserve" not in listed  # it succeeded
        finally:
            browser.close()
