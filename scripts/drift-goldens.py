#!/usr/bin/env python3
"""Writes libs/drift/tests/goldens.json: inputs and reference outputs for petrel-drift.

scipy computes every statistic it has (ks_2samp, kstwo, smirnov, anderson_ksamp,
wasserstein_distance, chi2_contingency, chisquare, false_discovery_control). The statistics
Evidently defines on top of scipy (normalised Wasserstein, PSI, KL, Jensen-Shannon, its
goodness-of-fit chi-square and Z-test) are recomputed here with Evidently 0.7's formulas, so the
committed goldens do not need Evidently installed. `--cross-check-evidently` instead imports
Evidently's own stattests and checks that these formulas agree with them (run it once in a venv
that has evidently; see scripts/drift-goldens.sh).

Large samples are not stored: they are generated from a seeded 64-bit LCG that
libs/drift/tests/goldens.rs implements identically (only IEEE additions, multiplications and
floor, so both sides get bit-identical values), which keeps the file small.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import scipy
from scipy import stats
from scipy.spatial import distance
from scipy.special import smirnov

MASK = (1 << 64) - 1


def uniforms(seed):
    state = seed & MASK
    while True:
        state = (state * 6364136223846793005 + 1442695040888963407) & MASK
        yield (state >> 11) / float(1 << 53)


def generate(spec):
    """Values for a sample spec: {"values": [...]} or {"gen": {...}}."""
    if "values" in spec:
        return [float(v) for v in spec["values"]]
    g = spec["gen"]
    u = uniforms(g["seed"])
    out = []
    for _ in range(g["n"]):
        if g["dist"] == "normal":
            s = 0.0
            for _ in range(12):
                s += next(u)
            x = (s - 6.0) * g["scale"] + g["loc"]
        elif g["dist"] == "uniform":
            x = next(u) * g["scale"] + g["loc"]
        else:
            raise ValueError(g["dist"])
        d = g.get("decimals")
        if d is not None:
            p = float(10 ** d)
            x = math.floor(x * p + 0.5) / p
        out.append(x)
    return out


def gen(seed, n, dist="normal", loc=0.0, scale=1.0, decimals=None):
    return {"gen": {"seed": seed, "n": n, "dist": dist, "loc": loc, "scale": scale,
                    "decimals": decimals}}


def vals(*v):
    return {"values": list(v)}


def f(x):
    """A float for JSON: infinities and NaN as strings (serde_json refuses the bare tokens)."""
    x = float(x)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if math.isnan(x):
        return "nan"
    return x


# ---- Evidently 0.7 formulas (legacy/calculations/stattests) on plain numpy arrays ----------

def ev_binned_numeric(ref, cur, fill):
    ref, cur = np.asarray(ref), np.asarray(cur)
    if len(np.unique(ref)) > 20:
        bins = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
        r = np.histogram(ref, bins)[0] / len(ref)
        c = np.histogram(cur, bins)[0] / len(cur)
    else:
        keys = sorted(set(ref.tolist()) | set(cur.tolist()))
        r = np.array([np.sum(ref == k) / len(ref) for k in keys])
        c = np.array([np.sum(cur == k) / len(cur) for k in keys])
    return fill_zeroes(r, c) if fill else (r, c)


def ev_binned_cells(cells, fill):
    r = np.array([a for a, _ in cells], dtype=float)
    c = np.array([b for _, b in cells], dtype=float)
    r, c = r / r.sum(), c / c.sum()
    return fill_zeroes(r, c) if fill else (r, c)


def fill_zeroes(r, c):
    r, c = r.copy(), c.copy()
    for a in (r, c):
        m = min(a[a != 0])
        np.place(a, a == 0, m / 10**6 if m <= 0.0001 else 0.0001)
    return r, c


def ev_psi(r, c):
    return float(np.sum((r - c) * np.log(r / c)))


def ev_kl(r, c):
    return float(stats.entropy(r, c))


def ev_js(r, c):
    return float(distance.jensenshannon(r, c, None))


def ev_wasserstein_norm(ref, cur):
    norm = max(float(np.std(ref)), 0.001)
    return float(stats.wasserstein_distance(ref, cur) / norm)


def ev_chisquare_gof(cells):
    nr = sum(a for a, _ in cells)
    nc = sum(b for _, b in cells)
    k_norm = nc / nr
    f_exp = [a * k_norm for a, _ in cells]
    f_obs = [b for _, b in cells]
    with np.errstate(divide="ignore", invalid="ignore"):
        res = stats.chisquare(f_obs, f_exp)
    return float(res[0]), float(res[1])


def ev_z(cells):
    """Evidently's z stattest on a table whose first cell is the first sorted category."""
    nr = sum(a for a, _ in cells)
    nc = sum(b for _, b in cells)
    if len(cells) == 1:
        return 0.0, 1.0
    n1, n2 = nr, nc
    p1 = float(nr - cells[0][0]) / n1
    p2 = float(nc - cells[0][1]) / n2
    P = float(p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(P * (1 - P) * (1.0 / n1 + 1.0 / n2))
    return float(z), float(2 * (1 - stats.norm.cdf(np.abs(z))))


# ---- cases ------------------------------------------------------------------------------------

A = [0.61, 0.29, 0.06, 0.59, -1.73, -0.74, 0.51, -0.56, 0.39, 1.64, 0.05, -0.06, 0.64, -0.82,
     0.37, 1.77, 1.09, -1.28, 2.36, 1.31, 1.05, -0.32, -0.40, 1.06, -2.47]
B = [2.20, 1.66, 1.38, 0.20, 1.36, 0.00, 0.00, -0.18, 1.34, 1.12, 2.02, 1.37, 0.43, 1.38, 0.87,
     1.41]

NUMERIC_PAIRS = [
    ("small_a_b", vals(*A), vals(*B)),
    ("ties_hand", vals(1, 2, 2, 3, 3, 3, 4), vals(2, 3, 3, 4, 4, 5)),
    ("n5_vs_6", vals(1, 2, 3, 4, 5), vals(1.5, 2.5, 3.5, 4.5, 5.5, 6.5)),
    ("separated_5_5", vals(1, 2, 3, 4, 5), vals(6, 7, 8, 9, 10)),
    ("n10_n10_same", gen(11, 10), gen(12, 10)),
    ("n20_n30_shift", gen(13, 20), gen(14, 30, loc=0.8)),
    ("n50_n37_ties", gen(15, 50, decimals=1), gen(16, 37, decimals=1, loc=0.3)),
    ("n45_n45_ties", gen(17, 45, decimals=0), gen(18, 45, decimals=0)),
    ("n200_n200_same", gen(1, 200), gen(2, 200)),
    ("n200_n150_scale", gen(3, 200), gen(4, 150, scale=1.5)),
    ("n1000_n1000_same", gen(5, 1000), gen(6, 1000)),
    ("n1000_n700_shift", gen(7, 1000), gen(8, 700, loc=0.12)),
    ("n1000_n300_ties", gen(9, 1000, decimals=1), gen(10, 300, decimals=1, loc=0.05)),
    ("n3000_n1000_same", gen(19, 3000), gen(20, 1000)),
    ("n10000_n10000_same", gen(21, 10000), gen(22, 10000)),
    ("n10000_n10000_shift", gen(23, 10000), gen(24, 10000, loc=0.05)),
    ("n12000_n15000_same", gen(25, 12000), gen(26, 15000)),
    ("n12000_n15000_shift", gen(27, 12000), gen(28, 15000, loc=0.04)),
    ("n20000_n60_same", gen(29, 20000), gen(30, 60)),
    ("n20000_n60_shift", gen(31, 20000), gen(32, 60, loc=0.5)),
    ("n15000_n120_mid", gen(33, 15000), gen(34, 120, loc=0.25)),
    ("n11000_n400_uniform", gen(35, 11000, dist="uniform"), gen(36, 400, dist="uniform", loc=0.05)),
    ("n11000_n11000_ties", gen(37, 11000, decimals=1), gen(38, 11000, decimals=1, loc=0.02)),
    ("constant_equal", vals(*[3.0] * 8), vals(*[3.0] * 5)),
    ("constant_different", vals(*[3.0] * 8), vals(*[4.0] * 5)),
    ("few_values", gen(39, 300, dist="uniform", scale=3, decimals=0),
     gen(40, 200, dist="uniform", scale=3.4, decimals=0)),
]

KS_EXTRA = [
    ("n30000_n30000_shift", gen(41, 30000), gen(42, 30000, loc=0.03)),
]

CATEGORICAL_CELLS = [
    ("two_balanced", [(50, 48), (50, 52)]),
    ("two_shifted", [(30, 70), (70, 30)]),
    ("three_same", [(10, 20), (10, 20), (10, 20)]),
    ("three_shift", [(300, 20), (500, 40), (200, 40)]),
    ("five_mild", [(120, 14), (80, 9), (60, 5), (30, 6), (10, 2)]),
    ("unseen_category", [(500, 45), (500, 45), (0, 10)]),
    ("vanished_category", [(400, 60), (400, 40), (200, 0)]),
    ("single_category", [(10, 3)]),
    ("large", [(5000, 5100), (3000, 2950), (1500, 1480), (500, 470)]),
    ("rare", [(9990, 998), (10, 2)]),
]

BH_CASES = [
    [0.01, 0.04, 0.03, 0.2],
    [0.5],
    [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216],
    [0.2, 0.2, 0.01, 1.0, 0.0, 0.049],
]

KSTWO_POINTS = [(n, x) for n in (2, 5, 10, 60, 140) for x in (0.08, 0.15, 0.3, 0.45, 0.6, 0.9)] + [
    (n, x) for n in (141, 500, 5000, 6667, 50000, 150000)
    for x in (0.001, 0.004, 0.01, 0.02, 0.03, 0.06)]

SMIRNOV_POINTS = [(5, 0.3), (10, 0.05), (10, 0.5), (100, 0.1), (141, 0.13), (1000, 0.05),
                  (5000, 0.02), (6667, 0.03), (20000, 0.012), (200000, 0.0035)]


def main():
    out = {
        "meta": {
            "generator": "scripts/drift-goldens.py",
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "evidently_formulas": "0.7 legacy stattests, recomputed on numpy/scipy",
        },
        "ks": [], "kstwo": [], "smirnov": [], "anderson": [], "wasserstein_norm": [],
        "binned_numeric": [], "categorical": [], "bh": [],
    }
    for name, a, b in NUMERIC_PAIRS + KS_EXTRA:
        x, y = np.array(generate(a)), np.array(generate(b))
        r = stats.ks_2samp(x, y)
        out["ks"].append({"name": name, "a": a, "b": b, "statistic": f(r.statistic),
                          "pvalue": f(r.pvalue)})
    for n, x in KSTWO_POINTS:
        out["kstwo"].append({"n": n, "x": x, "sf": f(stats.kstwo.sf(x, n))})
    for n, x in SMIRNOV_POINTS:
        out["smirnov"].append({"n": n, "x": x, "sf": f(smirnov(n, x))})
    for name, a, b in NUMERIC_PAIRS:
        x, y = np.array(generate(a)), np.array(generate(b))
        if len(np.unique(np.concatenate([x, y]))) >= 2 and len(x) + len(y) >= 4:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = stats.anderson_ksamp([x, y])
            out["anderson"].append({"name": name, "a": a, "b": b, "statistic": f(r.statistic),
                                    "pvalue": f(r.pvalue),
                                    "critical": [f(v) for v in r.critical_values]})
        out["wasserstein_norm"].append({"name": name, "a": a, "b": b,
                                        "value": f(ev_wasserstein_norm(x, y))})
        rf, cf = ev_binned_numeric(x, y, True)
        rj, cj = ev_binned_numeric(x, y, False)
        out["binned_numeric"].append({"name": name, "a": a, "b": b, "psi": f(ev_psi(rf, cf)),
                                      "kl_div": f(ev_kl(rf, cf)), "jensenshannon": f(ev_js(rj, cj))})
    for name, cells in CATEGORICAL_CELLS:
        table = np.array([[a for a, _ in cells], [b for _, b in cells]])
        chi2, p, dof, _ = stats.chi2_contingency(table)
        gof_stat, gof_p = ev_chisquare_gof(cells)
        z, zp = ev_z(cells) if len(cells) <= 2 else (None, None)
        rf, cf = ev_binned_cells(cells, True)
        rj, cj = ev_binned_cells(cells, False)
        out["categorical"].append({
            "name": name, "cells": [list(c) for c in cells],
            "chi2_contingency": {"statistic": f(chi2), "pvalue": f(p), "dof": int(dof)},
            "chisquare_gof": {"statistic": f(gof_stat),
                              "pvalue": f(gof_p) if len(cells) > 1 else "nan"},
            "z_test": None if z is None else {"statistic": f(z), "pvalue": f(zp)},
            "psi": f(ev_psi(rf, cf)), "kl_div": f(ev_kl(rf, cf)), "jensenshannon": f(ev_js(rj, cj)),
        })
    for ps in BH_CASES:
        adj = stats.false_discovery_control(ps, method="bh")
        out["bh"].append({"ps": ps, "adjusted": [f(v) for v in np.atleast_1d(adj)]})
    path = Path(__file__).resolve().parent.parent / "libs/drift/tests/goldens.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def cross_check_evidently():
    """Compares the formulas above with Evidently's own stattests on the same inputs."""
    import pandas as pd
    from evidently.legacy.calculations.stattests import (chi_stat_test, jensenshannon_stat_test,
                                                         kl_div_stat_test, psi_stat_test,
                                                         wasserstein_stat_test, z_stat_test)
    from evidently.legacy.core import ColumnType
    worst = 0.0

    def check(label, ours, theirs):
        nonlocal worst
        if math.isinf(ours) and math.isinf(theirs):
            return
        err = abs(ours - theirs) / max(abs(theirs), 1e-12)
        worst = max(worst, err)
        if err > 1e-9:
            print(f"MISMATCH {label}: ours {ours!r} evidently {theirs!r}")

    num = ColumnType.Numerical
    cat = ColumnType.Categorical
    for name, a, b in NUMERIC_PAIRS:
        x, y = pd.Series(generate(a)), pd.Series(generate(b))
        check(f"{name} wasserstein", ev_wasserstein_norm(x.values, y.values),
              wasserstein_stat_test(x, y, num, None).drift_score)
        rf, cf = ev_binned_numeric(x.values, y.values, True)
        rj, cj = ev_binned_numeric(x.values, y.values, False)
        check(f"{name} psi", ev_psi(rf, cf), psi_stat_test(x, y, num, None).drift_score)
        check(f"{name} kl", ev_kl(rf, cf), kl_div_stat_test(x, y, num, None).drift_score)
        check(f"{name} js", ev_js(rj, cj), jensenshannon_stat_test(x, y, num, None).drift_score)
    for name, cells in CATEGORICAL_CELLS:
        x = pd.Series([f"c{i}" for i, (a, _) in enumerate(cells) for _ in range(a)])
        y = pd.Series([f"c{i}" for i, (_, b) in enumerate(cells) for _ in range(b)])
        rf, cf = ev_binned_cells(cells, True)
        rj, cj = ev_binned_cells(cells, False)
        check(f"{name} psi", ev_psi(rf, cf), psi_stat_test(x, y, cat, None).drift_score)
        check(f"{name} kl", ev_kl(rf, cf), kl_div_stat_test(x, y, cat, None).drift_score)
        check(f"{name} js", ev_js(rj, cj), jensenshannon_stat_test(x, y, cat, None).drift_score)
        if len(cells) > 1:
            with np.errstate(divide="ignore", invalid="ignore"):
                check(f"{name} chisquare", ev_chisquare_gof(cells)[1],
                      chi_stat_test(x, y, cat, None).drift_score)
        if len(cells) <= 2:
            check(f"{name} z", ev_z(cells)[1], z_stat_test(x, y, cat, None).drift_score)
    print(f"cross-check against evidently: worst relative difference {worst:.3g}")
    if worst > 1e-9:
        sys.exit(1)


if __name__ == "__main__":
    if "--cross-check-evidently" in sys.argv:
        cross_check_evidently()
    else:
        main()
