#!/usr/bin/env python3
"""BENCHMARKS.md table rows from one `scripts/bench.sh` pass (issue #20, ADR 0040).

    python3 scripts/bench_rows.py <out dir>      # markdown rows on stdout

Reads <out>/json/<ROW>-<bench>.out (the JSON documents each bench printed, criterion's text in
between), <out>/criterion/ (criterion's estimates) and <out>/meta.json. Every row says its
target, the figure measured, the same-run baseline, the ratio and whether the target is met; a
row whose bench did not run (or printed nothing) says so. Nothing is judged by hand here: the
status is computed from the figures against the targets written below.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def documents(text: str) -> list[dict]:
    """Every JSON object in `text` (single- or multi-line), in order."""
    dec, out, i = json.JSONDecoder(), [], 0
    while True:
        i = text.find("{", i)
        if i < 0:
            return out
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        if isinstance(obj, dict):
            out.append(obj)
        i = end


class Pass:
    def __init__(self, root: Path):
        self.root = root
        self.docs: dict[str, list[dict]] = {}
        for f in sorted((root / "json").glob("*.out")):
            self.docs[f.stem] = documents(f.read_text(errors="replace"))
        meta = root / "meta.json"
        self.meta = json.loads(meta.read_text()) if meta.exists() else {}

    def named(self, bench: str, name: str) -> dict | None:
        for d in self.docs.get(bench, []):
            if d.get("name") == name:
                return d
        return None

    def all(self, bench: str) -> list[dict]:
        return self.docs.get(bench, [])

    def criterion(self, group: str, function: str) -> dict | None:
        """Criterion's estimates of one function: mean and median ns per iteration, elements."""
        d = self.root / "criterion" / group / function / "new"
        try:
            est = json.loads((d / "estimates.json").read_text())
            bench = json.loads((d / "benchmark.json").read_text())
        except (OSError, ValueError):
            return None
        elements = (bench.get("throughput") or {}).get("Elements")
        return {
            "mean_ns": est["mean"]["point_estimate"],
            "median_ns": est["median"]["point_estimate"],
            "elements": elements,
        }


def us(v) -> str:
    if v is None:
        return "–"
    v = float(v)
    if v >= 10_000:
        return f"{v / 1000:,.1f} ms"
    return f"{v:,.0f} µs" if v >= 100 else f"{v:,.1f} µs"


def num(v, d=0) -> str:
    return "–" if v is None else f"{float(v):,.{d}f}"


def status(checks: list[tuple[str, bool | None]]) -> str:
    """'met', or 'not met: <what>' naming each miss, or 'not run'."""
    if not checks or all(ok is None for _, ok in checks):
        return "not run"
    missed = [what for what, ok in checks if ok is False]
    unknown = [what for what, ok in checks if ok is None]
    s = "met" if not missed else "not met: " + "; ".join(missed)
    if unknown:
        s += " (not measured: " + "; ".join(unknown) + ")"
    return s


def le(v, limit):
    return None if v is None else float(v) <= limit


def ge(v, limit):
    return None if v is None else float(v) >= limit


def by(v, limit, smaller_is_better=True) -> str:
    """'1.3× over' / '0.8× of target' wording for a miss."""
    if v is None:
        return ""
    r = float(v) / limit
    return f" ({r:.2f}× the target)" if smaller_is_better else f" ({r:.2f}× of the target)"


# Each row: (row, target, measured, baseline, ratio, command, status).
def p1(p: Pass):
    cells, checks, base, ratio = [], [], [], []
    for n, limit in [(1_000, None), (10_000, 5.0), (100_000, 50.0)]:
        d = p.named("P1-admission", f"admission/indexed/{n}")
        if not d:
            continue
        cells.append(f"{n // 1000}k p50/p99 {d['p50_us']:.2f}/{d['p99_us']:.2f} µs")
        base.append(f"{n // 1000}k {d['baseline']['p50_us']:.1f}/{d['baseline']['p99_us']:.1f} µs")
        ratio.append(f"{d['ratio_p99']:,.0f}× @{n // 1000}k")
        if limit:
            checks.append((f"p99 @{n // 1000}k {d['p99_us']:.2f} µs > {limit} µs", le(d["p99_us"], limit)))
    return ("P1", "admission p99 ≤ 5 µs @10k, ≤ 50 µs @100k nodes", "; ".join(cells),
            "naive scan " + "; ".join(base), ", ".join(ratio), "`cargo bench --workspace --bench admission`",
            status(checks))


