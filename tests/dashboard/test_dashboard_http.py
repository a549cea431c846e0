"""The dashboard over HTTP, without a browser: the access token, the login cookie, CSRF checks,
refused bad input, where it may listen, and the standalone `python -m dtrio dashboard` whose
actions an engine in another process carries out."""

from __future__ import annotations

import http.cookiejar
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest
import trio
from operators_app import dtrio_cli, environment, running_engine

import dtrio

S = dtrio.OrchestrationStatus
TOKEN = "s3cret-token-for-the-tests-0123"


class Browser:
    """A cookie-keeping HTTP client (urllib, run in a thread); redirects are not followed."""

    class _NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), self._NoRedirects)

    async def get(self, path: str, **headers: str) -> tuple[int, str, dict[str, str]]:
        return await self._send(urllib.request.Request(self.base + path, headers=headers))

    async def post(self, path: str, form: dict[str, str]) -> tuple[int, str, dict[str, str]]:
        data = urllib.parse.urlencode(form).encode()
        return await self._send(urllib.request.Request(self.base + path, data=data))

    async def _send(self, request: urllib.request.Request) -> tuple[int, str, dict[str, str]]:
        def send() -> tuple[int, str, dict[str, str]]:
            try:
                with self.opener.open(request, timeout=30) as response:
                    return response.status, response.read().decode(), dict(response.headers)
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode(), dict(exc.headers)
        return await trio.to_thread.run_sync(send)


def _csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', page)[1]


async def _waiting(engine, iid: str) -> None:
    await engine.client.schedule_new_orchestration("waiter", instance_id=iid)
    await engine.client.commands.wait(iid, lambda r: r.custom_status is not None, 30,
                                      payloads=False, what="start")


