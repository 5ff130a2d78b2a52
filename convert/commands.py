"""CLI commands of this stage (registered by edgecls.cli). Keep heavy imports inside the functions."""
from __future__ import annotations

from pathlib import Path


def _default(name: str):
    """An ExportOptions default: the dataclass is the one place it is written (no TensorFlow import)."""
    from edgecls.convert.export import default

    return default(name)


SEARCH_HELP = {
    "target_agreement": "Keep the int8-sensitive ops float until top-1 agreement with float on the validation "
                        "split reaches this (%): photos the search may see, so not held out (the gate judges the "
                        "held-out test split).",
    "max_latency_ratio": "Latency budget of the ops kept float: int8 / float, 1 thread, measured interleaved here.",
    "max_float_ops": "Most ops the search keeps float.",
}


TARGET_HELP = ("Also export for an accelerator (comma-separated): tensorrt (symmetric int8 QDQ ONNX, onnx-int8-trt: "
               "docs/jetson.md) | imx500 (Raspberry Pi AI Camera: packerOut.zip, docs/imx500.md; needs "
               "`edgecls setup-imx500` once).")

GPTQ_HELP = "--target imx500: epochs of MCT's GPTQ after its PTQ (0: PTQ only, the default; docs/imx500.md)."


def register(app) -> None:
    import typer

    D = _default
    register_imx500(app)   # setup-imx500, beside export

    @app.command("export")
    def export_command(
        run_dir: Path = typer.Argument(..., help="Training run folder (written by `edgecls train`)."),
        out: Path = typer.Option(None, "--out", help="Bundle folder to write (default: RUN_DIR/bundle)."),
        formats: str = typer.Option(",".join(D("families")), "--formats", help="Comma-separated families: tflite,onnx."),
        target: str = typer.Option("", "--target", help=TARGET_HELP),
        imx500_gptq_epochs: int = typer.Option(D("imx500_gptq_epochs"), "--imx500-gptq-epochs", help=GPTQ_HELP),
        int8: bool = typer.Option(D("int8"), "--int8/--no-int8", help="Also write int8 artifacts (default: yes)."),
        int8_method: str = typer.Option(D("int8_method"), "--int8-method",
                                        help="auto: PTQ with the mixed-precision search, then QAT if the search "
                                             "misses --target-agreement, keep the better | ptq | qat."),
        qat: bool = typer.Option(False, "--qat", help="Same as --int8-method qat."),
        qat_epochs: int = typer.Option(D("qat_epochs"), "--qat-epochs", help="Quantization-aware fine-tuning epochs."),
        calib_samples: int = typer.Option(D("calib_samples"), "--calib-samples", help="Most images used to calibrate int8."),
        calib: Path = typer.Option(None, "--calib", help="Calibrate int8 on this folder of device frames (any "
                                   "layout, e.g. what `collect` or `run --keep` saved) instead of training photos."),
        # The mixed-precision search (docs/export.md): its target, its latency budget, its most ops kept float.
        target_agreement: float = typer.Option(D("target_agreement"), help=SEARCH_HELP["target_agreement"]),
        max_latency_ratio: float = typer.Option(D("max_latency_ratio"), help=SEARCH_HELP["max_latency_ratio"]),
        max_float_ops: int = typer.Option(D("max_float_ops"), help=SEARCH_HELP["max_float_ops"]),
        full_int8: bool = typer.Option(D("full_int8"), "--full-int8",
                                       help="Quantize every op (for NPUs): no mixed-precision search."),
        weight_rounding: str = typer.Option(D("weight_rounding"), "--weight-rounding",
                                            help="How PTQ puts weights on the int8 grid: gptq (each rounding chosen "
                                                 "for the layer's output on calibration images) | nearest."),
        io_dtype: str = typer.Option(D("io_dtype"), "--io-dtype", help="int8 TFLite input/output type: uint8 or int8."),
        onnx_target: str = typer.Option(D("onnx_target"), "--onnx-target",
                                        help="CPU the int8 ONNX is for: x86 (uint8 activations, onnxruntime's fast "
                                             "kernels there) | arm (int8 activations: Pi, Jetson) | auto (this machine's)."),
        max_drop: float = typer.Option(D("max_drop"), "--max-drop",
                                       help="Refuse int8 when the test split shows (95% interval) a top-1 drop "
                                            "larger than this many pp vs float."),
        min_agreement: float = typer.Option(D("min_agreement"), "--min-agreement",
                                            help="Least top-1 agreement (%) of int8 with its float twin on the "
                                                 "held-out test photos (the run's val photos if it has no test split)."),
        allow_drop: bool = typer.Option(False, "--allow-drop", help="Keep the bundle even if int8 fails the gate."),
        threads: int = typer.Option(None, "--threads", help="Threads for the parity runs (default: all cores)."),
        as_json: bool = typer.Option(False, "--json", help="Print the written edgecls.json on stdout."),
    ):
        """Convert a run to TFLite/ONNX (float + int8), measure every artifact against float, write the bundle."""
        import json

        from edgecls.convert.export import ExportOptions, export

        opts = ExportOptions(run_dir=run_dir, out=out, families=tuple(f.strip() for f in formats.split(",") if f.strip()),
                             targets=tuple(t.strip() for t in target.split(",") if t.strip()), imx500_gptq_epochs=imx500_gptq_epochs,
                             int8=int8, int8_method="qat" if qat else int8_method, qat_epochs=qat_epochs,
                             calib_samples=calib_samples, calib_dir=calib, full_int8=full_int8, weight_rounding=weight_rounding,
                             io_dtype=io_dtype, onnx_target=onnx_target, max_drop=max_drop,
                             min_agreement=min_agreement, target_agreement=target_agreement,
                             max_latency_ratio=max_latency_ratio, max_float_ops=max_float_ops,
                             allow_drop=allow_drop, threads=threads, show_progress=not as_json)
        manifest = export(opts)
        if as_json:
            typer.echo(json.dumps(manifest))


def register_imx500(app) -> None:
    import typer

    @app.command("setup-imx500")
    def setup_imx500_command(
        env: Path = typer.Option(None, "--env", help="Where to create it (default: $EDGECLS_IMX500_ENV, else "
                                 "~/.cache/edgecls/imx500-env)."),
        python: str = typer.Option(None, "--python", help="Python 3.9-3.11 to build it with (default: python3.11)."),
    ):
        """Create the environment `export --target imx500` runs in (TensorFlow 2.15, Sony's MCT and imx500-converter),
        once: about 2 minutes and 2.3 GB."""
        import json

        from edgecls.convert import imx500
        from edgecls.progress import wide_console

        record = imx500.setup(env, python, console=wide_console(stderr=True))
        typer.echo(json.dumps(record))