def p2(p: Pass):
    cells, checks, base = [], [], ""
    lost = dup = aborted = 0
    seen = False
    for size, limit in [("4KiB", None), ("64KiB", 5000), ("1MiB", 25000)]:
        d = p.named("P2-handover", f"handover_blackout_{size}")
        if not d:
            continue
        seen = True
        cells.append(f"{size} p50 {us(d['p50_us'])} / **p99 {us(d['p99_us'])}** (n {d['count']})")
        lost += d.get("lost", 0)
        dup += d.get("duplicated", 0)
        aborted += d.get("aborted", 0)
        base = f"loopback TCP RTT p99 {us(d.get('rtt_p99_us'))}; HTTP GET p99 {us(d.get('http_rtt_p99_us'))}"
        if limit:
            checks.append((f"{size} p99 {us(d['p99_us'])}{by(d['p99_us'], limit)}", le(d["p99_us"], limit)))
    if seen:
        cells.append(f"{lost} lost, {dup} duplicated, {aborted} aborted")
        checks.append(("inputs lost or duplicated", lost == 0 and dup == 0))
    return ("P2", "handover blackout p99 ≤ 5 ms @64 KiB, ≤ 25 ms @1 MiB, 0 lost / 0 dup", "; ".join(cells),
            base, "", "`opengrid-chaos bench handover --json --count 1000`", status(checks))


def p3(p: Pass):
    d = p.named("P3-failover", "failover_kill9")
    if not d:
        return ("P3", "kill -9 of a node with 1,000 sessions → all active elsewhere ≤ 2 s p99", "", "", "",
                "`opengrid-chaos bench failover --json`", "not run")
    m = (f"{d['sessions']} sessions: p50 {us(d['p50_us'])}, **p99 {us(d['p99_us'])}**, first {us(d['first_us'])}; "
         f"{d['lost']} lost, {d['duplicated']} duplicated, {d['active_twice']} active twice, "
         f"{d['not_recovered']} not recovered")
    checks = [(f"p99 {us(d['p99_us'])}{by(d['p99_us'], 2e6)}", le(d["p99_us"], 2e6)),
              ("sessions lost, duplicated or active twice",
               d["lost"] == 0 and d["duplicated"] == 0 and d["active_twice"] == 0 and d["not_recovered"] == 0)]
    return ("P3", "kill -9 of a node with 1,000 sessions → all active elsewhere ≤ 2 s p99", m,
            "Orleans ~15 s, Akka ~23 s, Ray 15.8 s p50 (published)", f"{15.8e6 / d['p50_us']:.1f}× faster than Ray's p50",
            "`opengrid-chaos bench failover --json --count 1000`", status(checks))


def p4(p: Pass):
    cells, checks = [], []
    sat = [d for d in p.all("P4-saturate") if "scenario" in d]
    if sat:
        r = sat[-1]
        v = r.get("violations") or []
        false_down = [x for x in v if "down" in json.dumps(x).lower()]
        avail = (r.get("availability") or {}).get("total") or {}
        cells.append(f"saturate ({r.get('duration_ms', 0) / 1000:.0f} s): {len(false_down)} false downings, "
                     f"{len(v)} violations" + (f", availability {json.dumps(avail)}" if avail else ""))
        checks.append(("false downings under saturation", len(false_down) == 0 and not r.get("error")))
        checks.append(("violations in the saturate run", len(v) == 0))
    else:
        checks.append(("10 min saturate run", None))
    suite = [d for d in p.all("P4-suite") if "suite" in d and "recovery" in d]
    if suite:
        s = suite[-1]
        rec = ", ".join(f"{k} n={v['count']} p50 {v['p50_ms']} / p99 {v['p99_ms']} ms" for k, v in s["recovery"].items())
        cells.append(f"short suite {'PASS' if s['passed'] else 'FAIL'} ({len(s['runs'])} scenarios); recovery: {rec}")
        checks.append(("short suite", bool(s["passed"])))
    return ("P4", "0 false downings in 10 min of saturating load; recovery per fault kind in the short suite",
            "; ".join(cells), "", "", "`opengrid-chaos run chaos/scenarios/saturate.toml --json`; `opengrid-chaos suite --short --json`",
            status(checks))


