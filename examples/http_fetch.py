"""Fetch a few hundred URLs with an ``async def`` item function: a durable, resumable crawl.

Try the resume::

    python examples/http_fetch.py            # press Ctrl-C (or kill -9 it) half-way
    python examples/http_fetch.py            # run it again: only the pages not yet recorded are fetched

It needs aiohttp (``pip install 'durablemap[http]'``).

The script starts its own HTTP server on 127.0.0.1, on a free port, in a thread of this process. The
server answers ``/page/0`` ... ``/page/N-1`` after a delay (``--delay``, default 0.5 s), as a slow API
would; every 37th page is missing (404). Then the script runs a durable map whose item function is
``async def fetch(context, path, index, paths)``: it GETs one page with aiohttp and returns its HTTP
status, size and SHA-256. ``MapConfig(max_concurrency=50)`` (``--max-concurrency``) keeps that many
requests in flight at once, awaited together on each worker process's event loop, however few worker
processes there are.

Every fetched page is checkpointed in the store (``./.durablemap``, ``$DURABLEMAP_STORE`` or
``--store DIR``). Interrupt the script however you like (Ctrl-C, ``kill -9``, a power cut) and run
it again with the same options: the pages whose result was recorded come back from the store and
only the others are fetched. A fetch that failed (a time-out, a refused connection) is tried again
on the next run (``retry_failed=True``); a 404 is a result, not a failure. The server appends one
line per request it receives to ``WORKDIR/server-hits.log``, and the script says how many requests
this run sent: compare the two runs.

The server has a new port on every run, so the map's inputs are the pages' paths, and ``fetch`` reads
the server's address from the environment variable ``HTTP_FETCH_BASE_URL``, which the script sets
before the run (worker processes inherit it): the inputs stay the same from run to run, as durable
replay requires. The execution id is ``http-fetch-<N>-pages``: the same ``--pages`` resumes the same
execution, whatever the other options.

The results go to ``WORKDIR/pages.csv`` (index, path, status, bytes, sha256, error).

``--hang-from K`` makes the server never answer pages K and above, so the map cannot finish: kill the
script whenever you like (the test of this example does so), then run it again without the option.

Options: ``python examples/http_fetch.py [WORKDIR] [--pages N] [--max-concurrency N] [--delay S]
[--workers N] [--store DIR] [--hang-from K]``; WORKDIR defaults to ``./http-fetch-demo``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from durablemap import BatchResult, DurableContext, durable_execution
from durablemap.config import MapConfig

try:
    import aiohttp
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("examples/http_fetch.py needs aiohttp: pip install 'durablemap[http]' (or pip install aiohttp)")

BASE_URL_VARIABLE = "HTTP_FETCH_BASE_URL"
MISSING_EVERY = 37  # pages 36, 73, 110, ... answer 404
REQUEST_TIMEOUT_SECONDS = 60.0
HITS_NAME = "server-hits.log"
RESULTS_NAME = "pages.csv"
RESULT_FIELDS = ["index", "path", "status", "bytes", "sha256", "error"]


# --------------------------------------------------------------------------- the pages


def page_path(index: int) -> str:
    """The path of page ``index``."""
    return f"/page/{index}"


def page_status(index: int) -> int:
    """The HTTP status the server answers for page ``index``."""
    return 404 if index % MISSING_EVERY == MISSING_EVERY - 1 else 200


def page_body(index: int) -> bytes:
    """The body the server answers for page ``index``: a few hundred bytes to a few kilobytes."""
    if page_status(index) == 404:
        return f"no page {index}\n".encode()
    return "".join(f"page {index}, line {line}\n" for line in range(1 + index % 97)).encode()


# --------------------------------------------------------------------------- the local server


class PageServer(ThreadingHTTPServer):
    """The demo's HTTP server: answers ``/page/<n>`` after ``delay`` seconds, never answers pages
    ``hang_from`` and above (when set), appends each request's path to ``hits_path``."""

    daemon_threads = True
    request_queue_size = 1024  # hundreds of clients connect at once

    def __init__(self, delay: float, hang_from: int | None, hits_path: Path) -> None:
        super().__init__(("127.0.0.1", 0), PageHandler)
        self.delay, self.hang_from = delay, hang_from
        self.hits_fd = os.open(hits_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.requests = 0
        self.lock = threading.Lock()
        self.never = threading.Event()

    def record_hit(self, path: str) -> None:
        """Count the request and append its path to the hits log (one write: lines never interleave)."""
        with self.lock:
            self.requests += 1
        os.write(self.hits_fd, f"{path}\n".encode())

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.server_address[1]}"


