"""The catalogue of bad inputs: each one through `randsae.cli.main`, as a user would type it.

Every case must end in exit code 2 with exactly one `randsae: error:` line on stderr (no traceback) and
must leave every file that existed before (the run directory, the config, the model, the corpus) as it was.
Cases are grouped by area: config, model, data, run directory, judge, toy, interop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import json
import shutil
import subprocess
import threading
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tomli_w

from randsae.analysis.stage import analyze_run
from randsae.cli import main
from randsae.config import dump_config, load_config
from randsae.interp.config import InterpConfig
from randsae.interp.stage import interpret_run
from tests.helpers import tiny_config

GARBAGE = b"\x00\xff\xfe not what this file should hold \x80\x81" * 8


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@dataclasses.dataclass
class Bench:
    """One case's sandbox: its own folder, the shared tiny model and corpus, and the finished runs to copy."""

    tmp: Path
    model: Path
    corpus: Path
    tiny_run: Path
    scored_run: Path
    judge_url: str
    undo: list[Callable[[], object]] = dataclasses.field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def config(self, edit: Callable[[str], str] = lambda text: text, **overrides) -> Path:
        """The tiny experiment (one variant) as a TOML file, its text passed through `edit`."""
        path = self.tmp / "experiment.toml"
        cfg = tiny_config(self.model, self.corpus, **{"variants": ("trained",), **overrides})
        path.write_text(edit(dump_config(cfg)))
        return path

    def sweep(self, models: list, **shared) -> Path:
        """The tiny experiment (one variant) over several models: `models` in place of [model]."""
        data = tomllib.loads(dump_config(tiny_config(self.model, self.corpus, variants=("trained",))))
        del data["model"]
        return self.file("sweep.toml", tomli_w.dumps({**data, **shared, "models": models}))

    def run(self, *extra: str, config: Path | None = None) -> list[str]:
        return ["run", "--config", str(config or self.config()), "--out", str(self.out), "--quiet", *extra]

    def copy(self, scored: bool = False) -> Path:
        """A copy of a finished run: `tiny_run` (prepare → evaluate) or, `scored`, also interpreted and analysed."""
        return Path(shutil.copytree(self.scored_run if scored else self.tiny_run, self.tmp / "run"))

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
        return path

    def read_only(self, folder: Path) -> Path:
        """Make `folder` unwritable, even for root (an immutable folder); skip where neither works."""
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        self.undo.append(lambda: folder.chmod(0o755))
        chattr = _writable(folder) and shutil.which("chattr")  # root writes through permissions
        if chattr and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
            self.undo.append(lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))
        if _writable(folder):
            pytest.skip("cannot make a folder read-only here")
        return folder

    def toy_config(self, **values) -> Path:
        """A toy sweep small enough to train in a second, with `values` changed."""
        settings = {
            "n_features": 8,
            "n_dims": 4,
            "mean_active": 1.0,
            "n_samples": 400,
            "batch_size": 64,
            "l1_count": 1,
            "latent_counts": [8],
            "networks": [],
            "epochs": 1,
            "workers": 1,
            **values,
        }
        lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        return self.file("toy.toml", "\n".join(lines) + "\n")


def _writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.touch()
    except OSError:
        return False
    probe.unlink()
    return True


@dataclasses.dataclass(frozen=True)
class Case:
    area: str
    name: str
    argv: Callable[[Bench], list[str]]


CASES: list[Case] = []


def case(area: str, name: str):
    def register(argv: Callable[[Bench], list[str]]) -> Callable[[Bench], list[str]]:
        CASES.append(Case(area, name, argv))
        return argv

    return register


# --- config: values, types, keys, the file itself, --set, the command line ---

