import json
from pathlib import Path

import pytest
import torch

from seqserve.training.datasets import load_dataset
from seqserve.training.loop import CHECKPOINT_FILE, METRICS_FILE, TrainConfig, predict, train
from seqserve.training.model import load_checkpoint

CHANCE = 1 / 9


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory):
    config = TrainConfig(
        out=tmp_path_factory.mktemp("runs") / "jv", dataset="japanese_vowels", hidden=32, epochs=6
    )
    return config, train(config, progress=False)


def test_short_seeded_run_beats_chance_by_a_margin(short_run) -> None:
    _, result = short_run
    metrics = result.metrics
    assert metrics["test_accuracy"] > CHANCE + 0.5
    assert metrics["epochs"] <= 6 and 1 <= metrics["best_epoch"] <= metrics["epochs"]
    assert sum(map(sum, metrics["confusion_matrix"])) == 370
    assert set(metrics["per_class"]) == {str(i) for i in range(1, 10)}
    assert metrics["parameters"] == sum(
        p.numel() for p in load_checkpoint(str(result.run_dir / CHECKPOINT_FILE))[0].parameters()
    )


def test_run_folder_holds_checkpoint_metrics_and_plots(short_run) -> None:
    config, result = short_run
    names = {p.name for p in result.run_dir.iterdir()}
    assert {CHECKPOINT_FILE, METRICS_FILE, "curves.png", "confusion.png", "gradient_norms.png"} <= names
    written = json.loads((result.run_dir / METRICS_FILE).read_text())
    assert written["test_accuracy"] == result.metrics["test_accuracy"]
    assert written["config"]["hidden"] == 32 and written["config"]["out"] == str(config.out)


def test_checkpoint_round_trip_under_weights_only(short_run) -> None:
    _, result = short_run
    path = result.run_dir / CHECKPOINT_FILE
    payload = torch.load(path, weights_only=True)
    assert payload["data"] == {"dataset": "japanese_vowels", "data_file": None, "seed": 0}
    assert payload["training"]["test_accuracy"] == result.metrics["test_accuracy"]
    model, loaded = load_checkpoint(str(path))
    assert loaded["labels"] == [str(i) for i in range(1, 10)]
    assert model.config.hidden == 32 and model.config.layer_norm
    truth, predicted = predict(model, load_dataset(**payload["data"]).test)
    assert (truth == predicted).mean() == pytest.approx(result.metrics["test_accuracy"])


def test_same_config_gives_same_weights(short_run, tmp_path: Path) -> None:
    config, result = short_run
    again = train(TrainConfig(**{**config.__dict__, "out": tmp_path / "again", "epochs": 2}), progress=False)
    twice = train(TrainConfig(**{**config.__dict__, "out": tmp_path / "twice", "epochs": 2}), progress=False)
    first = torch.load(again.run_dir / CHECKPOINT_FILE, weights_only=True)["state_dict"]
    second = torch.load(twice.run_dir / CHECKPOINT_FILE, weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_many_to_many_accuracy_is_per_step(tmp_path: Path) -> None:
    config = TrainConfig(
        out=tmp_path / "bms", dataset="basic_motions_stream", hidden=8, epochs=1, batch_size=64, lr=1e-2
    )
    metrics = train(config, progress=False).metrics
    assert metrics["accuracy_unit"] == "step"
    test_steps = sum(len(s) for s in load_dataset("basic_motions_stream").test.sequences)
    assert sum(map(sum, metrics["confusion_matrix"])) == test_steps
