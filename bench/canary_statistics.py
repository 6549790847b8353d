"""How often the canary's error-rate check rolls back a challenger as good as the champion,
over whole rollouts, and how fast it catches a worse one; beside the test it replaced.

Each simulated rollout runs the default steps 10 -> 25 -> 50 -> 100 % with the default
analysis (maxErrorRate 1 %, minSampleSize 50, failureLimit 1) at confidence 0.99 (alpha 0.01).
Every interval the router sends N requests, each to the challenger with the step's weight
(binomial split); each request fails with its version's true error rate. The analysis looks
after every interval: Fail rolls back, Inconclusive (too few requests in the step, or a
challenger that looks worse without proof yet) holds the step, Pass moves on, a Pass at
100 % promotes. A rollout still held after MAX_LOOKS intervals counts as not rolled back.

- now: `rollout.analysis` as it is (anytime-valid bounds on the counts since the rollout
  started, its error-rate share alpha / 3 of the budget), through the same functions.
- z-test: the check it replaced (the step window, the challenger's share above the maximum,
  or a pooled one-sided two-proportion z-test at alpha / steps).

Equal error rates (0.1 %, 0.5 %, 1 %) at 20, 200 and 2,000 requests per interval give the
false-rollback rate with its 95 % Clopper-Pearson interval and the share promoted within
MAX_LOOKS intervals (the rest is still held: the price of holding on thin evidence); 2x, 5x and 10x worse challengers
give the share rolled back, the share promoted (the rest is still held after MAX_LOOKS
intervals) and the median challenger requests until the rollback (over all rollouts, an
undetected one counting as never: "-" when fewer than half are caught).
The last line is the worst false-rollback rate of `now`.

    .venv/bin/python bench/canary_statistics.py [--rollouts 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from mlops_operator.api.inference_service import Analysis, Rollout  # noqa: E402
from mlops_operator.rollout.analysis import check_alpha, judge_rates  # noqa: E402

RATES = (0.001, 0.005, 0.01)
TRAFFIC = (20, 200, 2000)
WORSE = (2, 5, 10)
MAX_LOOKS = 200
CONFIDENCE = 0.99


def now_judges(cum, spec: Analysis) -> tuple[np.ndarray, np.ndarray]:
    """The error-rate check of `rollout.analysis` on arrays of rollout-window counts:
    (fail, held because the challenger looks worse without proof yet)."""
    judged = judge_rates(*cum, check_alpha(spec), limit=spec.max_error_rate)
    return judged.above_limit | judged.worse, judged.suspicious


def ztest_fails(window, spec: Analysis, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The replaced check on arrays of step-window counts: (fail, inconclusive)."""
    errors_c, n_c, errors_r, n_r = window
    alpha = (1.0 - spec.confidence) / steps
    inconclusive = n_c < spec.min_sample_size
    with np.errstate(divide="ignore", invalid="ignore"):
        p_c = errors_c / n_c
        p_r = errors_r / n_r
        pooled = (errors_c + errors_r) / (n_c + n_r)
        variance = pooled * (1 - pooled) * (1 / n_c + 1 / n_r)
        z = np.where(variance > 0, (p_c - p_r) / np.sqrt(variance), np.where(p_c > p_r, np.inf, -np.inf))
    tested = n_r >= spec.min_sample_size
    fail = ~inconclusive & ((p_c > spec.max_error_rate) | (tested & (stats.norm.sf(z) < alpha)))
    return fail, inconclusive


def accuracy_judges(cum, spec: Analysis) -> tuple[np.ndarray, np.ndarray]:
    """The onlineAccuracy check on arrays of rollout-window counts of wrong answers: (fail,
    held), the minimum number of labels of each version included."""
    judged = judge_rates(*cum, check_alpha(spec), margin=spec.max_accuracy_drop)
    return judged.worse, judged.suspicious | (cum[1] < spec.min_sample_size) | (cum[3] < spec.min_sample_size)