SET_CASES = {
    "k_zero": ["sae.k=0"],
    "k_string": ['sae.k="four"'],
    "expansion_negative": ["sae.expansion=-1"],
    "architecture_unknown": ['sae.architecture="matching_pursuit"'],
    "l1_for_topk": ["sae.l1_coefficient=0.1"],
    "k_for_jumprelu": ['sae.architecture="jumprelu"'],
    "k_not_below_d_sae": ["sae.k=128"],
    "matryoshka_groups_wrong_sum": ['sae.architecture="matryoshka_batchtopk"', "sae.matryoshka_groups=[1, 2]"],
    "sweep_k_no_architecture_takes": ['sae.architecture=["jumprelu", "relu_l1"]', "sae.k=[4, 8]"],
    "sweep_values_repeated": ["sae.expansion=[4, 4]"],
    "sweep_architecture_unknown": ['sae.architecture=["topk", "matching_pursuit"]'],
    "sweep_k_not_below_d_sae": ["sae.expansion=[4, 1]", "sae.k=40"],
    "sweep_matryoshka_groups_one_expansion": [
        'sae.architecture="matryoshka_batchtopk"',
        "sae.expansion=[4, 8]",
        "sae.matryoshka_groups=[1, 3]",
    ],
    "context_size_one": ["tokens.context_size=1"],
    "train_tokens_negative": ["tokens.train_tokens=-5"],
    "heldout_tokens_zero": ["tokens.heldout_tokens=0"],
    "heldout_fraction_one": ["tokens.heldout_fraction=1.0"],
    "ce_windows_zero": ["eval.ce_windows=0"],
    "ce_windows_beyond_heldout": ["eval.ce_windows=1000"],
    "batch_windows_zero": ["eval.batch_windows=0"],
    "activation_dtype_int8": ["activation_dtype=int8"],
    "device_unknown": ["device=tpu"],
    "seed_float": ["seed=1.5"],
    "variants_empty": ["variants=[]"],
    "variants_repeated": ['variants=["trained", "trained"]'],
    "variants_unknown": ['variants=["shuffled"]'],
    "variants_step0_local_model": ['variants=["step0"]'],
    "layers_empty": ["layers=[]"],
    "layers_repeated": ["layers=[1, 1]"],
    "layers_negative": ["layers=[-1]"],
    "layers_strings": ['layers=["a"]'],
    "window_size_not_divisor": ["interp.window_size=5"],
    "train_batch_zero": ["train.batch_size=0"],
    "train_lr_negative": ["train.lr=-0.001"],
    "judge_unknown": ["interp.judge=oracle"],
    "interp_layers_negative": ["interp.layers=[-1]"],
    "interp_replicates_unknown": ['interp.replicates="some"'],
    "stability_seed_is_seed": ["analysis.seed_stability=true", "analysis.stability_seed=0"],
    "model_dtype_unknown": ["model.dtype=float8"],
    "set_unknown_key": ["sae.kk=3"],
    "set_unknown_table": ["saes.k=3"],
    "set_no_value": ["sae.k"],
    "set_bad_toml_value": ["layers=[1,"],
    "set_key_inside_value": ["layers.x=1"],
    "set_table_as_value": ["sae=3"],
}
for _name, _assignments in SET_CASES.items():
    case("config", _name)(lambda b, a=_assignments: b.run(*(arg for value in a for arg in ("--set", value))))


@case("config", "config_missing")
def _(b):
    return b.run(config=b.tmp / "nowhere.toml")


@case("config", "config_is_a_folder")
def _(b):
    return b.run(config=b.tmp)


@case("config", "config_binary")
def _(b):
    return b.run(config=b.file("binary.toml", GARBAGE))


@case("config", "plan_config_missing")
def _(b):
    return b.run("--plan", config=b.tmp / "nowhere.toml")


@case("config", "plan_config_binary")
def _(b):
    return b.run("--plan", config=b.file("binary.toml", GARBAGE))


@case("config", "config_bad_toml")
def _(b):
    return b.run(config=b.config(lambda text: text.replace("[sae]", "[sae")))


def _sae_table(b: Bench, table: str) -> list[str]:
    """The tiny experiment with its [sae] table's settings replaced by `table`."""
    return b.run(config=b.config(lambda text: text.replace('architecture = "topk"\nexpansion = 4\nk = 4', table)))


@case("config", "l1_negative")
def _(b):
    return _sae_table(b, 'architecture = "relu_l1"\nexpansion = 4\nl1_coefficient = -1.0')


@case("config", "jumprelu_bandwidth_zero")
def _(b):
    return _sae_table(b, 'architecture = "jumprelu"\nexpansion = 4\njumprelu_bandwidth = 0.0')


