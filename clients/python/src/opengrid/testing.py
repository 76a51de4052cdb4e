"""A colony of real ``opengrid`` processes on 127.0.0.1 for tests: an RC (or an RC group of
replicas, ADR 0037) and nodes, each with its own data dir and log under one work dir, kill -9,
operator tokens, handovers.

    with Colony(binary, nodes=2) as c:
        client = opengrid.Client(c.rc_url)
        ...

    with Colony(binary, nodes=3, rc_group=3) as c:
        client = opengrid.Client(c.rc_urls)      # every replica
        c.kill9(c.leader())                       # kill -9 the replica in office

The binary is ``$OPENGRID_BIN`` unless given. Every wait has a deadline.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

SECRET = "python-test-colony-secret"


class ColonyError(Exception):
    """The colony did not reach a state within its deadline."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    """Polls ``check`` until it returns a truthy value; raises :class:`ColonyError` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            v = check()
            if v:
                return v
        except (OSError, ValueError, urllib.error.URLError) as e:
            last = e
        time.sleep(every)
    raise ColonyError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def http(method: str, url: str, body: Any = None, token: Optional[str] = None, timeout: float = 10.0):
    """One JSON request: ``(status, body)``; HTTP errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Colony:
    """An RC and ``nodes`` nodes (named ``n1``, ``n2``, …) as child processes.

    ``rc_group=n`` (3 or 5) runs the RC as a group of ``n`` replicas named ``rc1``, ``rc2``, …
    replicated with Raft (ADR 0037): :attr:`rc_urls` lists their APIs, :attr:`rc_url` is
    ``rc1``'s, the nodes know every replica, the operator token is signed by ``rc1``'s key (the
    replicas honour each other's), :meth:`leader` finds the one in office.

    ``node_extra`` is appended to every node's config (TOML); ``rc_extra`` to the RC's (to each
    replica's). The work dir is removed on :meth:`stop` unless ``OPENGRID_TEST_KEEP`` is set.
    """

    def __init__(
        self,
        binary: Optional[str] = None,
        nodes: int = 2,
        jurisdiction: str = "DE",
        rc_extra: str = "",
        node_extra: str = "",
        env: Optional[dict[str, str]] = None,
        rc_group: int = 0,
    ):
        b = binary or os.environ.get("OPENGRID_BIN")
        if not b:
            raise ColonyError("no opengrid binary: set OPENGRID_BIN or pass binary=")
        self.bin = Path(b)
        self.work = Path(tempfile.mkdtemp(prefix="og-py-"))
        self.keep = bool(os.environ.get("OPENGRID_TEST_KEEP"))
        self.procs: dict[str, subprocess.Popen] = {}
        #: The RC's processes: ``["rc"]``, or the replicas of a group, ``["rc1", "rc2", …]``.
        self.rc_names = [f"rc{i + 1}" for i in range(rc_group)] if rc_group else ["rc"]
        self._rc_api = {name: f"127.0.0.1:{free_port()}" for name in self.rc_names}
        self._rc_cluster = {name: f"127.0.0.1:{free_port()}" for name in self.rc_names}
        self._rc_raft = {name: f"127.0.0.1:{free_port()}" for name in self.rc_names} if rc_group else {}
        #: Every replica's API base URL (one for a single RC).
        self.rc_urls = [f"http://{self._rc_api[name]}" for name in self.rc_names]
        self.rc_api = self._rc_api[self.rc_names[0]]
        #: The control-plane addresses the nodes are given (``rc_cluster``), comma separated.
        self.rc_cluster = ",".join(self._rc_cluster[name] for name in self.rc_names)
        self.rc_url = self.rc_urls[0]
        self.jurisdiction = jurisdiction
        self.rc_extra = rc_extra
        self.node_extra = node_extra
        self.env = env or {}
        self.node_names = [f"n{i + 1}" for i in range(nodes)]
        self.token: Optional[str] = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "Colony":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self.keep:
            print(f"colony dir: {self.work}")
        group = ""
        if self._rc_raft:
            # Each replica's identity exists before any config names it in `peers`.
            peers = ", ".join(
                f'"{i + 1}={self.cli("id", "--data-dir", str(self.work / name)).strip()}@{self._rc_raft[name]}"'
                for i, name in enumerate(self.rc_names)
            )
            group = "[group]\nid = {id}\nlisten = \"{listen}\"\n" f"peers = [{peers}]\n"
        for i, name in enumerate(self.rc_names):
            cfg = self._config(
                name,
                f'version = 1\ndata_dir = "{self.work / name}"\napi_listen = "{self._rc_api[name]}"\n'
                f'cluster_listen = "{self._rc_cluster[name]}"\ncolony_secret = "{SECRET}"\n{self.rc_extra}\n'
                + group.format(id=i + 1, listen=self._rc_raft.get(name, "")),
            )
            self._spawn(name, ["rc", "--config", str(cfg)])
        for url in self.rc_urls:
            wait_for(f"the RC's /health at {url}", lambda url=url: http("GET", f"{url}/health")[0] == 200, 60)
        # The tests are the colony's operator: a token signed by the RC's own key (ADR 0026); in
        # a group, by the first replica's (every replica honours every replica's tokens).
        self.token = self.cli("token", "operator", "--key", str(self.work / self.rc_names[0]), "--valid", "2h").strip()
        if self._rc_raft:
            self.leader()
        for name in self.node_names:
            self.start_node(name)
        self.wait_alive(len(self.node_names))

    def start_node(self, name: str) -> None:
        """Starts (or restarts, with its data dir) the node ``name``."""
        cfg = self._config(
            name,
            f'version = 1\nname = "{name}"\ndata_dir = "{self.work / name}"\n'
            f'jurisdiction = "{self.jurisdiction}"\napi_listen = "127.0.0.1:0"\n'
            f'rc_cluster = "{self.rc_cluster}"\ncolony_secret = "{SECRET}"\nfsync = false\n{self.node_extra}\n',
        )
        self._spawn(name, ["node", "--config", str(cfg)])

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def kill9(self, name: str) -> None:
        """kill -9 of the process ``name`` (a node, ``rc``, or a replica ``rc1``…)."""
        p = self.procs[name]
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)

    # -- looking -----------------------------------------------------------------------------

    def cli(self, *args: str) -> str:
        """Runs ``opengrid ARGS`` and returns its stdout (raises on a non-zero exit)."""
        r = subprocess.run([str(self.bin), *args], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise ColonyError(f"opengrid {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def status(self, rc: Optional[str] = None) -> dict:
        """``GET /status`` of the RC: of the replica named ``rc``, else of the one in office."""
        url = self.rc_urls[self.rc_names.index(rc or self.leader())]
        code, body = http("GET", f"{url}/status", token=self.token)
        if code != 200:
            raise ColonyError(f"GET {url}/status: {code} {body}")
        return body

    def leader(self, timeout: float = 30) -> str:
        """The name of the RC in office: ``"rc"``, or the replica of the group whose ``/status``
        says it acts (``group.acting``), waiting up to ``timeout`` for one."""
        if not self._rc_raft:
            return self.rc_names[0]

        def acting() -> Optional[str]:
            for name, url in zip(self.rc_names, self.rc_urls):
                p = self.procs.get(name)
                if p is None or p.poll() is not None:
                    continue
                try:
                    code, body = http("GET", f"{url}/status", token=self.token, timeout=0.5)
                except (OSError, ValueError):
                    continue  # killed, or paused: not answering
                if code == 200 and isinstance(body, dict) and (body.get("group") or {}).get("acting") is True:
                    return name
            return None

        return wait_for("an RC group leader", acting, timeout, every=0.02)

    def rc_url_of(self, name: str) -> str:
        """The API base URL of the RC (replica) ``name``."""
        return self.rc_urls[self.rc_names.index(name)]

    def followers(self) -> list[str]:
        """The replicas of the group that are running and not in office."""
        lead = self.leader()
        return [n for n in self.rc_names if n != lead and self.procs[n].poll() is None]

    def alive(self) -> int:
        return sum(1 for m in self.status()["members"] if m["state"] == "alive")

    def wait_alive(self, n: int, timeout: float = 60) -> None:
        wait_for(f"{n} alive members", lambda: self.alive() == n, timeout)

    def entry(self, session: str) -> dict:
        """The RC's directory entry of ``session`` (``node``, ``node_name``, ``address``, ``epoch``)."""
        for e in self.status().get("sessions", []):
            if e.get("session_id") == session:
                return e
        raise ColonyError(f"session {session} is not in the RC's directory")

    def holder(self, session: str) -> str:
        """The name of the node holding ``session``, as the RC's directory says."""
        return self.entry(session)["node_name"]

    def handover(self, session: str, target: Optional[str] = None, timeout: float = 120) -> dict:
        """Hands ``session`` over live at its holder (to the node named ``target``, or where the
        RC picks), retrying while the target refuses (e.g. still loading an agent)."""
        body = {} if target is None else {"target": target}
        last: Any = None

        def attempt():
            nonlocal last
            holder = self.entry(session)["address"]
            code, r = http("POST", f"{holder}/sessions/{session}/handover", body, token=self.token, timeout=60)
            last = (code, r)
            return r if code == 200 else None

        try:
            return wait_for(f"a handover of {session}", attempt, timeout, every=0.2)
        except ColonyError as e:
            raise ColonyError(f"{e}; last answer {last}") from None

    # -- internals ---------------------------------------------------------------------------

    def _config(self, name: str, text: str) -> Path:
        p = self.work / f"{name}.toml"
        p.write_text(text)
        return p

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.work / f"{name}.log", "ab")
        # The processes read OPENGRID_* variables as config: the test's own are not theirs.
        env = {k: v for k, v in os.environ.items() if k not in ("OPENGRID_BIN", "OPENGRID_TEST_KEEP", "OPENGRID_API_PREFIX")}
        env["RUST_LOG"] = os.environ.get("RUST_LOG", "info,ractor_cluster=warn,ractor=warn")
        env.update(self.env)
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            old.send_signal(signal.SIGKILL)
            old.wait(timeout=10)
        self.procs[name] = subprocess.Popen(
            [str(self.bin), *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        log.close()


class EchoModel:
    """A stub OpenAI-compatible model endpoint on 127.0.0.1 for the ``assistant`` handler:
    ``POST /v1/chat/completions`` answers ``echo: <last message><suffix>``, and counts requests per
    ``Idempotency-Key`` in :attr:`counts` (a journaled effect is not repeated). Give the nodes
    ``ASSISTANT_MODEL_URL = f"http://{m.host}/v1"`` and the manifest ``[egress] hosts = [m.host]``.

    ``python -m opengrid.testing model --port 8080`` runs one in the foreground.
    """

    def __init__(self, port: int = 0, suffix: str = ""):
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                n = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(n) or b"{}")
                except ValueError:
                    body = {}
                key = self.headers.get("idempotency-key") or "none"
                with outer.lock:
                    outer.counts[key] = outer.counts.get(key, 0) + 1
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                messages = body.get("messages") or [{}]
                last = messages[-1].get("content", "") if isinstance(messages[-1], dict) else ""
                out = json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": f"echo: {last}{suffix}"}}]}
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m opengrid.testing")
    sub = ap.add_subparsers(dest="cmd", required=True)
    mp = sub.add_parser("model", help="run the echo model endpoint (for the assistant handler)")
    mp.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    m = EchoModel(args.port)
    print(f"echo model on http://{m.host}/v1 (Ctrl-C stops it)", flush=True)
    try:
        m.thread.join()
    except KeyboardInterrupt:
        m.close()
