"""SentencePiece subword models trained on a task's training text, cached beside the data.

    processor = sentencepiece_model(texts, data_root / "imdb_spm", vocab_size=16000, model_type="unigram")
    ids = processor.encode("a sentence")              # list[int]; ids 0..3 are PAD, UNK, BOS, EOS

The cache file name carries a digest of the training text and of every option, so the model is
trained once and reused, and any change of text or option trains (and names) a new one. Training
writes to a temporary file and renames it, so an interrupted run never leaves a half-written model.
Used by the IMDB (unigram, 16k) and IWSLT'14 (joint BPE, 10k) tasks.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Iterable, Literal

from lab.files import written_whole

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def text_digest(texts: Iterable[str], **options) -> str:
    """A short digest of the training text and the options, used as the cache key."""
    digest = hashlib.sha256(repr(sorted(options.items())).encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def sentencepiece_model(texts: list[str], cache_dir: Path, *, vocab_size: int,
                        model_type: Literal["unigram", "bpe", "char", "word"] = "unigram",
                        character_coverage: float = 1.0, max_sentence_length: int = 1 << 16,
                        input_sentence_size: int = 2_000_000, prefix: str = "spm"):
    """Train (once) and load a SentencePiece model over `texts`; returns a `SentencePieceProcessor`.

    `vocab_size` is an upper bound: a corpus too small for it gets the largest vocabulary it supports
    (SentencePiece's `hard_vocab_limit=False`), which is what tiny synthetic corpora need.
    """
    import sentencepiece as spm

    options = dict(vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage,
                   max_sentence_length=max_sentence_length, input_sentence_size=input_sentence_size)
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{prefix}-{model_type}{vocab_size}-{text_digest(texts, **options)}.model"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        print(f"training a SentencePiece {model_type} model (vocab <= {vocab_size}) on {len(texts)} texts "
              f"-> {path}", flush=True)
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buffer, hard_vocab_limit=False,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, shuffle_input_sentence=True,
            num_threads=os.cpu_count() or 1, minloglevel=2, **options)
        with written_whole(path) as partial:
            partial.write_bytes(buffer.getvalue())
    else:
        print(f"using the cached SentencePiece model {path}", flush=True)
    return spm.SentencePieceProcessor(model_file=str(path))
