"""The ``detbench`` command line: one sub-command per task (``detbench serve``, ...).

To add a sub-command, write ``add_<name>_command(subparsers)`` that creates its parser and sets
``handler`` (a function taking the parsed arguments and returning an exit status), and list it
in :data:`COMMANDS`. Handlers import heavy modules (torch, Flask) themselves, so ``detbench
--help`` stays instant. A :class:`DetbenchError` from any handler is printed as one line and
exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detbench import __version__
from detbench.errors import DetbenchError

if TYPE_CHECKING:
    from detbench.web.settings import WebConfig

log = logging.getLogger("detbench.cli")

Subparsers = Any  # argparse's _SubParsersAction, which it does not export


# --------------------------------------------------------------------------------------------
# detbench serve
# --------------------------------------------------------------------------------------------


def add_serve_command(subparsers: Subparsers) -> None:
    from detbench.web import settings
    from detbench.web.settings import COCO_IMG_SIZE, DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB
    from detbench.web.train_options import add_training_arguments

    parser = subparsers.add_parser(
        "serve",
        help="web app: upload an image, count blood cells or detect common objects",
        description=(
            "Serve the inference web app (page at /, JSON API POST /api/detect, GET /api/models, "
            "GET /healthz). Give the blood-cell model (--bccd-model or --results) and/or the "
            "COCO weights; a model file that does not exist is left out and the page says so. "
            "With --results every evaluated cell there can be picked per request."
        ),
    )
    bccd = parser.add_mutually_exclusive_group()
    bccd.add_argument(
        "--bccd-model",
        type=Path,
        metavar="PATH",
        help="a trained cell's weights.pt (e.g. results/<platform>/yolov3/b8_e20/weights.pt)",
    )
    bccd.add_argument(
        "--results",
        type=Path,
        metavar="DIR",
        help="serve the best blood-cell cell by mAP@0.5 in DIR/summary.csv (any platform) as "
        "'bccd', and offer every evaluated cell under DIR in the model picker",
    )
    parser.add_argument(
        "--coco-weights",
        type=Path,
        metavar="PATH",
        help="official Darknet yolov3.weights or yolov3-tiny.weights (told apart by size)",
    )
    parser.add_argument(
        "--joint-model",
        type=Path,
        metavar="PATH",
        help="a joint cell's weights.pt (dataset.source: merge): one model serves blood cells "
        "and common objects, instead of --bccd-model/--results and --coco-weights",
    )
    parser.add_argument(
        "--coco-img-size",
        type=_multiple_of_32,
        default=COCO_IMG_SIZE,
        metavar="PX",
        help=f"input size for the COCO model (multiple of 32; default {COCO_IMG_SIZE})",
    )
    parser.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="torch: a weights.pt under PyTorch (default); onnxruntime: an exported model.onnx "
        "(detbench export) under ONNX Runtime, without loading torch",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--device", default="auto", help="auto (first GPU if any, else CPU), cpu, cuda, cuda:1"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=_positive_float,
        default=DEFAULT_MAX_UPLOAD_MB,
        metavar="MB",
        help=f"largest request accepted, MiB (default {DEFAULT_MAX_UPLOAD_MB:g}; larger: 413)",
    )
    parser.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"largest image accepted, width x height (default {DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=settings.DEFAULT_CONCURRENCY,
        metavar="N",
        help="uploads decoded and detected at once; peak memory grows with it (default "
        f"{settings.DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--queue-timeout",
        type=_positive_float,
        default=settings.DEFAULT_QUEUE_TIMEOUT_S,
        metavar="S",
        help="seconds a request waits for a free slot before it gets 503 (default "
        f"{settings.DEFAULT_QUEUE_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        default=settings.DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="open connections held at once, more wait in the listen backlog (default "
        f"{settings.DEFAULT_MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--max-decode-side",
        type=_positive_int,
        default=settings.DEFAULT_MAX_DECODE_SIDE,
        metavar="PX",
        help="larger uploads are decoded reduced to this longer side (default "
        f"{settings.DEFAULT_MAX_DECODE_SIDE})",
    )
    parser.add_argument(
        "--model-cache",
        type=_positive_int,
        default=settings.DEFAULT_MODEL_CACHE,
        metavar="N",
        help="trained cells held loaded at once for the model picker, least recently used "
        f"unloaded first (default {settings.DEFAULT_MODEL_CACHE}; a YOLOv3 model is ~250 MB)",
    )
    add_training_arguments(parser)
    parser.set_defaults(handler=run_serve)


def serve_config(args: argparse.Namespace) -> WebConfig:
    """The WebConfig for parsed ``serve`` arguments (picks the best cell for --results)."""
    from detbench.web.registry import best_bccd_cell
    from detbench.web.settings import WebConfig
    from detbench.web.train_options import training_settings

    joint_model = getattr(args, "joint_model", None)
    if joint_model is not None and (args.bccd_model or args.results or args.coco_weights):
        raise DetbenchError(
            "detbench serve: --joint-model serves both models; leave out --bccd-model, "
            "--results and --coco-weights"
        )
    bccd_model, origin = args.bccd_model, None
    if args.results is not None:
        best = best_bccd_cell(args.results)
        bccd_model, origin = best.weights, best.describe()
        if args.backend == "onnxruntime":
            bccd_model = exported_model_of(best.weights)
        log.info("--results %s: picked the %s: %s", args.results, best.describe(), bccd_model)
    if bccd_model is None and args.coco_weights is None and joint_model is None:
        raise DetbenchError(
            "detbench serve: give --bccd-model PATH, --results DIR and/or --coco-weights PATH "
            "(or --joint-model PATH)"
        )
    return WebConfig(
        joint_model=joint_model,
        bccd_model=bccd_model,
        bccd_origin=origin,
        coco_weights=args.coco_weights,
        coco_img_size=args.coco_img_size,
        device=args.device,
        backend=args.backend,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        max_decode_side=args.max_decode_side,
        concurrency=args.concurrency,
        queue_timeout_s=args.queue_timeout,
        max_connections=args.max_connections,
        results_dir=args.results,
        model_cache_size=args.model_cache,
        training=training_settings(args),
    )


def exported_model_of(weights: Path) -> Path:
    """The model.onnx beside a cell's weights.pt (rules/deploy.smk), for --backend onnxruntime."""
    from detbench.study.cells import ONNX_MODEL

    exported = weights.with_name(ONNX_MODEL)
    if not exported.is_file():
        raise DetbenchError(
            f"{exported}: does not exist (build it with `snakemake {exported}` or `detbench "
            f"export {weights} -o {exported}`)"
        )
    return exported


