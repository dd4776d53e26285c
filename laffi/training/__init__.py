"""LoRA training: the loop (`loop`), data-parallel training under accelerate (`distributed`), fast LoRA dropout
(`dropout`). A method's examples come from `laffi.methods`; this package only trains on them."""
