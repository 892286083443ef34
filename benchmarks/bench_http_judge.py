"""Judge throughput through an OpenAI-compatible server: examples judged per second with 1 request in
flight against N, 5 windows per prompt, measured in one run.

    python -m llama_cpp.server --model SmolLM2-135M-Instruct.Q4_1.gguf --port 8080 &   # or vLLM, Ollama...
    python benchmarks/bench_http_judge.py http://127.0.0.1:8080/v1 smollm2 [N]
"""

import sys
import time

from randsae.interp.judges import JudgeItem, JudgeRequest, LLMJudge
from randsae.interp.llm_http import HttpLanguageModel


def main() -> None:
    url, name = sys.argv[1], sys.argv[2]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    words = [
        "the",
        "cat",
        "sat",
        "on",
        "the",
        "mat",
        "while",
        "a",
        "dog",
        "ran",
        "after",
        "the",
        "red",
        "ball",
        "in",
        "the",
        "garden",
    ]
    items = [JudgeItem([" " + w for w in words[i : i + 12]], None) for i in range(5)]
    requests = [JudgeRequest("detection", "animals", items)] * 16
    rates = {}
    for concurrency in (1, workers):
        judge = LLMJudge(HttpLanguageModel(url, name, api="completion", concurrency=concurrency, timeout_s=300))
        start = time.perf_counter()
        verdicts = judge.judge_many(requests)
        seconds = time.perf_counter() - start
        failed = sum(v.failure is not None for batch in verdicts for v in batch)
        rates[concurrency] = 5 * len(requests) / seconds
        print(
            f"concurrency {concurrency:>2}: {rates[concurrency]:.1f} examples/s "
            f"({len(requests)} prompts x 5, {failed} failed)"
        )
    print(f"speed-up from {workers} in flight: {rates[workers] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
