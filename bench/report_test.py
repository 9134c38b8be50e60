#!/usr/bin/env python3
"""Tests of report.py's pairing of microbenchmarks (run by meson as
`report_pairs`; also `python3 bench/report_test.py`)."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402


def median(name, **fields):
    """One Google Benchmark aggregate entry, as --benchmark_out writes it."""
    entry = {"name": name + "_median", "run_name": name, "run_type": "aggregate",
             "aggregate_name": "median", "real_time": 1.0, "time_unit": "ns"}
    entry.update(fields)
    return entry


class PairMicroTest(unittest.TestCase):
    def pairs(self, benchmarks):
        return {(p["name"], p["baseline_name"]): p
                for p in report.pair_micro(benchmarks, "prog")}

    def test_a_manual_time_baseline_pairs_with_a_real_time_side(self):
        # nvme_bench: the engine is timed by the wall clock, the raw
        # baseline by its own clock (UseManualTime).
        got = self.pairs([
            median("BM_Read/strata/real_time", bytes_per_second=3.0),
            median("BM_Read/baseline/manual_time", bytes_per_second=4.0),
        ])
        self.assertEqual(list(got), [("BM_Read", "baseline")])
        self.assertAlmostEqual(got[("BM_Read", "baseline")]["ratio"], 0.75)

    def test_each_argument_is_its_own_row(self):
        # pin_bench: threads:1 and threads:2 are different benchmarks.
        got = self.pairs([
            median("BM_Pin/strata/real_time/threads:1", items_per_second=1.0),
            median("BM_Pin/strata/real_time/threads:2", items_per_second=3.0),
            median("BM_Pin/floor/real_time/threads:1", items_per_second=2.0),
            median("BM_Pin/floor/real_time/threads:2", items_per_second=4.0),
        ])
        self.assertEqual(sorted(got), [("BM_Pin/threads:1", "floor"),
                                       ("BM_Pin/threads:2", "floor")])
        self.assertAlmostEqual(got[("BM_Pin/threads:1", "floor")]["ratio"], 0.5)
        self.assertAlmostEqual(got[("BM_Pin/threads:2", "floor")]["ratio"], 0.75)

    def test_a_named_alternative_is_a_baseline_too(self):
        # shm_bench sets the engine beside what it would otherwise be:
        # memcpy, Boost.Interprocess's allocator.
        got = self.pairs([
            median("BM_ShmWrite/strata", bytes_per_second=2.0),
            median("BM_ShmWrite/memcpy", bytes_per_second=4.0),
            median("BM_Alloc/strata", real_time=30.0),
            median("BM_Alloc/boost", real_time=60.0),
            median("BM_Alone/strata", real_time=5.0),
        ])
        self.assertEqual(sorted(got), [("BM_Alloc", "boost"),
                                       ("BM_ShmWrite", "memcpy")])
        self.assertAlmostEqual(got[("BM_Alloc", "boost")]["ratio"], 0.5)
        self.assertFalse(got[("BM_Alloc", "boost")]["higher_is_better"])

    def test_baseline_and_floor_come_before_other_sides(self):
        got = report.pair_micro([
            median("BM_X/strata", items_per_second=1.0),
            median("BM_X/hashmap", items_per_second=1.0),
            median("BM_X/floor", items_per_second=1.0),
            median("BM_X/baseline", items_per_second=1.0),
        ], "prog")
        self.assertEqual([p["baseline_name"] for p in got],
                         ["baseline", "floor", "hashmap"])

    def test_means_and_single_runs(self):
        # Without repetitions there is no median: the iteration entry counts.
        got = self.pairs([
            {"name": "BM_Y/strata", "run_name": "BM_Y/strata", "run_type": "iteration",
             "real_time": 2.0, "time_unit": "ns"},
            {"name": "BM_Y/baseline", "run_name": "BM_Y/baseline",
             "run_type": "iteration", "real_time": 1.0, "time_unit": "ns"},
            median("BM_Z/strata", real_time=1.0) | {"aggregate_name": "mean"},
        ])
        self.assertEqual(list(got), [("BM_Y", "baseline")])
        self.assertAlmostEqual(got[("BM_Y", "baseline")]["ratio"], 2.0)


if __name__ == "__main__":
    unittest.main()
