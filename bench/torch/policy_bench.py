"""The learner step of rxrl's GRPO learner in PyTorch on the CPU: the reference bench/policy.ts
compares the TensorFlow.js learner against. bench/policy.ts runs it in a cached virtual environment
(bench/torch/requirements.txt) with the same settings it uses itself; it also runs alone:

    python bench/torch/policy_bench.py --size 128:4:4 --size 384:6:6 --runs 5

Everything mirrors the TypeScript side:
  model      src/policy/gpt.ts: GPT-2 style, pre-LayerNorm (eps 1e-5), learned positions, biases on
             every linear layer and LayerNorm, an untied output head without bias, MLP of width
             mlp_ratio * d with GELU in its sigmoid form x * sigmoid(1.702 x), GPT-2 initialisation
  batch      B rows of T tokens: a prompt of P tokens and a completion of T - P tokens, the
             completion masked in; the loss scores the T - 1 next-token predictions
  loss       src/grpo/loss.ts with the learner's defaults: token-level ratio exp(logp - old_logp),
             clipped surrogate -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), aggregated as the
             mean over rows of each row's token mean ('grpo'), no KL term (beta 0); plus the
             diagnostics the learner reports (clip shares, mean ratio, entropy), without gradient
  update     global-norm gradient clipping, then AdamW (0.9, 0.999, 1e-8, no weight decay)

It prints one JSON line: for each model size and thread count, the wall and CPU milliseconds of
each timed step (after one warm-up step). The rates are computed by bench/policy.ts.

With --serve (one --size) it takes one warm-up step, prints a JSON line with the parameter count,
then answers each line of stdin: `step` runs one timed step and prints its wall and CPU
milliseconds as JSON, `threads N` sets the intra-op threads. bench/policy.ts uses this to take
turns with the TensorFlow.js learner step by step, so both see the same machine.
"""

import argparse
import json
import math
import os
import statistics
import time
import warnings

# torch warns at import when NumPy is missing; this bench needs no NumPy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

LN_EPS = 1e-5
GELU_K = 1.702


def gelu_sigmoid(x):
    return x * torch.sigmoid(GELU_K * x)


class Block(torch.nn.Module):
    def __init__(self, d, heads, mlp_ratio, residual_std):
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(d, eps=LN_EPS)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(d, d)
        self.ln2 = torch.nn.LayerNorm(d, eps=LN_EPS)
        self.fc1 = torch.nn.Linear(d, mlp_ratio * d)
        self.fc2 = torch.nn.Linear(mlp_ratio * d, d)
        for linear, std in ((self.qkv, 0.02), (self.proj, residual_std), (self.fc1, 0.02), (self.fc2, residual_std)):
            torch.nn.init.normal_(linear.weight, std=std)
            torch.nn.init.zeros_(linear.bias)

    def forward(self, x):
        B, T, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (t.view(B, T, self.heads, hd).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, d))
        return x + self.fc2(gelu_sigmoid(self.fc1(self.ln2(x))))


class GPT(torch.nn.Module):
    def __init__(self, vocab, context, d, layers, heads, mlp_ratio):
        super().__init__()
        if d % heads != 0:
            raise ValueError(f"d={d} is not a multiple of heads={heads}")
        self.wte = torch.nn.Parameter(torch.randn(vocab, d) * 0.02)
        self.wpe = torch.nn.Parameter(torch.randn(context, d) * 0.02)
        residual_std = 0.02 / math.sqrt(2 * layers)
        self.blocks = torch.nn.ModuleList(Block(d, heads, mlp_ratio, residual_std) for _ in range(layers))
        self.lnf = torch.nn.LayerNorm(d, eps=LN_EPS)
        self.head = torch.nn.Linear(d, vocab, bias=False)
        torch.nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, ids):
        T = ids.shape[1]
        x = F.embedding(ids, self.wte) + self.wpe[:T]
        for block in self.blocks:
            x = block(x)
        return self.head(self.lnf(x))


def make_batch(vocab, batch, prompt_length, train_length):
    """The same rows bench/common.ts builds (learnerBatch): ids (i * 31) % vocab, behaviour
    log-probs -log(vocab), advantages alternating +1 / -1."""
    ids = (torch.arange(batch * train_length) * 31 % vocab).view(batch, train_length)
    mask = torch.zeros(batch, train_length)
    mask[:, prompt_length:] = 1
    # Aligned with the next-token outputs: output t predicts token t + 1.
    next_mask = mask[:, 1:]
    old = next_mask * -math.log(vocab)
    advantages = torch.tensor([1.0 if b % 2 == 0 else -1.0 for b in range(batch)])
    return ids, next_mask, old, advantages


