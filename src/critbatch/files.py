"""Files: bounded reading of what users hand in, and writes that never leave half a file."""

from __future__ import annotations

import contextlib
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from critbatch.errors import InputError

MAX_INPUT_BYTES = 1 << 20  # a manifest or a status is a few KiB
MAX_VALUES = 100_000  # values in one YAML document once its aliases are expanded


def atomic_write(path: str | Path, data: str | bytes | Callable[[IO[bytes]], None], *,
                 durable: bool = False, mode: int = 0o644) -> None:
    """Replace `path` whole: readers see the old file or the new one, never a part.

    `data` is the content, or a function that writes it to a binary file. With `durable` the
    file and its directory are synced to disk before this returns. On failure (a full disk)
    the old file is kept, no temporary file is left behind, and the OSError propagates.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode() if isinstance(data, str) else data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def read_text(path: str | Path, label: str, *, limit: int = MAX_INPUT_BYTES,
              encoding: str = "utf-8", regular: bool = False) -> str:
    """A text file of at most `limit` bytes, or an InputError starting with `label`.

    Bounded so that a mistaken path (a disk image, /dev/zero) fails at once instead of filling
    memory; `regular` refuses pipes and devices too, for files that a run reads back itself.
    """
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{label}: {path} is a directory, not a file")
        if regular and not stat.S_ISREG(mode):
            raise InputError(f"{label}: {path} is not a regular file")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise InputError(f"{label}: no such file: {path}") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError(f"{label}: {path} is larger than {_size(limit)}")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InputError(f"{label}: {path} is not UTF-8 text (invalid byte at offset "
                         f"{exc.start})") from None


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10} KiB"


def load_yaml(text: str, label: str, *, finite: bool = True, fields: str | None = None) -> Any:
    """YAML that cannot take the reader down: one line naming `label` for what is not YAML,
    nests too deeply, or expands (through aliases) to more than MAX_VALUES values; with
    `finite`, a NaN or infinity is an error naming its field, after `fields` (default
    `label`; "" for a manifest, whose fields name themselves: ``spec.target.maxSteps``)."""
    import yaml

    with _yaml_errors(label):
        data = yaml.safe_load(text)
    check_values(data, label, finite=finite, fields=fields)
    return data


def load_yaml_all(text: str, label: str, *, finite: bool = True) -> list[Any]:
    """Every document of `text` (`---` between them), each bounded as `load_yaml` bounds one."""
    import yaml

    with _yaml_errors(label):
        docs = list(yaml.safe_load_all(text))
    for doc in docs:
        check_values(doc, label, finite=finite)
    return docs


def dump_yaml(data: Any) -> str:
    """`data` as block YAML in its own key order, by libyaml when PyYAML has it: the runner
    writes its status at every change, and the pure-Python emitter is about 5x slower."""
    import yaml

    return yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                     sort_keys=False)


@contextlib.contextmanager
def _yaml_errors(label: str) -> Iterator[None]:
    """A parser's failure as one line naming `label` (and the line, when the parser says)."""
    import yaml

    try:
        yield
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise InputError(f"{label}: not valid YAML{where}"
                         + (f": {problem}" if problem else "")) from None
    except RecursionError:
        raise InputError(f"{label}: nested too deeply") from None


def check_values(data: Any, label: str, *, finite: bool = True, fields: str | None = None,
                 limit: int = MAX_VALUES) -> None:
    """At most `limit` values (aliases counted each time they are used), and with `finite`
    no NaN or infinity; the error names the field's path."""
    stack: list[tuple[Any, str]] = [(data, "")]
    count = 0
    while stack:
        value, path = stack.pop()
        count += 1
        if count > limit:
            raise InputError(f"{label}: more than {limit} values (aliases that expand "
                             "without end?)")
        if finite and isinstance(value, float) and not math.isfinite(value):
            prefix = label if fields is None else fields
            where = f"{prefix}: {path}" if prefix and path else path or prefix
            raise InputError(f"{where}: must be a finite number, got {value}")
        if isinstance(value, dict):
            stack += [(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, f"{path}[{i}]") for i, v in enumerate(value)]
