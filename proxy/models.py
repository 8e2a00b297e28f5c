"""Per-user model access: which models a user may name, and model lists filtered to them.

A user's ``models`` is a list of glob patterns (``fnmatch``: ``*``, ``?``, ``[...]``); absent
means every model. Names are compared the way Ollama resolves them: case-insensitively, and a
name without a tag means ``:latest``, so ``llama3.2``, ``llama3.2:latest`` and ``LLama3.2`` are
the same model. A pattern without a tag is read the same way (``llama3.2`` allows exactly
``llama3.2:latest``) unless it ends with ``*``, which already reaches across the tag
(``llama3.2*`` allows ``llama3.2:1b`` too, and also ``llama3.2-vision:11b``). To allow every tag
of one model, write ``llama3.2:*``.

The filter functions take a parsed model list in either API's shape, so a gateway merging the
lists of several upstreams can filter the merged list with the same call.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

from gatewayctl.proxy.config import ConfigError, User
from gatewayctl.proxy.errors import Forbidden

_DEFAULT_PREFIXES = ("registry.ollama.ai/", "library/")


class ModelNotAllowed(Forbidden):
    def __init__(self, user: User, model: str) -> None:
        super().__init__(
            f"The model {model!r} is not available to {user.name!r}.", code="model_not_allowed"
        )


def _short(name: str) -> str:
    # Ollama's default registry and namespace are implied: library/llama3.2 is llama3.2.
    name = name.strip().lower()
    for prefix in _DEFAULT_PREFIXES:
        name = name.removeprefix(prefix)
    return name


def _has_tag(name: str) -> bool:
    return ":" in name.rsplit("/", 1)[-1]


def canonical(name: str) -> str:
    """Ollama's reading of a model name: lower case, ``:latest`` when there is no tag."""
    name = _short(name)
    return name if _has_tag(name) else name + ":latest"


def _pattern(raw: str) -> str:
    pattern = _short(raw)
    return pattern if _has_tag(pattern) or pattern.endswith("*") else pattern + ":latest"


def parse_patterns(text: str) -> tuple[str, ...] | None:
    """``"llama3.2:*, qwen2.5:0.5b"`` -> the patterns; ``none``/``all`` -> None (no restriction).

    Shared by the CLI and the web UI so both read a typed list the same way.
    """
    if text.strip().lower() in ("none", "all", "*"):
        return None
    patterns = tuple(p.strip() for p in text.split(",") if p.strip())
    if not patterns:
        raise ConfigError("models: give comma-separated patterns, or 'none' to allow every model")
    return patterns


def matches_any(patterns: Iterable[str], model: str) -> bool:
    """Whether a model name matches one of the patterns (also used for upstreams' lists)."""
    name = canonical(model)
    return any(fnmatch.fnmatchcase(name, _pattern(p)) for p in patterns)


def model_allowed(user: User, model: str) -> bool:
    return user.models is None or matches_any(user.models, model)


def ensure_model_allowed(user: User, model: str) -> None:
    if not model_allowed(user, model):
        raise ModelNotAllowed(user, model)


def entry_name(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    # OpenAI lists name a model by "id", Ollama's by "name" (and "model" in newer versions).
    for key in ("id", "model", "name"):
        value = entry.get(key)
        if isinstance(value, str):
            return value
    return None


def allowed_entries(user: User, entries: Iterable[Any]) -> list[Any]:
    """The entries of a model list (OpenAI ``data`` or Ollama ``models``) the user may use."""
    if user.models is None:
        return list(entries)
    kept = []
    for entry in entries:
        name = entry_name(entry)
        if name is not None and model_allowed(user, name):
            kept.append(entry)
    return kept


LIST_KEYS: tuple[str, ...] = ("data", "models")  # OpenAI's /v1/models, Ollama's /api/tags and /ps


def filter_model_list(user: User, payload: Any) -> Any:
    """A parsed model list with only what the user may use; other fields are kept as they are."""
    if user.models is None or not isinstance(payload, dict):
        return payload
    filtered = dict(payload)
    for key in LIST_KEYS:
        if isinstance(payload.get(key), list):
            filtered[key] = allowed_entries(user, payload[key])
    return filtered
