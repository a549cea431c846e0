"""The dashboard in a real browser (headless chromium): what operators see and do, checked on
the page and through the client. The list and detail screenshots in the README are taken here
(DTRIO_UPDATE_SCREENSHOTS=1 writes them beside the dashboard's code)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import trio
from operators_app import running_engine

import dtrio

S = dtrio.OrchestrationStatus
SHOTS = Path(dtrio.__file__).parent / "dashboard" / "screenshots"
XSS_ID = '<script>alert("id")</script>'
XSS_INPUT = '<img src=x onerror=alert(1)><script>alert(2)</script>'


def _screenshot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("DTRIO_UPDATE_SCREENSHOTS") == "1":
        SHOTS.mkdir(exist_ok=True)
        shutil.copy(path, SHOTS / name)


async def _done(engine, iid: str) -> dtrio.OrchestrationState:
    return await engine.client.wait_for_orchestration_completion(iid, timeout=30)


async def _waiting(engine, iid: str) -> None:
    await engine.client.schedule_new_orchestration("waiter", instance_id=iid)
    await engine.client.commands.wait(iid, lambda r: r.custom_status is not None, 30,
                                      payloads=False, what="start")


def _ids(page) -> list[str]:
    return page.locator("table.instances a.instance-link").all_inner_texts()


async def test_the_list_shows_started_instances_and_filters_failures(
        tmp_path, browse) -> None:
    async with running_engine(tmp_path / "s.db", dashboard="127.0.0.1:0") as engine:
        client = engine.client
        for i, who in enumerate(["Ada", "Grace", "Edsger"]):
            await client.schedule_new_orchestration("hello", input=who, instance_id=f"greet-{i}")
        for i in range(2):
            await client.schedule_new_orchestration(
                "boom", input=f"order {i}", instance_id=f"charge-{i}")
        for iid in ("greet-0", "greet-1", "greet-2", "charge-0", "charge-1"):
            await _done(engine, iid)
        await _waiting(engine, "await-approval")

        def steps(page) -> None:
            page.goto(engine.dashboard_url)
            assert set(_ids(page)) == {"greet-0", "greet-1", "greet-2", "charge-0", "charge-1",
                                       "await-approval"}
            _screenshot(page, tmp_path, "instances.png")
            trio.from_thread.run(lambda: client.schedule_new_orchestration(
                "hello", input="Barbara", instance_id="just-started"))
            page.reload()
            assert _ids(page)[0] == "just-started"  # newest first

            page.locator("fieldset.statuses input[value=FAILED]").check()
            page.locator("form.filters button[type=submit]").click()
            page.wait_for_url("**status=FAILED**")
            assert sorted(_ids(page)) == ["charge-0", "charge-1"]
            statuses = page.locator("table.instances tbody tr").evaluate_all(
                "rows => rows.map(r => r.dataset.status)")
            assert statuses == ["FAILED", "FAILED"]
            assert page.locator(".counts li.chosen").inner_text().split() == ["2", "FAILED"]

        await browse(steps)


async def test_the_instance_page_shows_the_failure_and_a_bar_per_activity(
        tmp_path, browse) -> None:
    async with running_engine(tmp_path / "s.db", dashboard="127.0.0.1:0") as engine:
        client = engine.client
        await client.schedule_new_orchestration(
            "ship_order", input={"id": "A-1001", "customer": "Ada"}, instance_id="order-1001")
        await client.raise_orchestration_event("order-1001", "approved", {"by": "ops"})
        assert (await _done(engine, "order-1001")).runtime_status == S.FAILED
        history = await client.get_orchestration_history("order-1001")
        scheduled = [e for e in history if e.task_scheduled is not None]

        def steps(page) -> None:
            page.goto(f"{engine.dashboard_url}/instances/order-1001")
            trace = page.locator(".failure pre.stack-trace").first.inner_text()
            assert "Traceback (most recent call last)" in trace
            assert "cannot handle A-1001" in page.locator(".failure").first.inner_text()
            bars = page.locator("svg.gantt rect.bar.activity")
            assert bars.count() == len(scheduled) == 5
            labels = page.locator("svg.gantt .lane-activity .lane-label").all_text_contents()
            assert labels == ["greet", "pack", "pack", "pack", "explode"]
            assert page.locator("svg.gantt rect.bar.activity.failed").count() == 1
            assert page.locator("svg.gantt rect.bar.timer").count() == 1
            assert page.locator("svg.gantt rect.bar.sub-orchestration").count() == 1
            assert page.locator("svg.gantt path.mark.event").count() == 1
            rows = page.locator("table.history tbody tr").count()
            assert rows == len(history)
            assert page.locator("#live").get_attribute("data-live") == "off"
            _screenshot(page, tmp_path, "instance.png")
            page.locator("dl.fields ul.children a").click()
            page.wait_for_url("**/instances/order-1001-bill")
            page.locator("a.parent").click()
            page.wait_for_url("**/instances/order-1001")

        await browse(steps)


async def test_the_terminate_button_terminates(tmp_path, browse) -> None:
    async with running_engine(tmp_path / "s.db", dashboard="127.0.0.1:0") as engine:
        await _waiting(engine, "stuck")

        def steps(page) -> None:
            page.goto(f"{engine.dashboard_url}/instances/stuck")
            assert page.locator("#live").get_attribute("data-live") == "on"
            page.locator("a.action-terminate").click()
            page.locator("textarea[name=output]").fill('"stopped by ops"')
            page.locator("button.confirm-action").click()
            page.wait_for_url("**/instances/stuck?done=terminate")
            assert "Terminate: sent" in page.locator(".notice.done").inner_text()
            # Live refresh shows the engine's result without a reload.
            page.locator("#live[data-live=off] .status-terminated").first.wait_for()

        await browse(steps)
        state = await engine.client.get_orchestration_state("stuck")
        assert (state.runtime_status, state.output) == (S.TERMINATED, "stopped by ops")


async def test_markup_in_an_id_and_output_renders_as_text(tmp_path, browse) -> None:
    async with running_engine(tmp_path / "s.db", dashboard="127.0.0.1:0") as engine:
        await engine.client.schedule_new_orchestration("hello", input=XSS_INPUT,
                                                       instance_id=XSS_ID)
        await _done(engine, XSS_ID)

        def steps(page) -> list[str]:
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(engine.dashboard_url)
            assert _ids(page) == [XSS_ID]
            page.locator("a.instance-link").click()
            assert page.locator("h1.instance-id").inner_text().startswith(XSS_ID)
            output = page.locator(".payload.output pre").first.inner_text()
            assert output == f'"Hello, {XSS_INPUT}!"'
            assert XSS_INPUT in page.locator(".payload.input pre").first.inner_text()
            # Only the dashboard's own script is on the page, and no handler ran.
            assert page.locator("script").count() == 1
            assert page.locator("img").count() == 0
            page.wait_for_timeout(300)  # let a broken page's handlers fire, were there any
            return dialogs

        assert await browse(steps) == []


async def test_a_read_only_dashboard_has_no_actions_and_refuses_posts(
        tmp_path, browse) -> None:
    async with running_engine(tmp_path / "s.db", dashboard="127.0.0.1:0",
                              dashboard_read_only=True) as engine:
        await _waiting(engine, "stuck")
        base = engine.dashboard_url

        def steps(page) -> tuple[int, int]:
            page.goto(f"{base}/instances/stuck")
            assert page.locator(".badge.read-only").inner_text() == "read-only"
            assert page.locator("nav.actions").count() == 0
            assert page.locator("a.action, form.confirm, button.confirm-action").count() == 0
            confirm = page.request.get(f"{base}/instances/stuck/confirm/terminate")
            post = page.request.post(f"{base}/instances/stuck/actions/terminate",
                                     form={"csrf": "x"})
            return confirm.status, post.status

        assert await browse(steps) == (403, 403)
        state = await engine.client.get_orchestration_state("stuck")
        assert state.runtime_status == S.RUNNING
