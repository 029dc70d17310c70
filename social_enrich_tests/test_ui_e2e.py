"""End to end in a real browser: `dagster dev` on the seeded embedded default, driven through its UI.

The test starts `dagster dev` (webserver, daemon and code server) in its own process group on a free
loopback port, opens the UI in Debian's headless Chromium through Playwright, checks the gold and
sentiment assets and the daily partitions, launches a two-day backfill from the Materialize dialog,
waits for the daemon to run it, then checks the Iceberg target table and the UI's partition status.

Needs `/usr/bin/chromium` (apt-get install chromium; `.ci/run` installs it) and the `playwright`
package from the dev extra; never `playwright install`, which downloads browsers. Select with
`-m ui`, leave out with `-m 'not ui'`. A failure saves a screenshot in the test's tmp_path and
names it, with the `dagster dev` log, in the message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from social_enrich import demo
from social_enrich.config import load_job_config
from social_enrich.environment import BUILTIN_JOBS_DIR
from social_enrich.lakehouse.catalog import load_table, open_catalog
from social_enrich_tests.gold_tables import latest_touch_days

pytestmark = pytest.mark.ui

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
WORKSPACE = Path(__file__).resolve().parents[1] / "workspace.yaml"  # what `dagster dev` loads per the README

GOLD_ASSETS = ["gold / fact_social_media_reaction_post", "gold / dim_post_details"]

# Bounded waits, generous for a loaded 2-core machine.
SERVER_START_SECONDS = 90
BACKFILL_SECONDS = 180
STOP_SECONDS = 20
UI_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class DagsterDev:
    url: str
    home: Path
    log: Path


# --- a sample whose days are the asset's only partitions, whatever the date ---------


@pytest.fixture
def recent_start(monkeypatch: pytest.MonkeyPatch) -> dt.date:
    """The job starts three days ago (UTC), so the asset has exactly the sample's three days as
    partitions on any date, and all of them fit on the partitions page without scrolling."""
    start = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=3)
    monkeypatch.setenv("SOCIAL_ENRICH_START_DATE", start.isoformat())  # read by sentiment.yaml and by dagster dev
    return start


@pytest.fixture
def sentiment_job(recent_start: dt.date):
    return load_job_config(BUILTIN_JOBS_DIR / "sentiment" / "defs.yaml")


@pytest.fixture
def seeded(catalog, recent_start: dt.date) -> demo.DemoSummary:
    return demo.seed_gold_tables(catalog, posts=600, days=3, start=recent_start)


# --- processes ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as e:
        return f"(cannot read {path}: {e})"


def _group_members(pgid: int) -> list[str]:
    """Live (not zombie) processes of a process group, as 'pid cmdline', from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone meanwhile
        # Fields after the parenthesised command name: state ppid pgrp ...
        state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(f"{entry.name} {cmdline[:160]}")
    return members


def _wait_group_gone(proc: subprocess.Popen, pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, so it does not stay as a zombie
        if not _group_members(pgid):
            return True
        time.sleep(0.2)
    return False


def _stop(proc: subprocess.Popen, pgid: int) -> None:
    """SIGTERM the whole group (dagster dev, webserver, daemon, code servers, run workers), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    if not _wait_group_gone(proc, pgid, STOP_SECONDS):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        _wait_group_gone(proc, pgid, 10)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _wait_for_webserver(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster dev exited with {proc.returncode} before serving {url}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"dagster dev did not answer {url}/server_info within {SERVER_START_SECONDS}s:\n{_tail(log)}")


@pytest.fixture
def dagster_dev(seeded, state_home: Path, tmp_path: Path) -> Iterator[DagsterDev]:
    """`dagster dev` over the seeded embedded default, in its own session; stopped and checked gone after."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    # No usage statistics sent from a test (and no telemetry notice in the log).
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SOCIAL_ENRICH_HOME": str(state_home), "DAGSTER_HOME": str(home)}
    log = tmp_path / "dagster_dev.log"
    command = [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(WORKSPACE)]
    with log.open("wb") as out:
        # Its own session and process group (so the whole tree can be signalled), default signal handlers.
        proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, restore_signals=True)
    pgid = proc.pid  # a new session's leader leads its process group
    try:
        _wait_for_webserver(proc, url, log)
        yield DagsterDev(url=url, home=home, log=log)
    finally:
        _stop(proc, pgid)
    lingering = _group_members(pgid)
    assert not lingering, f"dagster dev left processes behind: {lingering}"


