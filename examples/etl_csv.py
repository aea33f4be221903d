"""A small, resumable ETL job: clean a CSV of orders with a durable ``context.map``.

Try the resume::

    python examples/etl_csv.py            # work directory ./etl-demo; press Ctrl-C half-way
    python examples/etl_csv.py            # run it again: only the unfinished rows are processed

The first run writes ``./etl-demo/orders.csv`` (5,000 fake orders, a few of them broken on purpose)
unless it exists. Then it maps ``transform_order`` over the rows: parse, validate, compute the order
total in EUR. Each row sleeps ~2 ms to stand in for an API call or a database look-up, which gives you
time to press Ctrl-C. Every finished row is checkpointed in the store (``./.durablemap`` by default, or
``$DURABLEMAP_STORE``, or ``--store DIR``), so the second run replays those from the store and runs
only the rest; compare the two runs' times. A third run replays everything and takes well under a
second.

After the map, the script writes ``orders_clean.csv`` (the rows that passed) and
``orders_rejects.csv`` (the rows that failed, with the error message) next to the input.

The execution id is derived from the handler and its event, and the event carries the input file's
SHA-256: the same input resumes the same execution, and an edited input starts a new one. The row list
given to ``context.map`` is read from the CSV file, so it is the same on every run, as durable replay
requires.

Options: ``python examples/etl_csv.py [WORKDIR] [--rows N] [--workers N] [--store DIR]``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
import sys
import time
from collections.abc import Sequence
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from durablemap import BatchResult, DurableContext, durable_execution

INPUT_NAME = "orders.csv"
CLEAN_NAME = "orders_clean.csv"
REJECTS_NAME = "orders_rejects.csv"
INPUT_FIELDS = ["order_id", "customer_email", "country", "order_date", "quantity", "unit_price", "currency"]
CLEAN_FIELDS = [*INPUT_FIELDS, "total_eur"]
REJECT_FIELDS = ["row", "order_id", "error_type", "error_message"]

# Fixed rates, so a re-run computes the same totals.
EUR_RATES = {"EUR": Decimal("1"), "USD": Decimal("0.92"), "GBP": Decimal("1.17"), "SEK": Decimal("0.087")}
SIMULATED_IO_SECONDS = 0.002


# --------------------------------------------------------------------------- input generation


def generate_orders(path: Path, rows: int, seed: int = 20240601) -> None:
    """Write ``rows`` fake orders to ``path``; about 3% of them are broken in one way or another."""
    rng = random.Random(seed)
    first = date(2024, 1, 1)
    countries = ["DE", "FR", "SE", "GB", "US", "NL", "ES"]
    currencies = list(EUR_RATES)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=INPUT_FIELDS)
        writer.writeheader()
        for n in range(rows):
            row = {
                "order_id": f"ORD-{n + 1:06d}",
                "customer_email": f"customer{rng.randrange(10_000)}@example.com",
                "country": rng.choice(countries),
                "order_date": (first + timedelta(days=rng.randrange(366))).isoformat(),
                "quantity": str(rng.randint(1, 20)),
                "unit_price": f"{rng.uniform(1, 500):.2f}",
                "currency": rng.choice(currencies),
            }
            if rng.random() < 0.03:
                _break_row(row, rng)
            writer.writerow(row)
    tmp.replace(path)  # a Ctrl-C while generating never leaves half a file behind


def _break_row(row: dict[str, str], rng: random.Random) -> None:
    """Damage one field of ``row`` the way real exports get damaged."""
    damage = rng.choice(["email", "quantity", "price", "date", "currency"])
    if damage == "email":
        row["customer_email"] = row["customer_email"].replace("@", " at ")
    elif damage == "quantity":
        row["quantity"] = str(-rng.randint(1, 5))
    elif damage == "price":
        row["unit_price"] = "N/A"
    elif damage == "date":
        row["order_date"] = "2024-02-30"
    else:
        row["currency"] = "XYZ"


def read_rows(path: Path) -> list[dict[str, str]]:
    """The input rows, in file order: the deterministic list handed to ``context.map``."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def file_sha256(path: Path) -> str:
    """The input's content hash, part of the event so that a changed input is a new execution."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- the transform


def transform_order(
    context: DurableContext, row: dict[str, str], index: int, rows: Sequence[dict[str, str]]
) -> dict[str, str]:
    """Parse and validate one order and add its EUR total; raise ``ValueError`` for a bad row."""
    time.sleep(SIMULATED_IO_SECONDS)  # stands in for an API call or a database look-up
    email = row["customer_email"].strip().lower()
    if "@" not in email or " " in email:
        raise ValueError(f"invalid customer_email {row['customer_email']!r}")
    order_date = date.fromisoformat(row["order_date"])  # ValueError on a date that does not exist
    quantity = int(row["quantity"])
    if quantity <= 0:
        raise ValueError(f"quantity must be positive, got {quantity}")
    try:
        unit_price = Decimal(row["unit_price"])
    except InvalidOperation:
        raise ValueError(f"unit_price is not a number: {row['unit_price']!r}") from None
    rate = EUR_RATES.get(row["currency"])
    if rate is None:
        raise ValueError(f"unknown currency {row['currency']!r}")
    total = (unit_price * quantity * rate).quantize(Decimal("0.01"))
    return {
        **row,
        "customer_email": email,
        "order_date": order_date.isoformat(),
        "total_eur": str(total),
    }


# --------------------------------------------------------------------------- the durable job


@durable_execution
def etl_handler(event: dict[str, Any], context: DurableContext) -> dict[str, Any]:
    """Transform every row of ``event["input"]``, then write the clean rows and the rejects."""
    source = Path(event["input"])
    rows = read_rows(source)
    batch = context.map(rows, transform_order, name="transform_orders")
    clean, rejects = write_outputs(batch, rows, source.parent)
    return {"rows": len(rows), "clean": clean, "rejects": rejects, "reason": batch.completion_reason.value}


def write_outputs(
    batch: BatchResult[dict[str, str]], rows: list[dict[str, str]], workdir: Path
) -> tuple[int, int]:
    """Write the succeeded rows and the failed ones (with their errors); return both counts."""
    clean = rejects = 0
    with (
        (workdir / CLEAN_NAME).open("w", newline="") as clean_file,
        (workdir / REJECTS_NAME).open("w", newline="") as rejects_file,
    ):
        clean_writer = csv.DictWriter(clean_file, fieldnames=CLEAN_FIELDS)
        rejects_writer = csv.DictWriter(rejects_file, fieldnames=REJECT_FIELDS)
        clean_writer.writeheader()
        rejects_writer.writeheader()
        for item in batch.results:
            if item.status == "SUCCEEDED" and item.result is not None:
                clean_writer.writerow(item.result)
                clean += 1
            elif item.status == "FAILED":
                error = item.error
                rejects_writer.writerow(
                    {
                        "row": item.index + 2,  # the line in orders.csv: 1-based, after the header
                        "order_id": rows[item.index]["order_id"],
                        "error_type": error.type if error else "",
                        "error_message": error.message if error else "",
                    }
                )
                rejects += 1
    return clean, rejects


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: work directory, row count, workers, store."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("workdir", nargs="?", default="./etl-demo", help="where the CSV files live")
    parser.add_argument("--rows", type=int, default=5_000, help="rows to generate if the input is missing")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPUs)")
    parser.add_argument("--store", default=None, help="checkpoint store (default: $DURABLEMAP_STORE or ./.durablemap)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generate the input if needed, run the durable job, report; exit 130 on Ctrl-C."""
    args = parse_args(argv)
    workdir = Path(args.workdir).resolve()
    source = workdir / INPUT_NAME
    if not source.exists():
        print(f"generating {args.rows} fake orders in {source}")
        generate_orders(source, args.rows)
    event = {"input": str(source), "sha256": file_sha256(source)}
    started = time.perf_counter()
    try:
        summary = etl_handler.run(event, store=args.store, workers=args.workers)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted after {time.perf_counter() - started:.1f} s; finished rows are checkpointed. "
            "Run the same command again to process only the rest.",
            file=sys.stderr,
        )
        return 130
    elapsed = time.perf_counter() - started
    print(
        f"{summary['rows']} rows in {elapsed:.1f} s: {summary['clean']} clean -> {workdir / CLEAN_NAME}, "
        f"{summary['rejects']} rejected -> {workdir / REJECTS_NAME}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
