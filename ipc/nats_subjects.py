"""The NATS subjects and JetStream names of one system (`<stream>.<system>.…`).

- `<stream>.<system>.run.<agent>` (JetStream, work queue): run frames for `agent`; one durable pull consumer
  per agent, shared by its replicas on every host.
- `<stream>.<system>.result` (JetStream, work queue): every remote run's reply; one durable consumer, the
  supervisor's.
- `<stream>.<system>.chunk.<run id>` (core NATS): stream chunks of a run (best effort, like the socket's).
- `<stream>.<system>.hosts` (core NATS): each host's periodic report of its processes.
- `<stream>.<system>.control` (core NATS request/reply): control requests of remote clients (`send`, …).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Subjects:
    # Invariant: both are NATS tokens: letters, digits, '_' or '-' (no '.', '*', '>' or spaces).
    stream: str
    system: str

    @property
    def prefix(self) -> str:
        return f"{self.stream}.{self.system}"

    def run(self, agent: str) -> str:
        return f"{self.prefix}.run.{agent}"

    @property
    def result(self) -> str:
        return f"{self.prefix}.result"

    def chunk(self, run_id: str) -> str:
        return f"{self.prefix}.chunk.{run_id}"

    @property
    def chunks(self) -> str:
        return f"{self.prefix}.chunk.*"

    @property
    def hosts(self) -> str:
        return f"{self.prefix}.hosts"

    @property
    def control(self) -> str:
        return f"{self.prefix}.control"

    def consumer(self, agent: str) -> str:
        """The durable pull consumer of `agent`'s runs (shared by every replica on every host)."""
        return f"{self.system}_run_{agent}"

    @property
    def results_consumer(self) -> str:
        return f"{self.system}_results"

    @property
    def stream_subjects(self) -> list[str]:
        """What the stream captures (every system of this stream): runs and results, not chunks or control."""
        return [f"{self.stream}.*.run.*", f"{self.stream}.*.result"]
