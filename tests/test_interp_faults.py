"""The interp stage against a loopback judge server that misbehaves: load with dropped connections and 429s,
HTTP 500 on every explanation, garbage bodies after a healthy pre-flight, a redirect to another host.

`JudgeServer` answers like an OpenAI-compatible chat server (explanations, then 0/1 lists) unless its
`fault(kind, key)` says otherwise, and records every request's arrival, outcome and concurrency.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from randsae.errors import UserError
from randsae.interp import interpret_run
from randsae.interp.outputs import TASKS, read_scores
from randsae.interp.prompts import EXPLAINER_SYSTEM
from randsae.run_dir import RunDir
from tests.helpers import build_interp_run, str_tokens
from tests.test_interp_stage import small_config


class JudgeServer:
    """A chat-completions server on 127.0.0.1. Subclasses override `fault`: None answers properly, "drop"
    closes the connection unanswered, (status, headers, body) sends that reply instead."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.log: list[tuple[str, str, float, Any]] = []
        """(kind, key, arrival time, fault) per request; kind is preflight, explain or judge."""
        self.answered: dict[str, int] = {}
        """Judge prompts answered properly: key -> number of excerpts."""
        self.in_flight = self.peak_in_flight = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                with owner.lock:
                    owner.in_flight += 1
                    owner.peak_in_flight = max(owner.peak_in_flight, owner.in_flight)
                self.answering = True
                try:
                    owner.handle(self)
                finally:
                    owner.done_with(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def fault(self, kind: str, key: str) -> Any:
        return None

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers["Content-Length"]))
        messages = json.loads(raw)["messages"]
        user = messages[1]["content"]
        kind = (
            "preflight" if user == "Say OK." else "explain" if messages[0]["content"] == EXPLAINER_SYSTEM else "judge"
        )
        key = raw.decode()
        with self.lock:
            fault = self.fault(kind, key)
            self.log.append((kind, key, time.monotonic(), fault))
        time.sleep(self.delay)
        # A request stops counting as in flight before its reply goes out: the client may send its next request
        # the moment the reply arrives, before this thread returns.
        self.done_with(handler)
        if fault == "drop":
            handler.close_connection = True
            return
        status, headers, body = fault or (200, {}, self.answer(kind, key, user))
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def done_with(self, handler: Any) -> None:
        with self.lock:
            if handler.answering:
                handler.answering = False
                self.in_flight -= 1

    def answer(self, kind: str, key: str, user: str) -> dict:
        if kind == "judge":
            n = user.count("Excerpt ")
            with self.lock:
                self.answered[key] = n
            content = "[" + ", ".join("1" if i % 2 else "0" for i in range(n)) + "]"
        else:
            content = "OK" if kind == "preflight" else "Explanation: words with a w"
        return {"choices": [{"message": {"role": "assistant", "content": content}}]}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[JudgeServer], JudgeServer]]:
    servers: list[JudgeServer] = []

    def start(server: JudgeServer) -> JudgeServer:
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def http_config(url: str, **overrides):
    # Without the explainer ablation: its judge prompts would share the server's faults with the ones counted.
    settings: dict[str, Any] = dict(
        judge="http", model="judge", base_url=url, timeout_s=5, retries=2, backoff_s=0.01, explainer_ablation=False
    )
    settings.update(overrides)
    return small_config(**settings)


def all_records(run, module="tokenlike.layer1"):
    paths = RunDir(run).interp("http-judge")
    latents = json.loads(paths.selection.read_text())["selections"][module]["latents"]
    return [r for task in TASKS for latent in latents for r in read_scores(paths.score(task, module, latent))]


class Overloaded(JudgeServer):
    """Slow answers; ~10% of connections dropped, ~10% answered 429 with Retry-After: 1 (the pre-flight
    spared); one judge prompt dropped every time, so some examples must end up counted as failed."""

    def __init__(self) -> None:
        super().__init__(delay=0.05)
        self.random = random.Random(0)
        self.doomed: str | None = None

    def fault(self, kind, key):
        if kind == "preflight":
            return None
        if kind == "judge" and self.doomed in (None, key):
            self.doomed = key
            return "drop"
        draw = self.random.random()
        if draw < 0.1:
            return "drop"
        if draw < 0.2:
            return (429, {"Retry-After": "1"}, {"error": "slow down"})
        return None


