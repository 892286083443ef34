"""A local Hugging Face causal LM as explainer and judge, in-process.

Scoring needs no sampling: the reply "[d1, d2, ...]" is teacher-forced one answer at a time, and each
answer's P("1") / (P("0") + P("1")) is read from the logits at its position (key-value cache reused).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch

from randsae.errors import UserError
from randsae.interp.language_models import BinaryAnswers
from randsae.interp.prompts import Prompt


def local_model_path(model: str) -> Path:
    """`interp.model` as a path that exists (checked before a run starts, too)."""
    path = Path(model).expanduser()
    if not path.exists():
        raise UserError(f"no local model at {path}", "Set interp.model to a model folder or a .gguf file")
    return path


class HFLanguageModel:
    """`model`: a folder `from_pretrained` reads, or a `.gguf` file (dequantized by transformers)."""

    concurrency = 1

    def __init__(self, model: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = local_model_path(model)
        folder, gguf = (path.parent, {"gguf_file": path.name}) if path.suffix == ".gguf" else (path, {})
        self.tokenizer = AutoTokenizer.from_pretrained(folder, **gguf)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **gguf).eval()
        self.digit_ids = [self._single_token(digit) for digit in ("0", "1")]
        self.separator_ids = self.tokenizer.encode(", ", add_special_tokens=False)

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise UserError(
                f"the judge's tokenizer splits {text!r} into {len(ids)} tokens",
                "Use a model whose vocabulary has the digits 0 and 1 as tokens",
            )
        return ids[0]

    def _prompt_text(self, prompt: Prompt) -> str:
        if self.tokenizer.chat_template:
            messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]
            # tokenize=False: the rendered text (transformers annotates every return form)
            return cast(str, self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        return prompt.as_text()

    def answer_prefix(self, prompt: Prompt) -> str:
        """The text just before the first 0/1 answer (the completion-style prompt already opens the list)."""
        return self._prompt_text(prompt) + ("[" if self.tokenizer.chat_template else "")

    def _ids(self, text: str) -> torch.Tensor:
        return torch.tensor([self.tokenizer.encode(text, add_special_tokens=False)])

    @torch.no_grad()
    def generate(self, prompt: Prompt, max_tokens: int) -> str:
        ids = self._ids(self._prompt_text(prompt))
        out = self.model.generate(
            ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=self.tokenizer.eos_token_id
        )
        reply = cast(str, self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))  # one sequence: str
        # Without a chat template the prompt ends with the answer lead: put it back so replies read alike.
        return reply if self.tokenizer.chat_template else prompt.answer_lead + reply

    @torch.no_grad()
    def binary_answers(self, prompt: Prompt, n: int) -> BinaryAnswers:
        out = self.model(self._ids(self.answer_prefix(prompt)), use_cache=True)
        predictions, probabilities = [], []
        for i in range(n):
            pair = out.logits[0, -1, self.digit_ids].float()
            p_one = float(torch.softmax(pair, dim=0)[1])
            answer = bool(pair[1] > pair[0])
            predictions.append(answer)
            probabilities.append(p_one)
            if i < n - 1:
                following = torch.tensor([[self.digit_ids[answer], *self.separator_ids]])
                out = self.model(following, past_key_values=out.past_key_values, use_cache=True)
        return BinaryAnswers(predictions, probabilities, True)
