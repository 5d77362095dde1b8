"""The scikit-learn and PyTorch side of scripts/bench-train.sh: the same measurements as
`petrel bench train`, on the same data, printed as one JSON object.

The penguins data gets the trainer's preprocessing (median imputation and standardisation of
numeric columns, one-hot categoricals, fitted on the training split) and the trainer's split
(stratified 80/20, seed 42), so every library fits the same matrix. The MLP is the trainer's:
one hidden layer of 32 ReLU units, Adam at 0.01 with L2 1e-4, 200 full-batch epochs. The
synthetic rows follow `petrel bench train`'s generator in distribution (7 numeric features whose
class means differ, uniform noise), not row for row.
"""
import json
import os
import statistics
import sys
import time

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.neural_network import MLPClassifier

NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"]
CATEGORICAL = ["island", "sex"]


def penguins(path):
    df = pd.read_csv(path, na_values=["NA", ""])
    df = df[df["species"].notna()]
    y = df["species"].astype("category").cat.codes.to_numpy()
    train, test = train_test_split(np.arange(len(df)), test_size=0.2, stratify=y, random_state=42)

    def encode(rows, ref):
        cols = []
        for c in NUMERIC:
            med = ref[c].median()
            x = rows[c].fillna(med)
            cols.append(((x - ref[c].fillna(med).mean()) / (ref[c].fillna(med).std(ddof=0) or 1.0)).to_numpy())
        for c in CATEGORICAL:
            for v in sorted(ref[c].dropna().unique()):
                cols.append((rows[c] == v).astype(float).to_numpy())
        return np.stack(cols, axis=1).astype(np.float32)

    ref = df.iloc[train]
    return encode(df.iloc[train], ref), y[train], encode(df.iloc[test], ref), y[test]


def synthetic(n, seed=7):
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 3, n)
    centre = np.array([[((c * 7 + j) % 5) * 0.6 for j in range(7)] for c in range(3)])
    x = centre[cls] + rng.uniform(-1, 1, (n, 7))
    x = (x - x.mean(0)) / x.std(0)
    return x.astype(np.float32), cls


def sk_mlp(n, **kw):
    return MLPClassifier(hidden_layer_sizes=(kw.get("hidden", 32),), solver="adam",
                         learning_rate_init=kw.get("lr", 0.01), alpha=kw.get("alpha", 1e-4),
                         batch_size=n, max_iter=kw.get("epochs", 200), tol=0.0,
                         n_iter_no_change=10**9, shuffle=False, random_state=42)


def torch_fit(x, y, hidden=32, lr=0.01, wd=1e-4, epochs=200, dropout=0.0, seed=42):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU()]
    if dropout > 0:
        layers.append(torch.nn.Dropout(dropout))
    layers.append(torch.nn.Linear(hidden, int(y.max()) + 1))
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
    return model


def torch_accuracy(model, x, y):
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def timed(f, runs):
    times, out = [], None
    for _ in range(runs):
        s = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - s)
    return statistics.median(times), out


def reviews(path):
    """The review file as the trainer encodes it: one-hot product, then words and word pairs
    hashed into 2,048 buckets with smoothed TF-IDF fitted on the training split, unit rows (the
    hash is scikit-learn's signed MurmurHash3, not FNV, so collisions differ); stratified 80/20."""
    df = pd.read_csv(path, keep_default_na=False)
    y = (df["sentiment"] == "positive").to_numpy().astype(np.int64)
    train, test = train_test_split(np.arange(len(df)), test_size=0.2, stratify=y, random_state=42)
    hashing = HashingVectorizer(n_features=2048, ngram_range=(1, 2), alternate_sign=False, norm=None)
    tfidf = TfidfTransformer()
    text_train = tfidf.fit_transform(hashing.transform(df["review"].iloc[train]))
    text_test = tfidf.transform(hashing.transform(df["review"].iloc[test]))
    products = sorted(df["product"].iloc[train].unique())

    def encode(idx, text):
        onehot = np.stack([(df["product"].iloc[idx] == p).to_numpy(float) for p in products], 1)
        return np.hstack([onehot, text.toarray()]).astype(np.float32)

    return encode(train, text_train), y[train], encode(test, text_test), y[test]


def text_bench(path, runs, epochs):
    """Seconds from the file to a trained, scored text model (median of runs), per library."""
    out = {}

    def sk():
        xtr, ytr, xte, yte = reviews(path)
        return sk_mlp(len(xtr), epochs=epochs).fit(xtr, ytr).score(xte, yte)

    def pt():
        xtr, ytr, xte, yte = reviews(path)
        m = torch_fit(xtr, ytr, epochs=epochs)
        return torch_accuracy(m, xte, yte)

    t, acc = timed(sk, runs)
    out["sklearn_text_fit_s"], out["sklearn_text_test_accuracy"] = t, float(acc)
    t, acc = timed(pt, runs)
    out["torch_text_fit_s"], out["torch_text_test_accuracy"] = t, float(acc)
    return out


