//! Agreement with scipy (and Evidently's formulas) on the goldens of `goldens.json`, written by
//! `scripts/drift-goldens.sh` with pinned scipy 1.14.1 and numpy 2.1.3.
//!
//! Every value must agree to `1e-9` relative, with an absolute floor of `1e-14` for values near
//! zero: p-values computed as `1 - cdf` (the Z-test, the chi-square and Kolmogorov tails) are
//! only defined to about `1e-16` absolute in either implementation, so relative agreement on a
//! p-value of `1e-13` would compare rounding noise. Run with `--nocapture` to see the largest
//! relative error per statistic.

use std::collections::BTreeMap;
use std::sync::Mutex;

use petrel_drift::{
    BinnedShares, CategoryTable, NumericSample, anderson_ksamp, benjamini_hochberg,
    binned_categorical, binned_numeric, chi2_goodness_of_fit, chi2_homogeneity, jensen_shannon,
    kl_div, ks_2samp, kstwo_sf, psi, smirnov_sf, wasserstein_norm, z_test,
};
use serde_json::Value;

const REL: f64 = 1e-9;
const ABS_FLOOR: f64 = 1e-14;

static WORST: Mutex<BTreeMap<&'static str, f64>> = Mutex::new(BTreeMap::new());

fn goldens() -> Value {
    let text = include_str!("goldens.json");
    serde_json::from_str(text).expect("goldens.json is valid JSON")
}

fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        Value::String(s) if s == "nan" => f64::NAN,
        other => other.as_f64().expect("a number"),
    }
}

fn check(stat: &'static str, case: &str, ours: f64, theirs: f64) {
    if theirs.is_infinite() || ours.is_infinite() {
        assert_eq!(ours, theirs, "{stat} {case}");
        return;
    }
    let err = (ours - theirs).abs();
    let rel = if theirs == 0.0 {
        err
    } else {
        err / theirs.abs()
    };
    {
        let mut w = WORST.lock().unwrap();
        let e = w.entry(stat).or_insert(0.0);
        if err > ABS_FLOOR {
            *e = e.max(rel);
        }
    }
    assert!(
        err <= REL * theirs.abs() + ABS_FLOOR,
        "{stat} {case}: ours {ours:e}, scipy {theirs:e} (relative error {rel:e})"
    );
}

/// The seeded generator of `scripts/drift-goldens.py`: Knuth's MMIX LCG, top 53 bits as a
/// uniform in `[0, 1)`, Irwin-Hall (sum of 12 uniforms minus 6) for approximately normal
/// values, optional rounding by `floor(x * 10^d + 0.5) / 10^d`.
fn generate(spec: &Value) -> Vec<f64> {
    if let Some(values) = spec.get("values") {
        return values.as_array().unwrap().iter().map(num).collect();
    }
    let g = &spec["gen"];
    let mut state = g["seed"].as_u64().unwrap();
    let mut uniform = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let n = g["n"].as_u64().unwrap();
    let (loc, scale) = (num(&g["loc"]), num(&g["scale"]));
    let decimals = g["decimals"].as_i64();
    (0..n)
        .map(|_| {
            let x = match g["dist"].as_str().unwrap() {
                "normal" => {
                    let mut s = 0.0;
                    for _ in 0..12 {
                        s += uniform();
                    }
                    (s - 6.0) * scale + loc
                }
                "uniform" => uniform() * scale + loc,
                other => panic!("unknown distribution {other}"),
            };
            match decimals {
                Some(d) => {
                    let p = 10f64.powi(d as i32);
                    (x * p + 0.5).floor() / p
                }
                None => x,
            }
        })
        .collect()
}

fn pair(case: &Value) -> (NumericSample, NumericSample) {
    (
        NumericSample::new(&generate(&case["a"])),
        NumericSample::new(&generate(&case["b"])),
    )
}

fn name(case: &Value) -> String {
    case["name"].as_str().unwrap_or("?").to_owned()
}

