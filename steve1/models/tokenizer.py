"""Offline CLIP tokenizer with the exact ids of MineCLIP's official text path.

MineCLIP tokenizes with the Hugging Face fast tokenizer of ``openai/clip-vit-base-patch16``
(``add_special_tokens=False``, then ``[BOS] + ids[:75] + [EOS]`` right-padded with 0 to 77).
That pipeline differs from OpenAI's ``clip.tokenize`` (no ftfy, no HTML unescape, per-code-point
lowercasing), so it is re-stated here on top of the CLIP BPE vocabulary shipped in
``steve1/assets`` -- no network, no transformers:

1. ``<|endoftext|>`` spelled exactly so in the raw text becomes 49407 (the hub's tokenizer.json
   adds it with ``normalized: false``, so it is matched before normalisation, case-sensitively);
2. each other piece is normalised: NFC, every ``\\s+`` run to one space, lowercase per code point;
3. ``<|startoftext|>`` in the normalised piece becomes 49406 (added with ``normalized: true``:
   every letter-case variant matches, inside a word too, e.g. ``abc<|StartOfText|>def``);
4. pre-tokens are the matches of :data:`PRETOKEN_PATTERN` (one digit per pre-token), each split
   again by GPT-2's :data:`BYTELEVEL_PATTERN` as HF's ByteLevel pre-tokenizer does. That second
   split only changes a pre-token that is a special token's literal, i.e. an ``<|endoftext|>``
   written in another case, which becomes ``<|``, ``endoftext``, ``|>``;
5. each pre-token's UTF-8 bytes are mapped to printable characters as in GPT-2;
6. BPE with the CLIP merges, ``</w>`` appended to the pre-token's last symbol.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import unicodedata
from importlib import resources
from typing import Iterable, Sequence

import regex
import torch

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
N_MERGES = 48894                     # lines[1 : 49152 - 256 - 2 + 1] of the vocab file
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
BOS_ID, EOS_ID, PAD_ID = 49406, 49407, 0
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77

RAW_SPECIAL_PATTERN = regex.compile(r"(<\|endoftext\|>)")           # matched in the raw text
NORMALIZED_SPECIAL_PATTERN = regex.compile(r"(<\|startoftext\|>)")   # matched after normalize()
PRETOKEN_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
# GPT-2's pattern, applied by HF's ByteLevel pre-tokenizer to each CLIP pre-token.
BYTELEVEL_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
WHITESPACE_RUN = regex.compile(r"\s+")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def normalize(text: str) -> str:
    """NFC, whitespace runs to one space, lowercase per code point (no final-sigma context rule)."""
    text = WHITESPACE_RUN.sub(" ", unicodedata.normalize("NFC", text))
    return "".join(ch.lower() for ch in text)


class ClipTokenizer:
    """CLIP BPE tokenizer; ``encode`` gives the ids without BOS/EOS, ``__call__`` the [B,77] rows."""

    def __init__(self, merges: Sequence[tuple[str, str]]):
        self.byte_encoder = bytes_to_unicode()
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
        if len(vocab) != VOCAB_SIZE:
            raise ValueError(f"CLIP vocabulary has {len(vocab)} entries, expected {VOCAB_SIZE}")
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.bpe_ranks = {pair: i for i, pair in enumerate(merges)}
        self._cache: dict[str, tuple[str, ...]] = {}

    @classmethod
    def from_vocab_file(cls, path=None) -> "ClipTokenizer":
        """Read the gzipped BPE file (default: the packaged asset) and check its sha256."""
        if path is None:
            data = resources.files("steve1").joinpath("assets", VOCAB_FILE).read_bytes()
            where = f"steve1/assets/{VOCAB_FILE}"
        else:
            with open(path, "rb") as f:
                data = f.read()
            where = str(path)
        digest = hashlib.sha256(data).hexdigest()
        if digest != VOCAB_SHA256:
            raise ValueError(f"{where}: sha256 {digest} differs from the CLIP vocabulary's {VOCAB_SHA256}")
        lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : N_MERGES + 1]
        return cls([tuple(line.split()) for line in lines])

    def bpe(self, token: str) -> tuple[str, ...]:
        """Merge the symbols of one byte-mapped pre-token, lowest merge rank first."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        out = tuple(word)
        if len(self._cache) < 100_000:
            self._cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS and without truncation."""
        ids: list[int] = []
        for raw in RAW_SPECIAL_PATTERN.split(text):
            if raw == EOS:
                ids.append(EOS_ID)
                continue
            for piece in NORMALIZED_SPECIAL_PATTERN.split(normalize(raw)):
                if piece == BOS:
                    ids.append(BOS_ID)
                    continue
                for clip_pre in PRETOKEN_PATTERN.findall(piece):
                    for pre in BYTELEVEL_PATTERN.findall(clip_pre):
                        mapped = "".join(self.byte_encoder[b] for b in pre.encode("utf-8"))
                        ids.extend(self.encoder[s] for s in self.bpe(mapped))
        return ids

    def __call__(self, texts: str | Iterable[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
        """int64 [B, context_length]: ``[BOS] + ids[:context_length-2] + [EOS]``, padded with 0."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        out = torch.full((len(texts), context_length), PAD_ID, dtype=torch.int64)
        for row, text in enumerate(texts):
            ids = [BOS_ID] + self.encode(text)[: context_length - 2] + [EOS_ID]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> ClipTokenizer:
    """The packaged tokenizer, built once per process."""
    return ClipTokenizer.from_vocab_file()


def tokenize(texts: str | Iterable[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """int64 [B, 77] token rows exactly as MineCLIP's official ``tokenize_batch``."""
    return get_tokenizer()(texts, context_length)
