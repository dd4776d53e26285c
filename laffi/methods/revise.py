"""`laffi+revise`: answer-time use of a LaFFi adapter (trains nothing of its own).

The `laffi` adapter answers, predicts the feedback on its own answer (the laffi training prompt), and when that
feedback judges the answer incorrect and states another right answer, takes it; up to `answer.revise_rounds` rounds
(at least 1). The loop itself is `laffi.engines.generation.revise_answers`.
"""

from laffi.methods.common import Method

METHOD = Method("laffi+revise", "the laffi adapter answers, then revises with its own predicted feedback",
                reads_feedback=True, adapter_of="laffi", revise=True, order=70)
