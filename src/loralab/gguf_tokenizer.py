"""A SentencePiece-BPE tokenizer rebuilt from a GGUF file's vocabulary.

GGUF files of SentencePiece models (`tokenizer.ggml.model = "llama"`, e.g. Gemma 3) carry the
pieces, their scores and their types, but no merges. SentencePiece's BPE merges the adjacent pair
whose joined piece scores highest; the same encoding in a `tokenizers` BPE needs the merges
ranked by that score (the rule transformers' own SentencePiece converter applies). Building a
Unigram model from the scores instead (what a generic converter does for these files) gives a
different segmentation, so the tokenizer is rebuilt here and checked against `sentencepiece`
itself in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class Vocab:
    pieces: list[str]
    scores: list[float]
    types: list[int]
    bos: int
    eos: int
    unk: int
    pad: int
    add_bos: bool


def read_vocab(path: str | Path) -> Vocab:
    """The tokenizer fields of a GGUF file (raises ValueError when it holds no SentencePiece vocabulary)."""
    from gguf import GGUFReader

    f = GGUFReader(str(path)).fields

    def one(key, default=None):
        fl = f.get(key)
        return fl.parts[fl.data[0]][0] if fl is not None and fl.data else default

    def many(key):
        fl = f[key]
        return [fl.parts[i] for i in fl.data]

    model = f.get("tokenizer.ggml.model")
    if model is None or bytes(model.parts[model.data[0]]).decode() != "llama":
        raise ValueError(f"{path}: not a SentencePiece (tokenizer.ggml.model = llama) vocabulary")
    pieces = [bytes(p).decode("utf-8") for p in many("tokenizer.ggml.tokens")]
    return Vocab(pieces=pieces, scores=[float(p[0]) for p in many("tokenizer.ggml.scores")],
                 types=[int(p[0]) for p in many("tokenizer.ggml.token_type")],
                 bos=int(one("tokenizer.ggml.bos_token_id")), eos=int(one("tokenizer.ggml.eos_token_id")),
                 unk=int(one("tokenizer.ggml.unknown_token_id")), pad=int(one("tokenizer.ggml.padding_token_id", 0)),
                 add_bos=bool(one("tokenizer.ggml.add_bos_token", True)))


def merges(v: Vocab) -> list[tuple[str, str]]:
    """Every split of a normal piece into two pieces of the vocabulary, ranked by the joined
    piece's score (highest first), ties by the parts' ids."""
    ids = {p: i for i, p in enumerate(v.pieces)}
    out = []
    for i, piece in enumerate(v.pieces):
        if v.types[i] != NORMAL or len(piece) < 2:
            continue
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in ids and piece[k:] in ids]
        out += [(-v.scores[i], ids[a], ids[b], a, b) for a, b in local]
    out.sort()
    return [(a, b) for *_, a, b in out]


def build(v: Vocab, chat_template: str | None = None):
    """A `PreTrainedTokenizerFast` that encodes like SentencePiece's BPE with this vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = {p: i for i, p in enumerate(v.pieces)}
    tk = Tokenizer(BPE(vocab=vocab, merges=merges(v), unk_token=v.pieces[v.unk], byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tk.add_tokens([AddedToken(p, special=t == CONTROL, normalized=False)
                   for p, t in zip(v.pieces, v.types) if t in (CONTROL, USER_DEFINED, UNKNOWN)])
    bos = v.pieces[v.bos]
    if v.add_bos:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, v.bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=v.pieces[v.eos], unk_token=v.pieces[v.unk],
        pad_token=v.pieces[v.pad], add_bos_token=v.add_bos, chat_template=chat_template)


def spm_reference(v: Vocab, split_by_whitespace: bool = False):
    """`sentencepiece` itself with the same pieces (model type BPE): the reference in the tests."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.split_by_whitespace = split_by_whitespace
    m.trainer_spec.allow_whitespace_only_pieces = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id = v.unk, v.bos, v.eos
    m.trainer_spec.pad_id = v.pad
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for i, (p, s, t) in enumerate(zip(v.pieces, v.scores, v.types)):
        sp = m.pieces.add()
        # GGUF writers store a user-defined piece's "▁" as a space; SentencePiece matches it after
        # the space has become "▁" (the rebuilt tokenizer matches the raw text: the same split)
        sp.piece, sp.score = (p.replace(" ", "▁") if t == USER_DEFINED else p), s
        sp.type = UNKNOWN if i == v.unk else (t if t in (NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL)
    proc = spm.SentencePieceProcessor()
    proc.LoadFromSerializedProto(m.SerializeToString())
    return proc