def p5(p: Pass):
    cells, base, checks = [], [], []
    for name in ["health", "admission_probe"]:
        d = p.named("P5-isolation", f"isolation/{name}")
        if d:
            cells.append(f"{name} (handler threads busy) p50/p99 {us(d['p50_us'])} / {us(d['p99_us'])}")
            base.append(f"{name} idle {us(d['baseline']['p50_us'])} / {us(d['baseline']['p99_us'])}")
            checks.append((f"{name} p99 {us(d['p99_us'])} (handlers)", le(d["p99_us"], 5000)))
    for name, label in [("isolation_node_health", "health"), ("isolation_rc_admission_probe", "probe")]:
        d = p.named("P5-inference", name)
        if d:
            cells.append(f"{label} (inference {d.get('inference_busy', 0) * 100:.0f} % busy) p50/p99 "
                         f"{us(d['p50_us'])} / {us(d['p99_us'])}, declared dead: {d.get('declared_dead')}")
            base.append(f"{label} idle {us(d['baseline_idle_p50_us'])} / {us(d['baseline_idle_p99_us'])}")
            checks.append((f"{label} p99 {us(d['p99_us'])} (inference)", le(d["p99_us"], 5000)))
            checks.append(("declared dead under inference load", not d.get("declared_dead")))
    return ("P5", "health + admission probe p99 ≤ 5 ms with handler / inference threads saturated", "; ".join(cells),
            "; ".join(base), "", "`cargo bench --workspace --bench isolation`; `opengrid-chaos bench isolation --json`",
            status(checks))


def p6(p: Pass):
    d = p.named("P6-density", "density_hibernated_session")
    w = p.named("P6-density", "wake_from_hibernation")
    if not d or not w:
        return ("P6", "≤ 4 KiB resident per idle session; wake ≤ 1 ms p99", "", "", "", "", "not run")
    m = (f"{d['count']:,} hibernated sessions: **{d['resident_bytes_per_session']:,.0f} B** each "
         f"(created in {d['create_and_hibernate_s']:.1f} s); wake p50 {us(w['p50_us'])}, **p99 {us(w['p99_us'])}**")
    checks = [(f"{d['resident_bytes_per_session']:.0f} B per session", le(d["resident_bytes_per_session"], 4096)),
              (f"wake p99 {us(w['p99_us'])}", le(w["p99_us"], 1000)),
              (f"measured at {d['count']:,} sessions, not 1,000,000", d["count"] >= 1_000_000)]
    return ("P6", "≤ 4 KiB resident per idle session (1 M on one node); wake ≤ 1 ms p99", m,
            f"raw ractor idle actor {d['raw_ractor_idle_actor_bytes']:,.0f} B",
            f"{d['raw_ractor_idle_actor_bytes'] / max(d['resident_bytes_per_session'], 1):.1f}× smaller",
            "`OPENGRID_DENSITY_N=1000000 cargo bench --workspace --bench density`", status(checks))


def p7_p12(p: Pass):
    s = p.criterion("p7_input_path", "session_actor_submit_window512")
    sm = p.criterion("p7_input_path", "session_actor_submit_window512_metered")
    raw = p.criterion("p7_input_path", "raw_ractor_cast_window512")
    rows = []
    if s and raw:
        rate = lambda e: e["elements"] / (e["mean_ns"] * 1e-9)  # noqa: E731
        r_s, r_raw = rate(s), rate(raw)
        r_m = rate(sm) if sm else None
        ratio = r_raw / r_s
        m = f"**{r_s / 1e3:,.0f} K inputs/s** unmetered" + (f", {r_m / 1e3:,.0f} K/s metered" if r_m else "")
        checks = [(f"{r_s / 1e6:.2f} M inputs/s < 1 M", ge(r_s, 1e6)), (f"{ratio:.2f}× raw ractor", le(ratio, 2.0))]
        if r_m:
            checks.append((f"metered {r_raw / r_m:.2f}× raw ractor", le(r_raw / r_m, 2.0)))
        rows.append(("P7", "≥ 1 M inputs/s through a session actor, ≤ 2× raw ractor", m,
                     f"raw ractor cast + oneshot: {r_raw / 1e6:.2f} M/s",
                     f"**{ratio:.2f}×** unmetered" + (f", {r_raw / r_m:.2f}× metered" if r_m else ""),
                     "`cargo bench --workspace --bench session_input` (p7_input_path)", status(checks)))
    else:
        rows.append(("P7", "≥ 1 M inputs/s through a session actor, ≤ 2× raw ractor", "", "", "", "", "not run"))
    r = p.criterion("p12_restart", "panic_to_serving_again")
    if r:
        rows.append(("P12", "panicking handler serves again ≤ 10 ms p99, state kept",
                     f"panic → next input answered: mean **{r['mean_ns'] / 1e3:,.1f} µs** (median {r['median_ns'] / 1e3:,.1f} µs)",
                     "Ray: 0.52 s p50, state lost (published)", f"{0.52e9 / r['mean_ns']:,.0f}× faster than Ray",
                     "`cargo bench --workspace --bench session_input` (p12_restart)",
                     status([(f"mean {r['mean_ns'] / 1e6:.2f} ms", le(r["mean_ns"], 10e6))])))
    else:
        rows.append(("P12", "panicking handler serves again ≤ 10 ms p99, state kept", "", "", "", "", "not run"))
    return rows


