"""Item timings, ``show``/``failures``/``top`` durations, and ``durablemap report`` rendered in a real
headless Chromium, on a real job that fails some items, is SIGKILLed mid-map and resumed."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ._kill_helpers import start

JOB = Path(__file__).with_name("report_job.py")
FAILING = {i for i in range(600) if i % 41 == 5}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding execution ``report``: killed once mid-map, then resumed to the end."""
    root = tmp_path_factory.mktemp("report")
    path = root / "store"
    env = {"PYTHONPATH": ":".join(p for p in sys.path if p)}
    first = start(JOB, str(path), str(root), env=env)
    first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL and (root / "killed").exists()
    second = start(JOB, str(path), str(root), env=env)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err.decode()
    assert out.decode().strip() == str(600 - len(FAILING))
    return path


def cli(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "durablemap", *args, "--store", str(store)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    return done


def test_items_and_the_map_record_their_times_across_the_resume(store: Path) -> None:
    shown = json.loads(cli(store, "show", "report", "--items", "600", "--json").stdout)
    [squares] = shown["operations"]
    first, second = squares["timing"]["runs"]
    assert first[1] is None  # the killed run never ended
    assert second[0] > first[0] and second[1] >= second[0]
    timings = {int(c["id"].split("/")[1]): c["timing"] for c in squares["children"]}
    assert set(timings) == set(range(600)) and all(t is not None for t in timings.values())
    assert {t["attempt"] for t in timings.values()} == {1, 2}  # some items ran before the kill, the rest after
    for index, t in timings.items():
        assert t["duration"] >= 0.001 * (index % 4) * 0.9
        assert first[0] - 1 <= t["start"] <= second[1]
    pids = {attempt: {t["pid"] for t in timings.values() if t["attempt"] == attempt} for attempt in (1, 2)}
    assert not pids[1] & pids[2]  # the kill took the first run's workers with it
    assert re.search(r"\[1/2\] MapIteration SUCCEEDED took \d", cli(store, "show", "report").stdout)
    assert "in 2 runs (one stopped before the map finished)" in cli(store, "show", "report").stdout


def test_failures_and_top_show_durations(store: Path) -> None:
    failures = json.loads(cli(store, "failures", "report", "--json").stdout)
    assert {f["index"] for f in failures} == FAILING
    assert all(f["timing"]["duration"] >= 0 and f["timing"]["pid"] > 0 for f in failures)
    assert re.search(r"item 5: ValueError: item 5 always fails \(took [\d.]+m?s in worker \d+",
                     cli(store, "failures", "report").stdout)
    slowest = json.loads(cli(store, "top", "report", "-n", "5", "--json").stdout)
    assert len(slowest) == 5
    durations = [row["duration"] for row in slowest]
    assert durations == sorted(durations, reverse=True)
    assert "DURATION" in cli(store, "top", "report", "--map", "squares").stdout


def _probe(report: str) -> str:
    """The report with two test scripts added: one (first in <head>) that records uncaught errors
    and console.error calls, one (last in <body>) that waits for Bokeh to draw, then writes into the
    page how many plots exist and how many of their canvases hold drawn pixels."""
    early = ("<script>window.__errors=[];window.addEventListener('error',function(e){"
             "window.__errors.push(String(e.message))});var __ce=console.error;console.error=function(){"
             "window.__errors.push(Array.prototype.join.call(arguments,' '));__ce.apply(console,arguments)};</script>")
    late = """<script>
function __canvases(root,out){root.querySelectorAll('*').forEach(function(el){
  if(el.tagName==='CANVAS')out.push(el);if(el.shadowRoot)__canvases(el.shadowRoot,out);});return out;}
function __probe(tries){
  var cs=__canvases(document,[]),drawn=0,plots=0;
  cs.forEach(function(c){try{var d=c.getContext('2d').getImageData(0,0,c.width,c.height).data;
    for(var i=3;i<d.length;i+=4){if(d[i]!==0){drawn++;break;}}}catch(e){}});
  ((window.Bokeh&&Bokeh.documents)||[]).forEach(function(doc){doc._all_models.forEach(function(m){
    if(m.type==='Plot'||m.type==='Figure')plots++;});});
  if((drawn===0||plots===0)&&tries>0){setTimeout(function(){__probe(tries-1)},250);return;}
  var p=document.createElement('pre');p.id='probe';
  p.textContent=JSON.stringify({canvases:cs.length,drawn:drawn,plots:plots,errors:window.__errors});
  document.body.appendChild(p);}
window.addEventListener('load',function(){setTimeout(function(){__probe(60)},300)});
</script>"""
    page = report.replace("<head>", "<head>" + early, 1)
    end = page.rindex("</body>")
    return page[:end] + late + page[end:]


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=20000", *args], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_renders_offline_in_headless_chromium(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    cli(store, "report", "report", "-o", str(out))
    page = out.read_text()
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"?https?:", page)  # everything inline: opens offline
    assert "item 46 always fails" in page and "Traceback" in page
    assert "run 2" in page and "did not finish" in page
    assert len(page) < 5_000_000
    probe = tmp_path / "probe.html"
    probe.write_text(_probe(page))
    dumped = _chromium(["--dump-dom", probe.as_uri()], tmp_path / "profile-dom")
    found = re.search(r'<pre id="probe">([^<]*)</pre>', dumped.stdout)
    assert found, dumped.stderr[-3000:]
    result: dict[str, Any] = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["errors"] == []
    assert result["plots"] == 4  # items finished over time, chunks per worker, durations, memory
    assert result["drawn"] >= 4
    console = [line for line in dumped.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    shot = tmp_path / "report.png"
    _chromium(["--window-size=1300,2400", f"--screenshot={shot}", out.as_uri()], tmp_path / "profile-shot")
    assert shot.stat().st_size > 20_000  # a page of drawn charts, not a blank one


def tiny(context: Any, item: int, index: int, inputs: Any) -> int:
    return item * item


def test_tiny_items_are_timed_per_chunk(tmp_path: Path) -> None:
    """Items far under PER_ITEM_SECONDS get the chunk's mean: every item is still timed, and the
    durations of one chunk's items add up to the chunk's span."""
    from durablemap import durable_execution
    from durablemap._timings import PER_ITEM_SECONDS, chunk_meta, decode_chunk

    @durable_execution
    def squares(event: Any, context: Any) -> int:
        return context.map(list(range(3_000)), tiny, name="tiny").success_count

    store = tmp_path / "store"
    assert squares.run(None, store=str(store), execution_id="tiny", workers=2, progress=False) == 3_000
    shown = json.loads(cli(store, "show", "tiny", "--items", "3000", "--json").stdout)
    items = shown["operations"][0]["children"]
    assert len(items) == 3_000 and all(c["timing"] and c["timing"]["duration"] > 0 for c in items)
    marks = [100.0 + i * PER_ITEM_SECONDS / 10 for i in range(11)]
    chunk = decode_chunk({"chunk": chunk_meta(5.0, list(range(7, 17)), marks)})
    assert chunk is not None and chunk.indexes == list(range(7, 17))
    assert chunk.durations == pytest.approx([PER_ITEM_SECONDS / 10] * 10)
    assert chunk.starts()[0] == 5.0
    slow = [100.0 + i * PER_ITEM_SECONDS * 2 for i in range(4)]
    chunk = decode_chunk({"chunk": chunk_meta(5.0, [9, 3, 4], slow)})
    assert chunk is not None and chunk.indexes == [9, 3, 4]  # out of order: kept as they ran
    assert chunk.durations == pytest.approx([PER_ITEM_SECONDS * 2] * 3, rel=1e-4)