# --- browser -----------------------------------------------------------------------


@pytest.fixture
def browser():
    """Debian's headless Chromium through Playwright; skips only when one of them is missing."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"UI test needs Chromium: {CHROMIUM} not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("UI test needs playwright: not installed (pip install -e '.[dev]'; never `playwright install`)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, dagster_dev: DagsterDev):
    context = browser.new_context(base_url=dagster_dev.url, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    # A fresh instance greets the first visit with a dialog over the page; skip it whenever it shows.
    # The click is dispatched to the button itself: the dialog can open while another one (the
    # Materialize dialog) is opening, whose portal then covers Skip and swallows a pointer click.
    community = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
    page.add_locator_handler(community, lambda dialog: dialog.get_by_role("button", name="Skip").dispatch_event("click"))
    try:
        yield page
    finally:
        context.close()


class Steps:
    """Names each step; a failing one saves a screenshot and points at it and at the dagster dev log."""

    def __init__(self, page, dev: DagsterDev, folder: Path):
        self.page, self.dev, self.folder, self.n = page, dev, folder, 0

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        self.n += 1
        try:
            yield
        except (Exception, pytest.fail.Exception) as e:
            shot = self.folder / f"ui-failure-{self.n:02d}-{re.sub(r'[^a-z0-9]+', '-', what.lower()).strip('-')}.png"
            try:
                self.page.screenshot(path=str(shot), full_page=True)
                where = f"screenshot: {shot}"
            except Exception as shot_error:  # the browser itself may be what failed
                where = f"no screenshot ({shot_error})"
            raise AssertionError(f"UI step '{what}' failed: {e}\n{where}\ndagster dev log: {self.dev.log}") from e


# --- checks outside the browser ----------------------------------------------------


def _wait_for_backfill(home: Path, backfill_id: str, log: Path) -> list[dg.DagsterRun]:
    """Poll the instance until the backfill and its runs are done; return the runs."""
    done_statuses = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
    deadline = time.monotonic() + BACKFILL_SECONDS
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while True:
            backfill = instance.get_backfill(backfill_id)
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            # BulkActionStatus is not public API: compare its values.
            finished = backfill is not None and backfill.status.value != "REQUESTED"
            if finished and runs and all(r.status in done_statuses for r in runs):
                assert backfill.status.value == "COMPLETED_SUCCESS", f"backfill {backfill_id}: {backfill.status.value}; see {log}"
                failed = [(r.run_id, r.status.value) for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
                assert not failed, f"backfill {backfill_id} runs did not succeed: {failed}; see {log}"
                return runs
            if time.monotonic() > deadline:
                state = backfill.status.value if backfill else "unknown"
                pytest.fail(
                    f"backfill {backfill_id} not done within {BACKFILL_SECONDS}s (status {state}, runs "
                    f"{[(r.run_id[:8], r.status.value) for r in runs]}):\n{_tail(log)}"
                )
            time.sleep(1)


def _expected_partition_of_each_post(catalog, days: list[dt.date]) -> dict[int, dt.date]:
    """From the gold tables: the posts whose latest touch in any table falls on one of ``days``, and that day."""
    return {key: day for key, day in latest_touch_days(catalog).items() if day in days}


# --- the test ----------------------------------------------------------------------


def test_materialize_two_days_from_the_ui(browser, dagster_dev: DagsterDev, page, seeded, sentiment_job, tmp_path: Path):
    from playwright.sync_api import expect

    step = Steps(page, dagster_dev, tmp_path)
    asset = sentiment_job.asset_name
    days = seeded.days[:2]  # the first two of the sample's three days
    keys = [d.isoformat() for d in days]

    with step("catalog lists the gold assets and the sentiment asset"):
        page.goto("/assets")
        for name in [*GOLD_ASSETS, asset]:
            expect(page.get_by_role("link", name=name).first).to_be_visible(timeout=UI_TIMEOUT_MS)

    with step("sentiment asset shows its daily partitions, none materialized"):
        page.goto(f"/assets/{asset}")
        page.get_by_role("tab", name="Partitions").click()
        # Every day from the start date to yesterday; each is an item of the list, titled with its key.
        every_day = _partition_keys(sentiment_job)
        assert every_day == [d.isoformat() for d in seeded.days], every_day
        expect(page.get_by_text(f"{len(every_day)} Partitions Selected")).to_be_visible(timeout=UI_TIMEOUT_MS)
        for key in keys:
            expect(page.locator(f'[title="{key}"]').first).to_be_visible(timeout=UI_TIMEOUT_MS)
        expect(page.get_by_text("Materialized (0)")).to_be_visible(timeout=UI_TIMEOUT_MS)
        expect(page.get_by_text(f"Missing ({len(every_day)})")).to_be_visible(timeout=UI_TIMEOUT_MS)

    with step("materialize dialog launches a backfill of the two days"):
        page.get_by_role("button", name="Materialize…").click()
        dialog = page.get_by_role("dialog").filter(has_text=f"Launch runs to materialize {asset}")
        expect(dialog).to_be_visible(timeout=UI_TIMEOUT_MS)
        partitions = dialog.get_by_role("textbox")
        partitions.fill(f"[{keys[0]}...{keys[-1]}]")
        partitions.press("Enter")
        expect(dialog.get_by_text(f"{len(keys)} partitions", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
        dialog.get_by_role("button", name=re.compile(r"^Launch")).click()
        created = page.get_by_text(re.compile(r"Created backfill \w+"))
        expect(created).to_be_visible(timeout=UI_TIMEOUT_MS)
        backfill_id = re.search(r"Created backfill (\w+)", created.inner_text()).group(1)

    with step(f"dagster dev's daemon runs backfill {backfill_id}"):
        runs = _wait_for_backfill(dagster_dev.home, backfill_id, dagster_dev.log)
        assert sorted({k for r in runs for k in _run_partitions(r)}) == keys
        with dg.DagsterInstance.from_config(str(dagster_dev.home)) as instance:
            assert instance.get_materialized_partitions(dg.AssetKey(asset)) == set(keys)

    target = sentiment_job.connector.target
    with step(f"{target.identifier} holds the posts of exactly those days"):
        # Every post whose latest touch in the gold tables falls on one of those days, once, on that day.
        catalog = open_catalog()
        rows = load_table(catalog, target.identifier).scan().to_arrow()
        written = dict(zip(rows[target.index_field].to_pylist(), rows["partition_date"].to_pylist()))
        expected = _expected_partition_of_each_post(catalog, days)
        assert expected and rows.num_rows == len(written), f"{rows.num_rows} rows for {len(written)} posts"
        assert written == expected
        assert set(rows["status"].to_pylist()) <= {"ok", "failed"}

    with step("partitions tab shows the two days materialized, by the backfill's run"):
        page.goto(f"/assets/{asset}")
        page.get_by_role("tab", name="Partitions").click()
        expect(page.get_by_text(f"Materialized ({len(keys)})")).to_be_visible(timeout=UI_TIMEOUT_MS)
        # Hide the missing ones: the list then holds exactly the materialized partitions.
        page.get_by_text("Missing (").click()
        expect(page.get_by_text(f"{len(keys)} Partitions Selected")).to_be_visible(timeout=UI_TIMEOUT_MS)
        others = [k for k in _partition_keys(sentiment_job) if k not in keys]
        expect(page.locator(", ".join(f'[title="{k}"]' for k in others))).to_have_count(0, timeout=UI_TIMEOUT_MS)
        for key in keys:
            expect(page.locator(f'[title="{key}"]')).to_have_count(1, timeout=UI_TIMEOUT_MS)
        run_links = "|".join(r.run_id[:8] for r in runs)
        for key in keys:
            page.locator(f'[title="{key}"]').first.click()  # the list item; the details panel follows it
            expect(page).to_have_url(re.compile(f"partition={key}"), timeout=UI_TIMEOUT_MS)
            expect(page.get_by_text("Materialized", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(page.get_by_role("link", name=re.compile(f"^({run_links})$"))).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(page.get_by_role("row", name=f"dagster/table_name {target.identifier}")).to_be_visible(timeout=UI_TIMEOUT_MS)
        page.screenshot(path=str(tmp_path / "ui-materialized.png"), full_page=True)


def _partition_keys(job) -> list[str]:
    """The asset's daily partitions as of now, as the UI computes them."""
    return dg.DailyPartitionsDefinition(start_date=job.connector.source.start_date.isoformat()).get_partition_keys()


def _run_partitions(run: dg.DagsterRun) -> list[str]:
    """The partition keys a run covered: one key, or a range of keys (single-run backfill)."""
    tags = run.tags
    if "dagster/partition" in tags:
        return [tags["dagster/partition"]]
    first, last = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    if first is None or last is None:
        return []
    start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [(start + dt.timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]
