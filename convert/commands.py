"""CLI commands of this stage (registered by edgecls.cli). Keep heavy imports inside the functions."""
from __future__ import annotations

from pathlib import Path


def register(app) -> None:
    import typer

    @app.command("export")
    def export_command(
        run_dir: Path = typer.Argument(..., help="Training run folder (written by `edgecls train`)."),
        out: Path = typer.Option(None, "--out", help="Bundle folder to write (default: RUN_DIR/bundle)."),
        formats: str = typer.Option("tflite,onnx", "--formats", help="Comma-separated families: tflite,onnx."),
        int8: bool = typer.Option(True, "--int8/--no-int8", help="Also write int8 artifacts (default: yes)."),
        int8_method: str = typer.Option("auto", "--int8-method",
                                        help="auto: PTQ, then QAT if PTQ misses the gate on val, keep the better | ptq | qat."),
        qat: bool = typer.Option(False, "--qat", help="Same as --int8-method qat."),
        qat_epochs: int = typer.Option(2, "--qat-epochs", help="Quantization-aware fine-tuning epochs."),
        calib_samples: int = typer.Option(200, "--calib-samples", help="Training images used to calibrate int8."),
        full_int8: bool = typer.Option(False, "--full-int8",
                                       help="Quantize every op (for NPUs); by default PTQ keeps float the few ops "
                                            "whose int8 error is over one quantization step."),
        io_dtype: str = typer.Option("uint8", "--io-dtype", help="int8 TFLite input/output type: uint8 or int8."),
        onnx_target: str = typer.Option("auto", "--onnx-target",
                                        help="CPU the int8 ONNX is for: x86 (uint8 activations, onnxruntime's fast "
                                             "kernels there) | arm (int8 activations: Pi, Jetson) | auto (this machine's)."),
        max_drop: float = typer.Option(1.0, "--max-drop", help="Most top-1 accuracy (pp) int8 may lose vs float."),
        min_agreement: float = typer.Option(95.0, "--min-agreement",
                                            help="Least top-1 agreement (%) of int8 with float on the test split."),
        allow_drop: bool = typer.Option(False, "--allow-drop", help="Keep the bundle even if int8 fails the gate."),
        threads: int = typer.Option(None, "--threads", help="Threads for the parity runs (default: all cores)."),
        as_json: bool = typer.Option(False, "--json", help="Print the written edgecls.json on stdout."),
    ):
        """Convert a run to TFLite/ONNX (float + int8), measure every artifact against float, write the bundle."""
        import json

        from edgecls.convert.export import ExportOptions, export

        opts = ExportOptions(run_dir=run_dir, out=out, families=tuple(f.strip() for f in formats.split(",") if f.strip()),
                             int8=int8, int8_method="qat" if qat else int8_method, qat_epochs=qat_epochs,
                             calib_samples=calib_samples, full_int8=full_int8, io_dtype=io_dtype, onnx_target=onnx_target,
                             max_drop=max_drop,
                             min_agreement=min_agreement, allow_drop=allow_drop, threads=threads, show_progress=not as_json)
        manifest = export(opts)
        if as_json:
            typer.echo(json.dumps(manifest))
