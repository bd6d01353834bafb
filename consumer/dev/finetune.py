"""``explainstream finetune``: a model trained on explanations that pass the grounding checks.

One command from a fresh clone (``make finetuned-model``): the dataset
(:mod:`consumer.dev.finetune_data`, or ``--dataset FILE``), each example rendered exactly
as the llama engine prompts (the model's chat template, the profile's system prompt and
facts, the answer after the symbol the engine writes itself, then end-of-turn); an F32
copy of the base model (llama.cpp's quantizer, dequantizing); training with llama.cpp's
trainer (:mod:`consumer.dev.finetune_train`, seeded, held-out loss before and after each
epoch); quantization back; and a GGUF whose metadata carries its provenance under
``explainstream.finetune.*`` (base and dataset sha256, settings, losses). A record of the
run lands beside it as ``<out>.json``, the dataset as ``<out>.dataset.jsonl``. Serve it
with ``MODEL_PATH=<out>``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from consumer.dev.finetune_data import (
    DatasetError,
    Example,
    dump_dataset,
    load_dataset,
    training_contexts,
    training_examples,
)
from consumer.dev.finetune_train import ROW_QUANTUM, EpochLoss, TrainSettings, train

__all__ = ["FinetuneSettings", "encode_examples", "finetune", "register"]

_QUANTIZATIONS = ("Q8_0", "Q4_1", "Q4_K_M", "F16", "F32")


@dataclass(frozen=True, slots=True)
class FinetuneSettings:
    """What to train on and how (``explainstream finetune --help`` explains each)."""

    out: str = "models/smollm2-135m-explainstream.gguf"
    base: str | None = None
    dataset: str | None = None
    contexts: int = 200
    model_answers: int = 60
    row_tokens: int = 256
    held_out: float = 0.1
    quantization: str = "Q8_0"
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        if self.contexts < 2 and self.dataset is None:
            raise ValueError("--contexts must be at least 2")
        if not 0 < self.held_out < 0.5:
            raise ValueError("--held-out must be between 0 and 0.5")
        if self.row_tokens < ROW_QUANTUM or self.row_tokens % ROW_QUANTUM:
            raise ValueError(f"--row-tokens must be a multiple of {ROW_QUANTUM}")
        if self.quantization not in _QUANTIZATIONS:
            raise ValueError(f"--quantization must be one of {', '.join(_QUANTIZATIONS)}")
        if self.train.epochs < 1 or not self.train.learning_rate > 0:
            raise ValueError("--epochs must be at least 1 and --learning-rate above 0")


@dataclass(frozen=True, slots=True)
class _Tokenizer:
    prompter: Any
    tokenize: Any
    eos: int
    pad: int


def _tokenizer(model_path: str) -> _Tokenizer:
    """The chat prompter and tokenizer the llama engine builds, from the vocabulary only."""
    import llama_cpp

    from consumer.engines import model as model_files
    from consumer.engines.llama.native import token_text, tokenize
    from consumer.engines.prompts import ChatPrompter

    model_files.init_llama_backend()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), params)
    if not model:
        raise SystemExit(f"finetune: cannot read the tokenizer of {model_path}")
    meta = model_files.model_metadata(model)
    vocab = llama_cpp.llama_model_get_vocab(model)
    bos = token_text(vocab, llama_cpp.llama_vocab_bos(vocab))
    eos_id = llama_cpp.llama_vocab_eos(vocab)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))

    def tok(text: str, special: bool = True) -> list[int]:
        first = special and add_bos and not (bos and text.startswith(bos))
        return tokenize(vocab, text.encode("utf-8"), first)

    template = meta.get("tokenizer.chat_template")
    if not template:
        raise SystemExit(f"finetune: {model_path} has no tokenizer.chat_template")
    prompter = ChatPrompter(
        template, bos_token=bos, eos_token=token_text(vocab, eos_id), tokenize=tok
    )
    pad = llama_cpp.llama_vocab_pad(vocab)
    # The model stays loaded (vocab only, a few MB): the closures above read its vocab.
    return _Tokenizer(prompter, tok, eos_id, eos_id if pad < 0 else pad)


def encode_examples(tokenizer: _Tokenizer, examples: list[Example]) -> list[list[int]]:
    """Token ids per example: the prompt as the engine encodes it (ending with the answer
    prefix), the rest of the answer as the model would generate it, and end-of-turn."""
    rows = []
    for ex in examples:
        prompt = tokenizer.prompter.encode(ex.profile, ex.context)
        rest = ex.explanation[len(prompt.answer_prefix) :]
        rows.append(prompt.tokens + tokenizer.tokenize(rest, special=False) + [tokenizer.eos])
    return rows


async def _model_answers(base: str, n: int, seed: int, threads: int) -> list[Example]:
    """Answers the base model writes for ``n`` fresh contexts, kept when the checks pass."""
    from consumer.config import Settings
    from consumer.core.grounding import check
    from consumer.engines import create_engine
    from consumer.engines.base import GenerationRequest
    from consumer.engines.profiles import prompt_instructions

    overrides: dict[str, Any] = {
        "engine": "llama",
        "model_path": base,
        "max_concurrent_requests": 4,
    }
    if threads:
        overrides["n_threads"] = threads
    engine = create_engine(Settings.from_env(**overrides))
    await engine.start()
    kept: list[Example] = []
    try:
        contexts = training_contexts(n, seed + 1000)

        async def one(i: int) -> None:
            profile, context = contexts[i]
            request = GenerationRequest(
                f"finetune-{i}", context, profile, max_tokens=120, temperature=0.7, seed=seed + i
            )
            text = (await engine.generate(request)).text.strip()
            prompt = prompt_instructions(profile)
            grounded = check(text, context, prompt).grounded
            if grounded and text.startswith(str(context.get("symbol", ""))):
                kept.append(Example(profile, context, text, "model"))

        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await engine.stop()
    return kept


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finetune(settings: FinetuneSettings, say: Any = print) -> dict[str, Any]:
    """Run the whole pipeline (module docstring); returns the run's record."""
    from consumer.dev.gguf_meta import gguf_fields, rewrite_with_metadata
    from consumer.dev.synthmodel import quantize
    from consumer.engines.model import default_model_path, file_sha256

    t_start = time.monotonic()
    base = settings.base or default_model_path()
    out = Path(settings.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    s = settings.train
    if settings.dataset:
        examples = load_dataset(settings.dataset)
    else:
        examples = training_examples(settings.contexts, seed=s.seed)
        if settings.model_answers:
            say(f"asking the base model for {settings.model_answers} answers ...")
            answers = asyncio.run(_model_answers(base, settings.model_answers, s.seed, s.threads))
            say(f"{len(answers)} of {settings.model_answers} model answers pass the checks")
            examples += answers
    dataset_path = str(out) + ".dataset.jsonl"
    dump_dataset(examples, dataset_path)
    tokenizer = _tokenizer(base)
    encoded = encode_examples(tokenizer, examples)
    # A row holds one example; the few longer than a row (long model answers) are left out
    # rather than doubling every row's cost.
    length = settings.row_tokens
    kept = [i for i, r in enumerate(encoded) if len(r) - 1 <= length]
    dropped = len(encoded) - len(kept)
    rows = [encoded[i] for i in kept]
    if len(rows) < 2:
        raise ValueError(f"fewer than 2 examples fit in rows of {length} tokens")
    order = list(range(len(rows)))
    random.Random(s.seed).shuffle(order)
    n_held = max(1, round(len(rows) * settings.held_out))
    held = [rows[i] for i in order[:n_held]]
    train_rows = [rows[i] for i in order[n_held:]]
    tokens = sum(len(r) for r in train_rows)
    say(
        f"{len(examples)} examples ({len(train_rows)} to train, {n_held} held out, {dropped} "
        f"longer than {length} tokens left out), {tokens} training tokens"
    )
    with tempfile.TemporaryDirectory(prefix="explainstream-finetune-", dir=out.parent) as tmp:
        f32 = os.path.join(tmp, "base-f32.gguf")
        trained = os.path.join(tmp, "trained-f32.gguf")
        say("F32 copy of the base model ...")
        quantize(base, f32, "F32", allow_requantize=True)
        t_train = time.monotonic()
        history = train(
            f32, trained, train_rows, held, length=length, pad=tokenizer.pad, settings=s,
            on_epoch=lambda e: say(_epoch_line(e)),
        )  # fmt: skip
        train_s = time.monotonic() - t_train
        quantized = trained
        if settings.quantization != "F32":
            quantized = os.path.join(tmp, "trained-q.gguf")
            quantize(trained, quantized, settings.quantization)
        base_name = next(
            (f[1] for f in gguf_fields(base, lambda k: k == "general.name")), Path(base).stem
        )
        record: dict[str, Any] = {
            "base": base,
            "base_sha256": file_sha256(base),
            "dataset": dataset_path,
            "dataset_sha256": _sha256(dataset_path),
            "examples": len(examples),
            "examples_from_model": sum(e.source == "model" for e in examples),
            "held_out": n_held,
            "left_out_long": dropped,
            "training_tokens": tokens,
            "row_length": length,
            "settings": {**asdict(settings), "train": asdict(s)},
            "losses": [asdict(e) for e in history],
            "train_s": round(train_s, 1),
            "tokens_per_s": round(tokens * s.epochs / train_s, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "cpus": os.cpu_count(),
        }
        context_length = next(
            (f[1] for f in gguf_fields(base, lambda k: k.endswith(".context_length"))), None
        )
        arch_key = next(
            (f[0] for f in gguf_fields(base, lambda k: k.endswith(".context_length"))), None
        )
        override: dict[str, Any] = {
            "general.name": f"{base_name} explainstream-ft",
            "explainstream.finetune.base_sha256": record["base_sha256"],
            "explainstream.finetune.dataset_sha256": record["dataset_sha256"],
            "explainstream.finetune.settings": json.dumps(record["settings"], sort_keys=True),
            "explainstream.finetune.held_out_loss": json.dumps(
                [round(e.held_out, 4) for e in history]
            ),
        }
        if arch_key and context_length:
            # The trainer records its row length as the context length; the model keeps
            # the base's (the weights' positional range is unchanged).
            override[arch_key] = int(context_length)
        rewrite_with_metadata(quantized, out, fill_from=base, override=override)
    record["out"] = str(out)
    record["out_sha256"] = file_sha256(str(out))
    record["total_s"] = round(time.monotonic() - t_start, 1)
    Path(str(out) + ".json").write_text(json.dumps(record, indent=2))
    return record


def _epoch_line(e: EpochLoss) -> str:
    if e.train is None:
        return f"held-out loss before training: {e.held_out:.4f}"
    return (
        f"epoch {e.epoch}: train loss {e.train:.4f}, held-out loss {e.held_out:.4f} "
        f"({e.seconds:.0f} s)"
    )


def _cmd(args: argparse.Namespace) -> int:
    try:
        settings = FinetuneSettings(
            out=args.out,
            base=args.base,
            dataset=args.dataset,
            contexts=args.contexts,
            model_answers=args.model_answers,
            held_out=args.held_out,
            row_tokens=args.row_tokens,
            quantization=args.quantization,
            train=TrainSettings(
                epochs=args.epochs,
                learning_rate=args.learning_rate,
                threads=args.threads or (os.cpu_count() or 1),
                seed=args.seed,
            ),
        )
        record = finetune(settings, say=lambda m: print(m, file=sys.stderr, flush=True))
    except (ValueError, DatasetError) as exc:
        print(f"finetune: {exc}", file=sys.stderr)
        return 2
    losses = record["losses"]
    print(
        f"wrote {record['out']}: held-out loss {losses[0]['held_out']:.4f} -> "
        f"{losses[-1]['held_out']:.4f}, {record['train_s']:.0f} s of training "
        f"({record['tokens_per_s']:.0f} tokens/s), peak RSS {record['peak_rss_mib']} MiB"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``finetune``."""
    defaults = FinetuneSettings()
    p = sub.add_parser(
        "finetune", help="fine-tune the model on explanations that pass the grounding checks"
    )
    p.add_argument("--out", default=defaults.out, help="the GGUF to write")
    p.add_argument("--base", default=None, help="base GGUF (default: the bundled model)")
    p.add_argument("--dataset", default=None, help="JSON lines of {profile, context, explanation}")
    p.add_argument(
        "--contexts",
        type=int,
        default=defaults.contexts,
        help="synthetic contexts to write explanations for (without --dataset)",
    )
    p.add_argument(
        "--model-answers",
        type=int,
        default=0,
        help="also ask the base model for this many answers; keep those that pass",
    )
    p.add_argument("--held-out", type=float, default=defaults.held_out)
    p.add_argument(
        "--row-tokens",
        type=int,
        default=defaults.row_tokens,
        help="tokens per training row; longer examples are left out",
    )
    p.add_argument("--epochs", type=int, default=defaults.train.epochs)
    p.add_argument("--learning-rate", type=float, default=defaults.train.learning_rate)
    p.add_argument("--threads", type=int, default=0, help="default: every CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quantization", default=defaults.quantization, choices=_QUANTIZATIONS)
    p.set_defaults(func=_cmd)