def p8(p: Pass):
    d = p.named("P8-settlement", "settlement")
    if not d:
        return ("P8", "≥ 50 k receipts/s, 3 replicas; 1 M settled ≤ 30 s; writes ≥ 2× etcd at c = 64, p99 no worse",
                "", "", "", "", "not run")
    rc, st, w = d["receipts"], d.get("settle") or {}, d["writes"]
    raft, etcd = w.get("raft") or {}, w.get("etcd")
    m = [f"receipts **{rc['receipts_per_s']:,.0f}/s** ({rc['count']:,}, parts of {rc['batch_size']:,}, {rc['inflight']} in flight)"]
    checks = [(f"receipts {rc['receipts_per_s']:,.0f}/s{by(rc['receipts_per_s'], 50000, False)}", ge(rc["receipts_per_s"], 50000))]
    if st.get("count"):
        m.append(f"settled {st['count']:,} in **{st['seconds']:.1f} s** ({st['receipts_per_s']:,.0f}/s)")
        s1m = st["seconds"] * 1_000_000 / st["count"]
        checks.append((f"1 M settled in {s1m:.1f} s" + ("" if st["count"] >= 1_000_000 else " (extrapolated)")
                       + by(s1m, 30), le(s1m, 30)))
    m.append(f"Raft writes (c = {w['concurrency']}, {w['value_bytes']} B) {raft.get('writes_per_s', 0):,.0f}/s p99 {us(raft.get('p99_us'))}")
    base = [f"ed25519 verify ceiling (3 co-located replicas, old design): {d['verify']['derived_ceiling_receipts_per_s']:,.0f} receipts/s"]
    ratio = ""
    if etcd:
        base.insert(0, f"etcd {d['writes'].get('etcd_version') or ''} 3 members: {etcd['writes_per_s']:,.0f}/s p99 {us(etcd['p99_us'])}")
        tr, pr = w["throughput_ratio"], w["p99_ratio"]
        ratio = f"writes **{tr:.2f}×** etcd, p99 {pr:.2f}×"
        checks.append((f"writes {tr:.2f}× etcd (≥ 2×)", ge(tr, 2.0)))
        checks.append((f"p99 {pr:.2f}× etcd's", le(pr, 1.0)))
    else:
        checks.append(("writes vs etcd (" + str(w.get("etcd_skipped")) + ")", None))
    checks.append(("lost/duplicated receipts or replicas disagree",
                   d["lost"] == 0 and d["duplicated"] == 0 and d.get("replicas_agree", False)))
    return ("P8", "≥ 50 k receipts/s, 3 replicas; 1 M settled ≤ 30 s; writes ≥ 2× etcd at c = 64, p99 no worse",
            "; ".join(m), "; ".join(base), ratio, "`opengrid-chaos bench settlement --json --count 100000 --settle-receipts 1000000`",
            status(checks))


def p9(p: Pass):
    d = next((x for x in p.all("P9-propagation") if str(x.get("name", "")).startswith("canopy_propagation_")), None)
    if not d:
        return ("P9", "summary reaches 50 RCs ≤ 1 s p99", "", "", "", "", "not run")
    m = (f"{d['rcs']} RCs, libp2p over TCP, {d['dialled_links']} links, {d['count']} samples: p50 {us(d['p50_us'])}, "
         f"**p99 {us(d['p99_us'])}**; {d['lost']} lost; {d['bytes_per_rc_per_interval'] / 1024:,.0f} KiB per RC per interval")
    return ("P9", "summary reaches 50 RCs ≤ 1 s p99", m, "", "", "`cargo bench --workspace --bench propagation`",
            status([(f"p99 {us(d['p99_us'])}", le(d["p99_us"], 1e6)), ("summaries lost", d["lost"] == 0)]))


