"""benchmarks/bench_data.py's loader measurement runs and counts what it claims (tiny sizes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from yolov2.data.augment import Augmenter

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_data.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_data", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_rate_streams_full_batches_and_splits_the_cpu(bench, tmp_path, workers):
    paths = bench.make_jpegs(tmp_path, 3)
    seen = []
    real = bench.collate

    def counting(batch, **kw):
        seen.append([item[2] for item in batch])
        return real(batch, **kw)

    bench.collate = counting  # seen fills inline only (a worker appends to its own copy)
    try:
        r = bench.loader_rate(paths, Augmenter("detection", .2, .1, 1.5, 1.5), 64, workers, batches=4,
                              batch=2)
    finally:
        bench.collate = real
    assert r.images_per_s > 0 and r.worker_ms > 0
    if workers:
        assert r.main_ms > 0
    else:  # one stream of 4 full batches, the 3 images cycled with their own seeds 0..7
        assert r.main_ms == 0 and seen == [[0, 1], [2, 3], [4, 5], [6, 7]]
    ds = bench._Files(paths, None, 64, 8)
    assert len(ds) == 8 and ds.paths[7 % 3] == paths[1]
