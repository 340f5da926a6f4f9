"""The voice daemon: capture -> wake -> vad -> pipeline (a pure state machine) -> events, and its
life (service.py: signals, reload, reconnect) and configuration (config.py)."""

import signal

EARLY_SIGNALS: list = []  # signals that arrived before the Daemon could handle them


def catch_early_signals() -> None:
    """`paraedge run` calls this before any slow import: a SIGHUP or SIGTERM in the first second
    (systemd's ExecReload can send one) is kept for the Daemon instead of killing the process."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _frame: EARLY_SIGNALS.append(s))
