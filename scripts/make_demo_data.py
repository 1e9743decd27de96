"""Writes runner/data/churn.csv: the synthetic demo data set that ships with the project.

Deterministic (fixed seed, standard library only), so the committed file can be
regenerated and checked: python scripts/make_demo_data.py
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

ROWS = 600
OUT = Path(__file__).resolve().parent.parent / "runner" / "data" / "churn.csv"


def main() -> None:
    rng = random.Random(20261126)
    contracts = ["month-to-month", "one-year", "two-year"]
    regions = ["north", "south", "east", "west"]
    rows = []
    for _ in range(ROWS):
        contract = rng.choices(contracts, weights=[5, 3, 2])[0]
        tenure = rng.randint(1, 72)
        charges = round(rng.uniform(20, 120), 2)
        calls = min(10, int(rng.expovariate(0.6)))
        region = rng.choice(regions)
        paperless = rng.choice(["yes", "no"])
        score = (
            -1.0
            + 1.4 * (contract == "month-to-month")
            - 0.9 * (contract == "two-year")
            - 0.035 * tenure
            + 0.018 * (charges - 70)
            + 0.35 * calls
            + 0.3 * (paperless == "yes")
            + rng.gauss(0, 0.6)
        )
        churned = "yes" if rng.random() < 1 / (1 + math.exp(-score)) else "no"
        rows.append(
            {
                "tenure_months": tenure,
                # A few gaps, so that imputation has something to do.
                "monthly_charges": "" if rng.random() < 0.03 else charges,
                "contract": contract,
                "support_calls": calls,
                "region": "" if rng.random() < 0.03 else region,
                "paperless_billing": paperless,
                "churned": churned,
            }
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {OUT} ({ROWS} rows)")


if __name__ == "__main__":
    main()