async def test_a_token_is_asked_for_and_a_login_keeps_it(tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    async with running_engine(tmp_path / "s.db", dashboard="127.0.0.1:0",
                              dashboard_token_file=str(token_file)) as engine:
        web = Browser(engine.dashboard_url)
        status, _, headers = await web.get("/", Accept="text/html")
        assert (status, headers["location"]) == (303, "/login")
        assert (await web.get("/"))[0] == 401
        assert (await web.get("/", Authorization=f"Bearer {TOKEN}"))[0] == 200
        assert (await web.get("/", Authorization="Bearer wrong-token-wrong-token"))[0] == 401
        assert (await web.get("/static/dashboard.css"))[0] == 200  # no secrets in there

        status, page, _ = await web.post("/login", {"token": "not it"})
        assert status == 401 and "That token is not the dashboard&#39;s." in page
        status, _, headers = await web.post("/login", {"token": TOKEN})
        assert status == 303 and "HttpOnly" in headers["set-cookie"]
        assert (await web.get("/"))[0] == 200


async def test_actions_need_the_sessions_csrf_token(tmp_path) -> None:
    async with running_engine(tmp_path / "s.db", dashboard="127.0.0.1:0") as engine:
        await _waiting(engine, "w")
        web = Browser(engine.dashboard_url)
        status, page, headers = await web.get("/instances/w/confirm/raise-event")
        assert status == 200 and "SameSite=strict" in headers["set-cookie"]
        assert "default-src 'none'" in headers["content-security-policy"]
        csrf = _csrf(page)

        stranger = Browser(engine.dashboard_url)  # another session: its token does not fit
        await stranger.get("/")
        assert (await stranger.post("/instances/w/actions/raise-event",
                                    {"csrf": csrf, "event": "go"}))[0] == 403
        assert (await web.post("/instances/w/actions/raise-event", {"event": "go"}))[0] == 403

        status, page, _ = await web.post("/instances/w/actions/raise-event",
                                         {"csrf": csrf, "event": "go", "data": "{oops"})
        assert status == 409 and "data is not valid JSON" in page
        assert (await engine.client.get_orchestration_state("w")).runtime_status == S.RUNNING

        status, _, headers = await web.post("/instances/w/actions/raise-event",
                                            {"csrf": csrf, "event": "go", "data": "[1, 2]"})
        assert (status, headers["location"]) == (303, "/instances/w?done=raise-event")
        state = await engine.client.wait_for_orchestration_completion("w", timeout=30)
        assert state.output == [1, 2]

        status, page, _ = await web.post("/instances/w/actions/rewind", {"csrf": csrf})
        assert status == 409 and "only failed instances are rewound" in page
        assert (await web.get("/instances/nobody"))[0] == 404
        assert (await web.get("/instances/w/confirm/explode"))[0] == 404

        status, _, headers = await web.post("/instances/w/actions/restart",
                                            {"csrf": csrf, "new_id": "on"})
        copy = re.fullmatch(r"/instances/(\w+)\?done=restart", headers["location"])[1]
        assert status == 303 and copy != "w"
        assert (await engine.client.get_orchestration_state(copy)).name == "waiter"
        status, _, headers = await web.post("/instances/w/actions/purge",
                                            {"csrf": csrf, "recursive": "on"})
        assert (status, headers["location"]) == (303, "/?purged=w")
        assert await engine.client.get_orchestration_state("w") is None
        assert "Purged <code>w</code>." in (await web.get("/?purged=w"))[1]


async def test_entities_page_shows_state_lock_and_backlog(tmp_path) -> None:
    async with running_engine(tmp_path / "s.db", dashboard="127.0.0.1:0") as engine:
        await engine.client.signal_entity("@counter@<b>bold</b>", "add", 7)
        with trio.fail_after(30):
            while (await engine.client.get_entity("@counter@<b>bold</b>")) is None:
                await trio.sleep(0.02)
        status, page, _ = await Browser(engine.dashboard_url).get("/entities?name=counter")
        assert status == 200
        assert "<code>@counter@&lt;b&gt;bold&lt;/b&gt;</code>" in page
        row = page[page.index("@counter@&lt;b&gt;"):]
        assert re.search(r"<td>0</td>\s*<td class=\"data\"><code>7</code>", row)


@pytest.mark.parametrize("command", [
    ["dashboard", "--listen", "0.0.0.0:0"],
    ["serve", "--port", "0", "--dashboard", "0.0.0.0:0"],
])
async def test_listening_beyond_loopback_needs_a_token_or_read_only(tmp_path, command) -> None:
    db = tmp_path / "s.db"
    async with running_engine(db):
        pass
    done = await dtrio_cli(*command, "--db", str(db))
    assert done.returncode == 1
    assert done.stderr.strip().endswith(
        "give --dashboard-token-file (a token to log in with) or --dashboard-read-only, or "
        "listen on 127.0.0.1")
    bad = await dtrio_cli("dashboard", "--listen", "host:port:x", "--db", str(db))
    assert bad.returncode == 1 and "is not [HOST:]PORT" in bad.stderr


async def test_the_standalone_dashboard_acts_through_the_store(tmp_path) -> None:
    db = tmp_path / "s.db"
    async with running_engine(db) as engine, trio.open_nursery() as nursery:
        await _waiting(engine, "w")
        process = await nursery.start(lambda task_status: trio.run_process(
            [sys.executable, "-m", "dtrio", "dashboard", "--listen", "127.0.0.1:0",
             "--db", str(db)], stdout=-1, env=environment(), check=False,
            task_status=task_status))
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive_some(1)
        url = re.fullmatch(r"dtrio dashboard on (http://\S+)\n", line.decode())[1]
        web = Browser(url)
        status, page, _ = await web.get("/instances/w/confirm/terminate")
        assert status == 200
        status, _, _ = await web.post("/instances/w/actions/terminate",
                                      {"csrf": _csrf(page), "output": '"by the dashboard"'})
        assert status == 303
        state = await engine.client.wait_for_orchestration_completion("w", timeout=30)
        assert (state.runtime_status, state.output) == (S.TERMINATED, "by the dashboard")
        process.terminate()
        assert await process.wait() == 0


async def test_serve_with_a_dashboard_serves_both_and_stops_on_sigterm(tmp_path) -> None:
    db = tmp_path / "s.db"
    async with running_engine(db) as engine:
        await engine.client.schedule_new_orchestration("hello", input="x", instance_id="h")
        await engine.client.wait_for_orchestration_completion("h", timeout=30)
    async with trio.open_nursery() as nursery:
        sidecar = await nursery.start(lambda task_status: trio.run_process(
            [sys.executable, "-m", "dtrio", "serve", "--port", "0", "--db", str(db),
             "--dashboard", "127.0.0.1:0"], stdout=-1, stderr=-1, env=environment(),
            check=False, task_status=task_status))
        out = b""
        with trio.fail_after(30):
            while out.count(b"\n") < 2:
                out += await sidecar.stdout.receive_some(1)
        first, second = out.decode().splitlines()
        assert first.startswith("dtrio sidecar listening on 127.0.0.1:")
        url = re.fullmatch(r"dtrio dashboard on (http://127\.0\.0\.1:\d+)", second)[1]
        status, page, _ = await Browser(url).get("/")
        assert status == 200 and 'href="/instances/h"' in page
        sidecar.terminate()
        assert await sidecar.wait() == 0


async def test_the_dashboard_on_postgresql(postgres_db: str) -> None:
    async with running_engine(postgres_db, dashboard="127.0.0.1:0") as engine:
        await engine.client.schedule_new_orchestration("boom", input="pg", instance_id="b-1")
        await engine.client.schedule_new_orchestration("hello", input="pg", instance_id="h-1")
        for iid in ("b-1", "h-1"):
            await engine.client.wait_for_orchestration_completion(iid, timeout=30)
        web = Browser(engine.dashboard_url)
        status, page, _ = await web.get("/?status=FAILED")
        assert status == 200
        assert re.findall(r'class="instance-link" href="/instances/([^"]+)"', page) == ["b-1"]
        assert re.search(r"<b>1</b> <span class=\"status status-failed\">", page)
        status, page, _ = await web.get("/instances/b-1")
        assert status == 200 and "cannot handle pg" in page
        assert page.count('<rect class="bar activity failed"') == 1
