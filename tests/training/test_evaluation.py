import numpy as np

from seqserve.training.evaluation import classification_report


def test_report_values() -> None:
    truth = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 1])
    report = classification_report(truth, predicted, ["a", "b", "c"])
    assert report["accuracy"] == 0.6
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert report["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    assert report["per_class"]["b"]["precision"] == 0.5 and report["per_class"]["b"]["recall"] == 1.0
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "support": 1}
