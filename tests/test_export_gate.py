"""The int8 gate's statistics (convert/gate.py), the mixed-precision search's stopping rule
(convert/search.py), and that what edgecls.json says stayed float is what the files compute in float."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecls.bundle import MANIFEST
from edgecls.convert import gate, search
from edgecls.metrics import (agreement_count, agreement_text, delta_text, difference_interval, flips, flips_text,
                             paired_drop, wilson_interval)

from conftest import NEAREST, cli


def _pairs(n: int, lost: int, gained: int, float_wrong: int = 0):
    """Correctness of float and int8 on n photos: `lost` photos only float gets right, `gained` only int8."""
    ref, new = np.ones(n, bool), np.ones(n, bool)
    new[:lost] = False
    ref[lost:lost + gained] = False
    ref[lost + gained:lost + gained + float_wrong] = new[lost + gained:lost + gained + float_wrong] = False
    return ref, new


def _agreement(n: int, flips: int):
    """Agreement with float on n held-out photos, `flips` of them answered differently by int8."""
    a = np.zeros(n, int)
    b = a.copy()
    b[:flips] = 1
    return {**agreement_count(a, b), "reference": "tflite-float", "split": "test", "heldout": True}


def _judge(drop, agreement, max_drop=1.0, min_agreement=97.0, finite=True):
    return gate.judge(gate.Evidence("tflite-int8", finite, drop, agreement), max_drop, min_agreement)


def test_two_flips_of_49_pass_and_say_why():
    """The 2-class user's case: 2 of 49 test photos flipped ("−4.08 pp"), so int8 agrees with float on 47 of the
    same 49 held-out photos (95.9%): below the 97% floor, but within chance of it — passed, with notes that say so.
    A plain threshold on the same count would refuse it for two photos."""
    d = paired_drop(*_pairs(49, lost=2, gained=0, float_wrong=5))
    assert d["drop_pp"] == pytest.approx(4.082, abs=1e-3) and d["photo_pp"] == pytest.approx(2.041, abs=1e-3)
    assert d["ci95_pp"][0] < 1.0 < d["ci95_pp"][1]
    held_out = _agreement(49, 2)
    v = _judge(d, held_out)
    assert v.passed, v.failures
    assert any("49 test photos: one photo is 2.04 pp" in n and "agreement with float on the same photos" in n
               for n in v.notes)
    assert any("drop" in n and "within chance" in n for n in v.notes)
    assert any("agrees with tflite-float on 95.9% of 49 test photos (47/49), below the 97% limit but within chance"
               in n for n in v.notes), v.notes
    counted = gate.judge(gate.Evidence("tflite-int8", True, d, held_out, agreement_rule="count"), 1.0, 97.0)
    assert not counted.passed


def test_a_collapse_is_refused_even_on_a_small_split():
    """Per-tensor ONNX int8 fell to 41.6% here: on 49 photos that is ~26 lost answers."""
    d = paired_drop(*_pairs(49, lost=26, gained=1, float_wrong=3))
    v = _judge(d, _agreement(49, 27))
    assert not v.passed
    assert any("loses" in f and "95% interval" in f for f in v.failures)
    assert any("of 49 test photos (22/49), below the 97% limit beyond chance" in f for f in v.failures), v.failures
    assert not _judge(d, _agreement(49, 0)).passed   # the drop alone refuses it


def test_a_significant_drop_is_refused_and_a_noisy_one_is_not():
    big = paired_drop(*_pairs(310, lost=15, gained=2))
    assert big["ci95_pp"][0] > 1.0
    assert not _judge(big, _agreement(310, 2)).passed        # on the drop alone
    noisy = paired_drop(*_pairs(310, lost=5, gained=1))          # 1.29 pp, interval reaches below 1 pp
    assert noisy["drop_pp"] > 1.0 and noisy["ci95_pp"][0] < 1.0
    v = _judge(noisy, _agreement(310, 6))
    assert v.passed and any("above the 1 pp limit but within chance, so not refused" in n for n in v.notes)


def test_low_agreement_alone_is_refused():
    """Judged on the held-out photos: 20 of 310 flipped (93.5%) is shown below 97% and refused, whatever the drop."""
    d = paired_drop(*_pairs(310, lost=3, gained=3))
    v = _judge(d, _agreement(310, 20))
    assert not v.passed and v.failures == [
        "tflite-int8 agrees with tflite-float on 93.5% of 310 test photos (290/310), below the 97% limit beyond "
        "chance (exact binomial, one-sided 2.5%)"]
    assert _judge(d, _agreement(310, 8)).passed        # 97.4%


def test_the_two_sample_test_is_fishers_exact_tail():
    """metrics.shown_below_measured (the canary's test against the export's own count): the hypergeometric tail,
    summed directly here."""
    from math import comb

    from edgecls.metrics import hypergeometric_sf, shown_below_measured

    for x, total, marked, drawn in ((1, 130, 1, 40), (5, 130, 5, 40), (2, 350, 5, 40), (0, 20, 3, 5), (4, 20, 3, 5)):
        direct = sum(comb(marked, i) * comb(total - marked, drawn - i) for i in range(x, min(marked, drawn) + 1))
        assert hypergeometric_sf(x, total, marked, drawn) == pytest.approx(direct / comb(total, drawn), rel=1e-9)
    assert not shown_below_measured(39, 40, 90, 90) and shown_below_measured(35, 40, 90, 90)
    assert not shown_below_measured(38, 40, 307, 310) and shown_below_measured(36, 40, 307, 310)
    assert not shown_below_measured(40, 40, 0, 90)     # no failure among the n: never shown below


def test_a_missed_target_needs_evidence():
    """metrics.shown_below, what auto-selection's "missed the target" and the validation split's agreement floor
    rest on: the exact binomial tail, not Wilson's interval (too tight there)."""
    from math import comb

    from edgecls.metrics import binomial_cdf, shown_below

    for k, n, p in ((108, 110, 0.995), (40, 44, 0.97), (3, 10, 0.5), (0, 5, 0.9)):
        direct = sum(comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))
        assert binomial_cdf(k, n, p) == pytest.approx(direct, rel=1e-9)
    # 108 of 110 is within chance of 99.5% (a model at 99.5% does that or worse 10.5% of the time); 107 is not
    assert binomial_cdf(108, 110, 0.995) == pytest.approx(0.1054, abs=1e-3)
    assert not shown_below(108, 110, 0.995) and shown_below(107, 110, 0.995)
    assert wilson_interval(108, 110)[1] < 0.995          # why not Wilson: it would call 108/110 a miss
    # the validation split's floor: 2 flips of 44 (95.5%) do not fail 97%; a collapse does
    d = paired_drop(*_pairs(44, lost=1, gained=0))
    val = dict(max_drop=1.0, min_agreement=97.0)
    assert gate.judge(gate.Evidence("tflite-int8", True, d, _agreement(44, 2), split="val",
                                    agreement_rule="shown"), **val).passed
    assert not gate.judge(gate.Evidence("tflite-int8", True, d, _agreement(44, 2), agreement_rule="count"),
                          **val).passed   # counted
    assert not gate.judge(gate.Evidence("tflite-int8", True, d, _agreement(44, 8), split="val",
                                        agreement_rule="shown"), **val).passed


