from vllm import LoRARequest

__all__ = ["LoRARequest"]
