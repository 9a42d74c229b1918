"""Kafka client security: the keyword arguments every client gets, and a fail-fast login check.

Every ``KafkaProducer``, ``KafkaConsumer`` and ``KafkaAdminClient`` that freshrec builds merges in
:func:`kafka_security_settings`, so TLS and SASL are configured in exactly one place.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any, Protocol

from consumer.config import Secret
from consumer.exceptions import KafkaSecurityError

__all__ = ["SecuritySettings", "check_kafka_login", "kafka_security_settings"]

log = logging.getLogger(__name__)


class SecuritySettings(Protocol):
    """The settings read here (``WorkerConfig`` has them all)."""

    @property
    def security_protocol(self) -> str: ...
    @property
    def sasl_mechanism(self) -> str: ...
    @property
    def sasl_username(self) -> str: ...
    @property
    def sasl_password(self) -> Secret: ...
    @property
    def ssl_cafile(self) -> str: ...
    @property
    def ssl_certfile(self) -> str: ...
    @property
    def ssl_keyfile(self) -> str: ...
    @property
    def ssl_check_hostname(self) -> bool: ...


def kafka_security_settings(config: SecuritySettings) -> dict[str, Any]:
    """kafka-python's keyword arguments for ``config``'s protocol, mechanism and TLS files.

    Only what the protocol uses is set; the rest keeps kafka-python's defaults. The result holds
    the password itself: hand it to a client, never to a log line.

    Examples
    --------
    >>> from consumer.config import WorkerConfig
    >>> kafka_security_settings(WorkerConfig())
    {'security_protocol': 'PLAINTEXT'}
    >>> s = kafka_security_settings(WorkerConfig(
    ...     security_protocol="SASL_SSL", sasl_username="app", sasl_password=Secret("pw"),
    ...     ssl_cafile="/etc/kafka/ca.pem"))
    >>> s["sasl_mechanism"], s["sasl_plain_username"], s["sasl_plain_password"], s["ssl_cafile"]
    ('SCRAM-SHA-512', 'app', 'pw', '/etc/kafka/ca.pem')
    >>> s["ssl_check_hostname"], s["ssl_certfile"]
    (True, None)
    """
    protocol = config.security_protocol
    settings: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        # kafka-python takes SCRAM credentials through its sasl_plain_* arguments too.
        settings["sasl_mechanism"] = config.sasl_mechanism
        settings["sasl_plain_username"] = config.sasl_username
        settings["sasl_plain_password"] = config.sasl_password.reveal()
    if protocol in ("SSL", "SASL_SSL"):
        settings["ssl_check_hostname"] = config.ssl_check_hostname
        settings["ssl_cafile"] = config.ssl_cafile or None
        settings["ssl_certfile"] = config.ssl_certfile or None
        settings["ssl_keyfile"] = config.ssl_keyfile or None
    return settings


def check_kafka_login(
    config: SecuritySettings, bootstrap_servers: str, *, timeout_s: float = 20.0
) -> None:
    """Connect once with ``config``'s security; raise :class:`KafkaSecurityError` as soon as the
    broker refuses the login or the TLS handshake fails. A no-op for PLAINTEXT.

    kafka-python treats a refused login like a broker that is down: every client retries it
    quietly until its own timeout, so a worker with a wrong password would sit there looking
    healthy, or die minutes later of a timeout that never says why. It reports each failure only
    to its loggers, so this check listens there, to the records of its own client's IO thread:

    - ``SaslAuthenticationFailedError`` or ``UnsupportedSaslMechanismError``: refused;
    - a certificate that does not verify, or names another host: TLS failed;
    - the broker closing an established connection, :data:`_CLOSED_TRIES` times in a row.
      That is how a refused login mostly shows: the broker sends its refusal together with the
      close (after its ``connection.failed.authentication.delay.ms``), and kafka-python
      3.0.12's transports drop the data of a read that also meets the end of the stream.

    A broker that does not answer at all within ``timeout_s`` is not an error here: the clients
    that follow wait for it as they always have. The check needs the ``kafka`` loggers to pass
    WARNING records (the CLI sets exactly that).
    """
    if config.security_protocol == "PLAINTEXT":
        return
    from kafka import KafkaAdminClient

    client_id = f"freshrec-login-check-{secrets.token_hex(4)}"
    watch = _LoginFailureWatch(io_thread_marker=client_id)
    done = threading.Event()
    watch.on_failure = done.set
    clients: list[Any] = []
    connected = threading.Event()

    def network_client(**configs: Any) -> Any:
        # kafka-python's documented hook for the network client: keeping a handle on it lets
        # the check stop the admin client's retries, which its constructor runs.
        client = KafkaAdminClient.DEFAULT_CONFIG["kafka_client"](**configs)
        clients.append(client)
        return client

    def connect() -> None:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap_servers.split(","),
                client_id=client_id,
                bootstrap_timeout_ms=int(timeout_s * 1000),
                kafka_client=network_client,
                **kafka_security_settings(config),
            )
            connected.set()
            admin.close()
        except Exception as err:  # anything but a refusal is for the clients that follow
            log.debug("login check did not complete: %s", type(err).__name__)
        finally:
            done.set()

    kafka_log = logging.getLogger("kafka")
    kafka_log.addHandler(watch)
    try:
        thread = threading.Thread(target=connect, name=client_id, daemon=True)
        thread.start()
        done.wait(timeout_s + 5.0)
        if watch.kind is not None:
            for client in clients:
                client.close()
            thread.join(5.0)
    finally:
        kafka_log.removeHandler(watch)
    if watch.kind is not None:
        raise KafkaSecurityError(_explain(config, bootstrap_servers, watch))
    if connected.is_set():
        log.info("%s (%s) accepted the login", bootstrap_servers, config.security_protocol)
    else:
        log.warning("no Kafka broker answered at %s within %.0f s", bootstrap_servers, timeout_s)


# Connections the broker closes in a row, right after they were set up, that count as a refusal.
_CLOSED_TRIES = 3


class _LoginFailureWatch(logging.Handler):
    """Remembers the first refusal or TLS failure that one client's IO thread logs."""

    def __init__(self, io_thread_marker: str) -> None:
        super().__init__(level=logging.DEBUG)
        self.io_thread_marker = io_thread_marker
        self.kind: str | None = None
        self.reason = ""
        self.on_failure: Callable[[], object] | None = None
        self._closed: list[BaseException] = []  # held, so that no two share an id

    def emit(self, record: logging.LogRecord) -> None:
        if self.kind is not None or self.io_thread_marker not in (record.threadName or ""):
            return
        from kafka import errors

        text = record.getMessage()
        for err in _args(record):
            if isinstance(err, errors.SaslAuthenticationFailedError):
                return self._found("authentication", _broker_message(err))
            if isinstance(err, errors.UnsupportedSaslMechanismError):
                return self._found("mechanism", str(err))
            if isinstance(err, errors.KafkaConnectionError) and "socket disconnected" in str(err):
                # The same error shows in several records of one connection: count it once.
                if not any(seen is err for seen in self._closed):
                    self._closed.append(err)
                if len(self._closed) >= _CLOSED_TRIES:
                    return self._found("closed", f"{len(self._closed)} connections in a row")
        if "CERTIFICATE_VERIFY_FAILED" in text or "Hostname mismatch" in text:
            return self._found("tls", _tls_reason(text))
        return None

    def _found(self, kind: str, reason: str) -> None:
        self.kind, self.reason = kind, reason
        if self.on_failure is not None:
            self.on_failure()