def run_serve(args: argparse.Namespace) -> int:
    from detbench.web.app import create_app

    config = serve_config(args)
    app = create_app(config)
    server = make_wsgi_server(app, args.host, args.port, config)
    if threading.current_thread() is threading.main_thread():
        # Kubernetes and Docker stop a container with SIGTERM: leave as on Ctrl-C (exit 0).
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    log.info(
        "serving on %s with waitress, %d uploads at a time (Ctrl-C to stop)",
        ", ".join(listening_urls(server)),
        config.concurrency,
    )
    try:
        server.run()  # returns on Ctrl-C or SIGTERM: waitress catches the KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        training_queue = app.extensions["detbench"].get("training_queue")
        if training_queue is not None:
            training_queue.close()  # running runs resume at the next start
    log.info("stopped")
    return 0


def listening_urls(server: Any) -> list[str]:
    """``http://host:port/`` for every address a waitress server listens on (waitress reports
    ports as strings on some versions, numbers on others)."""
    addresses = getattr(server, "effective_listen", None) or [
        (server.effective_host, server.effective_port)
    ]
    urls = []
    for host, port in addresses:
        shown = f"[{host}]" if ":" in str(host) else host
        urls.append(f"http://{shown}:{port}/")
    return urls


def make_wsgi_server(app: Any, host: str, port: int, config: WebConfig) -> Any:
    """A waitress server for ``app`` (a production WSGI server, unlike werkzeug's).

    Threads: the detection slots plus two, so the page and /healthz answer while every slot
    is busy. Request bodies stay in memory (the container's file system is read-only) and
    are capped just above the app's upload limit, which answers 413 itself; a body over the cap
    gets waitress' own 413, in the app's JSON (:mod:`detbench.web.wsgi_errors`).
    """
    from waitress.server import create_server

    from detbench.web.wsgi_errors import json_error_channels

    body_limit = config.max_request_bytes + 1024 * 1024  # room for the multipart framing

    try:
        server = create_server(
            app,
            host=host,
            port=port,
            threads=config.concurrency + 2,
            connection_limit=config.max_connections,
            max_request_body_size=body_limit,
            inbuf_overflow=body_limit,
            ident="detbench",
            clear_untrusted_proxy_headers=True,
        )
    except OSError as error:
        raise DetbenchError(
            f"--host/--port: cannot listen on {host}:{port} ({error.strerror})"
        ) from None
    json_error_channels(server, partial(waitress_error_message, config))
    return server