class PageHandler(BaseHTTPRequestHandler):
    """One request to the page server."""

    server: PageServer

    def do_GET(self) -> None:
        """Answer ``/page/<n>`` with its status and body; anything else is 404."""
        self.server.record_hit(self.path)
        prefix, _, number = self.path.rpartition("/")
        if prefix != "/page" or not number.isdigit():
            self.send_error(404, f"no such path: {self.path}")
            return
        index = int(number)
        if self.server.hang_from is not None and index >= self.server.hang_from:
            self.server.never.wait()  # a server that stopped answering
        time.sleep(self.server.delay)
        body = page_body(index)
        self.send_response(page_status(index))
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the hits log records the requests."""


def start_server(delay: float, hang_from: int | None, hits_path: Path) -> PageServer:
    """Start the page server in a daemon thread, on a free port of 127.0.0.1."""
    server = PageServer(delay, hang_from, hits_path)
    threading.Thread(target=server.serve_forever, name="page-server", daemon=True).start()
    return server


# --------------------------------------------------------------------------- the durable map


async def fetch(context: DurableContext, path: str, index: int, paths: Sequence[str]) -> dict[str, Any]:
    """GET one page: its HTTP status, size in bytes and SHA-256. Runs in a worker's event loop, with
    up to ``max_concurrency`` other fetches in flight."""
    url = os.environ[BASE_URL_VARIABLE] + path
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        body = await response.read()
    return {"status": response.status, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


@durable_execution
def crawl(event: dict[str, Any], context: DurableContext) -> BatchResult[dict[str, Any]]:
    """Fetch every page, ``max_concurrency`` at a time."""
    paths = [page_path(index) for index in range(event["pages"])]
    return context.map(paths, fetch, name="fetch", config=MapConfig(max_concurrency=event["max_concurrency"]))


# --------------------------------------------------------------------------- output and command line


def write_results(batch: BatchResult[dict[str, Any]], out: Path) -> None:
    """One CSV row per page: its status, size and hash, or the error of a failed fetch."""
    tmp = out.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        for item in batch.results:
            row: dict[str, Any] = {"index": item.index, "path": page_path(item.index)}
            if item.result is not None:
                row.update(item.result)
            if item.error is not None:
                row["error"] = f"{item.error.type}: {item.error.message}"
            writer.writerow(row)
    tmp.replace(out)


def summary(batch: BatchResult[dict[str, Any]], requests: int, seconds: float) -> str:
    """What the run did, in two lines."""
    fetched = [item.result for item in batch.results if item.result is not None]
    found = sum(1 for result in fetched if result["status"] == 200)
    size = sum(result["bytes"] for result in fetched)
    replayed = len(batch.results) - requests
    return (f"{len(batch.results)} pages: {found} found, {len(fetched) - found} missing (404), "
            f"{batch.failure_count} failed; {size:,} bytes\n"
            f"this run sent {requests} requests to the server in {seconds:.1f} s"
            + (f"; the other {replayed} pages came from the store" if replayed > 0 else ""))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("workdir", nargs="?", default="http-fetch-demo", help="where pages.csv and the hits log go")
    parser.add_argument("--pages", type=int, default=400, help="how many pages to fetch (default 400)")
    parser.add_argument("--max-concurrency", type=int, default=50, help="requests in flight at once (default 50)")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds the server takes per page (default 0.5)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: the CPUs)")
    parser.add_argument("--store", default=None, help="the store directory (default: $DURABLEMAP_STORE or ./.durablemap)")
    parser.add_argument("--hang-from", type=int, default=None, help="the server never answers pages K and above")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the server, run the durable map, write pages.csv, print a summary."""
    args = parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    server = start_server(args.delay, args.hang_from, workdir / HITS_NAME)
    os.environ[BASE_URL_VARIABLE] = server.base_url
    print(f"serving {args.pages} pages at {server.base_url}; fetching {args.max_concurrency} at a time", flush=True)
    started = time.perf_counter()
    try:
        batch = crawl.run({"pages": args.pages, "max_concurrency": args.max_concurrency},
                          execution_id=f"http-fetch-{args.pages}-pages", store=args.store,
                          workers=args.workers, retry_failed=True)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to fetch only the pages not yet recorded", file=sys.stderr)
        return 130
    write_results(batch, workdir / RESULTS_NAME)
    print(summary(batch, server.requests, time.perf_counter() - started))
    print(f"results: {workdir / RESULTS_NAME}; requests received: {workdir / HITS_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
