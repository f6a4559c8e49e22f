"""Token counts for replies whose provider reported none (a stream without usage, for example).

A stage is billed on the tokens the provider reports. When it reports none, the cascade settles on an
estimate instead of $0 and marks the stage ``usage_estimated``. The estimate uses OpenAI's own tokenizer
(``tiktoken``) for OpenAI-family models when it is installed *and* its encoding file is already on disk;
otherwise a conservative approximation (:func:`approximate_tokens`).

Nothing here downloads. ``tiktoken`` fetches an encoding's BPE file from the network on first use and
keeps it in ``$TIKTOKEN_CACHE_DIR`` (else ``$DATA_GYM_CACHE_DIR``, else ``<tmp>/data-gym-cache``); this
module uses an encoding only when that file is already there and matches its published hash, so a
machine without the file (or with a corrupt one) gets the approximation, never a request. To use the
exact tokenizer offline, fetch the file once (``python -c "import tiktoken;
tiktoken.get_encoding('o200k_base')"``) into a cache directory the process will see.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
from collections.abc import Sequence
from typing import Any

__all__ = ["approximate_tokens", "estimate_prompt_tokens", "estimate_tokens"]

TOKENS_PER_MESSAGE = 4
"""Role and separator tokens counted for each message of a prompt (OpenAI's chat format uses 3 or 4)."""
TOKENS_PER_REPLY = 3
"""Tokens that prime the assistant's reply in OpenAI's chat format."""

_ENCODING_FILES = {
    # encoding name -> (URL tiktoken fetches it from, its SHA-256 as tiktoken publishes it)
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}


def approximate_tokens(text: str) -> int:
    """``ceil(UTF-8 bytes / 3)``: the approximation used when no tokenizer is available.

    Why bytes over three: BPE tokenizers of current models average about four characters per token on
    English prose and about three on code, and one token per CJK character (three UTF-8 bytes). Three
    bytes per token is therefore at or above the true count for most text, so a stage is billed at
    least what it probably cost rather than less. It is an estimate: the trail says so.

    >>> approximate_tokens("Hello, world!")
    5
    """
    return math.ceil(len(text.encode("utf-8")) / 3)


def estimate_tokens(text: str, model: str) -> int:
    """The number of tokens ``text`` is for ``model``: exact for OpenAI-family models when tiktoken's
    encoding file is on disk, :func:`approximate_tokens` otherwise."""
    if not text:
        return 0
    encoder = _encoder_for(_bare_model(model))
    if encoder is None:
        return approximate_tokens(text)
    return len(encoder.encode(text, disallowed_special=()))


def estimate_prompt_tokens(texts: Sequence[str], model: str) -> int:
    """The input tokens of a chat prompt of ``texts`` (one per message): each text's tokens, plus
    :data:`TOKENS_PER_MESSAGE` per message and :data:`TOKENS_PER_REPLY` for the reply."""
    return sum(estimate_tokens(t, model) + TOKENS_PER_MESSAGE for t in texts) + TOKENS_PER_REPLY


def _bare_model(model: str) -> str:
    """``openai/gpt-4o`` and ``openai:gpt-4o`` are ``gpt-4o`` to the tokenizer (``ft:gpt-4o:...`` is kept)."""
    name = model.rsplit("/", 1)[-1]
    if ":" in name and not name.startswith("ft:"):
        name = name.split(":", 1)[1]
    return name


@functools.lru_cache(maxsize=64)
def _encoder_for(model: str) -> Any:
    """The tiktoken encoding of ``model`` when one is known and loads offline, else ``None`` (cached)."""
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return None
    if name not in _ENCODING_FILES or not _on_disk(name):
        return None
    return _load_encoder(name)


def _load_encoder(name: str) -> Any:
    try:
        import tiktoken

        return tiktoken.get_encoding(name)
    except Exception:
        return None


def _on_disk(name: str) -> bool:
    """Whether tiktoken would read encoding ``name`` from its cache (and so not download it)."""
    url, sha256 = _ENCODING_FILES[name]
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR")
    if cache_dir is None:
        cache_dir = os.environ.get("DATA_GYM_CACHE_DIR")
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:  # tiktoken reads "" as "no cache": it would download every time
        return False
    path = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())
    try:
        with open(path, "rb") as file:
            return hashlib.sha256(file.read()).hexdigest() == sha256
    except OSError:
        return False