@case("config", "config_unknown_key")
def _(b):
    return b.run(config=b.config(lambda text: text.replace("[sae]\n", "[sae]\nk_value = 3\n")))


@case("config", "variants_subset_unknown")
def _(b):
    return b.run("--variants", "trained,bogus")


@case("config", "layers_subset_unknown")
def _(b):
    return b.run("--layers", "1,7")


@case("config", "layers_subset_not_numbers")
def _(b):
    return b.run("--layers", "one")


@case("config", "config_wrong_type_in_file")
def _(b):
    return b.run(config=b.config(lambda text: text.replace("expansion = 4", 'expansion = "4"')))


@case("config", "sweep_labels_repeated")
def _(b):
    return b.run(config=b.sweep([str(b.model), {"name": str(b.model), "layers": [1]}]))


@case("config", "sweep_layer_fraction_beyond_one")
def _(b):
    return b.run(config=b.sweep([str(b.model)], layers=[0.5, 1.5]))


@case("config", "sweep_layer_fraction_zero")
def _(b):
    return b.run(config=b.sweep([{"name": str(b.model), "layers": [0.0]}]))


@case("config", "sweep_layers_mixed")
def _(b):
    return b.run(config=b.sweep([str(b.model)], layers=[1, 0.5]))


@case("config", "sweep_with_a_job_part")
def _(b):
    return b.run("--layers", "1", config=b.sweep([str(b.model)]))


@case("config", "unknown_option")
def _(b):
    return b.run("--bogus")


@case("config", "skip_unknown_stage")
def _(b):
    return b.run("--skip", "everything")


# --- model ---


def _model_copy(b: Bench) -> Path:
    return Path(shutil.copytree(b.model, b.tmp / "model"))


def _with_model(b: Bench, name: str | Path, **overrides) -> list[str]:
    from randsae.models.load import ModelConfig

    return b.run(config=b.config(model=ModelConfig(name=str(name)), **overrides))


@case("model", "model_folder_missing")
def _(b):
    return _with_model(b, b.tmp / "nowhere" / "model")


@case("model", "model_gguf_missing")
def _(b):
    return _with_model(b, b.tmp / "nowhere.gguf")


@case("model", "model_gguf_truncated")
def _(b):
    return _with_model(b, b.file("model.gguf", b"GGUF\x03\x00\x00\x00\x05\x00"))


@case("model", "model_gguf_garbage")
def _(b):
    return _with_model(b, b.file("model.gguf", GARBAGE))


@case("model", "model_folder_empty")
def _(b):
    (b.tmp / "empty").mkdir()
    return _with_model(b, b.tmp / "empty")


@case("model", "model_config_json_garbage")
def _(b):
    model = _model_copy(b)
    (model / "config.json").write_text('{"model_type": "gpt_neox", ')
    return _with_model(b, model)


@case("model", "model_weights_truncated")
def _(b):
    model = _model_copy(b)
    truncate(model / "model.safetensors")
    return _with_model(b, model)


@case("model", "model_tokenizer_missing")
def _(b):
    model = _model_copy(b)
    for path in model.glob("*token*"):
        path.unlink()
    return _with_model(b, model)


@case("model", "layer_beyond_model")
def _(b):
    return b.run("--set", "layers=[9]")


@case("model", "blocks_path_wrong")
def _(b):
    return b.run("--set", "model.blocks=transformer.nothing")


@case("model", "blocks_path_not_a_list")
def _(b):
    return b.run("--set", "model.blocks=gpt_neox.embed_in")


@case("model", "context_beyond_max_positions")
def _(b):
    return b.run("--set", "tokens.context_size=256", "--set", "interp.window_size=32")


@case("model", "sweep_blocks_path_wrong")
def _(b):
    return b.run(config=b.sweep([{"name": str(b.model), "blocks": "transformer.nothing"}]))


# --- data ---


def _with_data(b: Bench, source: str | Path, **overrides) -> list[str]:
    from randsae.data.text import TextConfig

    return b.run(config=b.config(data=TextConfig(source=str(source), **overrides)))


@case("data", "data_matches_nothing")
def _(b):
    return _with_data(b, b.tmp / "nowhere" / "*.jsonl")


