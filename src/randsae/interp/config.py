"""Settings of the auto-interpretability stage: the paper's protocol by default, scaled down on request.

The defaults are the numbers of Heap et al. (delphi's protocol). The embedded default run scales them
down in its `[interp]` table to fit a few thousand held-out tokens, and `describe_scaling` says in one
line what was scaled, so a printed result never hides it.
"""

from __future__ import annotations

import dataclasses

from randsae.errors import UserError
from randsae.toml_config import invalid

JUDGES = ("token", "http", "hf")
EXPLAINERS = ("auto", "llm", "token_list")
HTTP_APIS = ("chat", "completion")
REPLICATES = ("all", "first")


@dataclasses.dataclass(frozen=True)
class InterpConfig:
    """How latents are sampled, explained and scored, and which judge does it."""

    n_latents: int = 100
    """Latents explained and scored per SAE (the same number in every variant and layer)."""
    min_examples: int = 200
    """A latent is eligible when it fires on at least this many held-out positions (BOS excluded)."""
    window_size: int = 32
    """Tokens per example window, cut from the cached rows (the row length must be a multiple)."""
    n_top_windows: int = 10_000
    """Windows ranked by their max activation; the explanation and test positives come from the top ones."""
    n_explanation_windows: int = 40
    """Windows shown to the explainer, drawn at random from the top windows."""
    n_quantiles: int = 10
    """The top windows are split by rank into this many equal bins; positives are drawn from each."""
    n_per_quantile: int = 10
    """Test positives per rank bin (never one of the explanation windows)."""
    n_negatives: int = 100
    """Test windows on which the latent never fires."""
    highlight_threshold: float = 0.3
    """Tokens above this fraction of the window's max activation are shown as `<<token>>`."""
    examples_per_prompt: int = 5
    """Test windows the judge classifies in one prompt (one 0/1 answer each)."""
    n_list_tokens: int = 10
    """Tokens named by the token-list explainer (those carrying most activation mass)."""
    layers: tuple[int, ...] = ()
    """Layers whose SAEs are explained and scored; empty: every layer. An LLM judge is slow: start with the
    layers that matter."""
    replicates: str = "all"
    """`all`, or `first`: only each variant's first random draw and SAE seed (each replicate costs an LLM judge
    as much as another layer)."""
    judge: str = "token"
    """`token` (offline: token-list explanations scored by token membership), `http` (any
    OpenAI-compatible server) or `hf` (a local Hugging Face model)."""
    explainer: str = "auto"
    """`llm`, `token_list`, or `auto`: token_list with the token judge, the LLM otherwise."""
    explainer_ablation: bool = True
    """With an LLM judge and LLM explanations, also score the same latents' token-list explanations with the
    same judge (RUN/interp/{judge}/token_list_explainer/): a low AUROC is then traced to the explainer or the
    judge."""
    base_url: str = "http://127.0.0.1:8080/v1"
    """OpenAI-compatible endpoint (vLLM, llama.cpp server, Ollama, OpenAI) for `judge = "http"`."""
    model: str = ""
    """Model name sent to the server (`http`), or a local folder / GGUF file path (`hf`)."""
    api: str = "chat"
    """`chat` (/chat/completions) or `completion` (/completions, plain text prompts) for `http`."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key; the key itself is never stored or written."""
    concurrency: int = 16
    """HTTP requests in flight at once (keep a server's batch full)."""
    timeout_s: float = 120.0
    """Seconds before one HTTP request is abandoned (then retried)."""
    retries: int = 3
    """Retries per request after a timeout, connection error, 429 or 5xx, with exponential backoff (longer when
    the server's Retry-After asks, up to 60 s). A request still failing is counted and asked again on a rerun."""
    backoff_s: float = 1.0
    """First retry waits this long, then doubles."""
    max_failure_fraction: float = 0.5
    """Stop with an error when more than this fraction of judged examples failed (any kind: no reply, a
    malformed reply, an answer that does not parse, no explanation)."""
    explanation_max_tokens: int = 120
    """Token budget of one generated explanation."""
    n_bootstrap: int = 1000
    """Bootstrap resamples of latents for the pooled-AUROC 95% CI."""
    verify_rows: int = 512
    """Held-out rows re-encoded with the SAE's own `encode()` to check the latent cache."""
    seed: int = 0
    """Seeds latent selection, example sampling, prompt order and fuzzing's random highlights."""

    def __post_init__(self) -> None:
        for name in (
            "n_latents",
            "min_examples",
            "window_size",
            "n_top_windows",
            "n_explanation_windows",
            "n_quantiles",
            "n_per_quantile",
            "examples_per_prompt",
            "n_list_tokens",
            "concurrency",
            "explanation_max_tokens",
            "n_bootstrap",
        ):
            if getattr(self, name) < 1:
                raise UserError(
                    f"interp.{name} must be at least 1, got {getattr(self, name)}",
                    f"Set interp.{name} to a positive integer",
                )
        for name in ("n_negatives", "retries", "verify_rows", "backoff_s"):
            if getattr(self, name) < 0:
                raise UserError(
                    f"interp.{name} must not be negative, got {getattr(self, name)}", f"Set interp.{name} to 0 or more"
                )
        if any(layer < 0 for layer in self.layers):
            raise invalid("interp.layers", list(self.layers), "layer indices of the run, e.g. [3, 10]; [] for all")
        for name, allowed in (
            ("judge", JUDGES),
            ("explainer", EXPLAINERS),
            ("api", HTTP_APIS),
            ("replicates", REPLICATES),
        ):
            if getattr(self, name) not in allowed:
                raise UserError(f"unknown interp.{name} {getattr(self, name)!r}", f"Use one of {', '.join(allowed)}")
        if not 0 < self.highlight_threshold < 1:
            raise UserError(
                f"interp.highlight_threshold must be in (0, 1), got {self.highlight_threshold}",
                "Use a fraction of the window max, e.g. 0.3",
            )
        if not 0 <= self.max_failure_fraction <= 1:
            raise UserError(
                f"interp.max_failure_fraction must be in [0, 1], got {self.max_failure_fraction}",
                "Use a fraction, e.g. 0.5",
            )
        if self.timeout_s <= 0:
            raise UserError(f"interp.timeout_s must be positive, got {self.timeout_s}", "Use seconds, e.g. 120")
        if self.judge == "token" and self.explainer == "llm":
            raise UserError(
                "the token judge scores token-list explanations only, but interp.explainer is 'llm'",
                "Use judge = 'http' or 'hf' for LLM explanations, or explainer = 'token_list'",
            )
        if self.judge != "token" and not self.model:
            raise UserError(
                f"interp.judge = {self.judge!r} needs interp.model",
                "Set interp.model to the server's model name (http) or a local model path (hf)",
            )
        if self.judge == "http" and not self.base_url.startswith(("http://", "https://")):
            raise invalid("interp.base_url", self.base_url, "the server's URL, e.g. http://127.0.0.1:8000/v1")

    @property
    def resolved_explainer(self) -> str:
        """`token_list` or `llm`, after resolving `auto`."""
        if self.explainer != "auto":
            return self.explainer
        return "token_list" if self.judge == "token" else "llm"


def describe_scaling(cfg: InterpConfig) -> str:
    """One line naming every protocol number that differs from the paper's, or saying none does."""
    paper = InterpConfig()
    protocol = (
        "n_latents",
        "min_examples",
        "window_size",
        "n_top_windows",
        "n_explanation_windows",
        "n_quantiles",
        "n_per_quantile",
        "n_negatives",
        "highlight_threshold",
        "examples_per_prompt",
    )
    changed = [
        f"{name} {getattr(paper, name)} -> {getattr(cfg, name)}"
        for name in protocol
        if getattr(cfg, name) != getattr(paper, name)
    ]
    judge = f"judge: {cfg.judge}" + (f" ({cfg.model})" if cfg.model else "") + f", explainer: {cfg.resolved_explainer}"
    if not changed:
        return f"interp: the paper's protocol numbers; {judge}"
    return f"interp scaled down from the paper: {', '.join(changed)}; {judge}"
