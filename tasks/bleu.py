"""BLEU of translations, the two ways results are reported.

* `detokenized_bleu`: sacreBLEU on detokenized, cased text with its default 13a tokenization; the number
  to report, with its signature (e.g. `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`).
* `tokenized_bleu`: the number the IWSLT'14 literature reports (fairseq-generate on the prepare script's
  output): hypotheses and references Moses-tokenized and lowercased, then plain corpus BLEU over those
  tokens (no further tokenization, no smoothing). Comparable only up to the subword model: papers use
  subword-nmt's 10k joint BPE over Moses tokens, this lab a joint SentencePiece BPE over raw text.
"""
from __future__ import annotations

from sacrebleu.metrics import BLEU

from .iwslt14_data import moses_tokenizer


def detokenized_bleu(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
    """sacreBLEU corpus BLEU (one reference per sentence) and its signature."""
    metric = BLEU()
    score = metric.corpus_score(hypotheses, [references]).score
    return score, str(metric.get_signature())


def tokenized_bleu(hypotheses: list[str], references: list[str], lang: str) -> float:
    """Corpus BLEU over Moses tokens of lowercased text, as fairseq scores IWSLT'14."""
    tokenize = moses_tokenizer(lang)

    def prepare(text: str) -> str:
        return " ".join(tokenize(text)).lower()

    metric = BLEU(tokenize="none", smooth_method="none", force=True)
    return metric.corpus_score([prepare(h) for h in hypotheses], [[prepare(r) for r in references]]).score