@case("data", "data_file_missing")
def _(b):
    return _with_data(b, b.tmp / "nowhere.jsonl")


@case("data", "data_empty_corpus")
def _(b):
    return _with_data(b, b.file("corpus/empty.txt", ""))


@case("data", "data_too_small")
def _(b):
    return b.run("--set", "tokens.train_tokens=1000000")


@case("data", "data_column_missing")
def _(b):
    return _with_data(b, b.corpus / "*.jsonl", column="body")


@case("data", "data_unknown_file_type")
def _(b):
    return _with_data(b, b.file("corpus/texts.csv", "text\nhello\n"))


@case("data", "data_jsonl_garbage")
def _(b):
    return _with_data(b, b.file("corpus/texts.jsonl", "this is not json\n{also not\n"))


@case("data", "data_parquet_garbage")
def _(b):
    return _with_data(b, b.file("corpus/texts.parquet", GARBAGE))


@case("data", "plan_data_jsonl_garbage")
def _(b):
    return [*_with_data(b, b.file("corpus/texts.jsonl", "this is not json\n{also not\n")), "--plan"]


# --- run directory: where it goes, what it is, and each artifact damaged ---


@case("run_dir", "out_is_a_file")
def _(b):
    b.file("out", "a file")
    return b.run()


@case("run_dir", "out_inside_a_file")
def _(b):
    return ["run", "--config", str(b.config()), "--out", str(b.file("file", "x") / "run"), "--quiet"]


@case("run_dir", "out_read_only")
def _(b):
    b.read_only(b.out)
    return b.run()


@case("run_dir", "out_holds_another_config")
def _(b):
    run = b.copy()
    return ["run", "--config", str(run / "config.toml"), "--out", str(run), "--set", "sae.k=3", "--quiet"]


for _command in ("interpret", "analyze", "report", "verify"):
    case("run_dir", f"{_command}_not_a_run")(lambda b, c=_command: [c, str(b.tmp), "--quiet"])

case("run_dir", "report_missing_folder")(lambda b: ["report", str(b.tmp / "nowhere"), "--quiet"])
case("run_dir", "analyze_a_file")(lambda b: ["analyze", str(b.file("run.txt", "x")), "--quiet"])


def damaged(name: str, command: str, scored: bool, relative: str, damage: Callable[[Path], object]):
    """A case: `damage` one file of a copied run, then run a command that reads it."""

    def argv(b: Bench) -> list[str]:
        run = b.copy(scored)
        damage(run / relative)
        return [command, str(run), "--quiet"]

    case("run_dir", name)(argv)


def garbage(path: Path) -> None:
    path.write_bytes(GARBAGE)


def text(content: str) -> Callable[[Path], object]:
    return lambda path: path.write_text(content)


def make_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