def test_non_finite_outputs_fail_the_gate():
    d = paired_drop(*_pairs(50, 0, 0))
    assert not _judge(d, _agreement(100, 0), finite=False).passed
    nan_float = gate.judge(gate.Evidence("tflite-float", max_abs_diff=float("nan")), 1.0, 97.0)
    assert not nan_float.passed and "differs from the Keras model" in nan_float.failures[0]
    assert gate.judge(gate.Evidence("tflite-float", max_abs_diff=1e-7), 1.0, 97.0).passed


def test_intervals_are_honest_at_the_edges():
    assert wilson_interval(49, 49)[0] < 1.0 and wilson_interval(0, 10)[1] > 0.0
    zero = paired_drop(*_pairs(49, 0, 0))
    assert zero["drop_pp"] == 0 and zero["ci95_pp"][0] < 0 < zero["ci95_pp"][1]   # no flips ≠ certainty


def test_two_rates_on_other_photos_and_the_tables_text():
    """difference_interval is Newcombe's method 10 (his worked example: 56/70 vs 48/80 gives p1 - p2 in 0.0524 to
    0.3339); agreement_text is what every table prints."""
    lo, hi = difference_interval(56, 70, 48, 80)   # p_b - p_a: the example's interval, negated
    assert abs(lo + 0.3339) < 5e-4 and abs(hi + 0.0524) < 5e-4
    lo, hi = difference_interval(289, 330, 288, 330)   # the recipe table: one photo of 330 is noise
    assert lo < 0 < hi
    assert agreement_text(58, 60) == "96.67% (58/60)"
    assert agreement_text(108, 110, interval=True) == "98.18% (108/110; 93.6–99.5)"
    assert agreement_text(58, 60, decimals=1) == "96.7% (58/60)"
    for nothing in (0.0, -0.0):   # no change reads +0.00, never "-0.00"
        assert delta_text({"drop_pp": nothing, "ci95_pp": [-1.8, 1.8]}) == "+0.00 (-1.8 to +1.8)"