def _args(record: logging.LogRecord) -> tuple[Any, ...]:
    args = record.args
    if isinstance(args, tuple):
        return args
    return () if args is None else (args,)


def _broker_message(err: BaseException) -> str:
    # "[Error 58] SaslAuthenticationFailedError: SaslAuthenticationFailedError: <broker's text>"
    return str(err).rsplit(": ", 1)[-1].strip() or type(err).__name__


def _tls_reason(text: str) -> str:
    for marker in ("certificate verify failed", "CERTIFICATE_VERIFY_FAILED", "Hostname mismatch"):
        at = text.find(marker)
        if at >= 0:
            return text[at:].split(" (_ssl.c", 1)[0].rstrip(")").strip()
    return text


def _explain(config: SecuritySettings, bootstrap_servers: str, watch: _LoginFailureWatch) -> str:
    where = f"{bootstrap_servers} ({config.security_protocol})"
    login = f"the SASL {config.sasl_mechanism} login of user {config.sasl_username!r}"
    check = "check FRESHREC_SASL_USERNAME and FRESHREC_SASL_PASSWORD or --sasl-password-file"
    if watch.kind == "authentication":
        return f"Kafka authentication failed: {where} refused {login} ({watch.reason}); {check}"
    if watch.kind == "mechanism":
        return (
            f"Kafka authentication failed: {where} does not enable SASL {config.sasl_mechanism}; "
            "check --sasl-mechanism"
        )
    if watch.kind == "closed" and config.security_protocol.startswith("SASL_"):
        return (
            f"Kafka authentication failed: {where} closed {watch.reason} during {login}, as "
            f"brokers do after a refused login; {check}, and that the listener speaks "
            f"{config.security_protocol}"
        )
    if watch.kind == "closed":
        return (
            f"TLS connection to {where} failed: the broker closed {watch.reason} after the "
            "handshake; does the listener want a client certificate (--ssl-certfile)?"
        )
    return (
        f"TLS connection to {where} failed: {watch.reason}; check --ssl-cafile (the CA that "
        "signed the brokers' certificates) and --ssl-check-hostname"
    )
