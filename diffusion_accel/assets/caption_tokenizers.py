"""In-memory T5 and CLIP tokenizers covering the caption vocabulary (no download, no files).

Every caption word becomes one token; single letters stay in both vocabularies so an unknown
word still tokenizes (letter by letter) instead of failing.

Example::

    >>> from diffusion_accel.assets.caption_tokenizers import build_t5_tokenizer
    >>> tok = build_t5_tokenizer(["a", "red", "seven"])
    >>> tok.convert_ids_to_tokens(tok("a red seven").input_ids)
    ['▁a', '▁red', '▁seven', '</s>']
"""

from __future__ import annotations

import string
from collections import Counter

from transformers import CLIPTokenizer, T5Tokenizer

__all__ = ["build_t5_tokenizer", "build_clip_tokenizer", "learn_bpe_merges"]

_LETTERS = tuple(string.ascii_lowercase)


def build_t5_tokenizer(words: list[str]) -> T5Tokenizer:
    """A unigram ``T5Tokenizer``: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, then one piece per word.

    Whole words score higher than any spelling out of letters, so each known word is one token.
    """
    if not words:
        raise ValueError("words must not be empty")
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"▁{word}", -2.0) for word in sorted(set(words))]
    pieces += [("▁", -20.0)]
    pieces += [(letter, -20.0) for letter in _LETTERS if f"▁{letter}" not in dict(pieces)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def learn_bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges (in rank order) that turn every word into a single ``word</w>`` token.

    Classic BPE learning on the word list (each word counted once), ties broken
    alphabetically, so the result is deterministic.
    """
    spelled = {word: list(word[:-1]) + [word[-1] + "</w>"] for word in sorted(set(words))}
    merges = []
    while True:
        pairs = Counter()
        for symbols in spelled.values():
            for left, right in zip(symbols, symbols[1:]):
                pairs[(left, right)] += 1
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in spelled.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            spelled[word] = merged


def build_clip_tokenizer(words: list[str]) -> CLIPTokenizer:
    """A BPE ``CLIPTokenizer``: ``<|startoftext|>``=0, ``<|endoftext|>``=1 (also pad/unk).

    Words must be lowercase ASCII letters (the caption vocabulary is).
    """
    if not words:
        raise ValueError("words must not be empty")
    for word in words:
        if not word or any(ch not in _LETTERS for ch in word):
            raise ValueError(f"caption words must be lowercase ASCII letters, got {word!r}")
    merges = learn_bpe_merges(words)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    tokens += list(_LETTERS) + [f"{letter}</w>" for letter in _LETTERS]
    for left, right in merges:
        if left + right not in tokens:
            tokens.append(left + right)
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[tuple(merge) for merge in merges])
