"""The grapheme-to-phoneme data, metrics, model and search: hand-made cases and a tiny model (seconds)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from seqserve.beam_search import (
    Hypothesis,
    SearchOptions,
    WordBeam,
    WordGreedy,
    beam_search,
    greedy,
    length_normalised,
    search,
)
from seqserve.cli import app
from seqserve.training.g2p_data import Lexicon, load_g2p, read_cmudict, split_lexicon
from seqserve.training.g2p_metrics import edit_distance, error_rates
from seqserve.training.readers import DataError
from seqserve.training.seq2seq import Seq2Seq, Seq2SeqConfig, from_payload
from seqserve.training.seq2seq_decode import decode_words
from seqserve.training.seq2seq_loop import (
    CHECKPOINT_FILE,
    IGNORE,
    TEST_WORDS_FILE,
    Pairs,
    Seq2SeqTrainConfig,
    batch_tensors,
    epoch_batches,
    sequence_loss,
    train_seq2seq,
)
from seqserve.vocabularies import Tokens

DICT = """\
;;; a comment line would need a word and phonemes; this file has none
abbe AE1 B IY0
abbe(2) AE1 B EY0 # name, french
abbe(3) AE0 B IY1
it's IH1 T S
x-ray EH1 K S R EY2
naïve N AY0 IY1 V
"""


def test_reading_strips_comments_variants_and_stress_and_drops_other_characters(tmp_path: Path) -> None:
    path = tmp_path / "cmudict.dict"
    path.write_text(DICT.split("\n", 1)[1])
    lexicon, report = read_cmudict(path)
    assert lexicon == {
        "abbe": [("AE", "B", "IY"), ("AE", "B", "EY")],
        "it's": [("IH", "T", "S")],
        "x-ray": [("EH", "K", "S", "R", "EY")],
    }
    assert report.comments == 1 and report.stress_duplicates == 1 and report.dropped_words == ["naïve"]
    assert (report.words, report.pronunciations) == (3, 4)
    path.write_text("lonely\n")
    with pytest.raises(DataError, match="no phonemes"):
        read_cmudict(path)


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return read_cmudict()[0]


def test_the_vendored_dictionary_reads_whole(lexicon: Lexicon) -> None:
    _, report = read_cmudict()
    assert report.lines == 135166 and report.comments == 22 and report.dropped_words == []
    assert report.words == 126052 and report.pronunciations == 134860 and report.stress_duplicates == 306
    assert lexicon["phoneme"] == [("F", "OW", "N", "IY", "M")]


def test_the_split_is_seeded_disjoint_by_word_and_keeps_every_pronunciation(lexicon: Lexicon) -> None:
    first, again, other = (split_lexicon(lexicon, seed, limit=2000) for seed in (0, 0, 1))
    parts = (first.train, first.validation, first.test)
    assert [len(p) for p in parts] == [1800, 100, 100]
    assert not set(first.train) & set(first.test) and not set(first.validation) & set(first.test)
    assert not set(first.train) & set(first.validation)
    assert list(again.test) == list(first.test) and list(other.test) != list(first.test)
    assert all(part[w] == lexicon[w] for part in parts for w in part)
    assert first.phonemes[:2] == ["<s>", "</s>"] and len(first.phonemes) == 41 and first.letters[0] == "<pad>"
    full = split_lexicon(lexicon, 0)
    assert [len(full.train), len(full.validation), len(full.test)] == [113446, 6303, 6303]


def test_edit_distance_and_error_rates_on_hand_made_cases() -> None:
    assert edit_distance("kitten", "sitting") == 3 and edit_distance([], ["A", "B"]) == 2
    assert edit_distance(["A", "B"], ["A", "B"]) == 0
    references = [
        [("T", "AH", "M", "EY", "T", "OW"), ("T", "AH", "M", "AA", "T", "OW")],  # right by its 2nd reference
        [("K", "AE", "T")],  # one substitution
        [("D", "AO", "G")],  # one deletion
    ]
    outputs = [("T", "AH", "M", "AA", "T", "OW"), ("K", "AH", "T"), ("D", "AO")]
    rates = error_rates(outputs, references)
    assert rates.words_wrong == 2 and rates.wer == pytest.approx(2 / 3)
    assert rates.phoneme_edits == 2 and rates.reference_phonemes == 12 and rates.per == pytest.approx(2 / 12)
    # The nearest reference counts, not the first: ("AH",) is 1 edit from the 2nd, 3 from the 1st.
    assert error_rates([("AH",)], [[("X", "Y", "Z"), ("AH", "B")]]).reference_phonemes == 2


def test_tokens_name_the_character_that_is_not_in_the_vocabulary() -> None:
    tokens = Tokens(["<pad>", "a", "b"], ["<s>", "</s>", "X"])
    letters, lengths = tokens.input_batch(["ab", "b"])
    assert letters.tolist() == [[1, 2], [2, 0]] and lengths.tolist() == [2, 1]
    assert tokens.decode_output([2, 2, 1, 2]) == ("X", "X")
    with pytest.raises(ValueError, match=r"'z' at position 1 of 'az'"):
        tokens.encode_input("az")
    with pytest.raises(ValueError, match="empty"):
        tokens.encode_input("")
    with pytest.raises(ValueError, match=r"'<' at position 0"):
        tokens.encode_input("<pad>")  # padding is a token, not characters a word may hold


def _tiny(lexicon: Lexicon, cell: str) -> tuple[Seq2Seq, Tokens]:
    data = split_lexicon(lexicon, 0, limit=300)
    torch.manual_seed(0)
    config = Seq2SeqConfig(data.letters, data.phonemes, cell, embedding=8, encoder_hidden=6, hidden=10)
    return Seq2Seq(config).eval(), Tokens(data.letters, data.phonemes)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_shapes_and_padding_do_not_reach_a_row(lexicon: Lexicon, cell: str) -> None:
    model, tokens = _tiny(lexicon, cell)
    letters, lengths = tokens.input_batch(["cat", "phoneme"])
    x, n = torch.from_numpy(letters), torch.from_numpy(lengths)
    with torch.no_grad():
        memory, state = model.encode(x, n)
        assert memory.shape == (2, 7, 12) and len(state) == (2 if cell == "lstm" else 1)
        assert all(s.shape == (1, 2, 10) for s in state)
        assert memory[0, 3:].abs().max() == 0  # past "cat"'s three letters
        previous = torch.tensor([[0, 5, 7], [0, 9, 9]])
        log_probs = model(x, n, previous)
        assert log_probs.shape == (2, 3, 41)
        torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 3))
        step_probs, _, attention = model.step(torch.tensor([0, 0]), state, memory, n)
        assert attention[0, 3:].max() == 0 and float(attention[0, :3].sum()) == pytest.approx(1.0)
        # "cat" alone, unpadded, answers what it answered beside a longer word.
        alone_memory, alone_state = model.encode(x[:1, :3], n[:1])
        alone, _, _ = model.step(torch.tensor([0]), alone_state, alone_memory, n[:1])
        torch.testing.assert_close(alone[0], step_probs[0], atol=1e-6, rtol=0)


def test_a_batch_is_each_pairs_letters_and_its_pronunciation_shifted_for_teacher_forcing() -> None:
    tokens = Tokens(["<pad>", "a", "b", "c"], ["<s>", "</s>", "X", "Y"])
    lexicon = {"abc": [("X",), ("Y", "X", "Y")], "b": [("Y", "Y")]}
    pairs = Pairs.of(lexicon, tokens)
    letters, lengths, previous, target = batch_tensors(pairs, np.array([2, 0]), tokens)
    assert letters.tolist() == [[2, 0, 0], [1, 2, 3]] and lengths.tolist() == [1, 3]
    assert previous.tolist() == [[0, 3, 3], [0, 2, 0]]  # start, the reference, start as padding
    assert target.tolist() == [[3, 3, 1], [2, 1, IGNORE]]  # the reference, end, ignored
    _, _, previous, target = batch_tensors(pairs, np.array([1, 2]), tokens)
    assert previous.tolist() == [[0, 3, 2, 3], [0, 3, 3, 0]]
    assert target.tolist() == [[3, 2, 3, 1], [3, 3, 1, IGNORE]]
    letters, lengths, previous, target = batch_tensors(pairs, np.array([0]), tokens)
    assert letters.tolist() == [[1, 2, 3]] and previous.tolist() == [[0, 2]] and target.tolist() == [[2, 1]]
    batches = epoch_batches(pairs, 2, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == [0, 1, 2]


def test_the_loss_spreads_the_smoothed_share_over_the_vocabulary_and_skips_padded_steps() -> None:
    log_probs = torch.log_softmax(torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    target = torch.tensor([[4, 1, IGNORE], [0, 2, 3]])
    real = target != IGNORE
    picked = -log_probs[real].gather(1, target[real][:, None])[:, 0]
    assert torch.allclose(sequence_loss(log_probs, target), picked.mean())
    uniform = -log_probs[real].mean(dim=1)
    smoothed = (0.9 * picked + 0.1 * uniform).mean()
    assert torch.allclose(sequence_loss(log_probs, target, 0.1), smoothed)
    assert not torch.allclose(sequence_loss(log_probs, target, 0.1), picked.mean())


def test_seq2seq_flags_are_refused_for_other_models_and_theirs_for_seq2seq(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    result = CliRunner().invoke(app, ["train", "--out", out, "--dataset", "japanese_vowels",
                                      "--label-smoothing", "0.1"])  # fmt: skip
    assert result.exit_code == 2 and "--label-smoothing applies to seq2seq models only" in result.output
    result = CliRunner().invoke(app, ["train", "--out", out, "--task", "seq2seq", "--dataset", "cmudict",
                                      "--chrono", "20"])  # fmt: skip
    assert result.exit_code == 2 and "--chrono do not apply to a seq2seq model" in result.output
    assert not (tmp_path / "run").exists()


def _table_step(tables: dict[tuple[int, ...], list[float]], vocabulary: int):
    """A step function whose log-probabilities are looked up by each row's history (its state)."""

    def step(previous, state, owner):
        histories = [tuple(int(t) for t in row if t >= 0) for row in state[0][0]]
        rows = [(*h, int(p)) for h, p in zip(histories, previous, strict=True)]
        default = np.log(np.full(vocabulary, 1 / vocabulary))
        log_probs = np.stack([np.log(tables[r]) if r in tables else default for r in rows])
        width = max(len(r) for r in rows)
        new = np.full((1, len(rows), width), -1.0)
        for i, r in enumerate(rows):
            new[0, i, : len(r)] = r
        return log_probs, (new,)

    return step


