"""Write the sample data in sample_data/ (committed; ``make sample-data`` rebuilds it).

- features.parquet: 2,000 rows in 4 row groups: an integer ``id``, a string
  ``label``, and eight numeric features on very different scales (1e-3 to
  1e6, one integer), with a few null cells.
- images.npy: an image-like float32 tensor of shape (256, 8, 8, 3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent


def main() -> None:
    rng = np.random.default_rng(20261124)
    n = 2000
    columns = {
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "label": pa.array(rng.choice(["cat", "dog", "bird"], size=n)),
        "age": pa.array(rng.normal(41.0, 12.0, n).round(1)),
        "income": pa.array(rng.lognormal(10.5, 0.6, n)),
        "height_m": pa.array(rng.normal(1.72, 0.09, n).astype(np.float32)),
        "visits": pa.array(rng.poisson(3.0, n).astype(np.int32)),
        "ratio": pa.array(rng.beta(2.0, 5.0, n)),
        "latency_ms": pa.array(rng.gamma(2.0, 40.0, n)),
        "tiny": pa.array(rng.normal(0.002, 0.0005, n)),
        "big": pa.array(rng.normal(1.5e6, 2.0e4, n)),
    }
    for name, rows in {
        "income": [3, 400, 1999],
        "age": [17],
        "ratio": [1000, 1001],
    }.items():
        values = columns[name].to_numpy(zero_copy_only=False)
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        columns[name] = pa.array(values, mask=mask)
    table = pa.table(columns)
    pq.write_table(table, HERE / "features.parquet", row_group_size=500)

    channel_means = np.array([0.48, 0.46, 0.41], dtype=np.float32)
    channel_stds = np.array([0.23, 0.22, 0.23], dtype=np.float32)
    images = (
        rng.normal(size=(256, 8, 8, 3)).astype(np.float32) * channel_stds
        + channel_means
    )
    np.save(HERE / "images.npy", images)


if __name__ == "__main__":
    main()
