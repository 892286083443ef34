"""The one exception type for mistakes a user can fix, and the net that turns a bad file's exception into one.

The CLI prints a `UserError` as a single line (the problem, then the fix) and exits with code 2. Stages
raise their own, specific UserErrors; `user_error_for` catches what they did not: the exceptions that I/O,
safetensors, JSON, TOML, text decoding and checkpoint loading raise for a file that is missing, unreadable
or damaged, turned into a UserError naming the file. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import io
import json
import os
import sys
import tomllib
import traceback
from collections.abc import Mapping
from pathlib import Path
from types import CodeType


class UserError(Exception):
    """A problem with the user's input: names what is wrong and how to fix it."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}. {fix}")
        self.problem = problem
        self.fix = fix


def user_error_for(error: BaseException, outputs: Mapping[Path, str]) -> UserError | None:
    """The UserError for an exception a missing, unwritable or damaged file raised; None for a bug.

    `outputs` maps each folder the command writes to how a file there is rebuilt ("rerun the same command
    to rebuild it"): a damaged file inside one is deleted and rebuilt, any other file is the user's input.
    """
    if isinstance(error, UserError):
        return error
    if isinstance(error, OSError) and (error.filename is not None or error.errno in _DISK_FULL):
        return _os_error(error, outputs)
    damaged = _damaged_file(error)
    if damaged is None:
        return None
    path, kind = damaged
    rebuild = _rebuild(path, outputs)
    return UserError(
        f"{path} is not a readable {kind} file ({_first_line(error)})",
        f"Delete it and {rebuild}" if rebuild else "Check the path, or replace it with a good copy",
    )


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _os_error(error: OSError, outputs: Mapping[Path, str]) -> UserError:
    """What each kind of failed file operation means, and the fix: inputs are checked, outputs rebuilt."""
    if error.errno in _DISK_FULL:
        where = f" (writing {error.filename})" if error.filename is not None else ""
        return UserError(f"no space left on the disk{where}", "Free some space, then rerun the same command to resume")
    renamed_onto = error.filename2 is not None and error.errno != errno.ENOENT  # a rename's target is the file
    path = Path(os.fsdecode(error.filename2 if renamed_onto else error.filename))
    rebuild = _rebuild(path, outputs)
    if error.errno == errno.ENOENT:
        fix = f"{rebuild[:1].upper()}{rebuild[1:]}" if rebuild else "Check the path"
        return UserError(f"{path} does not exist", fix)
    if error.errno == errno.EISDIR:
        return UserError(f"{path} is a folder where a file is expected", "Check the path, or move the folder away")
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return UserError(f"{path} is a file where a folder is expected", "Check the path, or move the file away")
    if error.errno in (errno.EACCES, errno.EPERM):
        return UserError(
            f"permission denied on {path}", "Give this user access to it, or choose a folder you can write to"
        )
    if error.errno == errno.EROFS:
        return UserError(f"{path} is on a read-only file system", "Choose a folder on a writable disk")
    return UserError(f"cannot use {path} ({error.strerror or error})", "Check the path and the disk")


def _rebuild(path: Path, outputs: Mapping[Path, str]) -> str:
    """How a file inside one of the command's output folders is rebuilt; "" for the user's own files."""
    absolute = Path(os.path.abspath(path))
    return next((how for folder, how in outputs.items() if absolute.is_relative_to(os.path.abspath(folder))), "")


def _damaged_file(error: BaseException) -> tuple[Path, str] | None:
    """(the file, its kind) when `error` was raised reading a file's content; None when it was not.

    Parsers do not name the file they read, so the traceback is searched, innermost frame first, for a
    known loader (`torch.load`, `numpy.load`, safetensors' `load_file`, `json.load`, `tomllib.load`,
    `Path.read_text`): whatever it raised is about the file passed to it. A text file that does not
    decode is the open text file of the innermost frame that holds one (`csv.reader(handle)`). Nothing is
    guessed: an error whose file cannot be told this way is left to the reader to report.
    """
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)][::-1]
    loaders = _loaders()
    for frame in frames:
        if frame.f_code in loaders:
            argument, kind = loaders[frame.f_code]
            path = _path_of(frame.f_locals.get(argument))
            return (path, kind) if path is not None else None
    if isinstance(error, UnicodeDecodeError):
        for frame in frames:
            files = [value for value in frame.f_locals.values() if isinstance(value, io.TextIOWrapper)]
            if files:
                path = _path_of(files[0]) if len(files) == 1 else None
                return (path, "UTF-8 text") if path is not None else None
    return None


def _loaders() -> dict[CodeType, tuple[str, str]]:
    """The file loaders of the libraries already imported: their code, file argument and the file's kind."""
    loaders = {
        json.load.__code__: ("fp", "JSON"),
        tomllib.load.__code__: ("fp", "TOML"),
        Path.read_text.__code__: ("self", "UTF-8 text"),
    }
    torch, numpy, safetensors_torch = (sys.modules.get(name) for name in ("torch", "numpy", "safetensors.torch"))
    if torch is not None:
        loaders[torch.load.__code__] = ("f", "PyTorch checkpoint")
    if numpy is not None:
        loaders[numpy.load.__code__] = ("file", "NumPy")
    if safetensors_torch is not None:
        loaders[safetensors_torch.load_file.__code__] = ("filename", "safetensors")
    return loaders


def _path_of(value: object) -> Path | None:
    """The path a loader was given: a path, or an open file's name."""
    if not isinstance(value, str | os.PathLike):
        value = getattr(value, "name", None)
    return Path(value) if isinstance(value, str | os.PathLike) else None


def _first_line(error: BaseException, limit: int = 160) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