def p10(p: Pass):
    b = p.named("P10-batching", "p10_pool_batched32_c64")
    one = p.named("P10-batching", "p10_pool_batch1_c64")
    if not b or not one:
        return ("P10", "batching ≥ 3× batch-1 throughput at equal p99 (CPU)", "", "", "", "", "not run")
    r = b["throughput_rps"] / one["throughput_rps"]
    return ("P10", "batching ≥ 3× batch-1 throughput at equal p99 (CPU)",
            f"batched (32 rows / 1 ms): {b['throughput_rps']:,.0f} req/s, p99 {us(b['p99_us'])} (mean batch {b['mean_batch_rows']})",
            f"batch-1: {one['throughput_rps']:,.0f} req/s, p99 {us(one['p99_us'])}", f"**{r:.2f}×**",
            "`cargo bench --workspace --bench batching`",
            status([(f"{r:.2f}× throughput", ge(r, 3.0)), (f"p99 {us(b['p99_us'])} vs {us(one['p99_us'])}", le(b["p99_us"], one["p99_us"]))]))


def p11(p: Pass):
    d = p.named("P11-checkpoint", "checkpoint_zero_loss_k2")
    if not d:
        return ("P11", "zero-loss ack with k = 2 p99 ≤ 2 ms; p50 ≤ 1.5× one local fsync", "", "", "", "", "not run")
    f50, f99 = d["baseline_local_fsync_p50_us"], d["baseline_local_fsync_p99_us"]
    c50, c99 = d.get("baseline_concurrent_fsyncs_p50_us"), d.get("baseline_concurrent_fsyncs_p99_us")
    r50 = d["p50_us"] / f50
    disk = (f"; the holder's and both replicas' fsyncs at once on this one disk: p50 {us(c50)}, p99 {us(c99)}"
            if c50 else "")
    disk_ratio = f"; p50 {d['p50_us'] / c50:.2f}× the three concurrent fsyncs" if c50 else ""
    return ("P11", "zero-loss ack with k = 2 p99 ≤ 2 ms; p50 ≤ 1.5× one local fsync",
            f"k = 2 ack p50 **{us(d['p50_us'])}**, p99 **{us(d['p99_us'])}**, max {us(d.get('max_us'))}; {d['count']:,} acks, "
            f"{d['lost']} lost, {d['duplicated']} duplicated ({d['state_bytes']} B state)",
            f"one local fsync'd RocksDB write: p50 {us(f50)}, p99 {us(f99)}{disk}",
            f"p50 {r50:.2f}×, p99 {d['p99_us'] / f99:.2f}× one fsync{disk_ratio}", "`opengrid-chaos bench checkpoint --json --count 2000`",
            status([(f"p99 {us(d['p99_us'])}", le(d["p99_us"], 2000)), (f"p50 {r50:.2f}× one fsync (≤ 1.5×)", le(r50, 1.5)),
                    ("acks lost or duplicated", d["lost"] == 0 and d["duplicated"] == 0)]))


