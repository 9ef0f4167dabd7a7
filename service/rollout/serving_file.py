"""Edits of ``serving.yaml`` that keep everything else of the file: comments, key order,
flow or block style, and every other model's section (a round trip through ``ruamel.yaml``).

An edit runs under an exclusive ``flock`` on ``serving.yaml.lock`` (the controller and an
operator's ``pause``/``promote`` never interleave), is validated by the same parser the
replicas use (an edit that would make the file invalid raises instead of being written), and
replaces the file atomically (temporary file in the same folder, fsync, rename): a replica
re-reading it sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from service.serving.config import CONFIG_FILE, ServingConfig, parse_config


def config_path(models_dir: Path) -> Path:
    return models_dir / CONFIG_FILE


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive edit lock of ``path`` (a ``.lock`` file beside it)."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _yaml() -> YAML:
    yaml = YAML()  # round-trip mode: comments and styles survive
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a user's long line
    return yaml


def read(path: Path) -> tuple[ServingConfig, str]:
    """The validated configuration and its text (raises ServingConfigError, OSError)."""
    text = path.read_text(encoding="utf-8")
    return parse_config(text, path.name), text


def _flow_map(**values: object) -> CommentedMap:
    mapping = CommentedMap(values)
    mapping.fa.set_flow_style()
    return mapping


def set_labels(
    text: str, model: str, *, set_to: dict[str, tuple[int, float]], remove: tuple[str, ...] = ()
) -> str:
    """``text`` with ``models.<model>.labels`` changed: each of ``set_to`` (label ->
    (version, weight)) set, each of ``remove`` removed; the rest of the text as it was. A
    weight of 0 is written in the short form (``stable: 3``)."""
    yaml = _yaml()
    document = yaml.load(text) or CommentedMap()
    models = document.setdefault("models", CommentedMap())
    section = models.setdefault(model, CommentedMap())
    labels = section.get("labels")
    if labels is None:
        labels = section["labels"] = CommentedMap()
    for label in remove:
        labels.pop(label, None)
    for label, (version, weight) in set_to.items():
        current = labels.get(label)
        if weight <= 0:
            labels[label] = version
        elif isinstance(current, CommentedMap):
            current["version"] = version
            current["weight"] = weight
        else:
            labels[label] = _flow_map(version=version, weight=weight)
    if not labels:
        del section["labels"]
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


def replace_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, rename it over ``path``."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(OSError):
            os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from other users' replicas
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def write_labels(
    path: Path, model: str, *, set_to: dict[str, tuple[int, float]], remove: tuple[str, ...] = ()
) -> ServingConfig:
    """Change ``model``'s labels in the file (call under :func:`locked`); returns the new
    configuration. Raises ServingConfigError when the result would not validate (nothing
    written)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    new_text = set_labels(text, model, set_to=set_to, remove=remove)
    config = parse_config(new_text, path.name)
    replace_atomically(path, new_text)
    return config
