"""The net under the stages' own errors: each exception kind a bad file raises becomes one UserError naming
the file (`randsae.errors.user_error_for`), anything else stays a bug; and how the CLI prints each."""

from __future__ import annotations

import csv
import errno
import json
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from randsae import cli
from randsae.errors import UserError, user_error_for

REBUILD = "rerun the same command to rebuild it"


def raised(action) -> BaseException:
    try:
        action()
    except Exception as error:
        return error
    raise AssertionError("nothing was raised")


def message(error: BaseException, outputs: dict[Path, str] | None = None) -> str:
    user_error = user_error_for(error, outputs or {})
    assert user_error is not None, f"{error!r} was taken for a bug"
    return str(user_error)


@pytest.fixture
def garbage(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "file.bin"
    path.parent.mkdir()
    path.write_bytes(b"\x00\xff\xfe not a real file \x80" * 8)
    return path


def test_a_missing_input_is_checked_and_a_missing_output_rebuilt(tmp_path):
    error = raised(lambda: (tmp_path / "nowhere.toml").read_text())
    assert message(error) == f"{tmp_path / 'nowhere.toml'} does not exist. Check the path"
    assert message(error, {tmp_path: REBUILD}).endswith("does not exist. Rerun the same command to rebuild it")


def test_a_folder_where_a_file_goes(tmp_path):
    assert "is a folder where a file is expected" in message(raised(tmp_path.read_text))


def test_a_file_where_a_folder_goes(tmp_path):
    (tmp_path / "file").write_text("x")
    inside = raised(lambda: (tmp_path / "file" / "run").mkdir(parents=True, exist_ok=True))
    assert isinstance(inside, NotADirectoryError) and "is a file where a folder is expected" in message(inside)
    onto = raised(lambda: (tmp_path / "file").mkdir(parents=True, exist_ok=True))
    assert isinstance(onto, FileExistsError) and "is a file where a folder is expected" in message(onto)


def test_a_rename_names_its_target(tmp_path):
    (tmp_path / "part.npz.tmp").write_text("x")
    (tmp_path / "part.npz").mkdir()
    error = raised(lambda: (tmp_path / "part.npz.tmp").replace(tmp_path / "part.npz"))
    assert message(error).startswith(f"{tmp_path / 'part.npz'} is a folder")


def test_permission_read_only_disk_and_other_errors():
    denied = PermissionError(errno.EACCES, "Permission denied", "/data/out/config.toml")
    assert message(denied).startswith("permission denied on /data/out/config.toml.")
    assert "read-only file system" in message(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"))
    assert message(OSError(errno.ENAMETOOLONG, "File name too long", "/x")).startswith("cannot use /x (File name")


def test_a_full_disk_with_or_without_the_file():
    with_file = OSError(errno.ENOSPC, "No space left on device", "/run/shard.safetensors")
    assert message(with_file).startswith("no space left on the disk (writing /run/shard.safetensors). Free some")
    assert message(OSError(errno.ENOSPC, "No space left on device")).startswith("no space left on the disk. Free")


def test_a_damaged_safetensors_file_inside_an_output_is_deleted_and_rebuilt(garbage):
    text = message(raised(lambda: load_file(garbage)), {garbage.parent: REBUILD})
    assert text.startswith(f"{garbage} is not a readable safetensors file (Error while deserializing header")
    assert text.endswith("Delete it and rerun the same command to rebuild it")


def test_a_truncated_safetensors_input_is_checked(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(64)}, path)
    path.write_bytes(path.read_bytes()[:50])
    assert message(raised(lambda: load_file(path))).endswith("Check the path, or replace it with a good copy")


def test_json_toml_and_text_read_from_a_file(tmp_path, garbage):
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text('{"truncated": ')
    with open(bad_json) as handle:
        error = raised(lambda: json.load(handle))
    assert isinstance(error, json.JSONDecodeError) and message(error).startswith(f"{bad_json} is not a readable JSON")
    bad_toml = tmp_path / "config.toml"
    bad_toml.write_text("[sae\n")
    with open(bad_toml, "rb") as handle:
        error = raised(lambda: tomllib.load(handle))
    assert isinstance(error, tomllib.TOMLDecodeError) and message(error).startswith(
        f"{bad_toml} is not a readable TOML"
    )
    error = raised(garbage.read_text)
    assert isinstance(error, UnicodeDecodeError) and message(error).startswith(f"{garbage} is not a readable UTF-8")


def test_a_csv_that_does_not_decode(garbage):
    def read() -> list:
        with open(garbage, newline="") as handle:
            return list(csv.DictReader(handle))

    assert message(raised(read)).startswith(f"{garbage} is not a readable UTF-8 text file")


@pytest.mark.parametrize("content", [b"\x00\xff garbage" * 8, b"hello", b"PK\x03\x04 truncated zip"])
def test_a_damaged_checkpoint_whatever_torch_load_raises(tmp_path, content):
    path = tmp_path / "train_checkpoint.pt"
    path.write_bytes(content)
    text = message(raised(lambda: torch.load(path, weights_only=True)), {tmp_path: REBUILD})
    assert text.startswith(f"{path} is not a readable PyTorch checkpoint file (") and "Delete it and rerun" in text


def test_a_damaged_numpy_file(tmp_path, garbage):
    assert message(raised(lambda: np.load(garbage))).startswith(f"{garbage} is not a readable NumPy file")
    path = tmp_path / "part.npz"
    np.savez(path, a=np.arange(1000))
    path.write_bytes(path.read_bytes()[:300])
    assert message(raised(lambda: np.load(path)["a"])).startswith(f"{path} is not a readable NumPy file (")


def test_what_names_no_file_is_a_bug():
    assert user_error_for(raised(lambda: json.loads("{not json")), {}) is None  # a reply, not a file
    assert user_error_for(raised(lambda: b"\xff".decode()), {}) is None
    assert user_error_for(ValueError("a bug"), {}) is None
    assert user_error_for(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), {}) is None