def p13(p: Pass):
    cells, base, ratio, checks = [], [], [], []
    wasm = next((x for x in p.all("P13-api") if x.get("handler") == "wasm"), None)
    if wasm:
        cells.append(f"`counter-rs` agent {wasm['inputs_per_s']:,.0f} inputs/s, node CPU {wasm['node_cpu_us_per_input']} µs/input")
        base.append(f"native `counter` {wasm['baseline_inputs_per_s']:,.0f} inputs/s, {wasm['baseline_node_cpu_us_per_input']} µs/input")
        ratio.append(f"**{wasm['cost_ratio']:.2f}× cost** (inputs/s), {wasm['cpu_ratio']:.2f}× CPU")
        checks.append((f"cost {wasm['cost_ratio']:.2f}×", le(wasm["cost_ratio"], 1.5)))
    inst = p.named("P13-wasm", "wasm_warm_instantiate_rs")
    if inst:
        cells.append(f"warm instantiate p99 {us(inst['p99_us'])}")
        checks.append((f"warm instantiate p99 {us(inst['p99_us'])}", le(inst["p99_us"], 100)))
    alone = p.named("P13-wasm", "wasm_session_input_rs") or next(
        (x for x in p.all("P13-wasm") if str(x.get("name", "")).startswith("wasm_session_input_") and not x["name"].endswith("native")), None)
    if alone:
        ratio.append(f"handler alone {alone['cost_vs_native']:.2f}×")
    push = p.named("P13-agents", "agent_push_first_answer")
    if push:
        cells.append(f"push → first answer p99 {us(push['p99_us'])}")
        checks.append((f"push → first answer p99 {us(push['p99_us'])}", le(push["p99_us"], 1e6)))
    hw = p.named("P13-handover", "handover_blackout_counter_wasm")
    hn = p.named("P13-handover", "handover_blackout_counter_native")
    if hw and hn:
        r = hw["p99_us"] / hn["p99_us"]
        cells.append(f"handover blackout p99 {us(hw['p99_us'])}")
        base.append(f"native blackout p99 {us(hn['p99_us'])}")
        ratio.append(f"blackout {r:.2f}×")
        checks.append((f"blackout {r:.2f}× native", le(r, 1.2)))
    for what, got in [("inputs/s vs native", wasm), ("warm instantiate", inst), ("push → first answer", push),
                      ("handover blackout", hw and hn)]:
        if not got:
            checks.append((what, None))
    return ("P13", "WebAssembly agent ≤ 1.5× native (inputs/s); warm instantiate p99 ≤ 100 µs; push → first answer ≤ 1 s; blackout ≤ 1.2× native",
            "; ".join(cells), "; ".join(base), "; ".join(ratio),
            "`opengrid-chaos bench api --handler both`; `bench agents`; `bench handover --handler both`; `cargo bench --workspace --bench wasm`",
            status(checks))


def p14(p: Pass):
    o = p.named("P14-effects", "p14_run_overhead")
    z = p.named("P14-effects", "p14_zero_loss_one_effect")
    f = p.named("P14-effects", "p14_first_chunk")
    if not (o and z and f):
        return ("P14", "`ctx.run` ≤ 50 µs p99 over a plain await; zero-loss input with one effect ≤ 1.5× one without; first chunk ≤ 5 ms",
                "", "", "", "", "not run")
    return ("P14", "`ctx.run` ≤ 50 µs p99 over a plain await; zero-loss input with one effect ≤ 1.5× one without; first chunk ≤ 5 ms",
            f"journaled p50/p99 {us(o['p50_us'])} / {us(o['p99_us'])}; zero-loss + 1 effect {us(z['p50_us'])} / {us(z['p99_us'])}; "
            f"first chunk {us(f['p50_us'])} / {us(f['p99_us'])}",
            f"plain await {us(o['baseline_p50_us'])} / {us(o['baseline_p99_us'])}; zero-loss without effect "
            f"{us(z['baseline_p50_us'])} / {us(z['baseline_p99_us'])}; whole reply {us(f['baseline_p50_us'])} / {us(f['baseline_p99_us'])}",
            f"+{o['added_p99_us']:.1f} µs p99; {z['ratio_p50']:.2f}× p50; first chunk at {f['ratio_p50']:.3f} of the reply",
            "`cargo bench --workspace --bench effects`",
            status([(f"+{o['added_p99_us']:.1f} µs p99", le(o["added_p99_us"], 50)), (f"{z['ratio_p50']:.2f}× p50", le(z["ratio_p50"], 1.5)),
                    (f"first chunk p99 {us(f['p99_us'])}", le(f["p99_us"], 5000))]))