def test_flips_say_which_changed_answers_were_near_ties_of_float_and_who_was_right():
    """metrics.flips on four photos: a near-tie float got wrong (int8 right), a sure answer kept, a sure answer
    float got right and int8 lost, a three-way tie float got wrong (int8 right)."""
    ref = np.array([[0.5, 0.45, 0.05], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.34, 0.33, 0.33]])
    new = np.array([[0.4, 0.55, 0.05], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])
    f = flips(ref, new, np.array([1, 0, 1, 2]))
    assert f == {"flips": 3, "near_ties": 2, "near_tie": 0.2, "reference_wrong": 2, "now_right": 2,
                 "reference_margins": [0.01, 0.05, 0.5]}
    assert flips_text(f) == ("3 answers changed: 2 near-ties of the reference (margin < 0.2; margins 0.01, 0.05, "
                             "0.50), the reference wrong on 2, now right on 2")
    assert flips_text(flips(ref, ref, np.zeros(4, int))) == "no answer changed"


def _fake_search(agreements, ratios, target=0.99, max_ratio=0.65, max_ops=6):
    ranked = [(f"op{i}", 3.0 - i * 0.1) for i in range(10)]
    built = []

    def build(ops):
        built.append(list(ops))
        return Path(f"step{len(ops)}")

    def score(path):
        return agreements[int(path.name[4:])], 1000

    def timed(paths):   # all built steps are timed together, once
        timed_calls.append(len(paths))
        return [ratios[int(p.name[4:])] for p in paths]

    timed_calls = []
    result = search.choose_float_ops(ranked, build, score, timed, target, max_ratio, max_ops)
    assert timed_calls == [len(built)]
    return result, built


def test_search_stops_at_the_first_step_that_reaches_the_target():
    r, built = _fake_search([960, 975, 992, 995, 999, 999, 999], [0.6] * 7)
    assert r["reached"] and r["chosen"] == 2 and len(r["steps"]) == 3 and built[-1] == ["op0", "op1"]
    assert r["steps"][2].added == "op1" and r["path"] == Path("step2")