def test_a_user_error_is_itself():
    error = UserError("sae.k = 0 is invalid", "Set sae.k to at least 1")
    assert user_error_for(error, {}) is error


def _failing(exception: BaseException):
    def handler(args):
        raise exception

    return handler


@pytest.fixture
def verify_raises(monkeypatch):
    def set_exception(exception: BaseException) -> None:
        monkeypatch.setattr(cli, "command_verify", _failing(exception))

    return set_exception


def test_cli_prints_a_bug_with_its_traceback_and_exit_1(tmp_path, capsys, verify_raises):
    verify_raises(RuntimeError("something impossible"))
    assert cli.main(["verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: something impossible" in err
    assert err.strip().splitlines()[-1].startswith("randsae: this is a bug in randsae 0.")


def test_cli_prints_a_user_error_on_one_line_and_exit_2(tmp_path, capsys, verify_raises):
    verify_raises(UserError("a reason\nwith a newline from a library", "Fix it"))
    assert cli.main(["verify", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "randsae: error: a reason with a newline from a library. Fix it\n"


def test_cli_maps_a_damaged_file_in_the_run_directory(tmp_path, capsys, verify_raises):
    path = tmp_path / "tokens" / "heldout.safetensors"
    os.makedirs(path.parent)
    path.write_bytes(b"\x00" * 40)
    verify_raises(raised(lambda: load_file(path)))
    assert cli.main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"randsae: error: {path} is not a readable safetensors file")
    assert f"Delete it and rebuild it with `randsae run --config {tmp_path / 'config.toml'} --out {tmp_path}`" in err


def test_cli_interrupted_exits_130(tmp_path, capsys, verify_raises):
    verify_raises(KeyboardInterrupt())
    assert cli.main(["verify", str(tmp_path)]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_cli_usage_mistakes_are_one_line(capsys):
    assert cli.main(["run", "--skip", "everything"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("randsae: error: argument --skip: invalid choice")
