"""The local Hugging Face judge on the embedded SmolLM2 GGUF: its teacher-forced answer probabilities
must equal those of one plain forward pass over the same full sequence."""

from __future__ import annotations

import pytest
import torch

from randsae.interp.prompts import judge_prompt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def judge():
    from randsae.errors import UserError

    try:
        from randsae.assets import embedded_model_gguf

        gguf = embedded_model_gguf()
    except (ImportError, UserError) as error:
        pytest.skip(f"embedded GGUF model unavailable ({error})")
    from randsae.interp.llm_hf import HFLanguageModel

    return HFLanguageModel(str(gguf))


def test_answer_probabilities_equal_a_plain_forward_pass(judge):
    prompt = judge_prompt("detection", "the word cat", [" the cat sat", " a dog ran", " my cat"])
    answers = judge.binary_answers(prompt, 3)
    assert answers.from_logprobs and len(answers.probabilities) == 3

    text = judge.answer_prefix(prompt)
    ids = judge.tokenizer.encode(text, add_special_tokens=False)
    positions = []
    for i, answer in enumerate(answers.predictions):
        positions.append(len(ids) - 1)
        ids += [judge.digit_ids[answer]] + (judge.separator_ids if i < 2 else [])
    with torch.no_grad():
        logits = judge.model(torch.tensor([ids])).logits[0]
    for position, probability in zip(positions, answers.probabilities, strict=True):
        pair = logits[position, judge.digit_ids]
        assert probability == pytest.approx(float(torch.softmax(pair, 0)[1]), abs=1e-4)
    assert answers.predictions == [p > 0.5 for p in answers.probabilities]


def test_generate_returns_text(judge):
    from randsae.interp.prompts import Prompt

    reply = judge.generate(Prompt("You are terse.", "Name a colour.", "Answer:"), 8)
    assert isinstance(reply, str) and reply.strip()