def test_load_is_held_within_concurrency_retry_after_honoured_and_every_example_accounted_for(tmp_path, serve) -> None:
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    server = serve(Overloaded())
    cfg = http_config(server.url, concurrency=4, max_failure_fraction=1.0)
    start = time.monotonic()
    sae = interpret_run(run, cfg, progress=False, str_tokens=str_tokens).saes[0]
    assert time.monotonic() - start < 30

    assert 2 <= server.peak_in_flight <= cfg.concurrency
    prompts = {key for _, key, _, _ in server.log}
    assert len(server.log) <= (cfg.retries + 1) * len(prompts)  # bounded: no request asked more often
    arrivals: dict[str, list[tuple[float, Any]]] = {}
    for _, key, arrived, fault in server.log:
        arrivals.setdefault(key, []).append((arrived, fault))
    for attempts in arrivals.values():
        for (arrived, fault), (next_arrival, _) in zip(attempts, attempts[1:], strict=False):
            if isinstance(fault, tuple):  # a 429: the retry waited for Retry-After, not the 10 ms backoff
                assert next_arrival - arrived >= 1.0
    assert any(isinstance(fault, tuple) for _, _, _, fault in server.log)

    records = all_records(run)
    assert len(records) == sae.fuzz.n_examples + sae.detection.n_examples
    scored = [r for r in records if r.failure is None]
    assert all(r.probability is not None and r.prediction is not None for r in scored)
    failed = sae.fuzz.n_failed + sae.detection.n_failed
    assert failed == len(records) - len(scored) > 0
    unanswered_judge = {key for kind, key, _, _ in server.log if kind == "judge"} - set(server.answered)
    unanswered_explain = {key for kind, key, _, _ in server.log if kind == "explain"} - {
        key for kind, key, _, fault in server.log if kind == "explain" and fault is None
    }
    assert sae.n_explanation_request_failures == len(unanswered_explain)
    request_failures = sae.fuzz.n_request_failures + sae.detection.n_request_failures
    assert request_failures == sum(
        json.loads(key)["messages"][1]["content"].count("Excerpt ") for key in unanswered_judge
    )
    assert failed == request_failures + sae.fuzz.n_unexplained_examples + sae.detection.n_unexplained_examples


class ExplanationsFail(JudgeServer):
    """Healthy pre-flight and judge; every explanation request gets HTTP 500."""

    def fault(self, kind, key):
        return (500, {}, {"error": "internal"}) if kind == "explain" else None


def test_explanation_requests_that_all_fail_are_counted_as_request_failures(tmp_path, serve):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    server = serve(ExplanationsFail())
    with pytest.raises(UserError, match=r"8 of 8 explanations failed, 8 request"):
        interpret_run(run, http_config(server.url, retries=0), progress=False, str_tokens=str_tokens)
    summary = json.loads((run / "interp" / "http-judge" / "interp.json").read_text())["saes"][0]
    assert summary["n_explanation_request_failures"] == summary["n_explanation_failures"] == 8


class GarbageAfterPreflight(JudgeServer):
    """Answers the pre-flight, then sends an HTML error page as a 200 on every other request."""

    def fault(self, kind, key):
        return None if kind == "preflight" else (200, {}, b"<html>proxy error</html>")


def test_garbage_bodies_are_retried_by_the_next_run_against_a_healthy_server(tmp_path, serve):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    garbage = serve(GarbageAfterPreflight())
    with pytest.raises(UserError, match="8 malformed reply"):
        interpret_run(run, http_config(garbage.url), progress=False, str_tokens=str_tokens)
    healthy = serve(JudgeServer())
    sae = interpret_run(run, http_config(healthy.url), progress=False, str_tokens=str_tokens).saes[0]
    assert sae.fuzz.n_failed == sae.detection.n_failed == sae.n_explanation_failures == 0
    assert len(garbage.log) == 1 + 8  # the pre-flight, then each explanation once: malformed is not retried at once


class Redirecting(JudgeServer):
    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def fault(self, kind, key):
        return (302, {"Location": self.target}, b"")


def test_a_judge_url_that_redirects_elsewhere_stops_before_any_work_and_sends_the_key_nowhere(
    tmp_path, serve, monkeypatch
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-456")
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    elsewhere = serve(JudgeServer())
    home = serve(Redirecting(elsewhere.url + "/chat/completions"))
    with pytest.raises(UserError, match=f"redirects \\(HTTP 302\\) to {elsewhere.url}/chat/completions") as caught:
        interpret_run(run, http_config(home.url), progress=False, str_tokens=str_tokens)
    assert "sk-secret" not in str(caught.value) and "\n" not in str(caught.value)
    assert elsewhere.log == [] and len(home.log) == 1
    assert not (run / "interp").exists()
