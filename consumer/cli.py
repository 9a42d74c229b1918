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
    env_name,
)
from consumer.exceptions import FreshrecError

__all__ = ["main"]

log = logging.getLogger("freshrec")

_DESCRIPTION = """\
freshrec: a streaming recommender worker. It consumes click/purchase events from Kafka, keeps a
representation of every user that updates with each event, trains a small head online on top of
a frozen transformer encoder that embeds the item catalog, and publishes each affected user's
refreshed top-K to the recommendations topic."""


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Also keeps kafka-python's DEBUG lines out, one of which prints a client's whole
    # configuration, SASL password included.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # FAISS logs at INFO each optional SIMD build it cannot load, as a multi-line "error".
    logging.getLogger("faiss").setLevel(logging.WARNING)


def _env_default(name: str, default: str) -> str:
    return os.environ.get(env_name(name), default)


def _security(args: argparse.Namespace) -> WorkerConfig:
    """The security settings of a command that has only those (and --bootstrap-servers)."""
    given = {name: getattr(args, name) for name in SECURITY_SETTINGS if hasattr(args, name)}
    config: WorkerConfig = config_from_args(argparse.Namespace(**given))
    return config


# -- worker --------------------------------------------------------------------------------


def _cmd_worker(args: argparse.Namespace) -> int:
    from consumer.app import build_worker
    from consumer.security import check_kafka_login
    from serving.http import MetricsServer
    from serving.metrics import WorkerMetrics

    config: WorkerConfig = config_from_args(args)
    _setup_logging(config.log_level)
    log.info("settings: %s", describe(config))
    check_kafka_login(config, config.bootstrap_servers)
    metrics = WorkerMetrics()
    holder: dict[str, object] = {}
    server = MetricsServer(
        metrics.registry,
        host=config.metrics_host,
        port=config.metrics_port,
        is_alive=lambda: time.monotonic() - _last_step(holder) < 60,
        is_ready=lambda: bool(getattr(holder.get("worker"), "ready", False)),
    )
    server.start()
    log.info("metrics on %s (also /healthz, /readyz)", server.url)
    kw = build_worker(config, metrics=metrics)
    holder["worker"] = kw.worker

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: finishing the current batch, then stopping", signal.Signals(signum).name)
        kw.worker.stop()
        signal.signal(signum, signal.SIG_DFL)  # a second signal stops at once

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        kw.worker.bootstrap()
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
    )
    return 0


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


def _cmd_topics(args: argparse.Namespace) -> int:
    from kafka import KafkaAdminClient

    from consumer.security import check_kafka_login, kafka_security_settings
    from consumer.topics import ensure_topics

    config: WorkerConfig = config_from_args(args)
    check_kafka_login(config, config.bootstrap_servers)
    admin = KafkaAdminClient(
        bootstrap_servers=config.bootstrap_servers.split(","), **kafka_security_settings(config)
    )
    try:
        created = ensure_topics(admin, config)
    finally:
        admin.close()
    print("created: " + (", ".join(created) if created else "nothing (all topics exist)"))
    return 0


# -- replay --------------------------------------------------------------------------------


def _cmd_replay(args: argparse.Namespace) -> int:
    from consumer.replay import replay
    from consumer.security import check_kafka_login, kafka_security_settings

    _setup_logging("INFO")
    security = _security(args)
    check_kafka_login(security, args.bootstrap_servers)
    replay(
        dataset=args.dataset,
        bootstrap_servers=args.bootstrap_servers,
        kafka_settings=kafka_security_settings(security),
        topic_prefix=args.topic_prefix,
        rate=args.rate,
        limit=args.limit,
        items_only=args.items_only,
        events_only=args.events_only,
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

    _setup_logging("WARNING")
    security = _security(args)
    check_kafka_login(security, args.bootstrap_servers)
    watch(
        bootstrap_servers=args.bootstrap_servers,
        kafka_settings=kafka_security_settings(security),
        topic_prefix=args.topic_prefix,
        metrics_url=args.metrics_url,
        users=args.users,
        duration_s=args.duration,
    )
    return 0


# -- evaluate ------------------------------------------------------------------------------


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from consumer.evaluation import run_evaluation

    _setup_logging("INFO")
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
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freshrec",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser(
        "worker",
        help="run the streaming worker (events in, recommendations out)",
        description=_DESCRIPTION
        + "\n\nEvery setting below can also come from its environment variable; a flag wins.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(worker)
    worker.set_defaults(func=_cmd_worker)

    data = sub.add_parser("data", help="fetch a dataset into the local cache")
    data.add_argument("dataset", choices=["ml-100k"], help="MovieLens-100K from recbole==1.2.1")
    data.add_argument("--dir", default=None, help="cache directory [env FRESHREC_DATA_DIR]")
    data.set_defaults(func=_cmd_data)

    topics = sub.add_parser("topics", help="create freshrec's topics if they do not exist")
    add_arguments(topics)
    topics.set_defaults(func=_cmd_topics)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--bootstrap-servers",
        default=_env_default("bootstrap_servers", "127.0.0.1:9092"),
        help="Kafka bootstrap servers [env FRESHREC_BOOTSTRAP_SERVERS]",
    )
    common.add_argument(
        "--topic-prefix",
        default=_env_default("topic_prefix", "freshrec."),
        help="prefix of topic names [env FRESHREC_TOPIC_PREFIX]",
    )
    add_arguments(common, only=SECURITY_SETTINGS)

    replay = sub.add_parser(
        "replay",
        parents=[common],
        help="publish a dataset's items, then its events in time order",
        description="Publish the items of a dataset to the items topic, then its events to the "
        "events topic in timestamp order, as fast as possible or at --rate events/s.",
    )
    replay.add_argument("--dataset", choices=["ml-100k", "synthetic"], default="ml-100k")
    replay.add_argument("--rate", type=float, default=0.0, help="events/s (0: as fast as possible)")
    replay.add_argument("--limit", type=int, default=0, help="publish at most this many events")
    replay.add_argument("--items-only", action="store_true", help="publish the catalog only")
    replay.add_argument("--events-only", action="store_true", help="skip the catalog")
    replay.add_argument("--synthetic-items", type=int, default=10_000)
    replay.add_argument("--synthetic-events", type=int, default=200_000)
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument("--no-progress", action="store_true", help="no progress bar")
    replay.set_defaults(func=_cmd_replay)

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
    evaluate.set_defaults(func=_cmd_evaluate)

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
        print(f"freshrec: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
