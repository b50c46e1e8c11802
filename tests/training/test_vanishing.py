import json
from pathlib import Path

from seqserve.training.vanishing import StudyConfig, run_study, study_steps


def test_quick_study_writes_results_details_and_plots(tmp_path: Path) -> None:
    config = StudyConfig(out=tmp_path, lengths=[5, 8], quick=True)
    steps: list[str] = []
    study = run_study(config, on_step=steps.append)
    assert len(steps) == study_steps(config) == 12 and steps[0] == "rnn T=5"
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"rnn", "gru", "lstm"}
    assert all(set(by_length) == {"5", "8"} for by_length in results.values())
    assert results["gru"]["8"] == study.results["gru"][8]
    assert set(study.default_init) == {"gru", "lstm"} and study.chance == 0.25
    details = json.loads((tmp_path / "details.json").read_text())
    runs = {(run["name"], run["length"]): run for run in details["runs"]}
    assert len(runs) == 2 * 5 + 2  # five models per length, two exploding runs
    assert len(runs[("lstm", 8)]["probe_initial"]) == 8
    assert runs[("lstm", 8)]["chrono"] == 8 and runs[("lstm (default init)", 8)]["chrono"] == 0
    assert {p.name for p in tmp_path.glob("*.png")} == {
        "accuracy_vs_length.png",
        "gradient_through_time_init.png",
        "gradient_through_time_trained.png",
        "exploding_gradient_norms.png",
    }
