"""report.md and report.html: the parity table a human reads, the gate's reasoning, the mixed-precision search
(a table and a plot), per-class deltas and one confusion matrix per model. Class names are escaped
everywhere: they come from folder names."""
from __future__ import annotations

import html
from pathlib import Path

from edgecls.convert.measure import count_text
from edgecls.device.evaluate import worst_class_delta
from edgecls.metrics import agreement_text, delta_text
from edgecls.fsutil import atomic_write_text


def header(split: str) -> list[str]:
    """The report table's columns; the agreement column says whose photos it counts (convert/measure.py)."""
    held = "held-out" if split == "test" else f"{split}, not held out"
    return ["model", "vs", "method", "float ops", "top-1 (95% CI)", "Δ top-1 pp (95% CI)", f"agreement, {held}",
            "agreement incl. training photos", "worst class Δ pp", "int8/float latency", "host ms", "size", "verdict"]


def _cells(key: str, r: dict, entry: dict, size: int, reference: str) -> list[str]:
    lo, hi = r["accuracy_ci95"]
    d, v = r.get("drop"), r.get("verdict")
    worst = worst_class_delta(r) if key != reference else None
    ops = entry.get("float_ops")
    return [key, r.get("reference") or "", entry.get("method", ""), "" if ops is None else str(len(ops)),
            f"{r['accuracy'] * 100:.1f}% ({lo * 100:.1f}–{hi * 100:.1f})",
            delta_text(d) if d else "", count_text(r.get("agreement_heldout")), count_text(r.get("agreement_all")),
            f"{worst[1]:+.1f} ({worst[0]})" if worst else "",
            f"{r['latency_ratio']:.2f}" if r.get("latency_ratio") else "",
            f"{r['latency_ms']:.2f}", f"{size / 1e6:.2f} MB" if size else "",
            "" if v is None else ("passed" if v["passed"] else "FAILED")]


def _search_lines(title: str, key: str, search: dict) -> list[str]:
    md = [f"### {title}: kept {search['chosen']} op(s) float "
          f"({'target reached' if search['reached'] else 'target not reached; best agreement within budget'})", "",
          f"Target agreement {search['target_agreement'] * 100:g}% with {search.get('reference', 'keras-float')} on "
          f"the {search['steps'][0]['images']} {search.get('scored_on', 'val')} photos the search scores on (not held "
          f"out: the test split stays for the verdict); latency budget "
          f"{search['budget']:.2f}× float (--max-latency-ratio {search['max_latency_ratio']:g}, or the all-int8 "
          f"model's own ratio where that is higher). ![search]({key}_search.png)", "",
          "| step | op kept float (added) | its int8 error (steps) | agreement | int8/float latency |",
          "|---|---|---|---|---|"]
    for i, s in enumerate(search["steps"]):
        mark = " **kept**" if i == search["chosen"] else ""
        md.append(f"| {i}{mark} | {html.escape(s['added'] or '— (all int8)')} | {s['error_steps'] or ''} | "
                  f"{agreement_text(s['agreed'], s['images'])} | {s['latency_ratio']:.2f} |")
    return md + [""]


def calibration_text(manifest: dict) -> str:
    """Which images calibrated int8 (edgecls.json export.calibration), in one sentence."""
    c = manifest.get("export", {}).get("calibration") or {}
    if c.get("source") == "folder":
        return (f"int8 calibrated on {c['images']} of the {c['found']} images in {c['path']} "
                f"(--calib; list sha256 {c['list_sha256'][:16]}…)")
    text = f"int8 calibrated on {c.get('images', '?')} training-split images"
    return text + rounding_text(manifest)


def rounding_text(manifest: dict) -> str:
    """How PTQ's weights were rounded (export.weight_rounding; per artifact weight_rounding), as a clause."""
    how = manifest.get("export", {}).get("weight_rounding")
    rec = next((a["weight_rounding"] for a in manifest.get("artifacts", {}).values() if a.get("weight_rounding")), {})
    if how == "gptq" and rec.get("method") == "gptq":
        return (f"; PTQ weights rounded by GPTQ on {rec['images']} images (layer output error "
                f"{rec['output_error_vs_nearest']:.2f} of rounding to nearest)")
    return "; PTQ weights rounded to nearest" if how == "nearest" else ""


