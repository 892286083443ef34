"""The OpenAI-compatible HTTP backend against a scripted local server (the real server: test_interp_server.py)."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from randsae.interp import llm_http
from randsae.interp.language_models import JudgeFailure
from randsae.interp.llm_http import HttpLanguageModel
from randsae.interp.prompts import Prompt

PROMPT = Prompt("system words", "user words", "Answer:")


class ScriptedServer:
    """Answers each request with the next scripted (status, body, delay[, headers]); remembers requests."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        self.in_flight = self.peak_in_flight = 0
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                with lock:
                    owner.requests.append(
                        (self.path, dict(self.headers), json.loads(self.rfile.read(length) or "null"))
                    )
                    status, body, delay, *extra = owner.script.pop(0) if owner.script else owner.fallback
                    owner.in_flight += 1
                    owner.peak_in_flight = max(owner.peak_in_flight, owner.in_flight)
                time.sleep(delay)
                with lock:
                    owner.in_flight -= 1
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    for name, value in (extra[0] if extra else {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST  # where a followed POST redirect would arrive

            def log_message(self, *args):
                pass

        self.fallback = (200, {}, 0)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(script):
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def chat_reply(content, logprobs=None):
    choice = {"message": {"role": "assistant", "content": content}}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return {"choices": [choice]}


def entry(token, p, alternatives):
    return {
        "token": token,
        "logprob": math.log(p),
        "top_logprobs": [{"token": t, "logprob": math.log(q)} for t, q in alternatives.items()],
    }


def model(url, **overrides):
    settings = dict(api="chat", api_key_env="RANDSAE_TEST_KEY", concurrency=2, timeout_s=5, retries=2, backoff_s=0)
    settings.update(overrides)
    return HttpLanguageModel(url, "judge-model", **settings)


def test_chat_answers_use_logprobs_and_send_the_key_only_in_the_header(serve, monkeypatch):
    monkeypatch.setenv("RANDSAE_TEST_KEY", "sk-secret-123")
    logprobs = [
        entry("[", 1.0, {"[": 1.0}),
        entry("1", 0.7, {"1": 0.7, "0": 0.2}),
        entry(",", 1.0, {",": 1.0}),
        entry(" 0", 0.6, {" 0": 0.6, " 1": 0.3}),
        entry("]", 1.0, {"]": 1.0}),
    ]
    server = serve([(200, chat_reply("[1, 0]", logprobs), 0)])
    answers = model(server.url).binary_answers(PROMPT, 2)
    assert answers.predictions == [True, False] and answers.from_logprobs
    assert answers.probabilities == pytest.approx([0.7 / 0.9, 0.3 / 0.9])
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-secret-123"
    assert body["logprobs"] is True and body["top_logprobs"] >= 2 and body["model"] == "judge-model"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "sk-secret" not in json.dumps(body)


def test_a_server_without_logprobs_gives_hard_answers(serve):
    server = serve([(200, chat_reply("[0, 1, 1]"), 0)])
    answers = model(server.url).binary_answers(PROMPT, 3)
    assert answers.probabilities == [0.0, 1.0, 1.0] and not answers.from_logprobs


def test_completion_api_reads_legacy_logprobs(serve):
    reply = {
        "choices": [
            {
                "text": " [1]",
                "logprobs": {
                    "tokens": [" [", "1", "]"],
                    "token_logprobs": [0, -0.1, 0],
                    "top_logprobs": [{" [": 0}, {"1": -0.1, "0": -2.0}, {"]": 0}],
                },
            }
        ]
    }
    server = serve([(200, reply, 0)])
    answers = model(server.url, api="completion").binary_answers(PROMPT, 1)
    assert answers.probabilities == pytest.approx([math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.0))])
    path, _, body = server.requests[0]
    assert path == "/v1/completions" and body["prompt"] == PROMPT.as_text() and body["logprobs"] >= 2


def test_overload_is_retried_with_backoff_then_succeeds(serve):
    server = serve([(503, {"error": "busy"}, 0), (429, {"error": "slow down"}, 0), (200, chat_reply("ok"), 0)])
    assert model(server.url).generate(PROMPT, 5) == "ok"
    assert len(server.requests) == 3


