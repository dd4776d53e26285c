"""`base`: the model as it is, no fine-tuning: the row every fine-tuned method is compared with."""

from laffi.methods.common import Method

METHOD = Method("base", "no fine-tuning: the model as loaded", order=0)