# Tokens: 0 start, 1 end, 2 "A", 3 "B". Greedy takes A (0.6) then must end badly; B then end is likelier.
TABLES = {
    (0,): [1e-9, 0.1, 0.5, 0.4],
    (0, 2): [1e-9, 0.3, 0.35, 0.35],
    (0, 3): [1e-9, 0.9, 0.05, 0.05],
}


def test_beam_search_finds_what_greedy_misses_and_ranks_its_n_best() -> None:
    step = _table_step(TABLES, 4)
    state = (np.full((1, 1, 1), -1.0),)
    (found,) = greedy(step, state, [3], start=0, end=1, max_steps=3)
    assert found.tokens[:1] == (2,)
    (best,) = beam_search(step, state, [3], 0, 1, SearchOptions(beam=2, max_steps=3))[0]
    assert best == Hypothesis((3,), pytest.approx(np.log(0.4 * 0.9)), True)
    two = beam_search(step, state, [3], 0, 1, SearchOptions(beam=3, nbest=2, max_steps=3))[0]
    assert two == [best, Hypothesis((2,), pytest.approx(np.log(0.5 * 0.3)), True)]


def test_beam_width_one_makes_greedys_choices_and_the_step_limit_stops_a_word() -> None:
    rng = np.random.default_rng(0)
    tables = {}
    for _ in range(200):
        history = (0, *rng.integers(2, 6, size=rng.integers(0, 5)).tolist())
        tables[history] = rng.dirichlet(np.ones(6)).tolist()
    step = _table_step(tables, 6)
    state = (np.full((1, 5, 1), -1.0),)
    lengths = [2, 3, 1, 4, 2]
    greedy_found = greedy(step, state, lengths, 0, 1, max_steps=6)
    beam_found = beam_search(step, state, lengths, 0, 1, SearchOptions(beam=1, max_steps=6))
    assert [[h] for h in greedy_found] == beam_found
    cut = greedy(step, state, lengths, 0, 1, max_steps=1)
    assert all(len(h.tokens) <= 1 for h in cut) and any(not h.finished for h in cut)


