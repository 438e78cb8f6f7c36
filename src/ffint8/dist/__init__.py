"""FF-INT8 beyond one process: data-parallel (ddp), layer-pipelined (pipeline) training.

Both run on torch.distributed (gloo on CPU); see docs/distributed.md. Federated training on
Flower lives in ffint8.fleet.
"""