def test_timeouts_exhaust_the_retries_into_a_request_failure(serve):
    server = serve([(200, chat_reply("late"), 1.0)] * 2)
    with pytest.raises(JudgeFailure) as caught:
        model(server.url, timeout_s=0.2, retries=1).generate(PROMPT, 5)
    assert caught.value.kind == "request" and "after 2 attempts" in caught.value.detail


def test_client_errors_are_not_retried_and_garbage_bodies_are_malformed_not_parse_failures(serve):
    server = serve([(400, {"error": "bad model"}, 0)])
    with pytest.raises(JudgeFailure) as caught:
        model(server.url).generate(PROMPT, 5)
    assert caught.value.kind == "request" and "HTTP 400" in caught.value.detail and len(server.requests) == 1
    garbage = [b"<html>not json</html>", b"\xff\xfe", {"unexpected": True}, {"choices": []}, [1, 2]]
    server = serve([(200, body, 0) for body in garbage])
    for _ in garbage:  # the server misbehaved: a rerun asks again
        with pytest.raises(JudgeFailure) as caught:
            model(server.url).generate(PROMPT, 5)
        assert caught.value.kind == "malformed"
    server = serve([(200, chat_reply("I think the first one fires."), 0)])
    with pytest.raises(JudgeFailure) as caught:  # a well-formed reply without the answers: the model's fault
        model(server.url).binary_answers(PROMPT, 3)
    assert caught.value.kind == "parse"


def test_a_redirect_is_not_followed_so_the_key_never_reaches_another_host(serve, monkeypatch):
    monkeypatch.setenv("RANDSAE_TEST_KEY", "sk-secret-123")
    elsewhere = serve([])
    elsewhere.fallback = (200, chat_reply("ok"), 0)
    target = elsewhere.url + "/chat/completions"
    for code in (301, 302, 303, 307, 308):
        home = serve([(code, b"", 0, {"Location": target})])
        with pytest.raises(JudgeFailure) as caught:
            model(home.url).generate(PROMPT, 5)
        assert caught.value.kind == "request" and f"HTTP {code}" in caught.value.detail
        assert target in caught.value.detail and "sk-secret" not in caught.value.detail
        assert len(home.requests) == 1 and home.requests[0][1]["Authorization"] == "Bearer sk-secret-123"
    assert elsewhere.requests == []  # the other host saw nothing, header or not


def test_retry_after_seconds_outweigh_a_shorter_backoff_and_are_capped(serve, monkeypatch):
    server = serve([(429, {"error": "slow down"}, 0, {"Retry-After": "1"}), (200, chat_reply("ok"), 0)])
    start = time.monotonic()
    assert model(server.url, backoff_s=0).generate(PROMPT, 5) == "ok"
    assert time.monotonic() - start >= 1.0
    monkeypatch.setattr(llm_http, "MAX_RETRY_AFTER_S", 0.2)
    server = serve(
        [
            (503, {"error": "busy"}, 0, {"Retry-After": "3600"}),
            (429, {"error": "busy"}, 0, {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}),  # date form: backoff
            (200, chat_reply("ok"), 0),
        ]
    )
    start = time.monotonic()
    assert model(server.url, backoff_s=0).generate(PROMPT, 5) == "ok"
    assert time.monotonic() - start < 1.0 and len(server.requests) == 3


def test_unreachable_server_is_a_request_failure():
    with pytest.raises(JudgeFailure) as caught:
        model("http://127.0.0.1:9", retries=0).generate(PROMPT, 5)
    assert caught.value.kind == "request"


def test_the_judge_keeps_concurrency_requests_in_flight(serve):
    from randsae.interp.judges import JudgeItem, JudgeRequest, LLMJudge

    server = serve([])
    server.fallback = (200, chat_reply("[1, 0, 1, 0, 1]"), 0.3)
    items = [JudgeItem([" a", " b"], None)] * 5
    requests = [JudgeRequest("detection", "letters", items)] * 12
    verdicts = LLMJudge(model(server.url, concurrency=4)).judge_many(requests)
    assert len(server.requests) == 12 and server.peak_in_flight == 4
    assert all(len(v) == 5 and v[0].source == "hard_answers" for v in verdicts)
    assert "Excerpt 5:" in server.requests[0][2]["messages"][1]["content"]  # five windows per prompt