SAE = "saes/trained/layer1"
ACTIVATIONS = "activations/trained/layer1"
LATENT_CACHE = "interp/latent_cache/trained.layer1"
for _args in (
    ("config_toml_garbage", "analyze", False, "config.toml", garbage),
    ("config_toml_bad_value", "report", False, "config.toml", text("layers = []\n")),
    ("tokens_heldout_truncated", "analyze", False, "tokens/heldout.safetensors", truncate),
    ("tokens_train_garbage", "analyze", False, "tokens/train.safetensors", garbage),
    ("tokens_heldout_garbage_report", "report", True, "tokens/heldout.safetensors", garbage),
    ("sae_weights_truncated", "analyze", False, f"{SAE}/sae_weights.safetensors", truncate),
    ("sae_weights_garbage_report", "report", True, f"{SAE}/sae_weights.safetensors", garbage),
    ("sae_cfg_json_garbage", "analyze", False, f"{SAE}/cfg.json", garbage),
    ("sae_cfg_json_wrong_fields", "analyze", False, f"{SAE}/cfg.json", text('{"d_in": "many"}')),
    ("metrics_json_garbage", "report", False, "saes/trained/layer1/metrics.json", garbage),
    ("metrics_json_truncated", "report", False, "saes/trained/layer1/metrics.json", truncate),
    ("metrics_json_wrong_shape", "report", False, "saes/trained/layer1/metrics.json", text('{"rows": 3}')),
    ("interp_selection_truncated", "report", True, "interp/token/selection.json", truncate),
    ("interp_summary_garbage", "report", True, "interp/token/interp.json", garbage),
    ("interp_latents_csv_garbage", "analyze", True, "interp/token/latents.csv", garbage),
    ("interp_latents_csv_truncated", "report", True, "interp/token/latents.csv", truncate),
    ("analysis_json_truncated", "report", True, "analysis/analysis.json", truncate),
    ("analysis_part_is_a_folder", "analyze", True, "analysis/parts/trained.layer1.npz", make_folder),
    ("manifest_garbage", "verify", False, f"{ACTIVATIONS}/train/manifest.json", garbage),
    ("manifest_truncated", "analyze", False, f"{ACTIVATIONS}/heldout/manifest.json", truncate),
    ("manifest_missing", "analyze", False, f"{ACTIVATIONS}/heldout/manifest.json", Path.unlink),
    ("shard_truncated", "verify", False, f"{ACTIVATIONS}/train/shard_00000.safetensors", truncate),
    # A damaged latent cache is no error: `interpret` builds it again and the report notes the missing dashboards
    # (tests/test_repair.py).
    ("tokenizer_garbage", "report", True, "tokenizer/tokenizer.json", garbage),
    ("tokenizer_truncated", "report", True, "tokenizer/tokenizer.json", truncate),
    ("unembedding_garbage", "report", True, "unembedding.safetensors", garbage),
):
    damaged(*_args)


def _first_score(run: Path) -> Path:
    return sorted((run / "interp" / "token" / "scores").glob("*/trained.layer1_latent*.txt"))[0]


@case("run_dir", "interp_score_file_garbage")
def _(b):
    run = b.copy(scored=True)
    garbage(_first_score(run))
    return ["report", str(run), "--quiet"]


@case("run_dir", "interp_score_file_truncated")
def _(b):
    run = b.copy(scored=True)
    truncate(_first_score(run))
    return ["report", str(run), "--quiet"]


# --- judge: `randsae interpret RUN` with an LLM judge that cannot work ---


def _interpret(b: Bench, *options: str) -> list[str]:
    return ["interpret", str(b.copy(scored=True)), "--quiet", *options]


case("judge", "judge_unreachable")(
    lambda b: _interpret(b, "--judge", "http", "--base-url", "http://127.0.0.1:9/v1", "--model", "m")
)
case("judge", "judge_url_not_a_url")(
    lambda b: _interpret(b, "--judge", "http", "--base-url", "not a url", "--model", "m")
)
case("judge", "judge_url_ftp")(
    lambda b: _interpret(b, "--judge", "http", "--base-url", "ftp://127.0.0.1/v1", "--model", "m")
)
case("judge", "judge_model_missing")(lambda b: _interpret(b, "--judge", "http", "--base-url", "http://127.0.0.1:9/v1"))
case("judge", "judge_hf_model_missing")(lambda b: _interpret(b, "--judge", "hf", "--model", str(b.tmp / "nowhere")))
case("judge", "judge_concurrency_zero")(lambda b: _interpret(b, "--concurrency", "0"))
case("judge", "judge_concurrency_not_a_number")(lambda b: _interpret(b, "--concurrency", "many"))
case("judge", "judge_server_answers_404")(
    lambda b: _interpret(b, "--judge", "http", "--base-url", f"{b.judge_url}/missing", "--model", "m")
)
case("judge", "judge_server_answers_garbage")(
    lambda b: _interpret(b, "--judge", "http", "--base-url", f"{b.judge_url}/v1", "--model", "m")
)


# --- toy ---


def _toy(b: Bench, config: Path | None = None, out: Path | None = None) -> list[str]:
    return ["toy", "--out", str(out or b.out), "--config", str(config or b.toy_config()), "--quiet"]


