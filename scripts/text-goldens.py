#!/usr/bin/env python3
"""Prints the TF-IDF goldens of libs/ml/src/text.rs: scikit-learn's TfidfVectorizer with all
defaults on the test corpus, each row's non-zero weights sorted.

    python3 -m venv /tmp/skl && /tmp/skl/bin/pip install scikit-learn
    /tmp/skl/bin/python scripts/text-goldens.py
"""
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer

CORPUS = [
    "The battery is great, great value",
    "terrible battery; the screen died",
    "Great screen and great sound",
    "",
]

print(f"# scikit-learn {sklearn.__version__}")
for ngrams in (1, 2):
    print(f"# ngram_range=(1, {ngrams})")
    matrix = TfidfVectorizer(ngram_range=(1, ngrams)).fit_transform(CORPUS)
    for i in range(matrix.shape[0]):
        row = sorted(matrix.getrow(i).data.tolist())
        print("&[" + ", ".join(repr(v) for v in row) + "],")
