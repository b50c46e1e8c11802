"""One-off A/B tools: old code against new, one setting against another, side by side in one run on one
box. `make bench` uses none of them; bench/experiments/README.md says what each measures."""
