"""report.md and report.html: the parity table a human reads, with one confusion matrix per model."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from edgecls.device.evaluate import worst_class_delta
from edgecls.fsutil import atomic_write_text


def confusion_png(cm: list[list[int]], labels: list[str], title: str, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    n = len(labels)
    size = min(12, 2 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                            color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(dest, dpi=80)
    plt.close(fig)


def _rows(manifest: dict, rows: dict, sizes: dict) -> list[list[str]]:
    ref = manifest["report"]["reference"]
    ref_acc = rows[ref]["accuracy"]
    out = []
    for key, r in rows.items():
        method = manifest["artifacts"].get(key, {}).get("method", "")
        worst = worst_class_delta(r) if key != ref else None
        out.append([key, method, f"{r['accuracy'] * 100:.2f}%",
                    "" if key == ref else f"{(r['accuracy'] - ref_acc) * 100:+.2f}",
                    "" if key == ref or r.get("agreement") is None else f"{r['agreement'] * 100:.1f}%",
                    f"{worst[1]:+.1f} ({worst[0]})" if worst else "",
                    f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "",
                    f"{sizes.get(key, 0) / 1e6:.2f} MB", f"{r['latency_ms']:.2f}"])
    return out


HEADER = ["model", "method", "top-1", "Δ vs float (pp)", "agreement", "worst class Δ (pp)",
          "max |Δp| vs Keras", "size", "host latency ms"]


def write(dest: Path, manifest: dict, rows: dict, sizes: dict, labels: list[str], title: str) -> None:
    table = _rows(manifest, rows, sizes)
    pngs = {}
    for key, r in rows.items():
        pngs[key] = f"confusion_{key}.png"
        confusion_png(r["confusion"], labels, key, dest / pngs[key])
    gate = manifest["report"]["gate"]
    candidates = {k: a.get("candidates") for k, a in manifest["artifacts"].items() if a.get("candidates")}

    md = [f"# Export report: {title}", "",
          "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    md += ["| " + " | ".join(r) + " |" for r in table]
    md += ["", f"Gate: {'passed' if gate['passed'] else 'FAILED (kept with --allow-drop)'} — {gate['message']}", "",
           f"Default artifact: `{manifest['default_artifact']}`", ""]
    if candidates:
        md += ["## int8 candidates (validation split)", ""]
        for key, cands in candidates.items():
            for name, s in cands.items():
                md.append(f"- {key} / {name}: " + ", ".join(f"{k} {v}" for k, v in s.items()))
        md.append("")
    md += ["## Per-class accuracy delta vs float (pp)", "",
           "| class | " + " | ".join(k for k in rows if rows[k].get("per_class_delta")) + " |",
           "|---|" + "---|" * sum(1 for k in rows if rows[k].get("per_class_delta"))]
    keys = [k for k in rows if rows[k].get("per_class_delta")]
    for c in labels:
        md.append(f"| {c} | " + " | ".join(f"{rows[k]['per_class_delta'][c]:+.1f}"
                                           if rows[k]["per_class_delta"][c] is not None else "–" for k in keys) + " |")
    md += ["", "## Confusion matrices", ""] + [f"![{k}]({p})" for k, p in pngs.items()]
    atomic_write_text(dest / "report.md", "\n".join(md) + "\n")

    esc = html.escape
    cells = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in table)
    imgs = "".join(f'<figure><img src="{esc(p)}" alt="{esc(k)}"><figcaption>{esc(k)}</figcaption></figure>'
                   for k, p in pngs.items())
    page = (f"<!doctype html><meta charset='utf-8'><title>edgecls export report</title>"
            f"<style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;text-align:right}}"
            f"figure{{display:inline-block}}img{{max-width:420px}}</style>"
            f"<h1>{esc(title)}</h1><table><tr>{cells}</tr>{body}</table>"
            f"<p>Gate: {esc('passed' if gate['passed'] else 'FAILED (kept with --allow-drop)')} — "
            f"{esc(gate['message'])}</p><p>Default artifact: <code>{esc(manifest['default_artifact'])}</code></p>"
            f"<h2>Confusion matrices</h2>{imgs}")
    atomic_write_text(dest / "report.html", page)
