"""Train the bundled demo model: a small Llama on the Python documentation's reStructuredText sources.

Usage: python scripts/train_demo.py [--minutes 40] [--out src/lowbit/assets/demo]

Needs the Debian package python3.11-doc (apt-get install python3.11-doc). Writes, in Hugging Face layout:
config.json, model.safetensors (fp16), tokenizer.model (SentencePiece), tokenizer_config.json,
generation_config.json, plus calib.txt and eval.txt (held-out files, never trained on) and train_report.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

SOURCES = Path("/usr/share/doc/python3.11/html/_sources")


def split_of(path: Path) -> str:
    """Assign a file to train/calib/eval deterministically by a hash of its relative path."""
    h = int(hashlib.sha256(str(path.relative_to(SOURCES)).encode()).hexdigest(), 16) % 100
    return "eval" if h < 3 else "calib" if h < 5 else "train"


def read_corpus() -> dict[str, list[str]]:
    """Read every .rst.txt source file, grouped by split."""
    if not SOURCES.is_dir():
        raise SystemExit(f"{SOURCES} not found: install it with `apt-get install python3.11-doc`")
    out: dict[str, list[str]] = {"train": [], "calib": [], "eval": []}
    for p in sorted(SOURCES.rglob("*.txt")):
        out[split_of(p)].append(p.read_text(encoding="utf-8", errors="replace"))
    # Evaluation uses the held-out files under 50 KB (about 70 KB, 20k tokens, in all) so that it stays fast;
    # the two larger held-out files are simply unused (never trained on either).
    out["eval"] = [d for d in out["eval"] if len(d) < 50_000]
    return out


def train_tokenizer(text_file: Path, prefix: Path, vocab: int) -> None:
    """Train a SentencePiece BPE tokenizer with Llama's special ids (unk 0, bos 1, eos 2) and byte fallback."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(prefix), vocab_size=vocab, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", max_sentence_length=1 << 16, input_sentence_size=2_000_000,
        shuffle_input_sentence=True, num_threads=2, minloglevel=2,
    )


def write_hf_tokenizer(out: Path, max_length: int) -> None:
    """Write tokenizer.json and tokenizer_config.json that tokenize exactly like out/tokenizer.model.

    transformers' conversion of a SentencePiece model uses a Metaspace pre-tokenizer that skips the dummy
    prefix when a text already starts with a space, and its LlamaTokenizer class rebuilds that pipeline even
    from a corrected file. SentencePiece always prepends the prefix, so the file gets a normalizer that
    does (Prepend, then spaces to U+2581, no pre-tokenizer) and is loaded as a plain fast tokenizer.
    """
    from transformers import AutoTokenizer

    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}) + "\n")
    AutoTokenizer.from_pretrained(str(out)).save_pretrained(str(out))  # converts tokenizer.model
    tj = out / "tokenizer.json"
    spec = json.loads(tj.read_text(encoding="utf-8"))
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    spec["pre_tokenizer"] = None
    tj.write_text(json.dumps(spec, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
    }, indent=2) + "\n")


def unigram_perplexity(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab: int) -> float:
    """Perplexity of an add-one smoothed unigram model fitted on the training tokens."""
    counts = torch.bincount(train_ids, minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[eval_ids].mean().item())


def _previous_report(init_from: str | None) -> dict | None:
    """The train report of the model training continued from, if any."""
    f = Path(init_from) / "train_report.json" if init_from else None
    return json.loads(f.read_text()) if f and f.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="src/lowbit/assets/demo")
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-from", help="continue training from this model directory (same tokenizer and config)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    corpus = read_corpus()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lowbit-demo-"))
    train_txt = work / "train.txt"
    train_txt.write_text("\n".join(corpus["train"]), encoding="utf-8")
    if args.init_from:  # keep the tokenizer the model was trained with
        (work / "sp.model").write_bytes((Path(args.init_from) / "tokenizer.model").read_bytes())
    else:
        train_tokenizer(train_txt, work / "sp", args.vocab)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(work / "sp.model"))

    def encode(docs: list[str]) -> torch.Tensor:
        ids: list[int] = []
        for d in docs:
            ids += [1] + sp.encode(d)
        return torch.tensor(ids, dtype=torch.long)

    train_ids, eval_ids = encode(corpus["train"]), encode(corpus["eval"])
    print(f"tokens: train {train_ids.numel():,}  eval {eval_ids.numel():,}", flush=True)

    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=args.seq, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg)
    if args.init_from:
        model = LlamaForCausalLM.from_pretrained(args.init_from, dtype=torch.float32)
        cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params: {n_params / 1e6:.2f}M", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    budget = args.minutes * 60
    t0 = time.time()
    step, warmup = 0, 100
    model.train()
    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1:
            break
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, train_ids.numel() - args.seq - 1, (args.batch,))
        x = torch.stack([train_ids[s:s + args.seq] for s in starts])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            el = time.time() - t0
            print(f"step {step} loss {loss.item():.3f} lr {lr:.2e} {el:.0f}s/{budget:.0f}s", flush=True)
        step += 1

    model.eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, eval_ids.numel() - 1, args.seq):
            x = eval_ids[s:s + args.seq + 1]
            if x.numel() < 2:
                break
            logits = model(input_ids=x[None, :-1]).logits[0].float()
            nll += torch.nn.functional.cross_entropy(logits, x[1:], reduction="sum").item()
            n += x.numel() - 1
    ppl = math.exp(nll / n)
    uni = unigram_perplexity(train_ids, eval_ids, args.vocab)
    print(f"eval perplexity {ppl:.2f} (non-overlapping windows of {args.seq}); unigram {uni:.1f}", flush=True)

    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    (out / "tokenizer.model").write_bytes((work / "sp.model").read_bytes())
    write_hf_tokenizer(out, args.seq)
    (out / "calib.txt").write_text("\n".join(corpus["calib"]), encoding="utf-8")
    (out / "eval.txt").write_text("\n".join(corpus["eval"]), encoding="utf-8")
    (out / "train_report.json").write_text(json.dumps({
        "init_from": args.init_from, "previous": _previous_report(args.init_from),
        "params": n_params, "steps": step, "minutes": args.minutes, "seq": args.seq, "batch": args.batch,
        "train_tokens": train_ids.numel(), "eval_tokens": eval_ids.numel(), "eval_perplexity": ppl,
        "unigram_perplexity": uni, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": os.cpu_count(),
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
