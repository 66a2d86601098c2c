"""What the Python baselines of `flashattn bench` share: the line protocol of bench/baselines/worker.ts (one JSON
object per line on stdout) and the rule for how many runs a case gets, the same as runsFor in bench/ours.ts."""
import json
import sys


def emit(obj):
    """One protocol line on stdout, flushed at once (the TypeScript side waits for it)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def one_line(text, limit=240):
    """An error text as one line of at most `limit` characters, for a row's reason."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def requests():
    """The case requests on stdin, until {"op": "quit"} or EOF."""
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "quit":
            return
        yield req


def runs_for(estimate_ms, req):
    """None when one warm run is over half the budget (that run is the figure), else (warm-up runs, timed runs):
    a warm-up of at most a quarter of the budget and as many timed runs as fit it, between min_iters and iters."""
    budget = req["budget_ms"]
    if estimate_ms > budget / 2:
        return None
    per = max(estimate_ms, 1e-3)
    return max(1, min(req["warmup"], int(budget / 4 / per))), max(req["min_iters"], min(req["iters"], int(budget / per)))


def plain_attention_only(c):
    """A refusal for a case with a model's window, softcap or ALiBi (bench --model): this baseline times plain
    attention, and timing it on such a case would compare a different problem."""
    features = [words for key, words in (("window", "sliding window"), ("softcap", "logit softcap"), ("alibi", "ALiBi"))
                if c.get(key)]
    if not features:
        return None
    return {"status": "unsupported",
            "reason": "this baseline times plain attention; the model's %s would make it another problem" % ", ".join(features)}
