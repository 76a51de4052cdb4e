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


def rc_scale(**over):
    d = {"name": "rc_scale", "nodes": 10000, "nodes_joined": 10000, "join_ms": 50000, "sessions": 1000000,
         "sessions_loaded": 1000000, "load_mode": "report", "load_per_s": 5000.0, "heartbeat_ms": 1000,
         "target_hb_per_s": 10000.0, "rc_hb_per_s": 10000.0, "lease_rtt_p99_us": 900, "declared_dead": 0,
         "place_count": 500, "place_failed": 0, "place_p50_us": 900, "place_p99_us": 4000, "rss_end_kib": 4 << 20,
         "bytes_per_node": 20000, "bytes_per_session": 3000, "base_place_p50_us": 500, "base_place_p99_us": 800}
    d.update(over)
    return json.dumps(d)


def test_rc_scale_placements_that_all_failed_are_not_a_met_p99(tmp_path):
    write(tmp_path, "P15-rc-scale", rc_scale())
    assert rows.p15(rows.Pass(tmp_path))[-1] == "met"
    write(tmp_path, "P15-rc-scale", rc_scale(place_count=0, place_failed=6, place_p99_us=0))
    r = rows.p15(rows.Pass(tmp_path))
    assert r[-1].startswith("not met") and "placement not measured" in r[-1] and "not measured" in r[2]
    write(tmp_path, "P15-rc-scale", rc_scale(sessions_loaded=900000, declared_dead=12))
    status = rows.p15(rows.Pass(tmp_path))[-1]
    assert "900,000 of 1,000,000 sessions loaded" in status and "12 false downings" in status
