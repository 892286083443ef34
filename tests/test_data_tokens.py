"""Text sources, packing with explicit BOS, and the document-level train / held-out split."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from randsae.data.text import EMBEDDED, TextConfig, iter_texts
from randsae.data.tokens import (
    SPLITS,
    TokenConfig,
    WindowPacker,
    count_not_bos,
    counted,
    is_heldout,
    load_excluded_ids,
    load_tokens,
    not_bos,
    pack_windows,
    save_tokens,
    special_ids,
    special_token_ids,
    tokenize_splits,
    unknown_token_warning,
)
from randsae.errors import UserError


def tokenize(tmp_path, texts, tokenizer, cfg, **kwargs):
    """({split: windows}, unknown share) of `tokenize_splits` writing both splits under tmp_path."""
    paths = {split: tmp_path / f"{split}.safetensors" for split in SPLITS}
    share = tokenize_splits(texts, tokenizer, cfg, paths, **kwargs)
    return {split: load_tokens(path) for split, path in paths.items()}, share


def test_pack_windows_joins_documents_with_the_separator_and_leads_with_bos():
    docs = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    windows = pack_windows(docs, n_windows=3, context_size=4, bos=1, separator=2)
    expected = torch.tensor([[1, 5, 6, 7], [1, 2, 8, 9], [1, 2, 10, 11]], dtype=torch.int32)
    assert torch.equal(windows, expected)


def test_pack_windows_returns_fewer_windows_when_text_runs_out():
    assert pack_windows([[5, 6, 7]], n_windows=5, context_size=3, bos=1, separator=2).shape == (2, 3)


def test_not_bos_marks_every_row_but_each_windows_first():
    windows = pack_windows([list(range(10, 40))], n_windows=4, context_size=5, bos=1, separator=2)
    flat = windows.flatten()
    mask = not_bos(torch.arange(flat.numel()), context_size=5)
    assert (flat[~mask] == 1).all() and (flat[mask] != 1).all()
    assert [count_not_bos(n, 5) for n in (0, 1, 5, 6, 20)] == [int(mask[:n].sum()) for n in (0, 1, 5, 6, 20)]


def test_packer_hands_over_whole_windows_in_chunks_and_stops_when_full():
    chunks = []
    packer = WindowPacker(n_windows=5, context_size=3, bos=1, separator=2, sink=chunks.append, chunk_windows=2)
    for doc in ([5, 6, 7], [8], [9, 10, 11, 12], [13, 14]):
        packer.add(doc)
    packer.emit()
    assert [chunk.shape[0] for chunk in chunks] == [2, 3] and packer.full
    expected = pack_windows([[5, 6, 7], [8], [9, 10, 11, 12], [13, 14]], 5, 3, 1, 2)
    assert torch.equal(torch.from_numpy(np.concatenate(chunks)), expected)
    assert torch.equal(expected[:, 1:].flatten(), torch.tensor([5, 6, 7, 2, 8, 2, 9, 10, 11, 12], dtype=torch.int32))


def test_token_files_are_byte_for_byte_what_collecting_every_token_gave(tmp_path, tiny_model_dir, tiny_corpus):
    """The streamed files equal the former way: every document tokenized, split, joined, cut, then saved by
    safetensors in one piece (so existing runs' token files stay valid)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = TokenConfig(context_size=16, train_tokens=1600, heldout_tokens=320, heldout_fraction=0.3)
    texts = list(iter_texts(TextConfig(source=str(tiny_corpus / "*.jsonl"))))
    windows, _ = tokenize(tmp_path, texts, tokenizer, cfg, batch_docs=7)
    bos, separator = special_ids(tokenizer)
    for split in SPLITS:
        stream = []
        for text in texts:
            if is_heldout(text, cfg.heldout_fraction, cfg.split_seed) == (split == "heldout"):
                stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [separator]
        n = getattr(cfg, f"{split}_tokens") // 16
        body = torch.tensor(stream[: n * 15], dtype=torch.int32).view(n, 15)
        expected = torch.cat([torch.full((n, 1), bos, dtype=torch.int32), body], dim=1)
        excluded = {"excluded_ids": json.dumps(list(special_token_ids(tokenizer)))}
        save_file({"input_ids": expected}, tmp_path / "expected.safetensors", metadata=excluded)
        assert (tmp_path / f"{split}.safetensors").read_bytes() == (tmp_path / "expected.safetensors").read_bytes()
        assert bos in load_excluded_ids(tmp_path / f"{split}.safetensors")
        assert torch.equal(windows[split], expected)
    assert not list(tmp_path.glob("*.tmp"))


def test_counted_rows_leave_out_bos_and_the_excluded_tokens():
    windows = torch.tensor([[1, 5, 2, 6], [1, 2, 7, 8]], dtype=torch.int32)
    assert counted(windows, ()).tolist() == [False, True, True, True, False, True, True, True]
    assert counted(windows, (1, 2)).tolist() == [False, True, False, True, False, False, True, True]
    assert counted(windows, (2,), bos=True).tolist() == [True, True, False, True, True, False, True, True]


def test_special_tokens_are_the_structural_ones_not_the_unknown_token():
    from types import SimpleNamespace

    chat = SimpleNamespace(bos_token_id=1, eos_token_id=2, pad_token_id=2, unk_token_id=0, all_special_ids=[0, 1, 2, 7])
    assert special_token_ids(chat) == (1, 2, 7)  # 7: a chat marker; 0 (unknown) stands for text
    gpt2 = SimpleNamespace(bos_token_id=5, eos_token_id=5, pad_token_id=None, unk_token_id=5, all_special_ids=[5])
    assert special_token_ids(gpt2) == (5,)  # its unknown token is its EOS


def test_a_token_file_records_its_excluded_ids_and_one_without_them_excludes_none(tmp_path):
    save_tokens(tmp_path / "a.safetensors", torch.ones(2, 3, dtype=torch.int32), excluded_ids=(9, 3))
    assert load_excluded_ids(tmp_path / "a.safetensors") == (3, 9)
    save_file({"input_ids": torch.ones(2, 3, dtype=torch.int32)}, tmp_path / "b.safetensors")  # an older run's
    assert load_excluded_ids(tmp_path / "b.safetensors") == ()


def test_token_files_load_memory_mapped_and_a_damaged_one_is_a_clear_error(tmp_path):
    path = tmp_path / "train.safetensors"
    save_tokens(path, torch.arange(12, dtype=torch.int32).view(3, 4))
    assert torch.equal(load_tokens(path), torch.arange(12, dtype=torch.int32).view(3, 4))
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(UserError, match="is damaged"):
        load_tokens(path)
    path.write_bytes(b"\xff" * 20)
    with pytest.raises(UserError, match="is damaged"):
        load_tokens(path)


def test_split_is_by_document_deterministic_and_disjoint(tmp_path, tiny_model_dir, tiny_corpus):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = TokenConfig(context_size=16, train_tokens=512, heldout_tokens=256, heldout_fraction=0.3)
    texts = list(iter_texts(TextConfig(source=str(tiny_corpus / "*.jsonl"))))
    first, _ = tokenize(tmp_path / "a", texts, tokenizer, cfg)
    again, _ = tokenize(tmp_path / "b", texts, tokenizer, cfg, batch_docs=8)  # stops reading once both are full
    assert all(torch.equal(first[s], again[s]) for s in first)
    assert first["train"].shape == (32, 16) and first["heldout"].shape == (16, 16)
    assert torch.all(first["train"][:, 0] == tokenizer.bos_token_id)
    heldout_docs = {t for t in texts if is_heldout(t, 0.3, 0)}
    assert heldout_docs and len(heldout_docs) < len(set(texts))
    train_text = tokenizer.decode(first["train"].flatten())
    for doc in heldout_docs:
        assert doc not in train_text, "a held-out document must never appear in train"


def test_asking_for_more_tokens_than_the_text_has_is_a_clear_error(tmp_path, tiny_model_dir, tiny_corpus):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = iter_texts(TextConfig(source=str(tiny_corpus / "*.jsonl")))
    with pytest.raises(UserError, match="Lower tokens.train_tokens"):
        tokenize(tmp_path, texts, tokenizer, TokenConfig(context_size=16, train_tokens=10**7, heldout_tokens=16))
    assert not list(tmp_path.iterdir()), "nothing is left behind"


def test_text_files_and_columns(tmp_path):
    (tmp_path / "a.txt").write_text("plain text file")
    (tmp_path / "b.jsonl").write_text('{"body": "json line"}\n')
    assert list(iter_texts(TextConfig(source=str(tmp_path / "*.txt")))) == ["plain text file"]
    assert list(iter_texts(TextConfig(source=str(tmp_path / "b.jsonl"), column="body"))) == ["json line"]
    with pytest.raises(UserError, match="no column 'text'"):
        list(iter_texts(TextConfig(source=str(tmp_path / "b.jsonl"))))
    with pytest.raises(UserError, match="no files match"):
        list(iter_texts(TextConfig(source=str(tmp_path / "*.md"))))


def test_hub_dataset_that_cannot_be_reached_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="could not open dataset"):
        next(iter_texts(TextConfig(source="no-such-org/no-such-dataset")))


@pytest.mark.slow
def test_embedded_corpus_is_real_english():
    texts = iter_texts(TextConfig(source=EMBEDDED))
    first = [next(texts) for _ in range(50)]
    assert len(set(first)) == 50
    words = " ".join(first).split()
    assert len(words) > 2000 and sum(w.lower() in {"the", "of", "and", "in"} for w in words) > 0.08 * len(words)


def test_text_the_tokenizer_does_not_know_gets_a_warning_with_the_share(tmp_path, tiny_model_dir, tiny_corpus):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # word-level: unknown words are <unk>
    cfg = TokenConfig(context_size=16, train_tokens=256, heldout_tokens=64, heldout_fraction=0.3)
    _, english = tokenize(tmp_path / "en", iter_texts(TextConfig(source=str(tiny_corpus / "*.jsonl"))), tokenizer, cfg)
    assert unknown_token_warning(english, tokenizer) is None
    foreign = [f"Fuchs springt über Hund{i}" for i in range(200)]  # 4 unknown words and the separator (EOS)
    warning = unknown_token_warning(tokenize(tmp_path / "de", foreign, tokenizer, cfg)[1], tokenizer)
    assert warning is not None and warning.startswith("80% of the tokens are the unknown token '<unk>'")
