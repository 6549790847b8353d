"""Make the loans example's dataset and put it on S3: `python examples/loans/make_dataset.py`.

A synthetic table of loan applications (seeded, so every run makes the same file): two
numeric features, a numeric `age`, two categorical ones (`region`, `sex`) and the label
`approved` (yes/no). The Experiment in this folder trains on it; its validation slices the
held-out split by `sex`, by `region` and by age band.

    --variant clean          the dataset the first version is trained on (default)
    --variant drifted        a later month: same schema, incomes 40 % higher (PSI warns, trains)
    --variant renamed        `income` renamed to `salary`       (the data contract fails the run)
    --variant shifted        `age` in months instead of years   (outOfRange)
    --variant new-region     a region the contract never saw    (unseenCategory)
    --variant missing        30 % of `debt_ratio` missing       (missingRate)

S3 from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (for `mlops local`, see
docs/validation.md). `--out FILE` writes the CSV to a local file instead.
"""

from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np
import pandas as pd

DEFAULT_URI = "s3://mlops/datasets/loans.csv"
VARIANTS = ("clean", "drifted", "renamed", "shifted", "new-region", "missing")
REGIONS = ("north", "south", "east", "west")


def make_loans(rows: int = 1200, seed: int = 7, variant: str = "clean") -> pd.DataFrame:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 76, rows)
    income = np.round(rng.lognormal(3.6, 0.45, rows) * (1.4 if variant == "drifted" else 1.0), 2)
    debt_ratio = np.round(rng.beta(2.0, 5.0, rows), 4)
    region = rng.choice(REGIONS, rows, p=[0.4, 0.3, 0.2, 0.1])
    sex = rng.choice(("F", "M"), rows)
    # Approval depends on income and debt, a little on age; the west is judged harsher,
    # which the slice metrics make visible.
    score = 0.06 * (income - 40) - 7.0 * (debt_ratio - 0.3) + 0.02 * (age - 45) - 0.8 * (region == "west")
    approved = np.where(score + rng.normal(0, 0.8, rows) > 0, "yes", "no")
    frame = pd.DataFrame({"age": age, "income": income, "debt_ratio": debt_ratio, "region": region,
                          "sex": sex, "approved": approved})
    if variant == "renamed":
        frame = frame.rename(columns={"income": "salary"})
    elif variant == "shifted":
        frame["age"] = frame["age"] * 12
    elif variant == "new-region":
        frame.loc[rng.random(rows) < 0.15, "region"] = "islands"
    elif variant == "missing":
        frame["debt_ratio"] = frame["debt_ratio"].mask(rng.random(rows) < 0.30)
    return frame


def csv_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", default=DEFAULT_URI, help=f"where to put it (default {DEFAULT_URI})")
    parser.add_argument("--variant", default="clean", choices=VARIANTS)
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", help="write the CSV to this file instead of S3")
    args = parser.parse_args(argv)
    data = csv_bytes(make_loans(args.rows, args.seed, args.variant))
    if args.out:
        with open(args.out, "wb") as file:
            file.write(data)
        print(f"wrote {len(data)} bytes to {args.out}")
        return 0
    from mlops_runtime.store import ArtifactStore, parse_s3_uri

    store = ArtifactStore.from_env(os.environ)
    store.ensure_bucket(parse_s3_uri(args.uri).bucket)
    store.put_bytes(args.uri, data, "text/csv")
    print(f"put {args.variant} loans dataset ({len(data)} bytes) at {args.uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
