"""The LLM annotator's endpoint backend against a real OpenAI-compatible server on loopback: `transformers serve`
started by the test with a tiny model (no mock). The tiny model is first taught, in a few seconds of training, to
reply in the annotator's form, so replies parse into records; a second run with the server stopped is answered from
the prompt cache (resume)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from laffi import prompts
from laffi.data import load_squad

REPLY = "Verdict: incorrect\nFeedback: The passage answers it."


def transformers_cli() -> str | None:
    exe = Path(sys.executable).with_name("transformers")
    return str(exe) if exe.exists() else shutil.which("transformers")


@pytest.fixture(scope="module")
def taught_model(tiny_model_dir, tmp_path_factory, excerpt_questions):
    """The tiny random model, trained to answer every annotator prompt with REPLY (so the reply is predictable)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from laffi import prompts
    from laffi.feedback import llm

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    shots = llm.select_examples(llm.read_jsonl(llm.default_examples_path(), llm.FeedbackRecord), 2, 0)
    seqs = []
    for q in excerpt_questions[:6]:
        prompt = tok(prompts.render(llm.messages(q, "", shots), tok), add_special_tokens=False)["input_ids"]
        target = tok(REPLY + "<|im_end|>", add_special_tokens=False)["input_ids"]
        seqs.append((torch.tensor([prompt + target]), torch.tensor(target)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    torch.manual_seed(0)

    def replies_exactly() -> bool:  # greedy decoding gives REPLY (and its end token) after every prompt
        with torch.no_grad():
            for ids, target in seqs:
                prompt = ids[:, : ids.shape[1] - len(target)]
                out = model.generate(prompt, max_new_tokens=len(target), do_sample=False)
                if out[0, prompt.shape[1]:].tolist() != target.tolist():
                    return False
        return True

    # Until it has learned: how many steps that takes depends on the CPU's floating-point kernels (80 were enough
    # on one machine and not on another).
    for step in range(400):
        if step % 40 == 0 and step and replies_exactly():
            break
        ids, target = seqs[step % len(seqs)]
        # Logits only where the reply is predicted (the vocabulary is 49k wide): seconds instead of minutes.
        logits = model(input_ids=ids, logits_to_keep=len(target) + 1).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert replies_exactly(), "the tiny model did not learn to reply REPLY"
    out = tmp_path_factory.mktemp("taught-model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_endpoint_backend_against_transformers_serve(taught_model, small_squad, tmp_path):
    cli = transformers_cli()
    if cli is None:
        pytest.skip("the `transformers` command is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "serve.log", "w")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([cli, "serve", str(taught_model), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    proc.kill()
                    pytest.fail(f"transformers serve did not start: {(tmp_path / 'serve.log').read_text()[-2000:]}")
                time.sleep(0.5)
        qs = load_squad(small_squad)[:4]
        preds = tmp_path / "preds.json"
        preds.write_text(json.dumps({q.id: "" for q in qs}))
        out = tmp_path / "llm.jsonl"
        args = [sys.executable, "-m", "laffi", "annotate", "--data", small_squad, "--predictions", preds, "--out",
                out, "--annotator", "llm", "--shots", "2", "--endpoint", f"http://127.0.0.1:{port}/v1",
                "--api-model", str(taught_model), "--concurrency", "2", "--max-new-tokens", "24"]  # fmt: skip
        r = subprocess.run(list(map(str, args)), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    failures = [json.loads(line) for line in out.with_suffix(".failures.jsonl").read_text().splitlines()]
    assert len(records) + len(failures) == 4
    assert len(records) >= 3, failures  # the taught model replies in the annotator's form
    gold = {q.id: q.answers[0] if q.answers else "" for q in qs}
    for rec in records:  # an incorrect verdict that states no answer ends with the gold one (llm.with_right_answer)
        assert (rec["verdict"], rec["feedback"]) == (
            "incorrect", f"The passage answers it. {prompts.right_answer_sentence(gold[rec['id']])}")
        assert rec["annotator"] == f"llm:{taught_model}" and rec["meta"]["backend"] == "endpoint"
        assert rec["meta"]["prompt_tokens"] > 300 and 0 < rec["meta"]["completion_tokens"] <= 24
        assert rec["meta"]["raw"].startswith("Verdict: incorrect") and not rec["meta"]["cached"]
    assert all(f["raw"] for f in failures)  # an unparsed reply is kept with its text

    # Resume: the server is gone, every prompt is in the cache, so nothing is requested and the output is the same.
    r = subprocess.run(list(map(str, args)), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(a["id"], a["feedback"]) for a in again] == [(b["id"], b["feedback"]) for b in records]
    assert all(a["meta"]["cached"] for a in again)
