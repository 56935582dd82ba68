"""The held-out test set's comparison of models: what `make report` prints under "Test set".

Cases with a lesion and lesion-free cases are reported apart: on a lesion-free case Dice is 1 or 0 depending on a
single false-positive voxel, which would swing a mean over few cases. So:
- over the cases with a lesion: mean Dice, NSD and HD95, each with a 95% bootstrap confidence interval over cases
  (HD95 is undefined where a model predicts nothing: counted, left out of its mean);
- over the lesion-free cases: the false-positive volume (ml) and the number of cases with any false positive;
- paired differences of Dice on the cases with a lesion (the MoE against every other model, each other
  semi-supervised method against the control, control - fullres, ensemble - fullres; those whose models exist):
  mean, 95% bootstrap CI, Wilcoxon signed-rank p, and a verdict
  that says "no significant difference" whenever the CI contains 0 or p >= 0.05 (covidseg.evaluation.statistics).
"""
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from covidseg.evaluation.metrics import CaseMetrics
from covidseg.evaluation.statistics import Estimate, PairedDifference, mean_with_ci, paired_difference

# other semi-supervised methods of `make experiment` (covidseg.runs.methods), compared with the MoE and the control
OTHER_SEMI_SUPERVISED = ("moe_cps", "moe_site", "selftrain", "meanteacher")
COMPARISONS: Sequence[Tuple[str, str]] = (
    (("moe", "control"), ("moe", "fullres")) + tuple(("moe", m) for m in OTHER_SEMI_SUPERVISED)
    + tuple((m, "control") for m in OTHER_SEMI_SUPERVISED) + (("control", "fullres"), ("ensemble", "fullres")))


@dataclass(frozen=True)
class HeldOutSummary:
    lesion_cases: int
    dice: Estimate
    nsd: Estimate
    hd95_mm: Estimate
    hd95_undefined: int
    lesion_free_cases: int
    false_positive_ml: Estimate
    cases_with_false_positives: int


def lesion_cases(scores: Dict[str, CaseMetrics]) -> List[str]:
    return sorted(case for case, m in scores.items() if not m.reference_empty)


def summarise(scores: Dict[str, CaseMetrics]) -> HeldOutSummary:
    with_lesion = [scores[c] for c in lesion_cases(scores)]
    lesion_free = [m for m in scores.values() if m.reference_empty]
    return HeldOutSummary(
        lesion_cases=len(with_lesion), dice=mean_with_ci([m.dice for m in with_lesion]),
        nsd=mean_with_ci([m.nsd for m in with_lesion]), hd95_mm=mean_with_ci([m.hd95_mm for m in with_lesion]),
        hd95_undefined=sum(m.hd95_mm != m.hd95_mm for m in with_lesion),  # NaN
        lesion_free_cases=len(lesion_free), false_positive_ml=mean_with_ci([m.predicted_ml for m in lesion_free]),
        cases_with_false_positives=sum(not m.prediction_empty for m in lesion_free))


def compare(scores_a: Dict[str, CaseMetrics], scores_b: Dict[str, CaseMetrics]) -> PairedDifference:
    """Dice of a - Dice of b on the cases with a lesion that both models segmented."""
    cases = sorted(set(lesion_cases(scores_a)) & set(lesion_cases(scores_b)))
    return paired_difference([scores_a[c].dice for c in cases], [scores_b[c].dice for c in cases])


def comparisons(scores: Dict[str, Dict[str, CaseMetrics]]) -> Dict[Tuple[str, str], PairedDifference]:
    return {(a, b): compare(scores[a], scores[b]) for a, b in COMPARISONS if a in scores and b in scores}


def budget_warnings(pairs: Sequence[Tuple[str, str]], budgets: Mapping[str, str]) -> List[str]:
    """A warning line for each compared pair whose models were trained with different budgets."""
    return [f"- WARNING: {a} and {b} were trained with different budgets ({a}: {budgets[a]}; {b}: {budgets[b]}): "
            f"their difference is not the method's alone" for a, b in pairs
            if a in budgets and b in budgets and budgets[a] != budgets[b]]


def site_subset(scores: Dict[str, CaseMetrics], site_of: Mapping[str, str], site: str) -> Dict[str, CaseMetrics]:
    return {case: m for case, m in scores.items() if site_of.get(case) == site}


def by_site_markdown(scores: Dict[str, Dict[str, CaseMetrics]], site_of: Mapping[str, str]) -> List[str]:
    """Dice over the cases with a lesion, per scanner site: each model's mean [CI] (n), then the paired differences
    of COMPARISONS on each site's cases. Empty with fewer than two sites."""
    sites = sorted({site_of[c] for s in scores.values() for c in s if c in site_of})
    if len(sites) < 2:
        return []
    header = "| " + " | ".join(f"site {site}" for site in sites) + " |"
    rule = "|---|" + "---|" * len(sites)
    lines = ["Dice per site (cases with a lesion; 95% bootstrap CI, n cases):", "", "| model " + header, rule]
    for name, s in scores.items():
        cells = []
        for site in sites:
            subset = site_subset(s, site_of, site)
            estimate = mean_with_ci([subset[c].dice for c in lesion_cases(subset)])
            cells.append(f"{estimate} (n {estimate.n})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    pairs = [(a, b) for a, b in COMPARISONS if a in scores and b in scores]
    if pairs:
        lines += ["", "Paired differences of Dice per site (95% bootstrap CI, Wilcoxon p):", "",
                  "| comparison " + header, rule]
        for a, b in pairs:
            cells = []
            for site in sites:
                d = compare(site_subset(scores[a], site_of, site), site_subset(scores[b], site_of, site))
                cells.append("n/a" if d.n == 0 else
                             f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}], p {d.p_wilcoxon:.2g}"
                             + (" *" if d.significant else ""))
            lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
        lines += ["", "*: significant (CI excludes 0 and p < 0.05)."]
    return lines


def markdown(scores: Dict[str, Dict[str, CaseMetrics]], tolerance_mm: float,
             budgets: Optional[Mapping[str, str]] = None) -> List[str]:
    """The test-set section of report.md: one table per model summary, one for the paired differences (with a
    warning for each pair trained with different budgets: model -> its budget, as its settings.json says)."""
    summaries = {name: summarise(s) for name, s in scores.items()}
    lines = [f"| model | cases with lesion | Dice [95% CI] | NSD@{tolerance_mm:g}mm [95% CI] | HD95 mm [95% CI] | "
             f"HD95 undefined | lesion-free cases | false-positive ml [95% CI] | lesion-free cases with any FP |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        lines.append(f"| {name} | {s.lesion_cases} | {s.dice} | {s.nsd} | {s.hd95_mm} | {s.hd95_undefined} | "
                     f"{s.lesion_free_cases} | {s.false_positive_ml} | {s.cases_with_false_positives} |")
    differences = comparisons(scores)
    if differences:
        lines += ["", "Paired differences of Dice on the same cases with a lesion (95% bootstrap CI over cases; "
                      "Wilcoxon signed-rank test):", "",
                  "| comparison | cases | mean difference [95% CI] | Wilcoxon p | verdict |", "|---|---|---|---|---|"]
        for (a, b), d in differences.items():
            lines.append(f"| {a} - {b} | {d.n} | {d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}] | {d.p_wilcoxon:.3g} | "
                         f"{d.verdict()} |")
        warnings = budget_warnings(list(differences), budgets or {})
        if warnings:
            lines += [""] + warnings
    return lines
