"""Tokenizers for specjax models, built with the `tokenizers` library (no transformers, no torch).

Sources: the vocabulary stored in a GGUF file's metadata, or an HF directory's `tokenizer.json`.
GGUF stores either a byte-level BPE vocabulary with its merges (`tokenizer.ggml.model = gpt2`) or a
SentencePiece vocabulary with scores and no merges (`llama`); for the latter the merges are rebuilt
from the vocabulary: every split of a token into two tokens is a merge, ranked by the merged token
(by its score, or, for Gemma, whose scores do not follow merge order, by its place in the file).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from specjax.errors import ConversionError

_CONTROL, _USER_DEFINED = 3, 4
_META = "tokenizer_meta.json"
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")

# Pre-tokenizer splits llama.cpp names by `tokenizer.ggml.pre` for byte-level vocabularies.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def merges_from_vocab(tokens: list[str], rank: dict[str, float]) -> list[tuple[str, str]]:
    """Every way to cut a token into two vocabulary tokens is a merge; best-ranked merged token first.

    Cuts of one token share its rank; among them the longer left piece comes first.
    """
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for token in tokens:
        cuts = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab]
        found.extend((left, right, rank[token]) for left, right in cuts)
    found.sort(key=lambda m: (-m[2], -len(m[0]), -len(m[1])))
    return [(left, right) for left, right, _ in found]


class Tokenizer:
    """Text <-> token ids, special ids, and the chat template."""

    def __init__(self, backend: Backend, *, bos_id: int | None, eos_ids: tuple[int, ...], pad_id: int | None,
                 add_bos: bool, chat_template: str | None = None):
        self.backend = backend
        self.bos_id, self.eos_ids, self.pad_id = bos_id, tuple(eos_ids), pad_id
        self.add_bos, self.chat_template = add_bos, chat_template

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids, *, skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def kind(self) -> str:
        """How tokens spell bytes: "byte-level" (GPT-2's byte alphabet, e.g. SmolLM2) or "sentencepiece"
        ("\u2581" for a space and <0xNN> byte-fallback tokens, e.g. Gemma)."""
        if isinstance(self.backend.decoder, decoders.ByteLevel):
            return "byte-level"
        if isinstance(self.backend.model, BPE) and self.backend.model.byte_fallback:
            return "sentencepiece"
        raise ConversionError("this tokenizer spells bytes in a way specjax cannot read (neither byte-level BPE "
                              "nor SentencePiece with byte fallback), so it cannot be matched with another vocabulary")

    def special_ids(self) -> set[int]:
        """Ids of special (control) tokens: they stand for no text."""
        return {i for i, t in self.backend.get_added_tokens_decoder().items() if t.special}

    def byte_fallback_ids(self) -> set[int]:
        """Ids of SentencePiece's byte-fallback tokens <0xNN> (none for a byte-level vocabulary)."""
        if self.kind() != "sentencepiece":
            return set()
        return {i for i in range(self.vocab_size) if _BYTE_TOKEN.fullmatch(self.token(i) or "")}

    def token_bytes(self) -> list[bytes | None]:
        """The bytes each id stands for (None for special tokens and unused ids), in one spelling for
        both kinds of vocabulary, so that two tokenizers' tokens can be matched by their bytes."""
        kind, special = self.kind(), self.special_ids()
        added = {i: t.content for i, t in self.backend.get_added_tokens_decoder().items() if not t.special}
        inverse = {c: b for b, c in _bytes_to_unicode().items()}
        out: list[bytes | None] = []
        for i in range(self.vocab_size):
            tok = self.backend.id_to_token(i)
            if tok is None or i in special:
                out.append(None)
            elif i in added:  # user-defined tokens are stored as their text
                out.append(added[i].replace("\u2581", " ").encode("utf-8") if kind == "sentencepiece"
                           else added[i].encode("utf-8"))
            elif kind == "byte-level":
                out.append(bytes(inverse[c] for c in tok) if all(c in inverse for c in tok) else None)
            else:
                m = _BYTE_TOKEN.fullmatch(tok)
                out.append(bytes([int(m.group(1), 16)]) if m else tok.replace("\u2581", " ").encode("utf-8"))
        return out

    def encode_bytes(self, data: bytes) -> list[int]:
        """Ids that spell exactly `data` with this vocabulary's merges (no normaliser, no splitting into
        words, no special tokens): a byte-level vocabulary spells any bytes; a SentencePiece one uses
        its <0xNN> tokens for bytes that are not valid UTF-8 or have no piece."""
        model = self.backend.model
        if self.kind() == "byte-level":
            chars = _bytes_to_unicode()
            return [t.id for t in model.tokenize("".join(chars[b] for b in data))] if data else []
        ids: list[int] = []
        rest = data
        while rest:
            try:
                text, rest = rest.decode("utf-8"), b""
            except UnicodeDecodeError as err:
                text, bad, rest = rest[:err.start].decode("utf-8"), rest[err.start:err.end], rest[err.end:]
                ids += [t.id for t in model.tokenize(text.replace(" ", "\u2581"))] if text else []
                ids += [self._byte_id(b) for b in bad]
                continue
            ids += [t.id for t in model.tokenize(text.replace(" ", "\u2581"))]
        return ids

    def encode_bytes_many(self, items: list[bytes]) -> list[list[int]]:
        """`encode_bytes` of each item, the whole list in one batched call of the tokenizers library."""
        raw = Backend(self.backend.model)  # the merges alone: no normaliser, pre-tokeniser or added tokens
        if self.kind() == "byte-level":
            chars = _bytes_to_unicode()
            spelled = ["".join(chars[b] for b in item) for item in items]
            done = raw.encode_batch(spelled, add_special_tokens=False)
            return [d.ids if item else [] for d, item in zip(done, items)]
        out: list[list[int] | None] = [None] * len(items)
        texts, where = [], []
        for n, item in enumerate(items):
            try:
                text = item.decode("utf-8")
            except UnicodeDecodeError:
                out[n] = self.encode_bytes(item)
                continue
            texts.append(text.replace(" ", "\u2581"))
            where.append(n)
        for n, d in zip(where, raw.encode_batch(texts, add_special_tokens=False) if texts else []):
            out[n] = d.ids if items[n] else []
        return out

    def _byte_id(self, b: int) -> int:
        i = self.backend.token_to_id(f"<0x{b:02X}>")
        if i is None:
            raise ConversionError(f"this vocabulary has no byte-fallback token <0x{b:02X}>")
        return i

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        """Render `messages` with the model's Jinja chat template."""
        if not self.chat_template:
            raise ConversionError("this tokenizer has no chat template; pass raw text instead")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise ConversionError(f"chat template error: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        special = lambda i: self.token(i) if i is not None else ""  # noqa: E731
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=special(self.bos_id), eos_token=special(self.eos_ids[0] if self.eos_ids else None),
        )

    # -- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(d / "tokenizer.json"))
        meta = dict(bos_id=self.bos_id, eos_ids=list(self.eos_ids), pad_id=self.pad_id, add_bos=self.add_bos,
                    chat_template=self.chat_template)
        (d / _META).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Tokenizer":
        d = Path(directory)
        if (d / _META).exists():
            meta = json.loads((d / _META).read_text())
            return cls(Backend.from_file(str(d / "tokenizer.json")), bos_id=meta["bos_id"],
                       eos_ids=tuple(meta["eos_ids"]), pad_id=meta["pad_id"], add_bos=meta["add_bos"],
                       chat_template=meta.get("chat_template"))
        return cls.from_hf_dir(d)

    @classmethod
    def from_hf_dir(cls, directory: str | os.PathLike) -> "Tokenizer":
        """An HF model directory: tokenizer.json plus tokenizer_config.json / generation_config.json."""
        d = Path(directory)
        backend = Backend.from_file(str(d / "tokenizer.json"))
        conf = json.loads((d / "tokenizer_config.json").read_text()) if (d / "tokenizer_config.json").exists() else {}
        gen = json.loads((d / "generation_config.json").read_text()) if (d / "generation_config.json").exists() else {}

        def token_id(value):
            if isinstance(value, dict):
                value = value.get("content")
            return backend.token_to_id(value) if value is not None else None

        eos = gen.get("eos_token_id", token_id(conf.get("eos_token")))
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        bos_id = gen.get("bos_token_id", token_id(conf.get("bos_token")))
        # A post-processor in tokenizer.json that adds BOS is folded into `add_bos`.
        adds_bos = bos_id is not None and backend.encode("a").ids[:1] == [bos_id]
        if adds_bos:
            backend.post_processor = None
        template = conf.get("chat_template")
        if template is None and (d / "chat_template.jinja").exists():
            template = (d / "chat_template.jinja").read_text()
        return cls(backend, bos_id=bos_id, eos_ids=eos_ids, pad_id=token_id(conf.get("pad_token")),
                   add_bos=bool(conf.get("add_bos_token", adds_bos)), chat_template=template)

    @classmethod
    def from_gguf(cls, field) -> "Tokenizer":
        """Build from GGUF metadata; `field(key, default)` reads one metadata value."""
        kind = field("tokenizer.ggml.model")
        tokens = list(field("tokenizer.ggml.tokens") or [])
        if not tokens:
            raise ConversionError("GGUF file has no tokenizer.ggml.tokens")
        types = list(field("tokenizer.ggml.token_type") or [1] * len(tokens))
        arch = field("general.architecture")
        if kind == "gpt2":
            backend = _byte_level(tokens, field)
        elif kind == "llama":
            backend, tokens = _sentencepiece(tokens, field, gemma=arch.startswith("gemma"))
        else:
            raise ConversionError(f"GGUF tokenizer model {kind!r} is not supported (supported: gpt2, llama)")
        vocab = set(tokens)
        alphabet = set(_bytes_to_unicode().values())
        control = [t for t, ty in zip(tokens, types)
                   if ty == _CONTROL and (kind != "gpt2" or set(t) <= alphabet)]
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
        user = [t for t, ty in zip(tokens, types) if ty == _USER_DEFINED and t in vocab]
        if user:
            backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
        eos_ids = [field("tokenizer.ggml.eos_token_id")]
        eot = field("tokenizer.ggml.eot_token_id")
        if eot is not None and eot not in eos_ids:
            eos_ids.append(eot)
        return cls(
            backend,
            bos_id=field("tokenizer.ggml.bos_token_id"),
            eos_ids=tuple(int(e) for e in eos_ids if e is not None),
            pad_id=field("tokenizer.ggml.padding_token_id"),
            add_bos=bool(field("tokenizer.ggml.add_bos_token", kind == "llama")),
            chat_template=field("tokenizer.chat_template"),
        )


def _byte_level(tokens: list[str], field) -> Backend:
    chars = _bytes_to_unicode()
    alphabet = set(chars.values())
    vocab = {}
    for i, t in enumerate(tokens):
        # Control tokens such as <|im_start|> may be spelled outside the byte alphabet.
        spelled = t if set(t) <= alphabet else "".join(chars[b] for b in t.encode("utf-8"))
        vocab.setdefault(spelled, i)
    merges = [tuple(m.split(" ", 1)) for m in (field("tokenizer.ggml.merges") or [])]
    backend = Backend(BPE(vocab=vocab, merges=merges, fuse_unk=False))
    pre = field("tokenizer.ggml.pre")
    if pre in _SPLITS:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece(tokens: list[str], field, *, gemma: bool) -> tuple[Backend, list[str]]:
    if gemma:
        # Gemma files store runs of spaces as real spaces; the model sees them as "▁" runs.
        tokens = ["\u2581" * len(t) if t and not t.strip(" ") else t for t in tokens]
        rank = {t: -i for i, t in enumerate(tokens)}
    else:
        scores = list(field("tokenizer.ggml.scores"))
        rank = dict(zip(tokens, scores))
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    unk_id = field("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None else None
    model = BPE(vocab=vocab, merges=merges_from_vocab(tokens, rank), unk_token=unk, fuse_unk=True, byte_fallback=True)
    backend = Backend(model)
    if gemma:
        backend.normalizer = normalizers.Replace(" ", "\u2581")
        backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    else:
        prefix = "first" if field("tokenizer.ggml.add_space_prefix", True) else "never"
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=prefix, split=False)
        backend.decoder = decoders.Sequence([
            decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
        ])
    return backend, tokens