def test_search_keeps_the_best_step_within_the_latency_budget():
    # Step 4 reaches the target but is over budget, and so is step 3: step 2 is kept.
    r, _ = _fake_search([960, 975, 985, 989, 999], [0.60, 0.62, 0.64, 0.80, 0.9])
    assert not r["reached"] and r["chosen"] == 2 and len(r["steps"]) == 5
    # Where the all-int8 model itself misses the budget, float ops may not make it slower still.
    r, _ = _fake_search([960, 992], [0.75, 0.76])
    assert r["reached"] and r["chosen"] == 1 and r["budget"] == pytest.approx(0.78)
    # Nothing reaches the target: the best agreement, fewest ops on a tie.
    r, _ = _fake_search([960, 970, 970, 965, 940, 930, 920], [0.6] * 7)
    assert not r["reached"] and r["chosen"] == 1 and len(r["steps"]) == 7


def _float_outputs(tflite_file: Path) -> dict[str, str]:
    """TFLite op → its output dtype, for the compute ops (not the (de)quantize ops around float islands)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tflite_file))
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    return {tensors[o["outputs"][0]]["name"]: np.dtype(tensors[o["outputs"][0]]["dtype"]).name
            for o in it._get_ops_details() if o["op_name"] not in ("QUANTIZE", "DEQUANTIZE")}


def test_recorded_float_ops_are_the_float_ops_in_the_files(digits_bundle):
    import onnx

    meta = json.loads((digits_bundle / MANIFEST).read_text())
    art = meta["artifacts"]["tflite-int8"]
    s = art["search"]
    kept = s["steps"][s["chosen"]]
    assert art["float_ops"] == kept["float_ops"] and len(art["float_ops"]) == s["chosen"]
    if s["reached"]:   # the search stopped at the first step that reached the target
        assert s["chosen"] == len(s["steps"]) - 1
        assert all(st["agreement"] < s["target_agreement"] for st in s["steps"][:-1])
    dtypes = _float_outputs(digits_bundle / art["file"])
    assert sorted(n for n, d in dtypes.items() if d == "float32") == sorted(art["float_ops"])
    graph = onnx.load(str(digits_bundle / meta["artifacts"]["onnx-int8"]["file"])).graph
    consts = {t.name for t in graph.initializer}
    weighted = {n.name: n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    float_weights = sorted(k for k, n in weighted.items() if len(n.input) > 1 and n.input[1] in consts)
    assert float_weights == sorted(k for k in meta["artifacts"]["onnx-int8"]["float_ops"] if k in weighted)
    assert meta["report"]["all_images"] > meta["report"]["images"]
    m = art["metrics"]
    assert m["agreement_all"]["images"] == meta["report"]["all_images"]
    assert m["drop"]["n"] == meta["report"]["images"] and m["verdict"]["passed"]
    # The gate's agreement is on the held-out photos, against the float twin; all images are only shown, labelled
    h = m["agreement_heldout"]
    assert (h["images"], h["split"], h["heldout"], h["reference"]) == (meta["report"]["images"], "test", True,
                                                                       "tflite-float")
    assert m["agreement"] == pytest.approx(h["rate"], abs=1e-5) and m["reference"] == "tflite-float"
    assert m["agreement_all"]["reference"] == "tflite-float" and "training" in m["agreement_all"]["photos"]
    # The search scored on the validation split, never on the held-out test photos, and says so
    assert (s["scored_on"], s["heldout"], s["reference"]) == ("val", False, "keras-float")


def test_a_zero_target_stops_the_search_at_all_int8(tiny_run, tmp_path):
    out = tmp_path / "b"
    r = cli("export", tiny_run, "--out", out, "--formats", "tflite", "--int8-method", "ptq", "--calib-samples", "8",
            "--target-agreement", "0", "--max-drop", "100", "--min-agreement", "0", *NEAREST)
    assert r.returncode == 0, r.stderr[-2000:]
    art = json.loads((out / MANIFEST).read_text())["artifacts"]["tflite-int8"]
    assert art["search"]["chosen"] == 0 and len(art["search"]["steps"]) == 1 and art["float_ops"] == []
    assert all(d != "float32" for d in _float_outputs(out / art["file"]).values())
    assert (out / "tflite-int8_search.png").stat().st_size > 1000 and "Mixed-precision search" in (out / "report.md").read_text()


def test_report_escapes_class_names(tmp_path):
    """Class names come from folder names: report.md and report.html must show them, never run them."""
    from edgecls.convert import report
    from edgecls.convert.gate import Verdict
    from edgecls.convert.measure import Measurement

    labels = ["<script>alert(1)</script>", "cat & dog"]
    row = {"accuracy": 0.5, "accuracy_ci95": [0.2, 0.8], "latency_ms": 1.0, "confusion": [[1, 0], [1, 0]],
           "per_class_delta": {labels[0]: -100.0, labels[1]: 0.0}, "agreement": 0.5,   # the worst class is in both
           "agreement_heldout": _agreement(2, 1), "reference": "tflite-float"}
    rows = {"keras-float": {**row, "per_class_delta": None, "agreement": None},
            "tflite-int8": {**row, "drop": paired_drop(*_pairs(2, 1, 0)), "agreement_all": _agreement(2, 1),
                            "verdict": {"passed": True, "failures": [], "notes": []}}}
    gate_block = {"passed": True, "max_drop_pp": 1.0, "min_agreement_pct": 97.0, "failures": [], "notes": [],
                  "message": "ok"}
    result = Measurement(rows, {"tflite-int8": Verdict(True)}, gate_block, {"tflite-int8": 1000}, "test", 2, 2, "keras-float")
    manifest = {"artifacts": {"tflite-int8": {"method": "ptq", "float_ops": []}}, "default_artifact": "tflite-int8"}
    report.write(tmp_path, manifest, result, labels)
    for name in ("report.md", "report.html"):
        text = (tmp_path / name).read_text()
        assert "<script>" not in text and "&lt;script&gt;" in text, name


def test_a_run_without_a_test_split_says_its_agreement_is_not_held_out(tmp_path):
    """Measured on val (no test split): every table and the gate say those photos were used by the search, never
    "held-out" (convert/measure.py: photos_label)."""
    from io import StringIO

    from rich.console import Console

    from edgecls.convert import report
    from edgecls.convert.gate import Verdict
    from edgecls.convert.measure import Measurement

    labels = ["a", "b"]
    seen = {**_agreement(44, 1), "split": "val", "heldout": False}
    row = {"accuracy": 0.5, "accuracy_ci95": [0.2, 0.8], "latency_ms": 1.0, "confusion": [[1, 0], [1, 0]],
           "per_class_delta": {"a": 0.0, "b": 0.0}, "agreement": seen["rate"], "agreement_heldout": seen,
           "reference": "tflite-float"}
    rows = {"keras-float": {**row, "per_class_delta": None, "agreement": None, "agreement_heldout": None,
                            "reference": None},
            "tflite-int8": {**row, "drop": paired_drop(*_pairs(44, 1, 0)), "agreement_all": _agreement(300, 2),
                            "verdict": {"passed": True, "failures": [], "notes": []}}}
    gate_block = {"passed": True, "max_drop_pp": 1.0, "min_agreement_pct": 97.0, "failures": [], "notes": [],
                  "message": "ok"}
    result = Measurement(rows, {"tflite-int8": Verdict(True)}, gate_block, {"tflite-int8": 1000}, "val", 44, 300,
                    "keras-float")
    report.write(tmp_path, {"artifacts": {"tflite-int8": {"method": "ptq", "float_ops": []}},
                            "default_artifact": "tflite-int8"}, result, labels)
    md = (tmp_path / "report.md").read_text()
    assert "44 val photos (used by the search: not held out)" in md and "agreement, val, not held out" in md
    assert "held-out" not in md.replace("not held out", "")
    buf = StringIO()
    Console(file=buf, width=300).print(result.table("run"))
    assert "val photos (used by the search: not held out)" in buf.getvalue()
    v = gate.judge(gate.Evidence("tflite-int8", True, rows["tflite-int8"]["drop"], _agreement(44, 6) | {"split": "val"},
                                 split="val"), 1.0, 97.0)
    assert not v.passed and "of 44 val photos" in v.failures[0]
