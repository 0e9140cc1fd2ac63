"""Offline tokenizers for the tiny test pipelines.

Both tokenizers are built in memory (nothing is read from disk or the Hub) from a small word list
that covers typical test prompts, and both fall back to single characters for any other word, so
every prompt tokenizes:

* :func:`tiny_t5_tokenizer` -- a ``transformers.T5Tokenizer`` (SentencePiece-style Unigram), used
  for T5 / UMT5 text encoders (PixArt, SD3, Flux, CogVideoX, Wan).
* :func:`tiny_clip_tokenizer` -- a ``transformers.CLIPTokenizer`` (byte-level BPE with all 256
  byte symbols, so no input is ever unknown), used for CLIP text encoders (SD1.5, SD3, Flux).

Example::

    from diffusion_accel.testing.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

    tok = tiny_t5_tokenizer()
    ids = tok("a photo of a cat").input_ids
    assert tok.decode(ids, skip_special_tokens=True) == "a photo of a cat"
"""

from __future__ import annotations

import itertools

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer, T5Tokenizer

__all__ = ["PROMPT_WORDS", "tiny_clip_tokenizer", "tiny_t5_tokenizer"]

# Words that get their own token. Anything else is spelled out character by character.
_WORDS = """
    a an the of in on at with and or by to from for under over near above below behind into
    is are it its this that while very
    photo picture painting drawing portrait image render illustration sketch close up view
    cat cats dog dogs horse horses bird birds fish astronaut man woman person people child
    girl boy robot car cars bicycle boat ship train plane tree trees flower flowers
    house city street road mountain mountains river lake sea ocean beach forest field sky
    sun moon star stars space planet cloud clouds rain snow fire water light night day sunset
    riding sitting standing walking running flying swimming playing eating holding wearing
    looking jumping dancing
    red orange yellow green blue purple pink brown black white gray grey gold silver colorful
    big small tiny large old young new cute happy beautiful dark bright detailed realistic
    high quality best masterpiece style art digital oil cinematic lighting sharp focus
    zero one two three four five six seven eight nine ten
"""
PROMPT_WORDS: tuple[str, ...] = tuple(_WORDS.split())

# Characters that are single tokens in the T5 vocabulary (the fallback for unknown words).
_T5_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-_()[]{}/\\&+*=%#@$<>|~`^"

_T5_MAX_LENGTH = 512
_CLIP_MAX_LENGTH = 77


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A small in-memory ``T5Tokenizer`` (Unigram) with the usual T5 special tokens.

    Ids: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 (as in T5), then the word pieces, then single
    characters. Every call builds an identical tokenizer. Characters outside ASCII map to ``<unk>``.
    """
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    # Whole words (with the SentencePiece word-start marker) score higher than any spelling of
    # them out of characters, so known words always become one token.
    vocab += [("\u2581" + w, -5.0) for w in PROMPT_WORDS]
    vocab += [(c, -10.0) for c in _T5_CHARS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=_T5_MAX_LENGTH)


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly join the best-ranked adjacent pair."""
    while len(symbols) > 1:
        candidates = [(ranks.get(p, -1), i) for i, p in enumerate(itertools.pairwise(symbols))]
        candidates = [c for c in candidates if c[0] >= 0]
        if not candidates:
            break
        _, i = min(candidates)
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    # Base symbols: every byte-level character, alone and as a word ending (as in real CLIP), so
    # any text is representable.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for c in alphabet:
        vocab[c] = len(vocab)
    for c in alphabet:
        vocab[c + "</w>"] = len(vocab)
    # Each word gets the merges that join whatever the earlier merges leave of it, left to right.
    # New merges rank after all earlier ones, so every listed word ends up as a single token and
    # earlier words are never re-split.
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in PROMPT_WORDS:
        pieces = _apply_merges(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        left = pieces[0]
        for right in pieces[1:]:
            pair = (left, right)
            left = left + right
            if pair not in ranks:
                ranks[pair] = len(merges)
                merges.append(pair)
            if left not in vocab:
                vocab[left] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A small in-memory ``CLIPTokenizer`` (byte-level BPE), ``model_max_length`` 77.

    As in real CLIP, text is lower-cased, ``<|startoftext|>`` and ``<|endoftext|>`` are the last
    two ids, and the pad token is ``<|endoftext|>``. Every call builds an identical tokenizer.
    """
    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_CLIP_MAX_LENGTH)
