"""The one `seqserve` command. Each subcommand parses flags and hands off to its stage.

Implementations are imported inside each command: the serving image has no torch, so `seqserve serve`
must never import the training stage.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from seqserve.contract import DEFAULT_OPSET

app = typer.Typer(
    name="seqserve",
    help="Train, export and serve recurrent sequence classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Every option also reads SEQSERVE_<COMMAND>_<OPTION> (e.g. SEQSERVE_SERVE_MAX_STREAMS): how the
    # container images and Kubernetes ConfigMap set flags without rewriting the command line.
    context_settings={"auto_envvar_prefix": "SEQSERVE"},
)
experiment_app = typer.Typer(help="Experiments that reproduce known results.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"seqserve {version('seqserve')}")
        raise typer.Exit()


@app.callback()
def _configure(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging, third-party libraries' INFO lines too.")
    ] = False,
    show_version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """Quiet by default: warnings from everything, INFO only from the server, whose log is its output."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("seqserve").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("seqserve.service").setLevel(logging.DEBUG if verbose else logging.INFO)
    # gRPC's C core logs to stderr by itself (an `E... add_port.cc` line before our own "port in use"
    # error); our errors already say what went wrong. Read when grpc is first imported, which is later.
    os.environ.setdefault("GRPC_VERBOSITY", "DEBUG" if verbose else "NONE")


# Client options of stream, classify and health: the fields of service/client/channels.py's ClientSecurity.
TlsFlag = Annotated[
    bool, typer.Option("--tls", help="TLS with the system's trusted CAs (implied by --tls-ca or --tls-cert).")
]
TlsCa = Annotated[
    Path | None, typer.Option(help="CA certificate (PEM) that signed the server's certificate; turns TLS on.")
]
TlsCert = Annotated[
    Path | None, typer.Option(help="Client certificate (PEM) for a server requiring mTLS; needs --tls-key.")
]
TlsKey = Annotated[Path | None, typer.Option(help="Private key (PEM) of --tls-cert.")]
TlsServerName = Annotated[
    str | None, typer.Option(help="Check the server's certificate for this name, not the target's host.")
]
Token = Annotated[
    str | None,
    typer.Option(
        envvar="SEQSERVE_TOKEN", show_envvar=True, help="Bearer token: 'authorization: Bearer <token>'."
    ),
]


# The search options of translate and of predict on a seq2seq model (seqserve/beam_search.py).
Beam = Annotated[int, typer.Option(help="Seq2seq: beam width; 1 is greedy search.", min=1)]
Nbest = Annotated[int, typer.Option(help="Seq2seq: outputs per input, best first.", min=1)]
MaxSteps = Annotated[
    int, typer.Option(help="Seq2seq: most output tokens per input; 0 is 2 x its length + 10.", min=0)
]
LengthPenalty = Annotated[
    float, typer.Option(help="Seq2seq: rank by score / ((5 + length) / 6) ** this; 0 is none.", min=0.0)
]


