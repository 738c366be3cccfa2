"""``make bench``: bncli side by side with its baselines, printed as one table.

Every row is measured in this one run, on the same data (generated once into
``benchmarks/data/``, see :mod:`data`, and brought into the page cache the
same way before it is timed, see :func:`data.warm`): a warm-up, then several
repetitions, bncli and its baseline taken in turns so that both see the same
load on a shared machine, and the fastest of each kept (what other tenants of
a shared machine do only ever adds time: the minimum is the estimate they
move least, where a median moved by a tenth between runs and flipped rows
whose true ratio sits within a tenth of its target). Throughputs are samples per
second; the per-batch baselines (Keras, PyTorch, a NumPy loop) run on a
prefix of the data, since they are orders of magnitude slower.

bncli is measured in-process through the library
(``bncli.BatchNormalization().fit``, ``bncli.engines.local.transform_layer``),
and as whole processes for start-up time and peak memory (the peak resident
set of a ``bncli`` subprocess, from ``getrusage(RUSAGE_CHILDREN)``).

Usage: ``python benchmarks/run.py [--quick] [--repeat N]``. ``--quick`` runs
on 32 MiB of data: a smoke test of this script, whose ratios mean little
(and the memory targets, set for inputs of 1 GB and more, are not judged).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "numpy")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import data
import numpy as np
from baselines import (
    BATCH,
    keras_per_batch,
    numpy_per_batch,
    numpy_transform,
    pyarrow_transform,
    read_table,
    reduce_pass,
    sklearn_partial_fit,
    torch_per_batch,
)
from measure import (
    Row,
    best_time,
    bncli_command,
    child_cpu,
    peak_rss,
    rate,
    run,
    side_by_side,
    throughput_row,
)

# ------------------------------------------------------------------ bncli


def bncli_fit(
    path: Path,
    batch_size: int = BATCH,
    workers: int | None = None,
    stats: str | None = None,
    axis: int = -1,
) -> Any:
    import bncli

    layer = bncli.BatchNormalization(axis=axis)
    layer.fit(path, batch_size=batch_size, workers=workers, stats=stats)
    return layer


def bncli_parts(path: Path, folder: Path, parts: int) -> list[Path]:
    """``parts`` partial fits of ``path``, one after the other (as many hosts would)."""
    import bncli
    from bncli.engines.base import FitOptions

    written = []
    for k in range(1, parts + 1):
        written.append(folder / f"part-{k}.h5")
        bncli.fit_part(written[-1], [path], FitOptions(), part=(k, parts))
    return written


def bncli_merge(state: Path, parts: list[Path]) -> None:
    import bncli

    state.unlink(missing_ok=True)
    bncli.merge(state, parts)


def bncli_transform(
    state: Path, path: Path, output: Path, workers: int | None = None
) -> None:
    import bncli
    from bncli.engines.base import TransformOptions
    from bncli.engines.local import transform_layer

    options = TransformOptions(overwrite=True, workers=workers)
    transform_layer(bncli.load(state), [path], output, options)


# -------------------------------------------------------------- processes


# ------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="32 MiB of data, a smoke run"
    )
    parser.add_argument("--repeat", type=int, default=None, help="repetitions per row")
    args = parser.parse_args(argv)
    quick = args.quick
    rows = data.QUICK_ROWS if quick else data.FULL_ROWS
    repeat = args.repeat or (2 if quick else 5)
    slow_repeat = args.repeat or (1 if quick else 3)
    prefix = min(rows, 1 << 16)  # per-batch baselines: 2,048 batches of 32
    workers = (
        len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count()
    )

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    say(f"bench: generating or reusing data in {data.DATA} ...")
    npy = data.npy_path(rows)
    parquet = data.parquet_path(rows)
    small = data.small_npy_path()
    small_parquet = data.parquet_path(1 << 12)
    data.warm([npy, parquet, small])
    decoded_mib = rows * data.CHANNELS * 4 / 2**20
    columns = [f"c{j}" for j in range(data.CHANNELS)]
    table: list[Row] = []
    work = Path(tempfile.mkdtemp(prefix="bncli-bench-", dir=data.DATA))

    def add(row: Row) -> None:
        table.append(row)
        ratio = "" if row.ratio is None else f" ratio {row.ratio:.3g}"
        say(f"  {row.name}: {row.bncli} vs {row.baseline}{ratio} [{row.result}]")

    try:
        # ---- fit on NPY, warm page cache, against one reduction pass
        say("bench: fit on NPY")
        t_fit, t_reduce = side_by_side(
            lambda: bncli_fit(npy), lambda: reduce_pass(npy), repeat
        )
        add(
            throughput_row(
                "fit NPY (bs 32) vs np.add.reduce pass",
                rows,
                t_fit,
                rows,
                t_reduce,
                0.5,
            )
        )

        say("bench: fit on NPY against one flat x.sum() over the mapped bytes")
        import bench_layouts

        t_fit_flat, t_flat = side_by_side(
            lambda: bncli_fit(npy), lambda: bench_layouts.flat_sum(npy), repeat
        )
        add(
            throughput_row(
                "fit NPY (bs 32) vs one flat x.sum() pass (bytes/s)",
                rows,
                t_fit_flat,
                rows,
                t_flat,
                0.35,
            )
        )
        say("bench: layouts (256 MiB each)")
        files = bench_layouts.layouts()
        data.warm(files.values())
        n16 = np.load(files["c16"], mmap_mode="r").shape[0]
        for name, other, axis, reference, minimum in (
            (
                "channels first (N,64,8,8) --axis 1 vs last (N,8,8,64)",
                "first",
                1,
                "last",
                0.7,
            ),
            ("1,024 channels vs 16", "c1024", -1, "c16", 0.8),
            ("1 channel vs 16", "c1", -1, "c16", 1.0),
        ):
            t_other, t_ref = side_by_side(
                lambda other=other, axis=axis: bncli_fit(files[other], axis=axis),
                lambda reference=reference: bncli_fit(files[reference]),
                # a fit of 256 MiB takes ~25 ms: more turns for a steady minimum
                3 * repeat,
            )
            add(
                throughput_row(
                    f"fit {name} (bytes/s)", n16, t_other, n16, t_ref, minimum
                )
            )

        t_small, t_large = side_by_side(
            lambda: bncli_fit(npy, batch_size=8),
            lambda: bncli_fit(npy, batch_size=4096),
            repeat,
        )
        add(
            throughput_row("fit NPY bs 8 vs bs 4096", rows, t_small, rows, t_large, 0.5)
        )

        # ---- population statistics against Keras's moving average
        for mode in ("precise", "exact"):
            say(f"bench: fit --stats {mode}")
            t_mode, t_ema = side_by_side(
                lambda mode=mode: bncli_fit(npy, stats=mode),
                lambda: bncli_fit(npy),
                repeat,
            )
            add(
                throughput_row(
                    f"fit NPY --stats {mode} vs --stats ema",
                    rows,
                    t_mode,
                    rows,
                    t_ema,
                    1 / 1.2,
                )
            )

        # ---- per-batch baselines on a prefix, against fit at batch size 32
        x = np.array(np.load(npy, mmap_mode="r")[:prefix])
        baselines = [
            ("Keras 3 layer per batch (NumPy)", keras_per_batch, prefix // 4, 100.0),
            ("torch BatchNorm1d per batch", torch_per_batch, prefix, 10.0),
            ("NumPy per-batch loop", numpy_per_batch, prefix, 10.0),
        ]
        for label, fn, n, minimum in baselines:
            say(f"bench: {label}")
            part = x[:n]
            t_base = best_time(lambda fn=fn, part=part: fn(part), max(repeat // 2, 1))
            add(
                throughput_row(
                    f"fit (bs 32) vs {label}", rows, t_fit, n, t_base, minimum
                )
            )
        say("bench: scikit-learn StandardScaler.partial_fit")
        sk_rows = min(rows, 1 << 22)
        x_sk = np.load(npy, mmap_mode="r")[:sk_rows]
        t_sk = best_time(lambda: sklearn_partial_fit(x_sk), max(repeat // 2, 1))
        add(
            throughput_row(
                "fit (bs 32) vs StandardScaler.partial_fit (64Ki rows)",
                rows,
                t_fit,
                sk_rows,
                t_sk,
                2.0,
            )
        )

        # ---- workers: 2 against 1, and the same result for any N
        say("bench: workers")
        t_one, t_all = side_by_side(
            lambda: bncli_fit(npy, workers=1),
            lambda: bncli_fit(npy, workers=workers),
            repeat,
        )
        one, every = bncli_fit(npy, workers=1), bncli_fit(npy, workers=workers)
        same = np.array_equal(
            one.moving_mean64, every.moving_mean64
        ) and np.array_equal(one.moving_variance64, every.moving_variance64)
        speedup = t_one / t_all
        add(
            Row(
                f"fit speed-up, {workers} workers vs 1 (same result: {same})",
                rate(rows, t_all),
                rate(rows, t_one),
                speedup,
                ">= 1.5x",
                speedup >= 1.5 and same,
            )
        )
        dask_row = dask_speedup(npy)
        if dask_row is not None:
            add(dask_row)

        # ---- Parquet fit against read_table
        say("bench: fit on Parquet")
        t_pq, t_read = side_by_side(
            lambda: bncli_fit(parquet),
            lambda: read_table(parquet, columns),
            slow_repeat,
        )
        add(
            throughput_row(
                "fit Parquet vs pq.read_table", rows, t_pq, rows, t_read, 0.7
            )
        )

        # ---- a wide table: 1,024 float32 columns (256 MiB), reported (before
        # session 9: 1.7 s and 710 MiB, whole chunks; now 16 columns a task)
        say("bench: fit on a wide Parquet table")
        wide_rows = rows // 256
        wide = data.wide_parquet_path(wide_rows)
        data.warm([wide])
        t_wide, t_wide_read = side_by_side(
            lambda: bncli_fit(wide), lambda: read_table(wide, None), slow_repeat
        )
        add(
            Row(
                "fit Parquet of 1,024 columns vs pq.read_table (report)",
                rate(wide_rows, t_wide),
                rate(wide_rows, t_wide_read),
                t_wide_read / t_wide,
                "report",
                None,
            )
        )
        peak, _ = peak_rss(
            [*bncli_command(), "fit", str(work / "w.h5"), str(wide), "--quiet"]
        )
        add(
            Row(
                f"  peak RSS, fit Parquet of 1,024 columns "
                f"({wide_rows * 1024 * 4 / 2**20:,.0f} MiB)",
                f"{peak:,.0f} MiB",
                "",
                None,
                "report",
                None,
            )
        )

        # ---- a fit sharded in 8 parts, then merged
        say("bench: 8 partial fits of the Parquet file, and their merge")
        parts_folder = work / "parts"
        parts_folder.mkdir()
        part_paths = bncli_parts(parquet, parts_folder, 8)
        t_merge = best_time(lambda: bncli_merge(work / "merged.h5", part_paths), repeat)
        add(
            Row(
                "merge of 8 parts of the Parquet fit (beyond the parts)",
                f"{t_merge:.3f} s",
                "1 s",
                t_merge,
                "< 1 s",
                t_merge < 1.0,
            )
        )

        # ---- transform against plain read, compute, write
        state = work / "state.h5"
        layer = bncli_fit(npy)
        layer.save(state)
        mean = layer.moving_mean64
        inv = 1.0 / np.sqrt(layer.moving_variance64 + layer.epsilon)
        say("bench: transform NPY -> NPY")
        out_a, out_b = work / "bncli.npy", work / "plain.npy"
        t_tr, t_plain = side_by_side(
            lambda: bncli_transform(state, npy, out_a),
            lambda: numpy_transform(npy, out_b, mean, inv),
            slow_repeat,
        )
        add(
            throughput_row(
                "transform NPY->NPY vs NumPy read+compute+write",
                rows,
                t_tr,
                rows,
                t_plain,
                0.5,
            )
        )
        out_a.unlink(missing_ok=True)
        out_b.unlink(missing_ok=True)

        say("bench: transform Parquet -> Parquet")
        table_state = work / "table_state.h5"
        table_layer = bncli_fit(parquet)
        table_layer.save(table_state)
        mean_t = table_layer.moving_mean64
        inv_t = 1.0 / np.sqrt(table_layer.moving_variance64 + table_layer.epsilon)
        out_a, out_b = work / "bncli.parquet", work / "plain.parquet"
        t_tr, t_plain = side_by_side(
            lambda: bncli_transform(table_state, parquet, out_a),
            lambda: pyarrow_transform(parquet, out_b, mean_t, inv_t),
            slow_repeat,
        )
        add(
            throughput_row(
                "transform Parquet->Parquet vs pyarrow read+compute+write",
                rows,
                t_tr,
                rows,
                t_plain,
                0.5,
            )
        )
        out_a.unlink(missing_ok=True)
        out_b.unlink(missing_ok=True)

        # ---- peak memory of whole bncli processes
        say("bench: peak memory")
        command = bncli_command()
        limit = min(0.25 * decoded_mib, 400.0)
        for label, args_ in [
            ("fit NPY", ["fit", str(work / "m1.h5"), str(npy), "--quiet"]),
            (
                "transform NPY->NPY",
                [
                    "transform",
                    str(state),
                    str(npy),
                    "-o",
                    str(work / "m.npy"),
                    "--quiet",
                ],
            ),
            ("fit Parquet", ["fit", str(work / "m2.h5"), str(parquet), "--quiet"]),
            (
                "transform Parquet->Parquet",
                [
                    "transform",
                    str(table_state),
                    str(parquet),
                    "-o",
                    str(work / "m.parquet"),
                    "--quiet",
                ],
            ),
        ]:
            peak, _ = peak_rss([*command, *args_])
            share = peak / decoded_mib
            # A Parquet fit has its own bound: 192 MiB in all (about 108 MiB
            # of it python, numpy, pyarrow and h5py imported).
            bound = 192.0 if label == "fit Parquet" else limit
            judged = None if quick else peak <= bound
            add(
                Row(
                    f"peak RSS, {label} ({decoded_mib:,.0f} MiB decoded)",
                    f"{peak:,.0f} MiB",
                    f"{decoded_mib:,.0f} MiB",
                    share,
                    "<= 192 MiB" if label == "fit Parquet" else "<= 25%, <= 400 MiB",
                    judged,
                )
            )
            for leftover in ("m.npy", "m.parquet"):
                (work / leftover).unlink(missing_ok=True)
        # The floor under those rows, in this run: the libraries' code pages
        # count in the resident set, and how many a process maps depends on
        # how the page cache holds the library files (freshly installed ones
        # lie in large folios, mapped whole: 128 MiB here against 84 MiB for
        # the same wheels installed weeks earlier).
        floor, _ = peak_rss(
            [sys.executable, "-c", "import numpy, pyarrow.parquet, h5py, click"]
        )
        add(
            Row(
                "  yardstick: peak RSS of python -c 'import numpy, pyarrow.parquet, "
                "h5py, click'",
                f"{floor:,.0f} MiB",
                "",
                None,
                "report",
                None,
            )
        )

        # ---- object storage: the same Parquet fit from a local S3 server
        import bench_s3

        for server, label, judged in (
            ("plain", "a range server", True),
            ("moto", "moto", False),
        ):
            say(f"bench: fit Parquet from a local S3 server ({label})")
            # moto copies the whole object for every ranged request (about
            # 50 s a fit of the 1 GiB file): it is measured on the 32 MiB one.
            source = data.parquet_path(data.QUICK_ROWS) if server == "moto" else parquet
            try:
                s3 = bench_s3.measure(
                    source, lambda p: bncli_fit(p), 1 if quick else 2, work, server
                )
            except Exception as e:  # a server that fails must not sink the table
                say(f"  note: the {label} measurement failed: {type(e).__name__}: {e}")
                continue
            ratio = s3["fit_s3"] / s3["fit_file"]
            add(
                Row(
                    f"fit {source.stat().st_size >> 20} MiB Parquet from s3:// ({label}) vs the file, time",
                    f"{s3['fit_s3']:.2f} s",
                    f"{s3['fit_file']:.2f} s",
                    ratio,
                    "<= 1.5x" if judged else "report",
                    ratio <= 1.5 if judged else None,
                )
            )
            add(
                Row(
                    f"  yardstick: read_table from s3:// ({label}) vs the file",
                    f"{s3['read_s3']:.2f} s",
                    f"{s3['read_file']:.2f} s",
                    s3["read_s3"] / s3["read_file"],
                    "report",
                    None,
                )
            )

        # ---- inspect: its cost follows the BN layers, not the model's size
        say("bench: inspect of a ResNet50 .keras against a three-layer model's")
        big, small_model = bench_layouts.keras_models()
        t_big, t_small_model = side_by_side(
            run([*command, "inspect", str(big)]),
            run([*command, "inspect", str(small_model)]),
            2 * repeat,
        )
        ratio = t_big / t_small_model
        add(
            Row(
                "inspect ResNet50 .keras (103 MB, 53 BN) vs a 3-layer model",
                f"{t_big:.3f} s",
                f"{t_small_model:.3f} s",
                ratio,
                "<= 1.5x",
                ratio <= 1.5,
            )
        )

        # ---- start-up, side by side with the imports it cannot avoid
        say("bench: start-up")
        small_state = work / "small.h5"

        def small_fit(path: Path) -> Callable[[], None]:
            def fit() -> None:
                small_state.unlink(missing_ok=True)
                run([*command, "fit", str(small_state), str(path), "--quiet"])()

            return fit

        for name, bncli_call, imports in (
            ("bncli --help", run([*command, "--help"]), "numpy, click"),
            ("bncli fit, 4,096 samples", small_fit(small), "numpy, h5py, click"),
            (
                # pyarrow.parquet is the floor: not pyarrow.compute, nor pandas
                "bncli fit, 4,096-row Parquet",
                small_fit(small_parquet),
                "numpy, h5py, click, pyarrow.parquet",
            ),
        ):
            baseline = run([sys.executable, "-c", f"import {imports}"])
            t_bncli, t_imports = side_by_side(bncli_call, baseline, 2 * repeat)
            ratio = t_bncli / t_imports
            add(
                Row(
                    f"start-up: {name} vs python -c 'import {imports}'",
                    f"{t_bncli:.3f} s",
                    f"{t_imports:.3f} s",
                    ratio,
                    "<= 2x",
                    ratio <= 2.0,
                )
            )

        # CPU, not wall time: what a pipeline running commands side by side
        # pays. NumPy's OpenBLAS threads wait for work busily as it starts,
        # for 2**28 cycles by default; the CLI sets the least wait.
        def spinning() -> None:
            small_state.unlink(missing_ok=True)
            subprocess.run(
                [*command, "fit", str(small_state), str(small), "--quiet"],
                check=True,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "OPENBLAS_THREAD_TIMEOUT": "28"},
            )

        t_bncli, t_spinning = (
            child_cpu(fn, 2 * repeat) for fn in (small_fit(small), spinning)
        )
        add(
            Row(
                "CPU (user+sys): bncli fit, 4,096 samples vs the same, "
                "OpenBLAS's default wait",
                f"{t_bncli:.3f} s",
                f"{t_spinning:.3f} s",
                t_bncli / t_spinning,
                "report",
                None,
            )
        )
    finally:
        for path in work.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        work.rmdir()

    print_table(table, rows, quick)
    return 0 if all(row.ok is not False for row in table) else 1


def dask_speedup(npy: Path) -> Row | None:
    """The Dask engine's 2-vs-1 worker ratio, from ``bench_dask.py`` if present."""
    try:
        import bench_dask  # type: ignore[import-not-found]
    except ImportError:
        print(
            "  note: benchmarks/bench_dask.py not found; no Dask row", file=sys.stderr
        )
        return None
    try:
        result = bench_dask.measure_dask_speedup(npy)
    except Exception as e:  # a missing extra or cluster must not sink the table
        print(
            f"  note: Dask measurement failed: {type(e).__name__}: {e}", file=sys.stderr
        )
        return None
    bncli_rate = baseline_rate = "-"
    if isinstance(result, dict):
        samples = result.get("samples")
        if samples and result.get("seconds_1") and result.get("seconds_2"):
            bncli_rate = rate(samples, result["seconds_2"])
            baseline_rate = rate(samples, result["seconds_1"])
        result = result.get("ratio", result.get("speedup"))
    if isinstance(result, tuple | list) and len(result) == 2:
        one, two = (float(v) for v in result)
        result = one / two  # (seconds with 1 worker, seconds with 2)
    if not isinstance(result, int | float):
        print(f"  note: Dask measurement returned {result!r}", file=sys.stderr)
        return None
    return Row(
        "Dask engine fit speed-up, 2 workers vs 1",
        bncli_rate,
        baseline_rate,
        float(result),
        "report",
        None,
    )


def print_table(table: list[Row], rows: int, quick: bool) -> None:
    header = ("measurement", "bncli", "baseline", "ratio", "target", "result")
    lines = [
        (
            r.name,
            r.bncli,
            r.baseline,
            "" if r.ratio is None else f"{r.ratio:.3g}",
            r.target,
            r.result,
        )
        for r in table
    ]
    widths = [
        max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))
    ]
    size = rows * data.CHANNELS * 4 / 2**20
    print(
        f"\nbncli benchmarks: {rows:,} samples x {data.CHANNELS} float32 channels "
        f"({size:,.0f} MiB){' [quick]' if quick else ''}, "
        f"{len(os.sched_getaffinity(0))} cores; throughput in samples/s (M/s = 10^6/s)\n"
    )

    def fmt(line: tuple[str, ...]) -> str:
        return (
            "| "
            + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
            + " |"
        )

    print(fmt(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print(fmt(line))


if __name__ == "__main__":
    sys.exit(main())