def waitress_error_message(config: WebConfig, status: int, detail: str) -> str:
    """What a client reads for an error waitress answers itself: for a body over its cap the
    app's own 413 message."""
    from detbench.web.app import upload_too_large_message

    return upload_too_large_message(config) if status == 413 else detail


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------
# detbench export
# --------------------------------------------------------------------------------------------


def add_export_command(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a trained model to ONNX (for detbench serve --backend onnxruntime)",
        description=(
            "Export a trained cell's weights.pt, or Darknet's yolov3.weights / "
            "yolov3-tiny.weights, to ONNX: the network with its box decoding (NMS stays "
            "outside), class names, input size, anchors and strides in its metadata. The file "
            "is written only once ONNX Runtime's raw outputs match PyTorch's."
        ),
    )
    parser.add_argument("weights", type=Path, metavar="WEIGHTS", help="weights.pt or .weights")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    parser.add_argument(
        "-o", "--output", type=Path, metavar="PATH", help="output file (default WEIGHTS.onnx)"
    )
    parser.add_argument(
        "--dynamic-batch", action="store_true", help="any batch size (default: batch 1 only)"
    )
    parser.add_argument("--half", action="store_true", help="fp16 weights and input (CUDA)")
    parser.add_argument("--device", default="cpu", help="device to export on: cpu or cuda")
    parser.add_argument(
        "--img-size",
        type=_multiple_of_32,
        metavar="PX",
        help="input size (default: the size the model was trained at; 416 for Darknet files)",
    )
    parser.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset (>= 17)")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from detbench.deploy.export import export_onnx

    output = args.output or args.weights.with_suffix(".onnx")
    result = export_onnx(
        args.weights,
        output,
        dynamic_batch=args.dynamic_batch,
        half=args.half,
        device=args.device,
        opset=args.opset,
        img_size=args.img_size,
    )
    print(result.summary())
    return 0


# --------------------------------------------------------------------------------------------
# Argument types
# --------------------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text) if text != "0" else 0
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {text}")
    return value


def _multiple_of_32(text: str) -> int:
    value = _positive_int(text)
    if value % 32:
        raise argparse.ArgumentTypeError(f"must be a multiple of 32, got {text}")
    return value


# --------------------------------------------------------------------------------------------
# detbench resources
# --------------------------------------------------------------------------------------------


def add_resources_command(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "resources",
        help="right-sized Slurm requests from a finished study, as profile YAML",
        description=(
            "Read a finished study's cells and profiles (run.json, history.csv, the jobs' "
            "benchmark files) and print, as profile YAML, what each rule should ask for: the "
            "busiest job's CPUs, memory and minutes plus --headroom, and the train wall-time "
            "model's constants fitted to the measured cells. The profile's own set-threads, "
            "set-resources and config: are kept where not right-sized."
        ),
    )
    parser.add_argument(
        "--results", type=Path, default=Path("results"), metavar="DIR",
        help="the study's results folder (default: results)",
    )
    parser.add_argument(
        "--profile", type=Path, default=Path("profiles/slurm"), metavar="DIR",
        help="the profile folder whose keys the output completes (default: profiles/slurm)",
    )
    parser.add_argument(
        "--platform", metavar="LABEL",
        help="the platform whose jobs to read (needed where results/ holds several)",
    )
    parser.add_argument(
        "--headroom", type=_headroom, default=0.5, metavar="FRACTION",
        help="added on top of each measured peak (default: 0.5, i.e. 50%%)",
    )
    parser.set_defaults(handler=_run_resources)


def _headroom(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"must be 0..10, got {text}")
    return value


def _run_resources(args: argparse.Namespace) -> int:
    from detbench.cluster.rightsizing import right_size

    print(right_size(args.results, args.profile, args.platform, args.headroom), end="")
    return 0


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

COMMANDS: list[Callable[[Subparsers], None]] = [
    add_serve_command,
    add_export_command,
    add_resources_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detbench",
        description="Benchmark YOLOv3 / YOLOv3-tiny training and serve the trained models.",
    )
    parser.add_argument("--version", action="version", version=f"detbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from detbench.workflow.runner import configure_logging

    configure_logging(level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.handler(args))
    except DetbenchError as error:
        print(f"detbench error: {error}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
