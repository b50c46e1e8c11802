"""Rebuild `taylor.csv` and `m1_yearly_dataset.tsf` here from the two wheels (run once; nothing imports it).

    pip download --no-deps pmdarima==2.1.1 aeon==1.6.0
    unzip -o pmdarima-2.1.1-*.whl 'pmdarima/datasets/taylor.py'
    unzip -o aeon-1.6.0-py3-none-any.whl 'aeon/datasets/data/m1_yearly_dataset/*'
    python data/forecast/prepare.py pmdarima/datasets/taylor.py aeon/datasets/data/m1_yearly_dataset

pmdarima keeps the Taylor values as a list literal in the code of `load_taylor`; it is read with `ast` (the
module imports pandas and pmdarima itself, so it is never executed). The timestamps are the data's own
description: half-hourly from Monday 2000-06-05 00:00, 4,032 readings, to Sunday 2000-08-27 23:30.
"""

from __future__ import annotations

import ast
import shutil
import sys
from datetime import datetime, timedelta
from pathlib import Path

START = datetime(2000, 6, 5)
STEP = timedelta(minutes=30)
POINTS = 4032


def taylor_values(source: Path) -> list[float]:
    tree = ast.parse(source.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "array" and node.args:
            values = ast.literal_eval(node.args[0])
            if len(values) == POINTS:
                return [float(v) for v in values]
    raise SystemExit(f"{source}: no array literal of {POINTS} values")


def main(taylor: Path, m1_folder: Path) -> None:
    here = Path(__file__).resolve().parent
    lines = ["timestamp,value"]
    for i, value in enumerate(taylor_values(taylor)):
        lines.append(f"{(START + i * STEP).isoformat(timespec='minutes')},{value:g}")
    (here / "taylor.csv").write_text("\n".join(lines) + "\n")
    shutil.copyfile(m1_folder / "m1_yearly_dataset.tsf", here / "m1_yearly_dataset.tsf")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
