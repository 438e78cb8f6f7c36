"""A Flower Grid that hands each message straight to a ClientApp in this process.

The simulation fallback when Ray, which Flower's simulation engine runs on, is missing or too
heavy: the ServerApp, its strategy (FedAvg's own sampling and aggregation code), the Messages and
the ClientApp are all Flower's; only the transport is a function call, one node after another.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


class LoopbackGrid(Grid):
    """num_nodes nodes, each with node_config {"partition-id": i, "num-partitions": num_nodes}
    (as Flower's simulation gives its virtual nodes), all running `client_app`."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: dict | None = None) -> None:
        run_id = secrets.randbits(63)
        self._run = Run.create_empty(run_id=run_id)
        # Messages take their run and sender from the process's task identity (flwr 1.42), as
        # in Flower's own in-process simulation entry point.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 1
        self.client_app = client_app
        self.contexts = {
            100 + i: Context(run_id=run_id, node_id=100 + i, state=RecordDict(),
                             node_config={"partition-id": i, "num-partitions": num_nodes},
                             run_config=dict(run_config or {}))
            for i in range(num_nodes)}
        self._replies: dict[str, Message] = {}
        self._sent = 0

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run the ClientApp on each message now; its reply waits for pull_messages."""
        ids = []
        for msg in messages:
            self._sent += 1
            ids.append(str(self._sent))
            self._replies[ids[-1]] = self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
