"""`make demo`: train a JapaneseVowels GRU with the `seqserve train` defaults and print its test accuracy."""

from __future__ import annotations

import logging
from pathlib import Path

RUN_DIR = Path("runs/demo-jv-gru")


def main() -> None:
    from seqserve.training.loop import TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics = train(TrainConfig(out=RUN_DIR, dataset="japanese_vowels", cell="gru")).metrics
    print(
        f"JapaneseVowels GRU: test accuracy {metrics['test_accuracy']:.4f} on {metrics['sizes']['test']} "
        f"utterances, trained in {metrics['train_seconds']:.1f} s ({metrics['epochs']} epochs); run folder "
        f"{RUN_DIR}/ (checkpoint.pt, metrics.json, plots)"
    )


if __name__ == "__main__":
    main()
