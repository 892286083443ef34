"""What `randsae run` checks before it writes to the run directory (--out, model, context size, data source),
each a one-line error with exit code 2, and that --quiet prints no progress bar."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from randsae.analysis.config import AnalysisConfig
from randsae.cli import main
from randsae.config import dump_config
from tests.helpers import tiny_config, tiny_interp_config


def _damaged_model(tmp_path: Path, model: Path, case: str) -> Path:
    folder = tmp_path / f"model-{case}"
    shutil.copytree(model, folder)
    if case == "config":
        (folder / "config.json").write_text("{garbage")
    else:
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write to (root writes through permission bits; /sys refuses it too)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return folder
    return Path("/sys")


@pytest.mark.parametrize(
    "case, message",
    [
        ("out is a file", "is a file, not a folder"),
        ("out inside a file", "is a file, not a folder"),
        ("out read-only", "cannot write to"),
        ("context beyond the model", "tokens.context_size = 256 is more than the model's maximum of 128 positions"),
        ("no data files", "no files match"),
        ("no data column", "has no column 'body'"),
        ("damaged data file", "cannot read"),
        ("damaged model config", "could not load model"),
        ("truncated model weights", "could not load model"),
    ],
)
def test_mistakes_are_one_line_before_the_run_directory_is_written(
    tmp_path, capsys, tiny_model_dir, tiny_corpus, case, message
):
    cfg = tiny_config(tiny_model_dir, tiny_corpus, variants=("trained",))
    out = tmp_path / "run"
    overrides = []
    if case == "out is a file":
        out.write_text("not a folder")
    elif case == "out inside a file":
        (tmp_path / "file").write_text("not a folder")
        out = tmp_path / "file" / "run"
    elif case == "out read-only":
        out = _read_only_folder(tmp_path) / "run"
    elif case == "context beyond the model":
        overrides = ["tokens.context_size=256"]
    elif case == "no data files":
        overrides = [f"data.source={tmp_path / 'nothing' / '*.txt'}"]
    elif case == "no data column":
        overrides = ["data.column=body"]
    elif case == "damaged data file":
        (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
        overrides = [f"data.source={tmp_path / 'bad.jsonl'}"]
    else:
        damaged = _damaged_model(tmp_path, tiny_model_dir, "config" if "config" in case else "weights")
        overrides = [f"model.name={damaged}"]
    config = tmp_path / "experiment.toml"
    config.write_text(dump_config(cfg))
    before = out.read_bytes() if out.is_file() else None
    args = ["run", "--config", str(config), "--out", str(out), "--quiet", *(f"--set={item}" for item in overrides)]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert (out.read_bytes() if out.is_file() else None) == before
    assert not out.is_dir(), "nothing is written before the checks pass"


def test_a_quiet_run_prints_no_progress_bar(tmp_path, capfd, tiny_model_dir, tiny_corpus):
    """Every stage on the tiny model; the corpus is a fresh copy, so the datasets library builds its table anew."""
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    cfg = dataclasses.replace(
        tiny_config(tiny_model_dir, corpus, variants=("trained", "control"), layers=(1,)),
        interp=tiny_interp_config(),
        analysis=AnalysisConfig(bootstrap_samples=20, window_tokens=16),
    )
    config = tmp_path / "experiment.toml"
    config.write_text(dump_config(cfg))
    capfd.readouterr()
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert err == "", err
    assert "\r" not in out and "it/s" not in out and "%|" not in out
    assert (tmp_path / "run" / "report.html").is_file()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert os.environ.get("TQDM_DISABLE") is None, "the test must not pass because bars are off everywhere"


def test_text_of_unknown_words_is_warned_about_once(tmp_path, capsys, tiny_model_dir):
    corpus = tmp_path / "foreign.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Fuchs springt über Hund{i}"}) + "\n" for i in range(1000)))
    cfg = tiny_config(tiny_model_dir, tmp_path, variants=("trained",), layers=(1,))
    config = tmp_path / "experiment.toml"
    config.write_text(dump_config(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=str(corpus)))))
    args = ["run", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet", "--skip", "interpret"]
    assert main([*args, "analyze", "report"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "randsae: warning: 80% of the tokens are the unknown token '<unk>': the text does not suit the "
        "model's tokenizer (check data.source and model.name)"
    ]
