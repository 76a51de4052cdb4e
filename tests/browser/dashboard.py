#!/usr/bin/env python3
"""Browser test of the dashboard, against a real colony.

Starts a ledger replica, an RC and three nodes (`opengrid` processes on 127.0.0.1, settlement on),
places zero-loss counter sessions and sends them inputs, then drives Debian's headless Chromium
through its chromedriver (Selenium) over the RC's `/ui`:

- every page (colony, sessions, events, ledger, canopy, and a node's own view) renders with no
  console errors and shows what the colony's JSON says;
- a node killed with SIGKILL shows as dead, and its sessions appear on their new holders, within a
  deadline, through the page (live events over SSE, not a reload);
- a screenshot of every page is written to the artifacts dir (default `artifacts/dashboard` in the
  repository; `OPENGRID_ARTIFACTS` overrides the parent).

Exit code 0 when everything held, 1 with the reason otherwise. Run by scripts/test.sh:
    $OPENGRID_VENV/bin/python tests/browser/dashboard.py --bin $CARGO_TARGET_DIR/debug/opengrid
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from opengrid.testing import free_port, http  # the Python client's test helpers (clients/python)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "browser-test-colony-secret"
SESSIONS = 6


class Failure(Exception):
    """A check that did not hold."""


def wait_for(what: str, check, timeout: float, every: float = 0.1):
    """Polls `check` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = check()
            if v:
                return v
        except (OSError, urllib.error.URLError, ValueError, StaleElementReferenceException) as e:
            # The page re-renders its tables on every refresh: an element found a moment ago
            # may be gone; look again.
            last = e
        time.sleep(every)
    raise Failure(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else ""))


