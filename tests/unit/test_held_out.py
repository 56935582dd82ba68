"""covidseg.evaluation.held_out: the per-site breakdown of the test-set tables (make experiment's results.md)."""
from covidseg.evaluation.held_out import by_site_markdown
from covidseg.evaluation.metrics import CaseMetrics


def case(dice: float, empty: bool = False) -> CaseMetrics:
    return CaseMetrics(dice=dice, nsd=dice, hd95_mm=1.0, volume_error_ml=0.0, reference_ml=0.0 if empty else 5.0,
                       predicted_ml=1.0, reference_empty=empty, prediction_empty=False)


def test_each_site_gets_its_own_mean_and_paired_difference():
    site_of = {f"0/c{i}": "AB"[i % 2] for i in range(12)}
    site_of["0/free"] = "A"
    control = {key: case(0.5) for key in site_of}
    moe = {key: case(0.5 + (0.1 + 0.001 * i if site_of[key] == "B" else 0.0))
           for i, key in enumerate(site_of)}
    control["0/free"] = moe["0/free"] = case(0.0, empty=True)  # lesion-free: left out of the Dice
    lines = by_site_markdown({"control": control, "moe": moe}, site_of)
    table = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    assert "| site A | site B |" in table["model"]
    assert "0.5000 [0.5000, 0.5000] (n 6)" in table["control"]  # 6 cases with a lesion per site
    assert table["moe"].count("(n 6)") == 2
    a_cell, b_cell = (cell.strip("| ") for cell in table["moe - control"].split(" | ")[1:3])
    assert a_cell.startswith("+0.000") and not a_cell.endswith("*")
    assert b_cell.startswith("+0.10") and b_cell.endswith("*")  # higher on every case of site B: significant


def test_one_site_gives_no_breakdown():
    scores = {"moe": {"0/a": case(0.7)}, "control": {"0/a": case(0.6)}}
    assert by_site_markdown(scores, {"0/a": "A"}) == []
    assert by_site_markdown(scores, {}) == []