def test_length_penalty_and_options() -> None:
    assert length_normalised(-6.0, 7, 0.0) == -6.0
    assert length_normalised(-6.0, 7, 1.0) == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="beam width 0"):
        SearchOptions(beam=0)
    with pytest.raises(ValueError, match="nbest 3"):
        SearchOptions(beam=2, nbest=3)
    assert SearchOptions().steps_for(7) == 24 and SearchOptions(max_steps=5).steps_for(7) == 5


def test_words_finish_at_their_own_step_and_leave_the_batch() -> None:
    calls = []

    def step(previous, state, owner):
        calls.append(owner.tolist())
        log_probs = np.log(np.full((len(previous), 3), 1e-3))
        log_probs[:, 2] = np.log(0.998)  # always "2"...
        log_probs[owner == 0, 1] = 0.0  # ...but word 0 ends at once
        return log_probs, state

    words = [WordGreedy(0, 1, 4), WordBeam(0, 1, 2, SearchOptions(beam=2))]
    found = search(step, (np.zeros((1, 2, 1)),), words)
    assert calls[0] == [0, 1] and all(0 not in c for c in calls[1:])
    assert found[0][0].tokens == () and found[0][0].finished
    assert found[1][0].tokens == (2, 2) and not found[1][0].finished


def test_training_writes_a_run_whose_test_words_are_the_test_split(tmp_path: Path) -> None:
    config = Seq2SeqTrainConfig(
        out=tmp_path / "run",
        limit=300,
        epochs=2,
        embedding=8,
        encoder_hidden=8,
        hidden=16,
        batch_size=64,
        threads=1,
    )
    metrics = train_seq2seq(config)
    run = tmp_path / "run"
    for name in ("checkpoint.pt", "metrics.json", "curves.png", "attention.png", TEST_WORDS_FILE):
        assert (run / name).is_file(), name
    data, _ = load_g2p(limit=300)
    assert (run / TEST_WORDS_FILE).read_text().split() == list(data.test)
    saved = json.loads((run / "metrics.json").read_text())
    assert set(saved["test"]) == {"greedy", "beam_4"} and saved["test"]["greedy"]["words"] == len(data.test)
    assert saved["epochs"] == 2 and len(saved["history"]) == 2 and metrics["parameters"] > 0
    assert saved["train_cpu_seconds"] > 0 and "before" in saved["load_average_1min"]
    model = from_payload(torch.load(run / CHECKPOINT_FILE, map_location="cpu", weights_only=True))
    samples = saved["test_samples"]
    again = decode_words(model, Tokens(data.letters, data.phonemes), [s["word"] for s in samples])
    assert [" ".join(found[0].output) for found in again] == [s["greedy"] for s in samples]


