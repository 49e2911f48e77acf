"""Build the bundled `openmoji-clip` text encoder (lplkit/assets/openmoji-clip; docs/t2i-demo.md).

A real `transformers` CLIPTextModel (2 layers, width 128, 32 positions) with FROZEN RANDOM weights
(seed 0) and a CLIP BPE tokenizer trained with `tokenizers` on the Unicode names of every OpenMoji
glyph, with CLIP's own normalization and pre-tokenization, so each name word is one token. The
weights are not trained: a random transformer still maps different token sequences to different
states, and the denoiser learns the prompts from them (prompt adherence in docs/t2i-demo.md).

    python pipelines/openmoji-t2i/text_encoder.py [--out lplkit/assets/openmoji-clip]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import unicodedata
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as hf_logging

from lplkit.data.openmoji import OpenMojiSource

# CLIP's pre-tokenization pattern (transformers' CLIPTokenizer.pat, without the ftfy cleanup)
CLIP_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
    r"""[^\s\p{L}\p{N}]+"""
)


def names() -> list[str]:
    """Every OpenMoji glyph's lower-cased Unicode name (train and held-out: the tokenizer only)."""
    src = OpenMojiSource(32, split="all")
    out = []
    for g in src.glyphs:
        name = unicodedata.name(chr(g.codepoint), "").lower()
        if name:
            out.append(name)
    return out


def train_tokenizer(corpus: list[str], folder: Path) -> CLIPTokenizer:
    from tokenizers import Regex

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True)
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    trainer = trainers.BpeTrainer(
        vocab_size=8000,  # more than the corpus can fill: every word ends as one token
        min_frequency=1,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    raw = json.loads(tok.to_str())
    vocab = raw["model"]["vocab"]
    merges = raw["model"]["merges"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [" ".join(m) if isinstance(m, list) else m for m in merges]
    # vocab.json + merges.txt too: the slow CLIPTokenizer of transformers 4.x reads only these
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    pairs = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    return CLIPTokenizer(vocab=vocab, merges=pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("lplkit/assets/openmoji-clip"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    hf_logging.disable_progress_bar()
    corpus = names()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(corpus, Path(tmp))
        lengths = [len(tokenizer(c)["input_ids"]) for c in corpus]
        cfg = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(args.seed)
        model = CLIPTextModel(cfg).eval()
        model.save_pretrained(args.out)
        tokenizer.save_pretrained(args.out)
        for name in ("vocab.json", "merges.txt"):
            (args.out / name).write_bytes((Path(tmp) / name).read_bytes())
    print(
        json.dumps(
            {
                "names": len(corpus),
                "vocab": len(tokenizer),
                "max_tokens": max(lengths),
                "params": sum(p.numel() for p in model.parameters()),
                "out": str(args.out),
            }
        )
    )


if __name__ == "__main__":
    main()
