"""report.md and report.html: the parity table a human reads, the gate's reasoning, the mixed-precision search
(a table and a plot), per-class deltas and one confusion matrix per model. Class names are escaped
everywhere: they come from folder names."""
from __future__ import annotations

import html
from pathlib import Path

from edgecls.device.evaluate import worst_class_delta
from edgecls.metrics import delta_text
from edgecls.fsutil import atomic_write_text

HEADER = ["model", "method", "float ops", "top-1 (95% CI)", "Δ vs float pp (95% CI)", "agreement, all images",
          "agreement, test", "worst class Δ pp", "int8/float latency", "host ms", "size", "verdict"]


def _cells(key: str, r: dict, entry: dict, size: int, reference: str) -> list[str]:
    lo, hi = r["accuracy_ci95"]
    d, a, v = r.get("drop"), r.get("agreement_all"), r.get("verdict")
    worst = worst_class_delta(r) if key != reference else None
    ops = entry.get("float_ops")
    return [key, entry.get("method", ""), "" if ops is None else str(len(ops)),
            f"{r['accuracy'] * 100:.1f}% ({lo * 100:.1f}–{hi * 100:.1f})",
            delta_text(d) if d else "",
            f"{a['rate'] * 100:.2f}% ({a['agreed']}/{a['images']})" if a else "",
            "" if key == reference or r.get("agreement") is None else f"{r['agreement'] * 100:.1f}%",
            f"{worst[1]:+.1f} ({worst[0]})" if worst else "",
            f"{r['latency_ratio']:.2f}" if r.get("latency_ratio") else "",
            f"{r['latency_ms']:.2f}", f"{size / 1e6:.2f} MB" if size else "",
            "" if v is None else ("passed" if v["passed"] else "FAILED")]


def _search_lines(title: str, key: str, search: dict) -> list[str]:
    md = [f"### {title}: kept {search['chosen']} op(s) float "
          f"({'target reached' if search['reached'] else 'target not reached; best agreement within budget'})", "",
          f"Target agreement {search['target_agreement'] * 100:g}% on the validation split; latency budget "
          f"{search['budget']:.2f}× float (--max-latency-ratio {search['max_latency_ratio']:g}, or the all-int8 "
          f"model's own ratio where that is higher). ![search]({key}_search.png)", "",
          "| step | op kept float (added) | its int8 error (steps) | agreement | int8/float latency |",
          "|---|---|---|---|---|"]
    for i, s in enumerate(search["steps"]):
        mark = " **kept**" if i == search["chosen"] else ""
        md.append(f"| {i}{mark} | {html.escape(s['added'] or '— (all int8)')} | {s['error_steps'] or ''} | "
                  f"{s['agreement'] * 100:.2f}% ({s['agreed']}/{s['images']}) | {s['latency_ratio']:.2f} |")
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
    from edgecls.train.plots import plot_confusion

    arts = manifest["artifacts"]
    table = [_cells(k, r, arts.get(k, {}), result.sizes.get(k, 0), result.reference) for k, r in result.rows.items()]
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
    text = {"title": (f"{result.images} {result.split} photos, agreement over all {result.all_images} images — int8 "
                      f"vs float (gate: drop ≤ {gate['max_drop_pp']:g} pp unless the interval says more, agreement ≥ "
                      f"{gate['min_agreement_pct']:g}%)"),
            "verdict": "passed" if gate["passed"] else "FAILED (kept with --allow-drop)",
            "resolution": (f"One {result.split} photo is {100 / max(result.images, 1):.2f} pp of top-1: a drop is "
                           f"refused only when its 95% interval (paired, Agresti–Min) lies wholly above the limit; "
                           f"agreement with float is counted over every image the run has ({result.all_images}).")}
    atomic_write_text(dest / "report.md", _markdown(manifest, result, labels, table, pngs, searches, text))
    atomic_write_text(dest / "report.html", _html(manifest, gate, table, pngs, searches, text))


def _markdown(manifest, result, labels, table, pngs, searches, text) -> str:
    gate, arts = result.gate, manifest["artifacts"]

    def esc(t: str) -> str:   # no raw HTML from class names; quotes stay readable in Markdown
        return html.escape(t, quote=False)

    md = [f"# Export report: {esc(text['title'])}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    md += ["| " + " | ".join(esc(c) for c in row) + " |" for row in table]
    md += ["", text["resolution"], "", f"Gate: {text['verdict']} — {esc(gate['message'])}", ""]
    md += [f"- note: {esc(n)}" for n in gate["notes"]] + ([""] if gate["notes"] else [])
    md += [f"Default artifact: `{manifest['default_artifact']}`", "", f"Calibration: {esc(calibration_text(manifest))}", ""]
    cands = {k: a["candidates"] for k, a in arts.items() if a.get("candidates")}
    if cands:
        md += ["## int8 candidates (validation split)", ""]
        for key, tried in cands.items():
            md += [f"- {key} / {name}: " + ", ".join(f"{k} {v}" for k, v in s.items() if k != "search")
                   for name, s in tried.items()]
        md.append("")
    if searches:
        md += ["## Mixed-precision search", ""]
        for key, s in searches.items():
            md += _search_lines(key + ("" if arts[key].get("search") else " (not kept)"), key, s)
    keys = [k for k in result.rows if result.rows[k].get("per_class_delta")]
    md += ["## Per-class accuracy delta vs float (pp)", "", "| class | " + " | ".join(keys) + " |",
           "|---|" + "---|" * len(keys)]
    for c in labels:
        md.append(f"| {esc(c)} | " + " | ".join(f"{result.rows[k]['per_class_delta'][c]:+.1f}"
                                                if result.rows[k]["per_class_delta"][c] is not None else "–"
                                                for k in keys) + " |")
    md += ["", "## Confusion matrices", ""] + [f"![{k}]({p})" for k, p in pngs.items()]
    return "\n".join(md) + "\n"


def _html(manifest, gate, table, pngs, searches, text) -> str:
    esc = html.escape
    cells = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in table)
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
