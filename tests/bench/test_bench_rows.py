"""scripts/bench_rows.py: the rows `scripts/bench.sh` writes are computed from the figures."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_rows", ROOT / "scripts" / "bench_rows.py")
rows = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rows)


def write(out: Path, name: str, text: str) -> None:
    (out / "json").mkdir(parents=True, exist_ok=True)
    (out / "json" / f"{name}.out").write_text(text)


def test_documents_finds_single_and_multi_line_json_between_text():
    text = 'Benchmarking x: Warming up\n{"name":"a","v":1}\ncriterion {noise\n{\n  "name": "b",\n  "v": 2\n}\n'
    assert [d["name"] for d in rows.documents(text)] == ["a", "b"]


def p11(p50, p99, f50=200, f99=250):
    return json.dumps({"name": "checkpoint_zero_loss_k2", "p50_us": p50, "p99_us": p99, "max_us": p99, "count": 2000,
                       "lost": 0, "duplicated": 0, "baseline_local_fsync_p50_us": f50, "baseline_local_fsync_p99_us": f99,
                       "baseline_concurrent_fsyncs_p50_us": 3 * f50, "baseline_concurrent_fsyncs_p99_us": 3 * f99,
                       "state_bytes": 1024})


def test_a_row_is_met_only_when_every_target_holds(tmp_path):
    write(tmp_path, "P11-checkpoint", p11(250, 900))
    assert rows.p11(rows.Pass(tmp_path))[-1] == "met"
    write(tmp_path, "P11-checkpoint", p11(660, 1000))
    status = rows.p11(rows.Pass(tmp_path))[-1]
    assert status.startswith("not met") and "3.30× one fsync" in status
    write(tmp_path, "P11-checkpoint", p11(250, 2500))
    assert "p99 2,500 µs" in rows.p11(rows.Pass(tmp_path))[-1]


def test_lost_inputs_fail_a_row_whatever_the_latency(tmp_path):
    d = json.loads(p11(250, 900))
    d["lost"] = 1
    write(tmp_path, "P11-checkpoint", json.dumps(d))
    assert "lost" in rows.p11(rows.Pass(tmp_path))[-1]


def test_a_bench_that_printed_nothing_is_not_run_not_met(tmp_path):
    write(tmp_path, "P3-failover", "thread 'main' panicked\n")
    assert rows.p3(rows.Pass(tmp_path))[-1] == "not run"
    table = rows.rows(rows.Pass(tmp_path))
    assert len(table) == 16 and all(r[-1] == "not run" for r in table)


def test_an_unmeasured_part_is_named(tmp_path):
    s = {"name": "settlement", "lost": 0, "duplicated": 0, "replicas_agree": True,
         "receipts": {"receipts_per_s": 60000, "count": 100000, "batch_size": 5000, "inflight": 2},
         "settle": {"count": 1000000, "seconds": 20.0, "receipts_per_s": 50000},
         "writes": {"concurrency": 64, "value_bytes": 100, "raft": {"writes_per_s": 9000, "p99_us": 9000},
                    "etcd": None, "etcd_skipped": "--no-etcd"},
         "verify": {"derived_ceiling_receipts_per_s": 7000}}
    write(tmp_path, "P8-settlement", json.dumps(s))
    assert rows.p8(rows.Pass(tmp_path))[-1] == "met (not measured: writes vs etcd (--no-etcd))"
