"""`python -m laffi ...` for the data-parallel tests, started by torchrun or `accelerate launch`, with two test hooks.

FSDP_ON_CPU=1: accelerate prepares FSDP only on GPU-like devices; on CPU processes it sets MULTI_CPU even when the
environment asks for FSDP (ACCELERATE_USE_FSDP=true and the FSDP_* settings, as `accelerate launch --config_file
fsdp.yaml` sets them). PyTorch's FSDP 2 itself runs on CPU with gloo, so this only turns accelerate's state to FSDP
after it has set up the process group, with the plugin read from that same environment; everything else
(accelerate's `fsdp2_prepare_model`, clipping, no_sync, save_state, laffi's loop) is the code a GPU run uses.

EXIT_AFTER_CHECKPOINT=1: every process exits (status 3) right after the run's first checkpoint: a crash, for the
resume tests.

RECORD_LOADS=DIR: each process that reads model weights touches DIR/rank<RANK> (FSDP's rank-0 loading test).
"""

import os
import sys

from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = Accelerator.__init__


def _init_as_fsdp(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    # Both singletons: AcceleratorState copies PartialState's fields each time it is constructed again.
    PartialState._shared_state["distributed_type"] = self.state.distributed_type = DistributedType.FSDP
    self.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* environment


def _exit_after_checkpoint() -> None:
    from laffi.training import loop as training

    checkpoint = training._checkpoint

    def checkpoint_then_exit(*args, **kwargs):
        checkpoint(*args, **kwargs)
        os._exit(3)

    training._checkpoint = checkpoint_then_exit


def _record_loads(folder: str) -> None:
    """Each process that reads model weights (`from_pretrained`) leaves a file named after its rank in `folder`."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    read = AutoModelForCausalLM.from_pretrained.__func__

    def recorded(cls, *args, **kwargs):
        Path(folder, f"rank{os.environ.get('RANK', '0')}").touch()
        return read(cls, *args, **kwargs)

    AutoModelForCausalLM.from_pretrained = classmethod(recorded)


if __name__ == "__main__":
    if os.environ.get("RECORD_LOADS"):
        _record_loads(os.environ["RECORD_LOADS"])
    if os.environ.get("FSDP_ON_CPU") == "1":
        Accelerator.__init__ = _init_as_fsdp
    if os.environ.get("EXIT_AFTER_CHECKPOINT") == "1":
        _exit_after_checkpoint()
    from laffi.cli import main

    main(sys.argv[1:])