def simulate(rng: np.random.Generator, rollouts: int, per_interval: int, p_champion: float,
             p_challenger: float, method: str, spec: Analysis | None = None,
             steps: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rolled back, challenger requests when rolled back, promoted) for each simulated rollout;
    for method "accuracy" the rates are of wrong answers and the requests are labels."""
    spec = spec or Analysis(confidence=CONFIDENCE)
    weights = np.array(steps or Rollout().steps) / 100.0
    step = np.zeros(rollouts, dtype=int)
    active = np.ones(rollouts, dtype=bool)
    rolled_back = np.zeros(rollouts, dtype=bool)
    promoted = np.zeros(rollouts, dtype=bool)
    requests_at = np.full(rollouts, np.inf)
    cum = [np.zeros(rollouts) for _ in range(4)]  # errors_c, n_c, errors_r, n_r since the start
    window = [np.zeros(rollouts) for _ in range(4)]  # the same since the step started
    for _ in range(MAX_LOOKS):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        n_c = rng.binomial(per_interval, weights[step[idx]]).astype(float)
        n_r = per_interval - n_c
        new = (rng.binomial(n_c.astype(int), p_challenger), n_c, rng.binomial(n_r.astype(int), p_champion), n_r)
        for k in range(4):
            cum[k][idx] += new[k]
            window[k][idx] += new[k]
        if method == "now":
            fail, suspicious = now_judges([c[idx] for c in cum], spec)
            held = suspicious | (window[1][idx] < spec.min_sample_size)
        elif method == "accuracy":
            fail, held = accuracy_judges([c[idx] for c in cum], spec)
        else:
            fail, held = ztest_fails([w[idx] for w in window], spec, len(weights))
        failed = idx[fail]
        rolled_back[failed] = True
        requests_at[failed] = cum[1][failed]
        active[failed] = False
        passed = idx[~fail & ~held]
        last = passed[step[passed] == len(weights) - 1]
        active[last] = False
        promoted[last] = True
        moving = passed[step[passed] < len(weights) - 1]
        step[moving] += 1
        for k in range(4):
            window[k][moving] = 0.0
    return rolled_back, requests_at, promoted


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    low = stats.beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    high = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return float(low), float(high)


def accuracy_table(rng: np.random.Generator, rollouts: int) -> None:
    """The online-accuracy check on a short canary (steps 50 -> 100 %, 60 labels an interval: 20
    labelled requests/s, 3 s steps, as tests/local/manifests/retrain.yaml), by minSampleSize."""
    print(f"online accuracy, steps 50 -> 100 %, 60 labels/interval, maxAccuracyDrop 0.05, {rollouts} rollouts per cell")
    print(f"{'minSampleSize':>13} {'wrong: champion':>15} {'challenger':>10} | {'rolled back':>11} {'promoted':>8}")
    for minimum in (20, 50, 100):
        spec = Analysis(confidence=CONFIDENCE, minSampleSize=minimum, maxAccuracyDrop=0.05)
        for p_champion, p_challenger in ((0.03, 0.03), (0.03, 0.06), (0.03, 0.34)):
            rolled, _, promoted = simulate(rng, rollouts, 60, p_champion, p_challenger, "accuracy", spec, [50, 100])
            print(f"{minimum:13d} {p_champion:15.0%} {p_challenger:10.0%} | {rolled.mean():11.3f} {promoted.mean():8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=2000, help="simulated rollouts per cell (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accuracy", action="store_true", help="only the online-accuracy table (a few seconds)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.accuracy:
        accuracy_table(rng, args.rollouts)
        return
    alpha = 1.0 - CONFIDENCE
    started = time.perf_counter()

    print(f"false rollbacks: equal true error rates, {args.rollouts} rollouts per cell, alpha {alpha:g}")
    print(f"{'rate':>6} {'req/interval':>12} | {'now':>7} {'95% CI':>17} {'promoted':>8} | "
          f"{'z-test':>7} {'95% CI':>17} {'promoted':>8}")
    worst = 0.0
    for p in RATES:
        for per_interval in TRAFFIC:
            row = []
            for method in ("now", "ztest"):
                rolled, _, promoted = simulate(rng, args.rollouts, per_interval, p, p, method)
                k = int(rolled.sum())
                low, high = clopper_pearson(k, args.rollouts)
                row.append(f"{k / args.rollouts:7.4f} [{low:.4f}, {high:.4f}] {promoted.mean():8.3f}")
                if method == "now":
                    worst = max(worst, k / args.rollouts)
            print(f"{p:6.1%} {per_interval:12d} | {row[0]} | {row[1]}")

    print()
    print("worse challengers: share rolled back, share promoted (the rest still held), median challenger "
          "requests until the rollback")
    print(f"{'champion':>8} {'worse':>5} {'req/interval':>12} | {'now':>6} {'promoted':>8} {'median':>8} | "
          f"{'z-test':>6} {'promoted':>8} {'median':>8}")
    for p in RATES:
        for factor in WORSE:
            for per_interval in TRAFFIC:
                row = []
                for method in ("now", "ztest"):
                    rolled, requests, promoted = simulate(rng, args.rollouts, per_interval, p, min(1.0, p * factor), method)
                    median = float(np.median(requests))
                    shown = "-" if math.isinf(median) else f"{median:.0f}"
                    row.append(f"{rolled.mean():6.3f} {promoted.mean():8.3f} {shown:>8}")
                print(f"{p:8.1%} {factor:4d}x {per_interval:12d} | {row[0]} | {row[1]}")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    print(f"max false-rollback rate: {worst:.4f} (alpha {alpha:g})")


if __name__ == "__main__":
    main()