class Colony:
    """A ledger replica, an RC and three nodes as child processes."""

    def __init__(self, binary: Path, work: Path, logs: Path):
        self.bin = binary
        self.work = work
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.ledger = f"127.0.0.1:{free_port()}"
        self.rc_api = f"127.0.0.1:{free_port()}"
        self.rc_cluster = f"127.0.0.1:{free_port()}"
        self.nodes = {n: f"127.0.0.1:{free_port()}" for n in ("alpha", "bravo", "charlie")}

    def spawn(self, name: str, args: list[str]):
        log = open(self.logs / f"{name}.log", "wb")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        self.procs[name] = subprocess.Popen(
            [str(self.bin), *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )

    def config(self, name: str, text: str) -> Path:
        p = self.work / f"{name}.toml"
        p.write_text(text)
        return p

    def start(self):
        # The ledger operator's key authorizes registrations; the replica is told its DID.
        self.operator_key = self.work / "ledger-operator.key"
        operator = subprocess.run([str(self.bin), "ledger", "keygen", "--key-file", str(self.operator_key)],
                                  check=True, capture_output=True, text=True, timeout=60).stdout.strip()
        self.spawn("ledger", ["ledger", "replica", "--id", "1", "--addr", self.ledger,
                              "--data-dir", str(self.work / "ledger"), "--peers", f"1={self.ledger}",
                              "--operator", operator])
        rc = self.config("rc", f"""
version = 1
colony = "browser"
data_dir = "{self.work / 'rc'}"
api_listen = "{self.rc_api}"
cluster_listen = "{self.rc_cluster}"
colony_secret = "{SECRET}"
[settlement]
ledger = ["{self.ledger}"]
interval = "1s"
""")
        self.spawn("rc", ["rc", "--config", str(rc)])
        wait_for("the RC's /health", lambda: http("GET", f"http://{self.rc_api}/health")[0] == 200, 60)
        # The test is the colony's operator: a token signed by the RC's own key (ADR 0026).
        self.token = subprocess.run([str(self.bin), "token", "operator", "--key", str(self.work / "rc"), "--valid", "1h"],
                                    check=True, capture_output=True, text=True, timeout=60).stdout.strip()
        for name, api in self.nodes.items():
            cfg = self.config(name, f"""
version = 1
name = "{name}"
colony = "browser"
data_dir = "{self.work / name}"
jurisdiction = "DE"
handlers = ["counter"]
capacity = 50
api_listen = "{api}"
rc_cluster = "{self.rc_cluster}"
colony_secret = "{SECRET}"
fsync = false
[receipts]
window = "1s"
""")
            self.spawn(name, ["node", "--config", str(cfg)])
        wait_for("3 alive members", lambda: self.alive() == 3, 60)
        # The ledger knows the RC's and nodes' keys (created at their first start).
        addr = ["--addr", self.ledger]
        op = ["--operator-key-file", str(self.operator_key)]
        run = lambda *a: subprocess.run([str(self.bin), "ledger", *a], check=True, capture_output=True, timeout=60)
        wait_for("the ledger replica", lambda: run("status", *addr).returncode == 0, 60, every=0.5)
        run("register-rc", "--key-file", str(self.work / "rc" / "identity.key"), "--operator", "rc-op", *addr, *op)
        for name in self.nodes:
            run("register-node", "--key-file", str(self.work / name / "identity.key"),
                "--operator", f"{name}-op", *addr, *op)

    def status(self):
        return http("GET", f"http://{self.rc_api}/status", token=self.token)[1]

    def alive(self) -> int:
        return sum(1 for m in self.status()["members"] if m["state"] == "alive")

    def kill(self, name: str):
        p = self.procs[name]
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


MANIFEST = {
    "version": 1,
    "session": {"handler": "counter", "continuity": "interactive", "idle_timeout": "5m"},
    "placement": {"jurisdictions": ["DE"]},
    "migration": {"cost": "cheap", "acceptable_loss": "0s", "max_blackout": "200ms"},
}


def place_sessions(c: Colony) -> tuple[dict[str, int], dict[str, str]]:
    """Places zero-loss counter sessions and sends each a few inputs; returns id -> total and
    id -> capability."""
    totals, caps = {}, {}
    for i in range(SESSIONS):
        sid = f"browser-{i}"
        code, p = http("POST", f"http://{c.rc_api}/sessions?session_id={sid}", MANIFEST)
        if code != 201:
            raise Failure(f"placing {sid}: HTTP {code} {p}")
        caps[sid] = p["capability"]
        total = 0
        for seq in range(1, 4):
            code, r = http("POST", f"{p['address']}/sessions/{sid}/inputs", {"seq": seq, "input": seq}, token=caps[sid])
            if code != 200:
                raise Failure(f"input {seq} to {sid}: HTTP {code} {r}")
            total += seq
        totals[sid] = total
    return totals, caps


class Browser:
    def __init__(self, shots: Path):
        self.shots = shots
        opts = Options()
        opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        self.profile = tempfile.mkdtemp(prefix="og-chromium-")
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={self.profile}"):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
        self.d = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
        self.d.set_page_load_timeout(30)
        self.errors: list[str] = []

    def console_errors(self) -> list[str]:
        errs = [e["message"] for e in self.d.get_log("browser") if e.get("level") == "SEVERE"]
        self.errors += errs
        return errs

    def open(self, url: str):
        self.d.get(url)
        wait_for(f"{url} to load its data", lambda: self.d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", 20)

    def tab(self, name: str):
        self.d.find_element(By.CSS_SELECTOR, f'nav a[data-tab="{name}"]').click()
        wait_for(f"tab {name}", lambda: self.d.find_element(By.TAG_NAME, "body").get_attribute("data-tab") == name, 10)

    def shot(self, name: str):
        path = self.shots / f"{name}.png"
        self.d.save_screenshot(str(path))
        print(f"  screenshot {path}")

    def css(self, sel: str):
        return self.d.find_elements(By.CSS_SELECTOR, sel)

    def quit(self):
        self.d.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


def check(cond, why):
    if not cond:
        raise Failure(why)


def run(binary: Path, artifacts: Path) -> None:
    shots = artifacts
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()
    logs = shots / "logs"
    logs.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="og-browser-"))
    colony = Colony(binary, work, logs)
    browser = None
    try:
        print("starting a ledger replica, an RC and 3 nodes")
        colony.start()
        totals, caps = place_sessions(colony)
        print(f"placed {len(totals)} zero-loss sessions")
        browser = Browser(shots)
        ui = f"http://{colony.rc_api}/ui"

        # Colony page: three node cards, alive, in their jurisdiction; the session count.
        browser.open(f"{ui}#token={colony.token}")
        wait_for("3 alive node cards", lambda: len(browser.css('.node[data-state="alive"]')) == 3, 10)
        check(len(browser.css('.jurisdiction[data-jurisdiction="DE"] .node')) == 3, "nodes grouped under DE")
        wait_for("the placements in the live feed",
                 lambda: len(browser.css('#recent li[data-kind="session_placed"]')) >= 1, 10)
        check(browser.d.find_element(By.ID, "live").text.startswith("live"), "live stream indicator")
        browser.shot("colony")

        # Sessions page: one row per directory entry, with holder and replicas.
        browser.tab("sessions")
        snapshot = (
            "return [...document.querySelectorAll('#sessions tbody tr[data-session]')]"
            ".map(r => [r.dataset.session, r.dataset.holder, r.dataset.state]);"
        )
        wait_for(f"{SESSIONS} active session rows",
                 lambda: (r := browser.d.execute_script(snapshot)) and len(r) == SESSIONS
                 and all(state == "active" for _, _, state in r), 10)
        browser.shot("sessions")

        # Events, ledger (receipts settled on the replica), canopy (off here).
        browser.tab("events")
        check(len(browser.css('#events li[data-kind="node_joined"]')) >= 3, "node_joined events listed")
        browser.shot("events")
        browser.tab("ledger")
        wait_for("the ledger replica in the ledger view",
                 lambda: len(browser.css('#replicas tbody tr[data-replica]')) == 1 and "leader" in browser.css('#replicas tbody tr')[0].text.lower(), 20)
        wait_for("settled receipts and balances on the ledger page",
                 lambda: browser.css("#balances tbody tr td.num"), 40, every=0.5)
        browser.shot("ledger")
        browser.tab("canopy")
        check(not browser.d.find_element(By.ID, "canopy-off").get_attribute("hidden"), "canopy shown as off")
        browser.shot("canopy")
        errs = browser.console_errors()
        check(not errs, f"console errors on the RC dashboard: {errs}")

        # A node's own view.
        st = colony.status()
        holders: dict[str, int] = {}
        for s in st["sessions"]:
            holders[s["node_name"]] = holders.get(s["node_name"], 0) + 1
        victim = max(holders, key=holders.get)
        browser.open(f"http://{colony.nodes[victim]}/ui#token={colony.token}")
        wait_for(f"{holders[victim]} session rows on {victim}'s page",
                 lambda: len(browser.css("#sessions tbody tr[data-session]")) == holders[victim], 10)
        check(browser.d.find_element(By.TAG_NAME, "body").get_attribute("data-membership") == "member", "node view: member")
        browser.shot("node")
        errs = browser.console_errors()
        check(not errs, f"console errors on the node view: {errs}")

        # Kill the busiest node: the page shows it dead and its sessions on their new holders.
        browser.open(ui + "#sessions")
        moved = [s["session_id"] for s in st["sessions"] if s["node_name"] == victim]
        print(f"killing {victim} (holds {len(moved)} sessions)")
        t0 = time.monotonic()
        colony.kill(victim)

        def failed_over():
            # One snapshot of the table (the page may replace its rows between two reads).
            rows = browser.d.execute_script(
                "return [...document.querySelectorAll('#sessions tbody tr[data-session]')]"
                ".map(r => [r.dataset.holder, r.dataset.state]);"
            )
            if len(rows) != SESSIONS:
                return False
            return all(holder != victim and state == "active" for holder, state in rows)

        wait_for(f"{victim}'s sessions on their new holders (sessions page)", failed_over, 20)
        browser.tab("colony")
        wait_for(f"{victim} shown dead", lambda: browser.css(f'.node[data-node="{victim}"][data-state="dead"]'), 10)
        took = time.monotonic() - t0
        print(f"dashboard showed {victim} dead and its {len(moved)} sessions moved {took:.1f}s after the kill")
        browser.shot("colony-after-failover")
        browser.tab("events")
        check(browser.css('#events li[data-kind="node_dead"]'), "node_dead in the live events")
        wait_for("failover events", lambda: len(browser.css('#events li[data-kind="session_moved"]')) >= len(moved), 10)
        browser.shot("events-after-failover")
        browser.tab("sessions")
        browser.shot("sessions-after-failover")
        errs = browser.console_errors()
        check(not errs, f"console errors after the failover: {errs}")

        # Nothing acknowledged was lost: every session answers with its total + 1.
        for sid, total in totals.items():
            loc = http("GET", f"http://{colony.rc_api}/sessions/{sid}", token=caps[sid])[1]
            code, r = http("POST", f"{loc['address']}/sessions/{sid}/inputs", {"seq": 4, "input": 1}, token=caps[sid])
            check(code == 200 and r.get("output") == total + 1, f"{sid} after failover: HTTP {code} {r}, expected {total + 1}")
        print(f"all {len(totals)} sessions kept their state through the failover")
    finally:
        if browser:
            browser.quit()
        colony.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, type=Path, help="the opengrid binary")
    default = Path(os.environ.get("OPENGRID_ARTIFACTS", ROOT / "artifacts")) / "dashboard"
    ap.add_argument("--artifacts", type=Path, default=default, help="screenshots and logs (default: %(default)s)")
    a = ap.parse_args()
    if not a.bin.exists():
        print(f"dashboard test: no binary at {a.bin}", file=sys.stderr)
        return 1
    try:
        run(a.bin, a.artifacts)
    except Failure as e:
        print(f"dashboard test FAILED: {e}\n  screenshots and process logs: {a.artifacts}", file=sys.stderr)
        return 1
    print(f"dashboard test passed; screenshots in {a.artifacts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
