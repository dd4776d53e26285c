"""vLLM's teardown of its parallel state, recorded in `vllm.EVENTS`."""

import vllm


def destroy_model_parallel() -> None:
    vllm.EVENTS.append("destroy_model_parallel")


def destroy_distributed_environment() -> None:
    vllm.EVENTS.append("destroy_distributed_environment")