fn table(case: &Value) -> CategoryTable {
    let cells: Vec<(u64, u64)> = case["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c[0].as_u64().unwrap(), c[1].as_u64().unwrap()))
        .collect();
    CategoryTable {
        categories: (0..cells.len()).map(|i| format!("c{i}")).collect(),
        cells,
    }
}

#[test]
fn ks_2samp_matches_scipy() {
    let g = goldens();
    for case in g["ks"].as_array().unwrap() {
        let (a, b) = pair(case);
        let r = ks_2samp(&a, &b).unwrap();
        let n = name(case);
        check("ks statistic", &n, r.statistic, num(&case["statistic"]));
        check("ks p-value", &n, r.p_value, num(&case["pvalue"]));
    }
}

#[test]
fn kstwo_and_smirnov_match_scipy() {
    let g = goldens();
    for case in g["kstwo"].as_array().unwrap() {
        let (n, x) = (case["n"].as_u64().unwrap(), num(&case["x"]));
        check(
            "kstwo.sf",
            &format!("n={n} x={x}"),
            kstwo_sf(n, x),
            num(&case["sf"]),
        );
    }
    for case in g["smirnov"].as_array().unwrap() {
        let (n, x) = (case["n"].as_u64().unwrap(), num(&case["x"]));
        check(
            "smirnov",
            &format!("n={n} x={x}"),
            smirnov_sf(n, x),
            num(&case["sf"]),
        );
    }
}

#[test]
fn anderson_ksamp_matches_scipy() {
    let g = goldens();
    for case in g["anderson"].as_array().unwrap() {
        let (a, b) = pair(case);
        let r = anderson_ksamp(&[a.values(), b.values()]).unwrap();
        let n = name(case);
        check(
            "anderson statistic",
            &n,
            r.statistic,
            num(&case["statistic"]),
        );
        check("anderson p-value", &n, r.p_value, num(&case["pvalue"]));
        for (ours, theirs) in r
            .critical_values
            .iter()
            .zip(case["critical"].as_array().unwrap())
        {
            check("anderson critical", &n, *ours, num(theirs));
        }
    }
}

#[test]
fn evidently_numeric_distances_match() {
    let g = goldens();
    for case in g["wasserstein_norm"].as_array().unwrap() {
        let (a, b) = pair(case);
        check(
            "wasserstein_norm",
            &name(case),
            wasserstein_norm(&a, &b).unwrap(),
            num(&case["value"]),
        );
    }
    for case in g["binned_numeric"].as_array().unwrap() {
        let (a, b) = pair(case);
        let n = name(case);
        let filled = binned_numeric(&a, &b, true).unwrap();
        let raw = binned_numeric(&a, &b, false).unwrap();
        check("psi", &n, psi(&filled), num(&case["psi"]));
        check("kl_div", &n, kl_div(&filled), num(&case["kl_div"]));
        check(
            "jensenshannon",
            &n,
            jensen_shannon(&raw),
            num(&case["jensenshannon"]),
        );
    }
}

#[test]
fn categorical_tests_match() {
    let g = goldens();
    for case in g["categorical"].as_array().unwrap() {
        let t = table(case);
        let n = name(case);
        let chi = chi2_homogeneity(&t).unwrap();
        let want = &case["chi2_contingency"];
        check(
            "chi2_contingency statistic",
            &n,
            chi.statistic,
            num(&want["statistic"]),
        );
        check(
            "chi2_contingency p-value",
            &n,
            chi.p_value,
            num(&want["pvalue"]),
        );
        assert_eq!(chi.dof, want["dof"].as_u64().unwrap(), "{n}");

        let gof = chi2_goodness_of_fit(&t).unwrap();
        let want = &case["chisquare_gof"];
        check(
            "chisquare_gof statistic",
            &n,
            gof.statistic,
            num(&want["statistic"]),
        );
        let p = num(&want["pvalue"]);
        if p.is_nan() {
            // scipy's p-value with no degrees of freedom is NaN, which Evidently reads as
            // "not drifted"; ours is 1 for the same verdict.
            assert_eq!(gof.p_value, 1.0, "{n}");
        } else {
            check("chisquare_gof p-value", &n, gof.p_value, p);
        }

        if let Some(z) = case["z_test"].as_object() {
            let r = z_test(&t).unwrap();
            check("z_test statistic", &n, r.statistic, num(&z["statistic"]));
            check("z_test p-value", &n, r.p_value, num(&z["pvalue"]));
        }
        let filled: BinnedShares = binned_categorical(&t, true).unwrap();
        let raw = binned_categorical(&t, false).unwrap();
        check("psi (categorical)", &n, psi(&filled), num(&case["psi"]));
        check(
            "kl_div (categorical)",
            &n,
            kl_div(&filled),
            num(&case["kl_div"]),
        );
        check(
            "jensenshannon (categorical)",
            &n,
            jensen_shannon(&raw),
            num(&case["jensenshannon"]),
        );
    }
}

#[test]
fn benjamini_hochberg_matches_scipy() {
    let g = goldens();
    for case in g["bh"].as_array().unwrap() {
        let ps: Vec<f64> = case["ps"].as_array().unwrap().iter().map(num).collect();
        let want: Vec<f64> = case["adjusted"]
            .as_array()
            .unwrap()
            .iter()
            .map(num)
            .collect();
        let ours = benjamini_hochberg(&ps).unwrap();
        assert_eq!(ours.len(), want.len());
        for (o, w) in ours.iter().zip(&want) {
            check("benjamini_hochberg", &format!("{ps:?}"), *o, *w);
        }
    }
}

/// Prints the worst relative errors seen by the tests that ran before it in this process (the
/// harness runs tests in parallel, so run with `--test-threads=1` for a complete table).
#[test]
fn zz_report_worst_errors() {
    ks_2samp_matches_scipy();
    kstwo_and_smirnov_match_scipy();
    anderson_ksamp_matches_scipy();
    evidently_numeric_distances_match();
    categorical_tests_match();
    benjamini_hochberg_matches_scipy();
    for (stat, worst) in WORST.lock().unwrap().iter() {
        println!("{stat:32} max relative error {worst:.2e}");
    }
}
