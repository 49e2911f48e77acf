"""Tiny CLIP and T5 text encoders built offline from real transformers configs (random weights),
with tokenizers built here (a hand-written CLIP BPE vocab/merges; a `tokenizers` Unigram model
trained on a few words, wrapped in T5Tokenizer), saved with `save_pretrained`."""

from __future__ import annotations

from pathlib import Path

WORDS = [
    "a",
    "photo",
    "of",
    "cat",
    "dog",
    "red",
    "blue",
    "green",
    "small",
    "big",
    "on",
    "the",
    "grass",
    "tree",
    "sky",
]


def clip_tokenizer():
    from transformers import CLIPTokenizer

    chars = sorted(set("".join(WORDS)))
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: dict[tuple[str, str], None] = {}
    for w in WORDS:  # merge each word's letters left to right into one token
        cur = w[0] + ("</w>" if len(w) == 1 else "")
        for i, ch in enumerate(w[1:], 1):
            piece = ch + ("</w>" if i == len(w) - 1 else "")
            merges[(cur, piece)] = None
            cur += piece
            vocab.setdefault(cur, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(merges))


def t5_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator([" ".join(WORDS)] * 3 + WORDS, trainer)
    return T5Tokenizer(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                       unk_token="<unk>", extra_ids=0)  # fmt: skip


def clip_model(seed: int = 0, *, projection: bool = False, positions: int = 16, hidden: int = 16,
               projection_dim: int = 8):  # fmt: skip
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = clip_tokenizer()
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=3, num_attention_heads=2, projection_dim=projection_dim,
                         max_position_embeddings=positions, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(cfg).eval(), tok


def t5_model(seed: int = 0, *, d_model: int = 16):
    import torch
    from transformers import T5Config, T5EncoderModel

    tok = t5_tokenizer()
    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                   num_heads=2,
                   relative_attention_num_buckets=8, pad_token_id=tok.pad_token_id,
                   eos_token_id=tok.eos_token_id, feed_forward_proj="gated-gelu")  # fmt: skip
    torch.manual_seed(seed)
    return T5EncoderModel(cfg).eval(), tok


def save(model, tok, folder: Path, tokenizer_folder: Path | None = None) -> Path:
    model.save_pretrained(folder)
    tok.save_pretrained(tokenizer_folder or folder)
    return folder


def files_of(folder: Path, prefix: str = "") -> dict[str, bytes]:
    """repo-relative path -> bytes of every file under `folder` (for `write_hub_cache`)."""
    return {
        prefix + p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file()
    }


def pipeline_repo(tmp: Path, seed: int = 0) -> dict[str, bytes]:
    """A diffusers-pipeline-like repo: text_encoder + tokenizer (CLIPTextModel),
    text_encoder_2 + tokenizer_2 (CLIPTextModelWithProjection)."""
    root = tmp / f"pipe-{seed}"
    m, tok = clip_model(seed)
    save(m, tok, root / "text_encoder", root / "tokenizer")
    m2, tok2 = clip_model(seed + 1, projection=True)
    save(m2, tok2, root / "text_encoder_2", root / "tokenizer_2")
    return files_of(root)


def t5_repo(tmp: Path, seed: int = 0) -> dict[str, bytes]:
    root = tmp / f"t5-{seed}"
    m, tok = t5_model(seed)
    save(m, tok, root)
    return files_of(root)


def sd3_repo(tmp: Path, seed: int = 0) -> dict[str, bytes]:
    """A StableDiffusion3Pipeline-like repo: text_encoder / text_encoder_2 (CLIP-L / CLIP-G stand-ins,
    CLIPTextModelWithProjection of widths 16 / 24) + tokenizers, text_encoder_3 (T5, width 48 >=
    16 + 24, as SD3's 4096 >= 768 + 1280) + tokenizer_3."""
    root = tmp / f"sd3-{seed}"
    m, tok = clip_model(seed, projection=True)
    save(m, tok, root / "text_encoder", root / "tokenizer")
    m2, tok2 = clip_model(seed + 1, projection=True, hidden=24, projection_dim=12)
    save(m2, tok2, root / "text_encoder_2", root / "tokenizer_2")
    m3, tok3 = t5_model(seed + 2, d_model=48)
    save(m3, tok3, root / "text_encoder_3", root / "tokenizer_3")
    return files_of(root)