@app.command()
def train(
    out: Annotated[
        Path,
        typer.Option(
            help="Run folder to write (checkpoint.pt, metrics.json, plots); refused if it holds a run."
        ),
    ],
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Shipped data set: japanese_vowels, basic_motions_stream, shakespeare_chars (a character "
            "language model), or cmudict (grapheme to phoneme: a seq2seq model)."
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Your own .ts/.npz/.csv file (seeded 70/15/15 train/val/test split), or a .txt file for a "
            "character language model (90/5/5 by position)."
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="many_to_one or many_to_many (default: what the data holds), or forecast: a probabilistic "
            "forecaster (--dataset taylor or m1_yearly, or a --data CSV of timestamp,value or "
            "series,timestamp,value), or seq2seq: an attention encoder-decoder (--dataset cmudict)."
        ),
    ] = None,
    horizon: Annotated[
        int | None,
        typer.Option(
            help="Forecasters, a --data CSV: steps each forecast covers (default: its season).", min=1
        ),
    ] = None,
    cell: Annotated[
        str | None, typer.Option(help="rnn, gru or lstm (default: lstm for seq2seq, gru for the rest).")
    ] = None,
    layers: Annotated[
        int | None,
        typer.Option(help="Stacked recurrent layers (default 1); a seq2seq model's: its encoder's.", min=1),
    ] = None,
    hidden: Annotated[
        int | None,
        typer.Option(
            help="Hidden units per layer and direction (default 64; 384 for a language model; 512 for a "
            "seq2seq decoder, whose encoder reads each way with half).",
            min=1,
        ),
    ] = None,
    bidirectional: Annotated[
        bool,
        typer.Option(
            "--bidirectional/--unidirectional",
            help="Read each sequence both ways (more accurate; the served model then answers only at the "
            "end of a stream).",
        ),
    ] = False,
    dropout: Annotated[
        float | None,
        typer.Option(
            help="Dropout between stacked layers (needs --layers 2 or more; default 0); a seq2seq model's "
            "on embeddings, memory and attentional vector (default 0: none, the best in its time budget).",
            min=0.0,
            max=0.95,
        ),
    ] = None,
    layer_norm: Annotated[
        bool | None,
        typer.Option(
            "--layer-norm/--no-layer-norm",
            help="LayerNorm before the head (default on; off for a language model).",
        ),
    ] = None,
    clip: Annotated[float, typer.Option(help="Gradient clipping max norm; 0 disables.", min=0.0)] = 1.0,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Most epochs (early stopping usually ends sooner); default 60, 6 for a language model, "
            "40 for a seq2seq model (whose time budget ends it first).",
            min=1,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Sequences per training batch (default 32; 64 parallel text streams for a language model; "
            "256 words for a seq2seq model).",
            min=1,
        ),
    ] = None,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.", min=0.0)] = 3e-3,
    patience: Annotated[int, typer.Option(help="Early-stopping patience in epochs.", min=1)] = 10,
    chrono: Annotated[
        int, typer.Option(help="Chrono gate-bias initialisation for dependencies of ~N steps; 0 disables.")
    ] = 0,
    bptt: Annotated[
        int | None,
        typer.Option(help="Language models: characters per truncated-BPTT window (default 128).", min=2),
    ] = None,
    embedding: Annotated[
        int | None,
        typer.Option(help="Language models and seq2seq: embedding size of a token (default 64).", min=1),
    ] = None,
    beam: Annotated[
        int | None,
        typer.Option(help="Seq2seq: beam width of the test decode beside greedy (default 4).", min=1),
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(
            help="Seq2seq: training time budget; the learning rate's cosine runs over it or --epochs, "
            "whichever ends first (default 28; 0: --epochs alone).",
            min=0.0,
        ),
    ] = None,
    label_smoothing: Annotated[
        float | None,
        typer.Option(
            help="Seq2seq: share of each target phoneme's probability spread evenly over the vocabulary "
            "in the loss (default 0.1).",
            min=0.0,
            max=0.5,
        ),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(help="Seq2seq: AdamW's decoupled weight decay (default 0.05).", min=0.0),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Language models: stop after this many optimiser steps.", min=1)
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the data split, initialisation and shuffling.")] = 0,
    threads: Annotated[
        int | None,
        typer.Option(
            help="Torch CPU threads (default 1: small recurrent models train fastest on one; 2 for "
            "a language model and a seq2seq model).",
            min=1,
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace a run already in --out.")] = False,
) -> None:
    """Train a sequence classifier, a character language model, a forecaster or a seq2seq model, and
    write a run folder."""
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve.training.commands import train_command

    train_command(**options)


@experiment_app.command()
def vanishing(
    out: Annotated[
        Path, typer.Option(help="Folder for results.json and plots; refused if it holds results.")
    ],
    lengths: Annotated[str, typer.Option(help="Comma-separated sequence lengths T.")] = "50,100,200",
    seed: Annotated[int, typer.Option(help="Seed for the synthetic data and the models.")] = 0,
    quick: Annotated[bool, typer.Option(help="Tiny budget, for smoke tests.")] = False,
    force: Annotated[bool, typer.Option(help="Replace results already in --out.")] = False,
) -> None:
    """RNN vs GRU vs LSTM on a long-range task: accuracy against T and the gradient norm through time."""
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve.training.commands import vanishing_command

    vanishing_command(**options)


@experiment_app.command()
def horizon(
    out: Annotated[
        Path, typer.Option(help="Folder for horizon.json and horizon.png; refused if it holds results.")
    ],
    run: Annotated[
        Path | None,
        typer.Option(help="A forecaster's run folder (default: train a Taylor GRU into OUT/run first)."),
    ] = None,
    max_horizon: Annotated[int, typer.Option(help="Longest horizon, in steps.", min=1)] = 336,
    force: Annotated[bool, typer.Option(help="Replace results already in --out.")] = False,
) -> None:
    """A forecaster's error against horizon: the fed-back rollout beside the teacher-forced one step and
    the seasonal naive, and its 80 % interval's width and coverage."""
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve.training.commands import horizon_command

    horizon_command(**options)


@app.command()
def export(
    runs: Annotated[list[Path], typer.Argument(help="Run folders written by `seqserve train`.")],
    repository: Annotated[Path, typer.Option(help="Model repository: <repo>/<model>/<version>/.")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the run folder's name).")] = None,
    version: Annotated[
        int | None, typer.Option(help="Version (default: one above the highest present).", min=1)
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(
            help="'int8': also write a statically quantized model named <name>-int8 (never the fp32 "
            "model's default), with its speed measured beside fp32."
        ),
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = DEFAULT_OPSET,
    force: Annotated[bool, typer.Option(help="Overwrite a version that exists.")] = False,
) -> None:
    """Export run folders to ONNX under the model contract, check parity, write them into a repository."""
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve.export.commands import export_command

    export_command(**options)


@app.command()
def recalibrate(
    repository: Annotated[Path, typer.Option(help="Model repository: <repo>/<model>/<version>/.")],
    model: Annotated[str, typer.Option(help="Forecaster name.")],
    data: Annotated[
        Path,
        typer.Option(help="Recent history CSV: timestamp,value (one series) or series,timestamp,value."),
    ],
    window: Annotated[
        int | None,
        typer.Option(
            help="Score the forecasts from every origin in each series' last WINDOW observations (default: "
            "two of the model's longest calendar cycle or two horizons, whichever is longer).",
            min=1,
        ),
    ] = None,
    level: Annotated[float, typer.Option(help="The interval level to make true, inside (0, 1).")] = 0.8,
    version: Annotated[int, typer.Option(help="Recalibrate this version; 0 is the highest.")] = 0,
) -> None:
    """Write a forecaster's next version with its intervals rescaled so they cover LEVEL of the recent
    history's values (the same graph; servers polling the repository pick it up)."""
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve.export.recalibration import recalibrate_command

    recalibrate_command(**options)


@app.command()
def inspect(
    model: Annotated[
        Path, typer.Argument(help="An ONNX graph with recurrent state as inputs and outputs (model.onnx).")
    ],
    declaration: Annotated[
        Path | None,
        typer.Option(
            help="A declaration.json, whole or only the lines inspect asked for; the rest is inferred "
            "(default: the declaration.json beside the model, if any)."
        ),
    ] = None,
    write: Annotated[
        Path | None,
        typer.Option(
            help="<repository>/<name>/<version>: copy the model there with its resolved declaration.json, "
            "ready for `seqserve serve --repository <repository>`."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="With --write: replace a version that exists.")] = False,
) -> None:
    """Show what seqserve makes of an ONNX graph: states, stream inputs, constants, outputs, the
    declaration it would write, and whether streams can share a call. Exit 2 when something is ambiguous."""
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve.export.inspect import inspect_command

    inspect_command(**options)


@app.command()
def models(
    repository: Annotated[Path, typer.Option(help="Model repository to list.")],
) -> None:
    """List the models in a repository: versions, task, cell, precision, accuracy, parity."""
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve.export.commands import models_command

    models_command(**options)


@app.command()
def serve(
    repository: Annotated[Path, typer.Option(help="Model repository to serve.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="gRPC port; 0 picks a free one.")] = 50051,
    metrics_port: Annotated[int, typer.Option(help="Prometheus /metrics port; -1 disables.")] = 9090,
    device: Annotated[str, typer.Option(help="cpu or cuda (falls back to cpu with a warning).")] = "cpu",
    max_batch: Annotated[int, typer.Option(help="Most rows in one onnxruntime call.", min=1)] = 64,
    max_delay_ms: Annotated[
        float,
        typer.Option(
            help="Longest a chunk waits for other active streams' chunks to fill a batch; a lone active "
            "stream never waits; 0 never holds a chunk back.",
            min=0.0,
        ),
    ] = 2.0,
    max_streams: Annotated[int, typer.Option(help="Most open streams at once.", min=1)] = 200,
    max_accept_delay_ms: Annotated[
        float,
        typer.Option(
            help="Refuse new streams (RESOURCE_EXHAUSTED, with a retry hint) while a new call waits longer "
            "than this to be accepted, as measured over the last 0.5 s; 0 never refuses for it.",
            min=0.0,
        ),
    ] = 100.0,
    max_chunk_steps: Annotated[int, typer.Option(help="Most time steps in one chunk.", min=1)] = 4096,
    max_message_bytes: Annotated[int, typer.Option(help="Largest request message.", min=1024)] = 4 << 20,
    idle_timeout_s: Annotated[float, typer.Option(help="Default idle timeout of a stream.")] = 30.0,
    max_idle_timeout_s: Annotated[float, typer.Option(help="Largest idle timeout a client may ask.")] = 300.0,
    grace_s: Annotated[float, typer.Option(help="On SIGTERM, how long open streams may finish.")] = 10.0,
    inference_threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads per session.")] = 1,
    calls_in_flight: Annotated[
        int,
        typer.Option(
            help="onnxruntime calls running at once per model version: 2 lets one batch compute while the "
            "next gathers.",
            min=1,
        ),
    ] = 2,
    inline_max_us: Annotated[
        float,
        typer.Option(
            help="A call runs on the event loop, without a thread hop, when no other call is in flight and "
            "calls of its size took at most this long (microseconds); 0 always uses the executor.",
            min=0.0,
        ),
    ] = 500.0,
    workers: Annotated[
        int,
        typer.Option(
            help="Server processes on one port (SO_REUSEPORT), each with its own event loop, batcher and "
            "onnxruntime session; --max-streams is split across them, /metrics sums them.",
            min=1,
        ),
    ] = 1,
    state_key_file: Annotated[
        Path | None,
        typer.Option(
            help="Key(s) that sign stream checkpoints: one per line, current then previous (still accepted, "
            "for rotation). Without it (or $SEQSERVE_STATE_KEYS) checkpoints and resumes are refused.",
        ),
    ] = None,
    checkpoint_ttl_s: Annotated[
        float, typer.Option(help="How long a checkpoint token stays valid.", min=1.0)
    ] = 3600.0,
    poll_repository_s: Annotated[
        float,
        typer.Option(
            help="Rescan the repository this often: new versions load beside the running ones, removed "
            "ones unload after their last stream; 0 reads it once at start.",
            min=0.0,
        ),
    ] = 0.0,
    metrics_host: Annotated[
        str, typer.Option(help="Address /metrics listens on (images: 0.0.0.0, for Prometheus to scrape).")
    ] = "127.0.0.1",
    tls_cert: Annotated[
        Path | None, typer.Option(help="Server certificate chain (PEM): serve TLS; reloaded when it changes.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Private key (PEM) of --tls-cert.")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="CA bundle (PEM): require client certificates it signed (mTLS).")
    ] = None,
    auth_tokens_file: Annotated[
        Path | None,
        typer.Option(
            help="Bearer tokens, one a line as name:token (or a bare token); SEQSERVE_AUTH_TOKENS adds more. "
            "Every inference RPC then needs one; health and reflection stay open."
        ),
    ] = None,
    max_streams_per_token: Annotated[
        int, typer.Option(help="Most open streams per token name; 0: only --max-streams.", min=0)
    ] = 0,
    max_generate_tokens: Annotated[
        int, typer.Option(help="Most tokens one Generate call may ask for (language models).", min=1)
    ] = 2048,
    max_forecast_steps: Annotated[
        int, typer.Option(help="Most steps one forecast may ask for (forecasters).", min=1)
    ] = 2016,
    max_beam: Annotated[
        int, typer.Option(help="Widest beam one Translate may ask for (sequence-to-sequence models).", min=1)
    ] = 16,
    max_decode_steps: Annotated[
        int, typer.Option(help="Most output tokens one Translate may ask for per input (seq2seq).", min=1)
    ] = 200,
) -> None:
    """Serve every model in a repository over gRPC (streaming, classify, generate, health, reflection)."""
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve.service.server.commands import serve_command

    serve_command(**options)


@app.command()
def stream(
    target: Annotated[
        list[str],
        typer.Option(
            help="Server address HOST:PORT; repeat for failover targets: a stream whose server shuts down "
            "or drops goes on at the next one from its latest checkpoint."
        ),
    ] = ["127.0.0.1:50051"],  # noqa: B006 (typer reads the default, never mutates it)
    model: Annotated[str, typer.Option(help="Model name.")] = ...,
    version: Annotated[int, typer.Option(help="Pin a version; 0 is the server's default.")] = 0,
    dataset: Annotated[str | None, typer.Option(help="Shipped data set to stream.")] = None,
    data: Annotated[Path | None, typer.Option(help="Your own .ts, .npz or .csv file.")] = None,
    split: Annotated[
        str,
        typer.Option(help="train, validation, test, or all (a --data file: every sequence, in file order)."),
    ] = "test",
    seed: Annotated[int, typer.Option(help="Seed the data set was built with.")] = 0,
    chunk: Annotated[int, typer.Option(help="Time steps per chunk.", min=1)] = 8,
    concurrency: Annotated[int, typer.Option(help="Concurrent streams.", min=1)] = 8,
    limit: Annotated[int | None, typer.Option(help="Stream at most this many sequences.")] = None,
    checkpoint_every_chunks: Annotated[
        int,
        typer.Option(
            help="Ask for a state checkpoint every N chunks (0: never); a resume resends at most N chunks.",
            min=0,
        ),
    ] = 0,
    chunk_interval_ms: Annotated[
        float,
        typer.Option(
            help="Send each stream's chunks no faster than one per this many ms, as a device sampling at "
            "a fixed rate does (0: as fast as answers come); paced streams last through failover drills.",
            min=0,
        ),
    ] = 0.0,
    output: Annotated[
        Path | None,
        typer.Option(help="Also write each sequence's (or step's) label and probabilities: .jsonl or .csv."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace the --output file if it exists.")] = False,
    tls: TlsFlag = False,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_server_name: TlsServerName = None,
    token: Token = None,
) -> None:
    """Stream a data set's sequences chunk by chunk and report accuracy, throughput and latency."""
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve.service.client.commands import stream_command

    stream_command(**options)


@app.command()
def classify(
    target: Annotated[str, typer.Option(help="Server address HOST:PORT.")] = "127.0.0.1:50051",
    model: Annotated[str, typer.Option(help="Model name.")] = ...,
    version: Annotated[int, typer.Option(help="Pin a version; 0 is the server's default.")] = 0,
    dataset: Annotated[str | None, typer.Option(help="Shipped data set to classify.")] = None,
    data: Annotated[Path | None, typer.Option(help="Your own .ts, .npz or .csv file.")] = None,
    split: Annotated[
        str,
        typer.Option(help="train, validation, test, or all (a --data file: every sequence, in file order)."),
    ] = "test",
    seed: Annotated[int, typer.Option(help="Seed the data set was built with.")] = 0,
    batch: Annotated[int, typer.Option(help="Sequences per Classify call.", min=1)] = 32,
    output: Annotated[
        Path | None,
        typer.Option(help="Also write each sequence's (or step's) label and probabilities: .jsonl or .csv."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace the --output file if it exists.")] = False,
    tls: TlsFlag = False,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_server_name: TlsServerName = None,
    token: Token = None,
) -> None:
    """Classify whole sequences with the unary Classify RPC and report accuracy."""
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve.service.client.commands import classify_command

    classify_command(**options)


@app.command()
def predict(
    repository: Annotated[Path, typer.Option(help="Model repository written by `seqserve export`.")],
    model: Annotated[str, typer.Option(help="Model name in the repository.")],
    version: Annotated[int, typer.Option(help="Pin a version; 0 is the default (the highest).", min=0)] = 0,
    dataset: Annotated[str | None, typer.Option(help="Shipped data set to predict.")] = None,
    data: Annotated[Path | None, typer.Option(help="Your own .ts, .npz or .csv file.")] = None,
    split: Annotated[
        str,
        typer.Option(help="train, validation, test, or all (a --data file: every sequence, in file order)."),
    ] = "all",
    seed: Annotated[int, typer.Option(help="Seed the data set's splits were built with.")] = 0,
    output: Annotated[
        Path | None,
        typer.Option(help="File for the predictions, .jsonl or .csv (default: JSON Lines on stdout)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace the --output file if it exists.")] = False,
    horizon: Annotated[int, typer.Option(help="Forecasters: steps to forecast.", min=1)] = 48,
    quantiles: Annotated[
        str, typer.Option(help="Forecasters: quantile levels, comma-separated.")
    ] = "0.1,0.5,0.9",
    plot: Annotated[Path | None, typer.Option(help="Forecasters: also draw the forecasts (.png).")] = None,
    beam: Beam = 4,
    nbest: Nbest = 1,
    max_steps: MaxSteps = 0,
    length_penalty: LengthPenalty = 0.0,
) -> None:
    """Predict offline, no server: labels and probabilities per sequence (or per step) for your data; a
    forecaster's forecasts of each series in a history CSV (--data), as `seqserve forecast` writes them; a
    seq2seq model's outputs for a file of words (--data, one a line), as `seqserve translate` writes them."""
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve import translations

    if translations.is_seq2seq(repository, model, version):
        _predict_translations(options)
        return
    from seqserve.service.offline import predict_command

    for name in ("beam", "nbest", "max_steps", "length_penalty"):
        del options[name]
    predict_command(**options)


def _predict_translations(options: dict) -> None:
    from seqserve.console import fail
    from seqserve.export.seq2seq_predict import predict_command
    from seqserve.predictions import OutputError

    if options["dataset"] is not None or options["data"] is None:
        fail(f"model {options['model']} is a seq2seq model: give its words with --data (one a line)")
    keep = ("repository", "model", "version", "data", "output", "force", "beam", "nbest", "max_steps")
    try:
        text = predict_command(
            **{name: options[name] for name in keep}, words=[], length_penalty=options["length_penalty"]
        )
    except (OutputError, ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(text, nl=False)


@app.command()
def forecast(
    target: Annotated[str, typer.Option(help="Server address HOST:PORT.")] = "127.0.0.1:50051",
    model: Annotated[str, typer.Option(help="Forecaster name.")] = ...,
    version: Annotated[int, typer.Option(help="Pin a version; 0 is the server's default.")] = 0,
    data: Annotated[
        Path, typer.Option(help="History CSV: timestamp,value (one series) or series,timestamp,value.")
    ] = ...,
    horizon: Annotated[
        int, typer.Option(help="Steps to forecast after each series' last value.", min=1)
    ] = 48,
    quantiles: Annotated[str, typer.Option(help="Quantile levels, comma-separated.")] = "0.1,0.5,0.9",
    output: Annotated[
        Path | None, typer.Option(help="Forecast CSV: series,timestamp,mean,q<level>... (default: stdout).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Also draw history, forecast and band (.png).")] = None,
    force: Annotated[bool, typer.Option(help="Replace the --output file if it exists.")] = False,
    tls: TlsFlag = False,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_server_name: TlsServerName = None,
    token: Token = None,
) -> None:
    """Forecast each series of a history file with a forecaster on the server (one Forecast call)."""
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve.service.client.commands import forecast_command

    forecast_command(**options)


@app.command()
def translate(
    words: Annotated[list[str] | None, typer.Argument(help="Words to translate (and/or --data).")] = None,
    target: Annotated[str, typer.Option(help="Server address HOST:PORT.")] = "127.0.0.1:50051",
    model: Annotated[str, typer.Option(help="Sequence-to-sequence model name.")] = ...,
    version: Annotated[int, typer.Option(help="Pin a version; 0 is the server's default.")] = 0,
    data: Annotated[Path | None, typer.Option(help="A file of inputs, one a line.")] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Write .jsonl (or .csv) instead of lines of input<TAB>output on stdout."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace the --output file if it exists.")] = False,
    beam: Beam = 4,
    nbest: Nbest = 1,
    max_steps: MaxSteps = 0,
    length_penalty: LengthPenalty = 0.0,
    tls: TlsFlag = False,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_server_name: TlsServerName = None,
    token: Token = None,
) -> None:
    """Translate with a sequence-to-sequence model on the server (spelling to pronunciation): one line
    per input, the input, a tab, the output's symbols separated by spaces."""
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve.service.client.commands import translate_command

    translate_command(**options)


@app.command()
def generate(
    target: Annotated[str, typer.Option(help="Server address HOST:PORT.")] = "127.0.0.1:50051",
    model: Annotated[str, typer.Option(help="Language model name.")] = ...,
    version: Annotated[int, typer.Option(help="Pin a version; 0 is the server's default.")] = 0,
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = ...,
    max_tokens: Annotated[int, typer.Option(help="Characters to generate.", min=1)] = 400,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.", min=0.0)] = 0.8,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely; 0 is all.", min=0)] = 0,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same text.", min=0)] = 0,
    stop: Annotated[
        list[str] | None, typer.Option(help="Stop once the text ends with this (repeatable).")
    ] = None,
) -> None:
    """Continue a prompt with a language model on the server, printing the text as it arrives."""
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve.service.client.commands import generate_command

    generate_command(**options)


@app.command()
def health(
    target: Annotated[str, typer.Option(help="Server address HOST:PORT.")] = "127.0.0.1:50051",
    service: Annotated[str, typer.Option(help="Health service name; empty is the whole server.")] = "",
    timeout_s: Annotated[float, typer.Option(help="Seconds to wait for the answer.", min=0.1)] = 3.0,
    tls: TlsFlag = False,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_server_name: TlsServerName = None,
) -> None:
    """gRPC health check: exit 0 when the service is SERVING, 1 otherwise (Docker HEALTHCHECK).

    Health needs no token; over TLS give --tls-ca (and --tls-cert/--tls-key when the server requires mTLS).
    """
    options = dict(locals())  # before the import, which would add itself to locals()
    from seqserve.service.client.health_probe import health_command

    health_command(**options)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
