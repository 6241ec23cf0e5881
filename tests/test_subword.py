"""The cached SentencePiece helper: trained once per (text, options), special ids fixed, round trip."""
from tasks.subword import BOS_ID, EOS_ID, PAD_ID, UNK_ID, sentencepiece_model

TEXTS = [f"the {a} cat sat on the {b} mat number {i}" for i, (a, b) in
         enumerate((a, b) for a in ("red", "blue", "green", "small") for b in ("old", "new", "wide"))] * 5


def test_trained_once_and_reused(tmp_path):
    first = sentencepiece_model(TEXTS, tmp_path, vocab_size=60, model_type="bpe")
    models = list(tmp_path.glob("*.model"))
    assert len(models) == 1
    stamp = models[0].stat().st_mtime_ns
    again = sentencepiece_model(TEXTS, tmp_path, vocab_size=60, model_type="bpe")
    assert models[0].stat().st_mtime_ns == stamp  # loaded, not retrained
    assert again.encode("the red cat") == first.encode("the red cat")
    assert (first.pad_id(), first.unk_id(), first.bos_id(), first.eos_id()) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)


def test_new_text_or_option_trains_a_new_model(tmp_path):
    sentencepiece_model(TEXTS, tmp_path, vocab_size=60, model_type="bpe")
    sentencepiece_model(TEXTS, tmp_path, vocab_size=50, model_type="bpe")
    sentencepiece_model(TEXTS + ["a dog"], tmp_path, vocab_size=60, model_type="bpe")
    assert len(list(tmp_path.glob("*.model"))) == 3
    assert not list(tmp_path.glob("*.part"))


def test_round_trip_and_small_corpus_caps_the_vocabulary(tmp_path):
    model = sentencepiece_model(TEXTS, tmp_path, vocab_size=16000)  # far more than the corpus supports
    assert model.vocab_size() < 16000
    sentence = "the green cat sat on the wide mat number 7"
    assert model.decode(model.encode(sentence)) == sentence