def _tiny_run(out: Path, **overrides) -> Seq2SeqTrainConfig:
    settings = dict(limit=300, epochs=2, embedding=8, encoder_hidden=8, hidden=16, batch_size=64, threads=1)
    return Seq2SeqTrainConfig(out=out, **{**settings, **overrides})


def test_bf16_autocast_trains_nearly_as_float32_does_and_is_told_apart(tmp_path: Path) -> None:
    assert _tiny_run(tmp_path, bf16=False).autocast is False
    assert _tiny_run(tmp_path, bf16=True).autocast is True
    losses = {}
    for bf16 in (False, True):
        metrics = train_seq2seq(_tiny_run(tmp_path / f"bf16-{bf16}", bf16=bf16, epochs=1))
        losses[bf16] = metrics["history"][0]["train_loss"]
        assert metrics["bf16_autocast"] is bf16
    # The same seed and batches: bfloat16 matmuls move the loss a little, never far.
    assert losses[True] != losses[False] and abs(losses[True] - losses[False]) < 0.05 * losses[False]


def test_a_moving_average_of_the_weights_is_what_validation_judges_and_the_checkpoint_keeps(
    tmp_path: Path,
) -> None:
    saved = {}
    for ema in (0.0, 0.9):
        out = tmp_path / f"ema-{ema}"
        metrics = train_seq2seq(_tiny_run(out, ema=ema, epochs=3, lr=1e-2))
        model = from_payload(torch.load(out / CHECKPOINT_FILE, map_location="cpu", weights_only=True))
        data, _ = load_g2p(limit=300)
        tokens = Tokens(data.letters, data.phonemes)
        outputs = [found[0].output for found in decode_words(model, tokens, list(data.validation))]
        best = min(h["validation_wer_percent"] for h in metrics["history"])
        assert error_rates(outputs, list(data.validation.values())).as_percent()["wer_percent"] == best
        saved[ema] = model.state_dict()
    assert any(not torch.equal(saved[0.0][k], saved[0.9][k]) for k in saved[0.0])