def p15(p: Pass):
    d = next((x for x in p.all("P15-rc-scale") if x.get("name") == "rc_scale"), None)
    target = "one RC: 10 k nodes heartbeating, 1 M sessions in its directory: every heartbeat absorbed, 0 false downings, placement p99 ≤ 10 ms"
    if not d:
        return ("P15", target, "", "", "", "", "not run")
    # Every simulated node heartbeats throughout: each node the RC declared dead is a false downing.
    false_down = d["declared_dead"]
    placed = d["place_count"] > 0
    placement = (f"placement p50 {us(d['place_p50_us'])} / **p99 {us(d['place_p99_us'])}**" if placed
                 else f"placement **not measured** ({d['place_failed']:,} of the window's placements failed)")
    m = (f"heartbeat {d['heartbeat_ms']:,} ms; {d['nodes_joined']:,} of {d['nodes']:,} nodes joined in {d['join_ms'] / 1000:.1f} s; "
         f"{d['sessions_loaded']:,} of {d['sessions']:,} sessions loaded ({d.get('load_mode', 'place')}) at {d['load_per_s']:,.0f}/s; "
         f"heartbeats {d['rc_hb_per_s']:,.0f}/s absorbed of {d['target_hb_per_s']:,.0f}/s "
         f"(heartbeat → lease p99 {us(d['lease_rtt_p99_us'])}); **{false_down:,} false downings**; {placement}; "
         f"RC RSS {d['rss_end_kib'] / 1024:,.0f} MiB ({d['bytes_per_node']:,} B per node, {d['bytes_per_session']:,} B per session)")
    checks = [(f"placement p99 {us(d['place_p99_us'])}{by(d['place_p99_us'], 10_000)}" if placed
               else "placement not measured", placed and le(d["place_p99_us"], 10_000)),
              (f"{false_down:,} false downings", false_down == 0),
              (f"heartbeats absorbed {d['rc_hb_per_s']:,.0f}/s of {d['target_hb_per_s']:,.0f}/s",
               d["target_hb_per_s"] > 0 and d["rc_hb_per_s"] >= 0.99 * d["target_hb_per_s"]),
              (f"{d['sessions_loaded']:,} of {d['sessions']:,} sessions loaded", d["sessions_loaded"] >= d["sessions"]),
              (f"measured at {d['nodes']:,} nodes / {d['sessions']:,} sessions (target 10 k / 1 M)",
               d["nodes"] >= 10_000 and d["sessions"] >= 1_000_000)]
    ratio = f"placement p99 {d['place_p99_us'] / max(d['base_place_p99_us'], 1):.1f}× the empty RC" if placed else ""
    return ("P15", target, m, f"1 node, empty directory: placement p50 {us(d['base_place_p50_us'])} / p99 {us(d['base_place_p99_us'])}",
            ratio,
            f"`opengrid-chaos bench rc-scale --json --nodes {d['nodes']} --sessions {d['sessions']} --heartbeat-ms {d['heartbeat_ms']}`",
            status(checks))


def rcha(p: Pass):
    d = p.named("RCHA-rc-failover", "rc_leader_kill")
    t = "RC group: kill -9 of the leader → placements accepted again ≤ 1 s p99, 0 failed inputs, 0 leases lost"
    if not d:
        return ("RC HA", t, "", "", "", "", "not run")
    return ("RC HA", t,
            f"{d['kills']} kills: placements again p50 {us(d['resume_p50_us'])} / **p99 {us(d['resume_p99_us'])}**; "
            f"{d['failed_inputs']} failed of {d['acknowledged']:,} inputs, {d['wrong_answers']} wrong, {d['leases_lost']} leases lost",
            f"placement with a steady leader p50 {us(d['place_p50_us'])} / p99 {us(d['place_p99_us'])}", "",
            "`opengrid-chaos bench rc-failover --json --count 20`",
            status([(f"p99 {us(d['resume_p99_us'])}", le(d["resume_p99_us"], 1e6)),
                    ("failed inputs / lost leases", d["failed_inputs"] == 0 and d["leases_lost"] == 0 and d["wrong_answers"] == 0)]))


def rows(p: Pass) -> list[tuple]:
    out = [p1(p), p2(p), p3(p), p4(p), p5(p), p6(p)]
    r7, r12 = p7_p12(p)
    out += [r7, p8(p), p9(p), p10(p), p11(p), r12, p13(p), p14(p), p15(p), rcha(p)]
    return out


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    p = Pass(Path(sys.argv[1]))
    m = p.meta
    print(f"Pass of `scripts/bench.sh` on {m.get('commit', '?')}, {m.get('started', '?')} → {m.get('finished', '?')}, "
          f"{m.get('cpus', '?')} × {m.get('machine', '?')}{' (--quick: smoke counts, not figures)' if m.get('quick') else ''}.")
    loads = ", ".join(f"{r['row']} {r['bench']} {r['load_before'].split()[0]}" + ("" if r["exit"] == 0 else f" (exit {r['exit']})")
                      for r in m.get("rows", []))
    if loads:
        print(f"Load average before each bench: {loads}.")
    print()
    print("| Row | Target | Measured | Baseline (same run) | Ratio | Command | Status |")
    print("|---|---|---|---|---|---|---|")
    for r in rows(p):
        print("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