TOY_VALUES = {
    "toy_n_features_zero": {"n_features": 0},
    "toy_test_fraction_one": {"test_fraction": 1.0},
    "toy_network_unknown": {"networks": ["mlp1"]},
    "toy_epochs_string": {"epochs": "many"},
    "toy_mean_active_too_big": {"mean_active": 100.0},
    "toy_latent_counts_empty": {"latent_counts": []},
    "toy_unknown_key": {"n_featurez": 8},
}
for _name, _values in TOY_VALUES.items():
    case("toy", _name)(lambda b, v=_values: _toy(b, b.toy_config(**v)))

case("toy", "toy_config_missing")(lambda b: _toy(b, b.tmp / "nowhere.toml"))
case("toy", "toy_config_is_a_folder")(lambda b: _toy(b, b.tmp))
case("toy", "toy_config_binary")(lambda b: _toy(b, b.file("toy.toml", GARBAGE)))
case("toy", "toy_config_bad_toml")(lambda b: _toy(b, b.file("toy.toml", "n_features = [\n")))
case("toy", "toy_out_is_a_file")(lambda b: _toy(b, out=b.file("out", "a file")))
case("toy", "toy_out_inside_a_file")(lambda b: _toy(b, out=b.file("file", "x") / "toy"))
case("toy", "toy_out_read_only")(lambda b: _toy(b, out=b.read_only(b.out)))


@case("toy", "toy_out_holds_another_config")
def _(b):
    assert main(_toy(b)) == 0
    return _toy(b, b.toy_config(epochs=2))


@case("toy", "toy_out_config_garbage")
def _(b):
    b.file("out/toy_config.toml", GARBAGE)
    return _toy(b)


@case("toy", "toy_part_garbage")
def _(b):
    assert main(_toy(b)) == 0
    garbage(next((b.out / "toy_parts").glob("*.json")))
    return _toy(b)


# --- interop: `randsae compare --sae` with an SAE that cannot be compared, `run --format` ---


def _imported(b: Bench, hook: str = "blocks.1.hook_resid_post", d_in: int = 32, **metadata) -> Path:
    """An SAE in the SAELens layout (randsae writes it) on the tiny model's residual stream."""
    from randsae.sae import SAEConfig, build_sae

    folder = b.tmp / "sae"
    build_sae(SAEConfig("topk", d_in, 4 * d_in, k=4, metadata={"hook_name": hook, **metadata}), seed=0).save(folder)
    return folder


def _compare(b: Bench, sae: Path, *extra: str, config: Path | None = None) -> list[str]:
    config = config or b.config(variants=("trained", "rerandomized"))
    return ["compare", "--sae", str(sae), "--config", str(config), "--out", str(b.out), "--quiet", *extra]


def _saelens_weights(folder: Path, edit: Callable[[dict], dict]) -> Path:
    from safetensors.torch import load_file, save_file

    save_file(edit(load_file(folder / "sae_weights.safetensors")), folder / "sae_weights.safetensors")
    return folder


@case("interop", "compare_unknown_format")
def _(b):
    b.file("sae/notes.txt", "an SAE, once")
    return _compare(b, b.tmp / "sae")


@case("interop", "compare_sae_missing")
def _(b):
    return _compare(b, b.tmp / "nowhere")


@case("interop", "compare_no_sae")
def _(b):
    return ["compare", "--config", str(b.config(variants=("trained", "rerandomized"))), "--out", str(b.out)]


@case("interop", "compare_d_in_mismatch")
def _(b):
    return _compare(b, _imported(b, d_in=16))


@case("interop", "compare_weights_missing")
def _(b):
    return _compare(b, _saelens_weights(_imported(b), lambda t: {k: v for k, v in t.items() if k != "W_dec"}))


@case("interop", "compare_weights_wrong_shape")
def _(b):
    return _compare(b, _saelens_weights(_imported(b), lambda t: {**t, "b_enc": t["b_enc"][:-1].contiguous()}))


@case("interop", "compare_weights_garbage")
def _(b):
    folder = _imported(b)
    (folder / "sae_weights.safetensors").write_bytes(GARBAGE)
    return _compare(b, folder)


@case("interop", "compare_sparsify_cfg_garbage")
def _(b):
    b.file("sae/layers.1/sae.safetensors", GARBAGE)
    b.file("sae/layers.1/cfg.json", '{"k": 4, ')
    return _compare(b, b.tmp / "sae" / "layers.1")