def write(dest: Path, manifest: dict, result, labels: list[str]) -> None:
    """Draw the figures, then write report.md and report.html from the same table and notes."""
    from edgecls.convert.search import plot as plot_search
    from edgecls.plots import plot_confusion

    arts = manifest["artifacts"]
    table = [_cells(k, r, arts.get(k, {}), result.sizes.get(k, 0), result.reference) for k, r in result.rows.items()]
    columns = header(result.split)
    pngs = {}
    for key, r in result.rows.items():
        pngs[key] = f"confusion_{key}.png"
        plot_confusion(r["confusion"], labels, dest / pngs[key], title=key)
    # Each int8 artifact's search, also when QAT was kept instead (it then explains why).
    searches = {}
    for key, art in arts.items():
        found = art.get("search") or (art.get("candidates") or {}).get("ptq", {}).get("search")
        if found:
            searches[key] = found
    for key, s in searches.items():
        kept = "" if arts[key].get("search") else " (not kept)"
        plot_search(s, f"{key}: mixed-precision search{kept}", dest / f"{key}_search.png")
    gate = result.gate
    text = {"title": (f"{result.images} {result.photos} — each int8 artifact vs its float twin, each float one vs "
                      f"{result.reference} (gate: drop ≤ {gate['max_drop_pp']:g} pp unless the interval says more, "
                      f"agreement on these photos ≥ {gate['min_agreement_pct']:g}%)"),
            "verdict": "passed" if gate["passed"] else "FAILED (kept with --allow-drop)",
            "resolution": (f"One {result.split} photo is {100 / max(result.images, 1):.2f} pp of top-1: a drop is "
                           f"refused only when its 95% interval (paired, Agresti–Min) lies wholly above the limit, so "
                           f"a measured drop above it can pass (see the notes). Agreement is counted on the same "
                           f"{result.images} {result.photos}, with the model named in \"vs\"; the column \"incl. "
                           f"training photos\" counts all {result.all_images} images the run has, most of them "
                           f"photos calibration and weight rounding were fitted on, which flatter int8: shown, "
                           f"never judged.")}
    atomic_write_text(dest / "report.md", _markdown(manifest, result, labels, (columns, table), pngs, searches, text))
    atomic_write_text(dest / "report.html", _html(manifest, gate, (columns, table), pngs, searches, text))


def _markdown(manifest, result, labels, table, pngs, searches, text) -> str:
    gate, arts = result.gate, manifest["artifacts"]

    def esc(t: str) -> str:   # no raw HTML from class names; quotes stay readable in Markdown
        return html.escape(t, quote=False)

    columns, rows = table
    md = [f"# Export report: {esc(text['title'])}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    md += ["", text["resolution"], "", f"Gate: {text['verdict']} — {esc(gate['message'])}", ""]
    md += [f"- note: {esc(n)}" for n in gate["notes"]] + ([""] if gate["notes"] else [])
    md += [f"Default artifact: `{manifest['default_artifact']}`", "", f"Calibration: {esc(calibration_text(manifest))}", ""]
    cands = {k: a["candidates"] for k, a in arts.items() if a.get("candidates")}
    if cands:
        md += ["## int8 candidates (scored on the validation split: not held out)", ""]
        for key, tried in cands.items():
            md += [f"- {key} / {name}: " + ", ".join(f"{k} {v}" for k, v in s.items() if k != "search")
                   for name, s in tried.items()]
        md.append("")
    if searches:
        md += ["## Mixed-precision search", ""]
        for key, s in searches.items():
            md += _search_lines(key + ("" if arts[key].get("search") else " (not kept)"), key, s)
    md += _flips_lines(result)
    keys = [k for k in result.rows if result.rows[k].get("per_class_delta")]
    md += ["## Per-class accuracy delta (pp) vs each row's reference (int8: its float twin; float: "
           f"{result.reference})", "", "| class | " + " | ".join(keys) + " |",
           "|---|" + "---|" * len(keys)]
    for c in labels:
        md.append(f"| {esc(c)} | " + " | ".join(f"{result.rows[k]['per_class_delta'][c]:+.1f}"
                                                if result.rows[k]["per_class_delta"][c] is not None else "–"
                                                for k in keys) + " |")
    md += ["", "## Confusion matrices", ""] + [f"![{k}]({p})" for k, p in pngs.items()]
    return "\n".join(md) + "\n"


def _flips_lines(result) -> list[str]:
    """Per int8 row, the answers it changed on the judged photos and what they were (metrics.flips)."""
    found = result.flips_lines()
    if not found:
        return []
    return [f"## The answers int8 changed ({result.photos})", "",
            "Near-ties of the float model are what int8 flips; a flip of a photo float got wrong costs nothing.", ""] \
        + [f"- {line}" for line in found] + [""]   # artifact keys and numbers only: nothing to escape


def _html(manifest, gate, table, pngs, searches, text) -> str:
    esc = html.escape
    columns, rows = table
    cells = "".join(f"<th>{esc(h)}</th>" for h in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    imgs = "".join(f'<figure><img src="{esc(p)}" alt="{esc(k)}"><figcaption>{esc(k)}</figcaption></figure>'
                   for k, p in pngs.items())
    plots = "".join(f'<figure><img src="{esc(k)}_search.png" alt="{esc(k)} search"><figcaption>{esc(k)}: '
                    f'mixed-precision search</figcaption></figure>' for k in searches)
    notes = "".join(f"<li>{esc(n)}</li>" for n in gate["notes"])
    return (f"<!doctype html><meta charset='utf-8'><title>edgecls export report</title>"
            f"<style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;text-align:right}}"
            f"figure{{display:inline-block}}img{{max-width:420px}}</style>"
            f"<h1>{esc(text['title'])}</h1><table><tr>{cells}</tr>{body}</table><p>{esc(text['resolution'])}</p>"
            f"<p>Gate: {esc(text['verdict'])} — {esc(gate['message'])}</p>{f'<ul>{notes}</ul>' if notes else ''}"
            f"<p>Default artifact: <code>{esc(manifest['default_artifact'])}</code></p>"
            f"<p>Calibration: {esc(calibration_text(manifest))}</p>"
            f"{f'<h2>Mixed-precision search</h2>{plots}' if plots else ''}<h2>Confusion matrices</h2>{imgs}")
