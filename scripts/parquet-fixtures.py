"""Writes the Parquet files ingest's tests read, with pyarrow (what pandas' to_parquet uses).

    python3 -m venv /tmp/v && /tmp/v/bin/pip install pyarrow
    /tmp/v/bin/python scripts/parquet-fixtures.py

The penguins go in twice, Snappy-compressed (pyarrow's and Spark's default) and with
Zstandard (polars' default), with `NA` read as null and the numeric columns as doubles or
integers as pandas would type them; a table with a nested column shows the error users get.
"""

import pathlib

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "services/ingest/tests/data"
OUT.mkdir(parents=True, exist_ok=True)

table = pacsv.read_csv(
    ROOT / "data/penguins.csv",
    convert_options=pacsv.ConvertOptions(null_values=["NA", ""], strings_can_be_null=True),
)
# Several row groups, so that the reader crosses their boundaries.
pq.write_table(table, OUT / "penguins-snappy.parquet", compression="snappy", row_group_size=100)
pq.write_table(table, OUT / "penguins-zstd.parquet", compression="zstd", row_group_size=100)

nested = pa.table(
    {
        "species": ["Adelie", "Gentoo"],
        "bill": [{"length": 39.1, "depth": 18.7}, {"length": 46.1, "depth": 13.2}],
    }
)
pq.write_table(nested, OUT / "nested.parquet")
for f in sorted(OUT.glob("*.parquet")):
    print(f.relative_to(ROOT), f.stat().st_size, "bytes")
print(table.schema)
