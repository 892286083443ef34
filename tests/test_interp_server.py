"""A real OpenAI-compatible server end to end: llama-cpp-python's server on loopback with the embedded
SmolLM2 GGUF, explaining and judging a tiny synthetic run through the HTTP judge.

CI installs the server with .ci/install-llama-server.sh; where it or the model is missing the test says so
in its skip reason.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from randsae.interp import InterpConfig, interpret_run
from randsae.interp.calibration import load_calibration
from randsae.interp.llm_http import HttpLanguageModel
from randsae.interp.outputs import read_scores
from randsae.interp.prompts import judge_prompt
from randsae.interp.summary import load_interp_summary
from randsae.run_dir import RunDir, judge_label
from tests.helpers import build_interp_run, str_tokens

pytestmark = pytest.mark.slow
STARTUP_S = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
        pytest.skip("llama-cpp-python[server] is not installed: run .ci/install-llama-server.sh")
    from randsae.errors import UserError

    try:
        from randsae.assets import embedded_model_gguf

        gguf = embedded_model_gguf()
    except (ImportError, UserError) as error:
        pytest.skip(f"embedded GGUF model unavailable ({error})")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "4096",
                "--model_alias",
                "smollm2",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                with urllib.request.urlopen(url + "/models", timeout=5) as response:
                    json.loads(response.read())
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
                time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_explain_and_score_through_a_real_server(server_url, tmp_path):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    # One window per prompt: SmolLM2-135M does not keep to a five-answer list (it writes "[1, 0]"), but its
    # first answer is always readable, which is what this test needs: the real path, end to end.
    cfg = InterpConfig(
        judge="http",
        base_url=server_url,
        model="smollm2",
        api="completion",
        n_latents=2,
        min_examples=10,
        window_size=16,
        n_explanation_windows=4,
        n_quantiles=1,
        n_per_quantile=2,
        n_negatives=2,
        examples_per_prompt=1,
        explanation_max_tokens=16,
        concurrency=2,
        timeout_s=120,
        max_failure_fraction=1.0,
        n_bootstrap=50,
        verify_rows=16,
    )
    summary = interpret_run(run, cfg, progress=False, str_tokens=with_probe_tokens)
    sae = summary.saes[0]
    assert sae.n_sampled == 2
    for score in (sae.fuzz, sae.detection):
        assert score.n_request_failures == 0
        assert score.n_examples == 2 * 4
    paths = RunDir(run).interp(judge_label(cfg.judge, cfg.model))
    records = [
        r
        for latent in json.loads(paths.selection.read_text())["selections"]["tokenlike.layer1"]["latents"]
        for task in ("fuzz", "detection")
        for r in read_scores(paths.score(task, "tokenlike.layer1", latent))
    ]
    answered = [r for r in records if r.failure is None]
    assert answered, f"the server's model answered nothing usable: {[r.failure for r in records]}"
    assert {r.source for r in answered} == {"logprobs"}
    assert all(0.0 <= r.probability <= 1.0 for r in answered)
    assert any(0.0 < r.probability < 1.0 for r in answered)  # real log-probs, not hard answers

    # The judge was calibrated on the probes first (" of" and digits occur here), and also scored token lists.
    calibration = load_calibration(paths)
    assert calibration is not None and set(calibration.probes) == {"of", "digits"}
    assert [task.task for task in calibration.tasks] == ["fuzz", "detection"]
    assert all(0.0 <= t.sensitivity <= 1.0 and 0.0 <= t.specificity <= 1.0 for t in calibration.tasks)
    ablation = load_interp_summary(paths.explainer_ablation).saes[0]
    assert ablation.explainer == "token_list" and ablation.fuzz.n_examples == sae.fuzz.n_examples


def with_probe_tokens(ids):
    """The synthetic run's tokens, two of them renamed so that the calibration probes " of" and digits fire."""
    return [{1: " of", 2: " 42"}.get(i, text) for i, text in zip(ids, str_tokens(ids), strict=True)]


def test_chat_endpoint_returns_logprobs(server_url):
    model = HttpLanguageModel(server_url, "smollm2", api="chat", timeout_s=120, retries=1)
    text, tokens = model._complete(judge_prompt("detection", "the word cat", [" a cat", " a dog"]), 12, True)
    assert text and tokens, "chat completion returned no per-token log-probs"
    assert all(token.top_logprobs for token in tokens)