def learner_step(model, optimizer, batch, eps_low, eps_high, max_grad_norm):
    ids, mask, old, advantages = batch
    logits = model(ids[:, :-1])
    log_probs_all = F.log_softmax(logits, dim=-1)
    log_probs = log_probs_all.gather(2, ids[:, 1:].unsqueeze(2)).squeeze(2) * mask
    A = advantages.unsqueeze(1)
    ratio = torch.exp(log_probs - old)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.minimum(ratio * A, clipped * A)
    # 'grpo' aggregation: the mean over rows of each row's token mean.
    loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()

    with torch.no_grad():
        active = mask.sum().clamp(min=1)
        low = ((ratio < 1 - eps_low) & (A < 0)).float()
        high = ((ratio > 1 + eps_high) & (A > 0)).float()
        entropy = -(log_probs_all.exp() * log_probs_all).sum(2)
        diagnostics = torch.stack(
            [
                (low * mask).sum() / active,
                (high * mask).sum() / active,
                (torch.maximum(low, high) * mask).sum() / active,
                (ratio * mask).sum() / active,
                (entropy * mask).sum() / active,
            ]
        )

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item(), grad_norm.item(), diagnostics.tolist()


def time_steps(step, runs):
    step()  # warm-up
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        cpu.append((time.process_time() - start_cpu) * 1000)
        wall.append((time.perf_counter() - start) * 1000)
    return sorted(wall), sorted(cpu)


def serve(args, size, batch):
    model = GPT(args.vocab, args.context, size["d"], size["layers"], size["heads"], args.mlp_ratio)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
    )
    torch.set_num_threads(1)

    def step():
        learner_step(model, optimizer, batch, args.eps_low, args.eps_high, args.max_grad_norm)

    step()  # warm-up
    ready = {"torch": torch.__version__, "cpu_count": os.cpu_count(), **size}
    ready["parameters"] = sum(p.numel() for p in model.parameters())
    ready["tokens"] = args.batch * args.train_length
    print(json.dumps(ready), flush=True)
    for line in iter(input_line, None):
        command = line.split()
        if command[:1] == ["threads"]:
            torch.set_num_threads(int(command[1]))
            print(json.dumps({"threads": torch.get_num_threads()}), flush=True)
        elif command[:1] == ["step"]:
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            cpu = (time.process_time() - start_cpu) * 1000
            print(json.dumps({"wall_ms": (time.perf_counter() - start) * 1000, "cpu_ms": cpu}), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)


def input_line():
    try:
        return input()
    except EOFError:
        return None


def parse_size(text):
    d, layers, heads = (int(x) for x in text.split(":"))
    return {"d": d, "layers": layers, "heads": heads}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", action="append", type=parse_size, help="d:layers:heads, repeatable")
    parser.add_argument("--vocab", type=int, default=100)
    parser.add_argument("--context", type=int, default=160)
    parser.add_argument("--mlp-ratio", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--train-length", type=int, default=128)
    parser.add_argument("--eps-low", type=float, default=0.2)
    parser.add_argument("--eps-high", type=float, default=0.2)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, action="append", help="intra-op threads, repeatable; default 1")
    parser.add_argument("--serve", action="store_true", help="answer step / threads N lines on stdin")
    args = parser.parse_args()
    sizes = args.size or [parse_size("128:4:4")]
    thread_counts = args.threads or [1]
    if args.train_length > args.context:
        parser.error(f"--train-length {args.train_length} exceeds --context {args.context}")

    torch.manual_seed(1)
    torch.set_num_interop_threads(1)
    batch = make_batch(args.vocab, args.batch, args.prompt_length, args.train_length)
    if args.serve:
        if len(sizes) != 1:
            parser.error("--serve takes exactly one --size")
        serve(args, sizes[0], batch)
        return
    results = []
    for size in sizes:
        model = GPT(args.vocab, args.context, size["d"], size["layers"], size["heads"], args.mlp_ratio)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
        )
        for threads in thread_counts:
            torch.set_num_threads(threads)
            last = {}

            def step():
                last["loss"], last["grad_norm"], _ = learner_step(
                    model, optimizer, batch, args.eps_low, args.eps_high, args.max_grad_norm
                )

            wall, cpu = time_steps(step, args.runs)
            results.append(
                {
                    **size,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "threads": threads,
                    "tokens": args.batch * args.train_length,
                    "wall_ms": wall,
                    "cpu_ms": cpu,
                    "median_wall_ms": statistics.median(wall),
                    "loss": last["loss"],
                    "grad_norm": last["grad_norm"],
                }
            )
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "cpu_count": os.cpu_count(),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
