"""An OpenAI-compatible HTTP backend (vLLM, llama.cpp server, Ollama, OpenAI), on the standard library.

Requests run on a thread pool (see `run_concurrently`), so a server sees `concurrency` prompts in flight.
Every request asks for log-probs; a server that sends none still works, and the answers are then marked
as hard answers. The API key is read from the environment when the backend is made and only ever sent in
the Authorization header, to `base_url` itself: never logged, printed or written, and redirects are not
followed (urllib would resend the header to whichever host a redirect names).
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from randsae.interp.language_models import BinaryAnswers, JudgeFailure, TokenChoice, answers_from_tokens
from randsae.interp.prompts import Prompt

TOP_LOGPROBS = 5
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 60.0
"""Longest wait a server's `Retry-After` gets: a longer one is cut to this, so a run never stalls for hours."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Makes a 3xx reply an HTTPError instead of a new request carrying the Authorization header."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class HttpLanguageModel:
    """`api = "chat"` posts to {base_url}/chat/completions, `"completion"` to {base_url}/completions."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api: str = "chat",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        timeout_s: float = 120.0,
        retries: int = 3,
        backoff_s: float = 1.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api = api
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._api_key = os.environ.get(api_key_env, "")
        self._opener = urllib.request.build_opener(_NoRedirects())

    def generate(self, prompt: Prompt, max_tokens: int) -> str:
        text, _ = self._complete(prompt, max_tokens, logprobs=False)
        return text

    def binary_answers(self, prompt: Prompt, n: int) -> BinaryAnswers:
        text, tokens = self._complete(prompt, 4 * n + 8, logprobs=True)
        return answers_from_tokens(tokens, text, n)

    def _complete(self, prompt: Prompt, max_tokens: int, logprobs: bool) -> tuple[str, list[TokenChoice] | None]:
        payload: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": 0.0}
        if self.api == "chat":
            payload["messages"] = [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ]
            if logprobs:
                payload.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
            reply = self._post("/chat/completions", payload)
            try:
                choice = reply["choices"][0]
                return choice["message"]["content"] or "", _chat_logprobs(choice.get("logprobs"))
            except (KeyError, IndexError, TypeError) as error:
                raise JudgeFailure(
                    "malformed", f"unexpected chat reply shape ({error!r}): {str(reply)[:200]}"
                ) from error
        payload["prompt"] = prompt.as_text()
        if logprobs:
            payload["logprobs"] = TOP_LOGPROBS
        reply = self._post("/completions", payload)
        try:
            choice = reply["choices"][0]
            # The prompt ends with the answer lead ("Explanation:"): put it back so replies read alike.
            return prompt.answer_lead + (choice["text"] or ""), _completion_logprobs(choice.get("logprobs"))
        except (KeyError, IndexError, TypeError) as error:
            raise JudgeFailure(
                "malformed", f"unexpected completion reply shape ({error!r}): {str(reply)[:200]}"
            ) from error

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST with retries on timeouts, connection errors, 429 and 5xx: exponential backoff, or longer
        when the server's `Retry-After` (seconds, at most MAX_RETRY_AFTER_S) asks for it."""
        url = self.base_url + path
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        body = json.dumps(payload).encode()
        problem, wait = "", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(wait)
            wait = self.backoff_s * 2**attempt
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout_s) as response:
                    raw = response.read()
            except urllib.error.HTTPError as error:
                if 300 <= error.code < 400:
                    raise JudgeFailure(
                        "request",
                        f"{url} redirects (HTTP {error.code}) to {error.headers.get('Location')}, which is not "
                        "followed so that the API key goes to no other host",
                    ) from error
                problem = f"HTTP {error.code} from {url}: {error.read()[:200]!r}"
                if error.code not in RETRYABLE_STATUS:
                    raise JudgeFailure("request", problem) from error
                wait = max(wait, _retry_after(error.headers.get("Retry-After")))
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
                problem = f"{type(error).__name__} talking to {url}: {error}"
                continue
            try:
                return json.loads(raw)
            except ValueError as error:  # not JSON, or not UTF-8
                raise JudgeFailure("malformed", f"reply from {url} is not JSON: {raw[:200]!r}") from error
        raise JudgeFailure("request", f"{problem} (after {self.retries + 1} attempts)")


def _retry_after(value: str | None) -> float:
    """Seconds a `Retry-After: <seconds>` header asks to wait, capped; 0 for none or the HTTP-date form."""
    if value is None or not value.strip().isdigit():
        return 0.0
    return min(float(value), MAX_RETRY_AFTER_S)


def _chat_logprobs(logprobs: dict[str, Any] | None) -> list[TokenChoice] | None:
    """Chat format: {"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]}."""
    if not logprobs or not logprobs.get("content"):
        return None
    tokens = []
    for entry in logprobs["content"]:
        alternatives = {alt["token"]: alt["logprob"] for alt in entry.get("top_logprobs") or []}
        alternatives.setdefault(entry["token"], entry["logprob"])
        tokens.append(TokenChoice(entry["token"], alternatives))
    return tokens


def _completion_logprobs(logprobs: dict[str, Any] | None) -> list[TokenChoice] | None:
    """Legacy completion format: {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: lp}]}."""
    if not logprobs or not logprobs.get("tokens"):
        return None
    tops = logprobs.get("top_logprobs") or [None] * len(logprobs["tokens"])
    chosen = logprobs.get("token_logprobs") or [None] * len(logprobs["tokens"])
    tokens = []
    for token, logprob, top in zip(logprobs["tokens"], chosen, tops, strict=True):
        alternatives = dict(top or {})
        if logprob is not None:
            alternatives.setdefault(token, logprob)
        tokens.append(TokenChoice(token, alternatives))
    return tokens
