#!/usr/bin/env bash
# Training speed against scikit-learn and PyTorch on this machine's CPU, in one run: the
# penguins MLP fit, a 24-configuration 5-fold cross-validated sweep, training samples/s on
# 1,000,000 synthetic rows, and gradient-boosted trees on penguins (against scikit-learn's
# HistGradientBoostingClassifier), and the review sentiment model: seconds from the generated
# file to a trained, scored model at its test accuracy (against the same pipeline in
# scikit-learn and PyTorch), and the digits CNN: seconds from data/digits.csv to a trained,
# scored CNN at its test accuracy (against the same network in PyTorch). Prints medians and
# ratios; results go in docs/benchmarks.md.
#
#   scripts/bench-train.sh              RUNS=5 ROWS=1000000 EPOCHS=5 CONCURRENCY=2
#                                       TEXT_ROWS=5000 TEXT_EPOCHS=30 TEXT_ONLY=1 (text alone)
#                                       DIGITS_EPOCHS=12 DIGITS_ONLY=1 (the CNN alone)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${BENCH_TRAIN_VENV:-/tmp/petrel-bench-train-venv}
RUNS=${RUNS:-5}
ROWS=${ROWS:-1000000}
EPOCHS=${EPOCHS:-5}
CONCURRENCY=${CONCURRENCY:-$(nproc)}
TEXT_ROWS=${TEXT_ROWS:-5000}
TEXT_EPOCHS=${TEXT_EPOCHS:-30}
TEXT_ONLY=${TEXT_ONLY:-}
export DIGITS_EPOCHS=${DIGITS_EPOCHS:-12} DIGITS_ONLY=${DIGITS_ONLY:-}
# The text-only run measures the text model alone.
if [[ -n $TEXT_ONLY ]]; then export DIGITS_DATA=""; else export DIGITS_DATA=data/digits.csv; fi

[[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sklearn, torch, pandas' 2>/dev/null \
  || { "$PY" -m venv "$VENV"; "$VENV/bin/pip" install -q scikit-learn pandas torch; }
cargo build --release -q --locked --bins  # the workspace: `-p` would re-resolve features and rebuild every dependency
BIN=${CARGO_TARGET_DIR:-target}/release/petrel

REVIEWS=$(mktemp --suffix=.csv)
trap 'rm -f "$REVIEWS"' EXIT
"$BIN" reviews --rows "$TEXT_ROWS" --seed 1 --out "$REVIEWS"

echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
petrel=$("$BIN" bench train --runs "$RUNS" --rows "$ROWS" --epochs "$EPOCHS" --concurrency "$CONCURRENCY" \
  --text-data "$REVIEWS" --text-epochs "$TEXT_EPOCHS" ${TEXT_ONLY:+--text-only} \
  ${DIGITS_DATA:+--digits-data "$DIGITS_DATA" --digits-epochs "$DIGITS_EPOCHS"} ${DIGITS_ONLY:+--digits-only})
others=$("$VENV/bin/python" -W ignore scripts/bench_train.py data/penguins.csv "$RUNS" "$ROWS" "$EPOCHS" "$CONCURRENCY" \
  "$REVIEWS" "$TEXT_EPOCHS" ${TEXT_ONLY:+text-only})
"$VENV/bin/python" - "$petrel" "$others" <<'PY'
import json, sys
p, o = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"versions: {o['versions']}")
def digits_line():
    print(f"{'digits CNN: file to scored model':<34}  petrel {p['digits_fit_s']:>12.4g} s  pytorch {o['torch_digits_fit_s']:>12.4g}  "
          f"({o['torch_digits_fit_s'] / p['digits_fit_s']:.1f}x)")
    print(f"digits test accuracy ({p['digits_epochs']} epochs): petrel {p['digits_test_accuracy']:.4f}, "
          f"pytorch {o['torch_digits_test_accuracy']:.4f}")
if "digits_fit_s" in p and "text_fit_s" not in p:
    digits_line()
    print(json.dumps({"petrel": p, "others": o}))
    sys.exit(0)
def text_line():
    print(f"{'reviews: file to scored model':<34}  petrel {p['text_fit_s']:>12.4g} s  sklearn {o['sklearn_text_fit_s']:>12.4g}  "
          f"({o['sklearn_text_fit_s'] / p['text_fit_s']:.1f}x)  pytorch {o['torch_text_fit_s']:>12.4g}  ({o['torch_text_fit_s'] / p['text_fit_s']:.1f}x)")
    print(f"text test accuracy ({p['text_rows']} reviews, {p['text_epochs']} epochs): petrel {p['text_test_accuracy']:.4f}, "
          f"sklearn {o['sklearn_text_test_accuracy']:.4f}, pytorch {o['torch_text_test_accuracy']:.4f}")
if "fit_s" not in p:
    text_line()
    print(json.dumps({"petrel": p, "others": o}))
    sys.exit(0)
def row(name, petrel, sk, pt, unit, higher=False):
    f = (lambda a, b: a / b) if higher else (lambda a, b: b / a)
    cells = [f"{name:<34}", f"petrel {petrel:>12.4g} {unit}", f"sklearn {sk:>12.4g}", f"({f(petrel, sk):.1f}x)"]
    if pt is not None:
        cells += [f"pytorch {pt:>12.4g}", f"({f(petrel, pt):.1f}x)"]
    print("  ".join(cells))
row("penguins MLP fit (median)", p["fit_s"], o["sklearn_fit_s"], o["torch_fit_s"], "s")
row("24-config 5-fold sweep", p["sweep_s"], o["sklearn_sweep_s"], o["torch_sweep_s"], "s")
row("throughput, 1M rows", p["throughput_samples_per_s"], o["sklearn_throughput_samples_per_s"], o["torch_throughput_samples_per_s"], "samples/s", higher=True)
row("penguins GBT fit (median)", p["gbt_fit_s"], o["sklearn_gbt_fit_s"], None, "s")
print(f"test accuracy: petrel MLP {p['fit_test_accuracy']:.4f}, sklearn {o['sklearn_fit_test_accuracy']:.4f}, pytorch {o['torch_fit_test_accuracy']:.4f}; "
      f"sweep petrel {p['sweep_test_accuracy']:.4f}, sklearn {o['sklearn_sweep_test_accuracy']:.4f}, pytorch {o['torch_sweep_test_accuracy']:.4f}; "
      f"GBT petrel {p['gbt_test_accuracy']:.4f}, sklearn {o['sklearn_gbt_test_accuracy']:.4f}; 1M-row MLP petrel {p['throughput_test_accuracy']:.4f}")
text_line()
if "digits_fit_s" in p:
    digits_line()
print(json.dumps({"petrel": p, "others": o}))
PY