def digits(path):
    """The digits file as the trainer reads it: 64 pixels per image, standardised with the mean
    and standard deviation of every training pixel; stratified 80/20 (scikit-learn's split, not
    the trainer's, so the held-out rows differ but not their number)."""
    df = pd.read_csv(path)
    x = np.stack([np.array(s.split(), dtype=np.float32) for s in df["image"]]).reshape(-1, 1, 8, 8)
    y = df["digit"].to_numpy().astype(np.int64)
    train, test = train_test_split(np.arange(len(df)), test_size=0.2, stratify=y, random_state=42)
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def torch_cnn(classes, channels=8, hidden=32):
    """The trainer's CNN: two blocks of conv 3x3 (padding 1), batch norm, ReLU, max pool 2x2
    (channels, then twice as many), a hidden layer and the logits."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, channels, 3, padding=1), torch.nn.BatchNorm2d(channels), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(channels, 2 * channels, 3, padding=1), torch.nn.BatchNorm2d(2 * channels),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(2 * channels * 2 * 2, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, classes))


def digits_bench(path, runs, epochs):
    """Seconds from the digits file to a trained, scored CNN (median of runs): Adam at 0.01 with
    L2 1e-4, shuffled minibatches of 64 (a last lone row skipped, as the trainer does), as
    `petrel bench train --digits-data` trains it."""
    def pt():
        xtr, ytr, xte, yte = digits(path)
        torch.manual_seed(42)
        model = torch_cnn(10)
        opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-4)
        loss_fn = torch.nn.CrossEntropyLoss()
        xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
        g = torch.Generator().manual_seed(42)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=g)
            for i in range(0, len(xt), 64):
                idx = order[i:i + 64]
                if len(idx) < 2:
                    continue
                opt.zero_grad()
                loss = loss_fn(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
        model.eval()
        return torch_accuracy(model, xte, yte)

    t, acc = timed(pt, runs)
    return {"torch_digits_fit_s": t, "torch_digits_test_accuracy": float(acc)}


def main():
    data, runs, rows, epochs, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    text = sys.argv[6] if len(sys.argv) > 6 else None
    text_epochs = int(sys.argv[7]) if len(sys.argv) > 7 else 30
    text_only = len(sys.argv) > 8 and sys.argv[8] == "text-only"
    torch.set_num_threads(os.cpu_count() or 1)
    out = {"versions": {"sklearn": __import__("sklearn").__version__, "torch": torch.__version__}}
    digits_data = os.environ.get("DIGITS_DATA")
    if digits_data:
        out.update(digits_bench(digits_data, runs, int(os.environ.get("DIGITS_EPOCHS", "12"))))
    if os.environ.get("DIGITS_ONLY"):
        print(json.dumps(out))
        return
    if text:
        out.update(text_bench(text, runs, text_epochs))
    if text_only:
        print(json.dumps(out))
        return
    xtr, ytr, xte, yte = penguins(data)

    t, m = timed(lambda: sk_mlp(len(xtr)).fit(xtr, ytr), runs)
    out["sklearn_fit_s"], out["sklearn_fit_test_accuracy"] = t, float(m.score(xte, yte))
    t, m = timed(lambda: torch_fit(xtr, ytr), runs)
    out["torch_fit_s"], out["torch_fit_test_accuracy"] = t, torch_accuracy(m, xte, yte)

    # 24 configurations x 5 folds, the grid `petrel bench train` sweeps.
    grid = {"hidden_layer_sizes": [(16,), (32,), (64,)], "learning_rate_init": [0.003, 0.01],
            "alpha": [0.0, 1e-4]}
    folds = StratifiedKFold(5, shuffle=True, random_state=42)
    s = time.perf_counter()
    # scikit-learn's MLP has no dropout; the dropout axis is run as a repeat of the grid, so
    # the trial count matches (24).
    for _ in (0.0, 0.1):
        search = GridSearchCV(sk_mlp(int(len(xtr) * 0.8)), grid, cv=folds, n_jobs=concurrency, refit=True)
        search.fit(xtr, ytr)
    out["sklearn_sweep_s"] = time.perf_counter() - s
    out["sklearn_sweep_test_accuracy"] = float(search.score(xte, yte))
    s = time.perf_counter()
    best = (-1.0, None)
    for hidden in (16, 32, 64):
        for lr in (0.003, 0.01):
            for wd in (0.0, 1e-4):
                for dropout in (0.0, 0.1):
                    accs = []
                    for fit_idx, val_idx in folds.split(xtr, ytr):
                        m = torch_fit(xtr[fit_idx], ytr[fit_idx], hidden, lr, wd, 200, dropout)
                        m.eval()
                        accs.append(torch_accuracy(m, xtr[val_idx], ytr[val_idx]))
                    if np.mean(accs) > best[0]:
                        best = (float(np.mean(accs)), (hidden, lr, wd, dropout))
    final = torch_fit(xtr, ytr, *best[1][:3], 200, best[1][3])
    final.eval()
    out["torch_sweep_s"] = time.perf_counter() - s
    out["torch_sweep_test_accuracy"] = torch_accuracy(final, xte, yte)

    x, y = synthetic(rows)
    n = int(rows * 0.8)
    s = time.perf_counter()
    sk_mlp(n, epochs=epochs).fit(x[:n], y[:n])
    out["sklearn_throughput_samples_per_s"] = n * epochs / (time.perf_counter() - s)
    s = time.perf_counter()
    torch_fit(x[:n], y[:n], epochs=epochs)
    out["torch_throughput_samples_per_s"] = n * epochs / (time.perf_counter() - s)

    t, m = timed(lambda: HistGradientBoostingClassifier(max_iter=100, max_depth=5, learning_rate=0.3,
                                                         early_stopping=False, random_state=42).fit(xtr, ytr), runs)
    out["sklearn_gbt_fit_s"], out["sklearn_gbt_test_accuracy"] = t, float(m.score(xte, yte))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