@case("interop", "compare_hook_layer_out_of_range")
def _(b):
    return _compare(b, _imported(b, hook="blocks.9.hook_resid_post"))


@case("interop", "compare_hook_not_residual")
def _(b):
    return _compare(b, _imported(b, hook="blocks.1.hook_mlp_out"))


@case("interop", "compare_model_not_named")
def _(b):
    return ["compare", "--sae", str(_imported(b)), "--out", str(b.out)]  # the SAE names no model, nor the config


@case("interop", "compare_without_random_variant")
def _(b):
    return _compare(b, _imported(b), config=b.config())


@case("interop", "compare_pickle_for_state_dict")
def _(b):
    import torch

    (b.tmp / "sae").mkdir()
    torch.save({"encoder.weight": Bench}, b.tmp / "sae" / "ae.pt")  # a class: any object but a tensor
    return _compare(b, b.tmp / "sae")


@case("interop", "compare_import_entry_negative_layer")
def _(b):
    entry = f'\n[[imported_sae]]\npath = "{_imported(b)}"\nlayer = -1\n'
    config = b.config(lambda text: text + entry, variants=("trained", "rerandomized"))
    return ["compare", "--config", str(config), "--out", str(b.out)]


@case("interop", "run_format_sparsify_relu")
def _(b):
    return b.run("--format", "sparsify", "--set", "sae.architecture='relu_l1'")


# --- the fixtures and the one test ---


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, tiny_run: Path) -> Path:
    """`tiny_run` interpreted by the token judge and analysed, with settings small enough for its SAEs."""
    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("scored") / "run"))
    interp = InterpConfig(
        n_latents=4,
        min_examples=4,
        window_size=16,
        n_top_windows=100,
        n_explanation_windows=6,
        n_quantiles=3,
        n_per_quantile=3,
        n_negatives=10,
        n_bootstrap=20,
        verify_rows=32,
        retries=1,
        backoff_s=0.05,
    )
    cfg = load_config(run / "config.toml")
    analysis = dataclasses.replace(cfg.analysis, bootstrap_samples=20, window_tokens=16, min_token_count=5)
    cfg = dataclasses.replace(cfg, interp=interp, analysis=analysis)
    (run / "config.toml").write_text(dump_config(cfg))
    interpret_run(run, cfg.interp, progress=False)
    analyze_run(run, cfg.analysis, progress=False)
    return run


class _GarbageJudge(http.server.BaseHTTPRequestHandler):
    """Answers 404 under /missing and a body that is not JSON everywhere else."""

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def _answer(self) -> None:
        body = b"<html>hello</html>"
        self.send_response(404 if self.path.startswith("/missing") else 200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def judge_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GarbageJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _hashes(roots: list[Path]) -> dict[Path, str]:
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest()
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


@contextlib.contextmanager
def _offline(monkeypatch, home: Path) -> Iterator[None]:
    """No network and a private randsae cache, so a case can neither download nor touch the user's cache."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("RANDSAE_HOME", str(home))
    yield


def test_catalogue_has_every_area_and_enough_cases():
    assert {c.area for c in CASES} == {"config", "model", "data", "run_dir", "judge", "toy", "interop"}
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "bad",
    [pytest.param(c, id=f"{c.area}-{c.name}") for c in CASES],
)
def test_bad_input_is_one_line_and_exit_2(
    bad: Case, tmp_path, capsys, monkeypatch, tiny_model_dir, tiny_corpus, tiny_run, scored_run, judge_url
):
    bench = Bench(tmp_path / "case", tiny_model_dir, tiny_corpus, tiny_run, scored_run, judge_url)
    bench.tmp.mkdir()
    try:
        with _offline(monkeypatch, tmp_path / "home"):
            argv = bad.argv(bench)
            roots = [bench.tmp, tiny_model_dir, tiny_corpus]
            before = _hashes(roots)
            capsys.readouterr()
            code = main(argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("randsae: error: "), err
        assert "Traceback" not in err
        after = _hashes(roots)
        changed = sorted(str(path) for path, digest in before.items() if after.get(path) != digest)
        assert not changed, f"a failed command changed existing files: {changed}"
    finally:
        for undo in reversed(bench.undo):
            undo()
