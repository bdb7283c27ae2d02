"""The forked side of benchmarks/crash_safety.py: starting and killing runs in their own process groups,
the kill hooks a run installs in itself (around a store COMMIT, around an output's rename), the tiny
models the runs use, and the completeness check of a saved output."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fork_run(target, *args, log: Path) -> int:
    """Run target(*args) in a forked child in its own process group; returns its pid."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        try:
            os.setpgid(0, 0)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = target(*args) or 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported through the log and the exit code
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    try:
        os.setpgid(pid, pid)  # here too: a kill that comes before the child's own call still finds the group
    except OSError:
        pass
    return pid


def wait(pid: int, timeout: float = 600.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    kill_group(pid)
    return wait(pid)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def reap_group(pid: int) -> None:
    """Kill what is left of a killed run's group (lanes it started) and wait until none remain."""
    kill_group(pid)
    for _ in range(500):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


# -- inside the forked runs -------------------------------------------------------------------------------
def _hook(kill: dict | None) -> None:
    """Kill this run's process group at the kill's moment: before / after the n-th store COMMIT, or
    before / after an output's rename into place."""
    if not kill or kill["mode"] == "random":
        return
    suicide = lambda: os.killpg(0, signal.SIGKILL)  # noqa: E731
    if kill["mode"] == "commit":
        from crescendo.store import ResultStore

        real, seen = ResultStore._connect, [0]

        class Connection:  # a proxy that dies around COMMIT
            def __init__(self, conn):
                self._conn = conn

            def execute(self, query, *params):
                if query == "COMMIT":
                    seen[0] += 1
                    if seen[0] == kill["n"] and kill["when"] == "before":
                        suicide()
                    out = self._conn.execute(query, *params)
                    if seen[0] == kill["n"] and kill["when"] == "after":
                        suicide()
                    return out
                return self._conn.execute(query, *params)

            def __getattr__(self, name):
                return getattr(self._conn, name)

        def connect(store):
            real(store)
            store._conn = Connection(store._conn)

        ResultStore._connect = connect
    else:  # "rename": the output's atomic rename
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            if kill["when"] == "before":
                suicide()
            real_replace(src, dst, *a, **k)
            if kill["when"] == "after":
                suicide()

        os.replace = replace


def run_cli(argv: list[str], kill: dict | None) -> int:
    _hook(kill)
    from crescendo.cli import main

    return main(argv)


def run_holdout(plan: str, store: str, kill: dict | None) -> int:
    _hook(kill)
    sys.path.insert(0, str(HERE))
    import chooser_holdout

    chooser_holdout.measure(chooser_holdout.load_plans([plan]), store, None)
    return 0


def build_world(root: Path) -> int:
    """Tiny random LLaMAs (a word-level and a byte-level BPE tokenizer) and a corpus."""
    import torch
    from tokenizers import ByteLevelBPETokenizer, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.set_num_threads(1)
    words = [f"w{i}" for i in range(40)]
    rng = random.Random(5)
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    (root / "test.txt").write_text(text(2000))
    (root / "calib.txt").write_text(text(20000))
    word = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(
        {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="[UNK]")), unk_token="[UNK]")
    word.backend_tokenizer.pre_tokenizer = Whitespace()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text(200) for _ in range(20)], vocab_size=300, min_frequency=1,
                            special_tokens=["<|endoftext|>"])
    bpe = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    for name, tok in (("model", word), ("bpe", bpe)):
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
        LlamaForCausalLM(config).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    from crescendo.workflow import protocol_id, resolve_protocol

    spec = f"text:{root / 'test.txt'},{root / 'calib.txt'}"
    plan = {"seeds": [0, 1], "predictor_seed": 0, "predictors": ["auto"], "studies": [
        {"id": "T01", "model": str(root / "model"), "methods": ["magnitude:0.5", "rtn:w4"], "protocol": spec,
         "eval_windows": 1, "protocol_id": protocol_id(resolve_protocol(spec, eval_windows=1).name, "float32",
                                                       "float32")}]}
    (root / "plan.json").write_text(json.dumps(plan))
    return 0


def verify_output(path: str, fmt: str) -> int:
    """0 when a saved output is complete: `verify` for the formats it reads, every file for hf."""
    if fmt != "hf":
        from crescendo.export import verify

        return 0 if verify(path).ok else 1
    from crescendo.models.file_checks import safetensors_header

    needed = ("config.json", "model.safetensors", "crescendo.json", "tokenizer.json")
    if not all((Path(path) / n).is_file() for n in needed):
        return 1
    safetensors_header(Path(path) / "model.safetensors")
    json.loads((Path(path) / "crescendo.json").read_text())
    return 0
